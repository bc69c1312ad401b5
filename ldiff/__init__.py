"""ldiff: diffusion priors for fluid fields and guidance strategies for sparse reconstruction.

The core (``ldiff.diffusion``, ``ldiff.nets``, ``ldiff.guidance``, ``ldiff.observe``) is
plain PyTorch; Lightning, the CLI, writers and tracking stand at the edges (``ldiff.lit``,
``ldiff.cli``).
"""

__version__ = "0.1.0"
