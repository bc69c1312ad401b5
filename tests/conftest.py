"""Test-wide settings: one thread per process keeps the 2-core CI machine responsive."""

import torch

torch.set_num_threads(1)
