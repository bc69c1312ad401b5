r"""``Normalizer``: the per-component affine map between physical and normalised units.

Every frame's (u, v) is scaled with the mean and standard deviation of that component
over the training split, :math:`\tilde x_c = (x_c - m_{c \bmod 2}) / s_{c \bmod 2}`. The
statistics travel in the prior's checkpoint (``normalizer``), so inference, metrics and
figures undo exactly the scaling the prior was trained on. Plain torch, no Lightning.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor


class Normalizer:
    r"""Per-component affine scaling of (B, C, H, W) fields, ``C = 2 T`` frame-major.

    ``mean`` and ``std`` are tensors of shape (2,) (u, v), float64, in physical units;
    they are ``None`` until :meth:`fit` or :meth:`load_state_dict`.
    """

    def __init__(self) -> None:
        self.mean: Tensor | None = None
        self.std: Tensor | None = None

    def fit(self, u: np.ndarray, v: np.ndarray) -> Normalizer:
        """Set mean and (population) std of each component from arrays of any shape."""
        self.mean = torch.tensor([u.mean(dtype=np.float64), v.mean(dtype=np.float64)])
        self.std = torch.tensor([u.std(dtype=np.float64), v.std(dtype=np.float64)])
        return self

    def normalize(self, x: Tensor) -> Tensor:
        """Physical to normalised units; ``x`` of shape (B, C, H, W) or (C, H, W)."""
        mean, std = self._per_channel(x)
        return (x - mean) / std

    def denormalize(self, x: Tensor) -> Tensor:
        """Normalised to physical units; ``x`` of shape (B, C, H, W) or (C, H, W)."""
        mean, std = self._per_channel(x)
        return x * std + mean

    @classmethod
    def from_state(cls, state: dict[str, Tensor]) -> "Normalizer":
        """A normaliser with the statistics of :meth:`state_dict` (as stored in a checkpoint)."""
        normalizer = cls()
        normalizer.load_state_dict(state)
        return normalizer

    def state_dict(self) -> dict[str, Tensor]:
        self._require_fitted()
        return {"mean": self.mean.clone(), "std": self.std.clone()}

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        mean, std = (torch.as_tensor(state[key], dtype=torch.float64) for key in ("mean", "std"))
        if mean.shape != (2,) or std.shape != (2,) or not (std > 0).all():
            raise ValueError(f"normalizer state: need mean and positive std of shape (2,), got {state}")
        self.mean, self.std = mean, std

    def _require_fitted(self) -> None:
        if self.mean is None:
            raise ValueError("normalizer: not fitted (no training split: load a checkpoint's statistics)")

    def _per_channel(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self._require_fitted()
        channels = x.shape[-3]
        if channels % 2:
            raise ValueError(f"normalizer: {channels} channels, expected 2 per frame")
        shape = (channels, 1, 1)
        mean = self.mean.to(x).repeat(channels // 2).reshape(shape)
        std = self.std.to(x).repeat(channels // 2).reshape(shape)
        return mean, std
