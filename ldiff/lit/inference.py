r"""``InferenceModule``: sparse reconstruction through ``trainer.predict``.

For each batch of true windows (or of given observations) the module

1. observes the truth: :math:`y = A x + n`, :math:`n \sim \mathcal{N}(0, \text{std}^2)`,
   with noise seeded per item (``seed``, item index), so the problem an item poses does
   not depend on batching or on the number of devices;
2. draws ``samples`` (K) posterior samples per observation set with the configured
   guidance ``strategy`` and the prior's :class:`~ldiff.diffusion.denoise.Denoiser`;
3. guards the sampler: a sample whose state becomes non-finite or leaves
   ``diverge_factor * data_range`` (normalised units) is frozen at its last sane state
   and labelled ``diverged``; the others continue untouched;
4. labels each sample's regime (``diverged``, ``flat``, ``balanced``, see
   :func:`ldiff.metrics.regime`) and returns everything the writer stores: truth,
   observations, reconstructions, regimes, per-step diagnostics.

Everything is in normalised units; the writer maps to physical units with the
normaliser saved in the prior's checkpoint. Guidance needs autograd, so prediction runs
outside inference mode whatever the trainer's setting.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import torch
import xarray as xr
from torch import Tensor, nn

from ldiff.diffusion.denoise import Denoiser
from ldiff.diffusion.sampler import PredictorCorrector
from ldiff.diffusion.schedules import Schedule
from ldiff.evaluate import attach, evaluate
from ldiff.guidance.base import Diagnostics, Observation, Strategy
from ldiff.guidance.mmps import MMPS
from ldiff.lit.prior import check_channels
from ldiff.metrics import DIVERGED, regime, spatial_std
from ldiff.observe import Operator, check_std


def item_generator(seed: int, index: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one item and one purpose (``stream``), independent of batching."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + index * 7 + stream)


GAUSSIAN_FILE = "gaussian.pt"
"""The prior's stationary Gaussian fit (``ldiff baseline``), shipped beside its checkpoint."""


def default_strategy(checkpoint: str | None = None) -> MMPS:
    """ldiff's default: :class:`~ldiff.guidance.mmps.MMPS` with its default setting, and as
    its known covariance the Gaussian fit shipped beside ``checkpoint``
    (:data:`GAUSSIAN_FILE`) if that file exists, else the isotropic model."""
    if checkpoint is not None:
        gaussian = Path(checkpoint).with_name(GAUSSIAN_FILE)
        if gaussian.is_file():
            return MMPS(covariance=str(gaussian))
    return MMPS()


class DivergenceGuard:
    """Sampler callback: freeze samples that become non-finite or exceed ``bound``.

    Attributes:
        frozen: bool (B,), True for samples frozen so far.
    """

    def __init__(self, batch: int, bound: float, device: torch.device):
        self.bound = bound
        self.frozen = torch.zeros(batch, dtype=torch.bool, device=device)

    def __call__(self, i: int, s: Tensor, x_prev: Tensor, x: Tensor) -> Tensor:
        flat = x.detach().flatten(1)
        bad = ~torch.isfinite(flat).all(dim=1) | (flat.abs().amax(dim=1) > self.bound)
        self.frozen |= bad
        return torch.where(self.frozen.view(-1, *([1] * (x.dim() - 1))), x_prev, x).detach()


class InferenceModule(L.LightningModule):
    """Reconstruct fields from sparse noisy observations with a diffusion prior.

    Args:
        strategy: the guidance strategy (``class_path`` in YAML); by default ldiff's
            recommendation for any observation density, :func:`default_strategy`:
            ``mmps`` with the prior's own Gaussian fit (``gaussian.pt`` beside
            ``checkpoint``, when there is one) as the covariance at large sigma/mu
            (measured in the README's results from N = 32 to N = 640,000).
        operator: the observation operator ``A`` (``class_path`` in YAML).
        std: observation noise std in normalised units.
        samples: K, posterior samples per observation set.
        steps, corrections, tau: SDA's predictor-corrector settings.
        seed: base seed of observation noise and sampler noise.
        data_range: the largest plausible |value| in normalised units (5: five data stds).
        diverge_factor: a sample beyond ``diverge_factor * data_range`` is ``diverged``.
        flat_fraction: a sample whose spatial std is below ``flat_fraction`` times the
            truth's (or 1, the prior's, without truth) is ``flat``.
        checkpoint: a prior checkpoint written by ``ldiff fit`` (loaded weights-only).
    """

    def __init__(
        self,
        strategy: Strategy | None = None,
        operator: Operator | None = None,
        std: float = 0.1,
        samples: int = 1,
        steps: int = 64,
        corrections: int = 0,
        tau: float = 1.0,
        seed: int = 0,
        data_range: float = 5.0,
        diverge_factor: float = 10.0,
        flat_fraction: float = 0.2,
        checkpoint: str | None = None,
    ):
        super().__init__()
        check_std(std)
        if operator is None:
            raise ValueError("InferenceModule: an observation operator is required (model.operator)")
        if samples < 1:
            raise ValueError(f"InferenceModule: samples must be >= 1, got {samples}")
        self.strategy = default_strategy(checkpoint) if strategy is None else strategy
        self.operator = operator
        self.std = float(std)
        self.samples = samples
        self.steps, self.corrections, self.tau = steps, corrections, tau
        self.seed = seed
        self.data_range, self.diverge_factor, self.flat_fraction = data_range, diverge_factor, flat_fraction
        self.prior: nn.Module | None = None
        self.schedule: Schedule | None = None
        self.normalizer_state: dict[str, Tensor] | None = None
        self.grid: tuple[float, float, bool] | None = None  # (dx, dy, periodic) of the data, for scoring
        if checkpoint is not None:
            from ldiff.lit.checkpoint import load_prior

            net, schedule, normalizer, _ = load_prior(checkpoint)
            self.attach_prior(net, schedule, normalizer)

    def attach_prior(self, model: nn.Module, schedule: Schedule, normalizer: dict[str, Tensor] | None = None) -> None:
        """Use ``model`` (an epsilon model) trained with ``schedule`` as the prior."""
        self.prior = model.eval().requires_grad_(False)
        self.schedule = schedule
        self.normalizer_state = normalizer

    def setup(self, stage: str) -> None:
        """Refuse data whose window does not fit the prior's network, naming both channel
        counts, before the network sees a batch."""
        if self.prior is not None:
            check_channels(self.prior, getattr(self.trainer, "datamodule", None))

    def score(self, ds: xr.Dataset) -> xr.Dataset:
        """Attach the metrics of a merged prediction file (:func:`ldiff.evaluate.evaluate`)
        as ``metric_*`` attributes; unchanged without truth or without :attr:`grid`."""
        if self.grid is None or "truth" not in ds:
            return ds
        scale = None if self.normalizer_state is None else torch.as_tensor(self.normalizer_state["std"], dtype=torch.float64)
        return attach(ds, evaluate(ds, self.operator, self.std, *self.grid, scale=scale))

    def sampler(self) -> PredictorCorrector:
        return PredictorCorrector(self.schedule, self.steps, self.corrections, self.tau)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> dict[str, Tensor]:
        """Reconstruct a batch.

        Args:
            batch: ``x`` (B, C, H, W) true fields in normalised units (or ``y``
                (B, *obs_shape) given observations with ``field_shape``), ``index`` (B,)
                item indices, optional ``cond`` (B, C_cond, H, W).

        Returns:
            ``index`` (B,), ``x`` (B, C, H, W) truth (if given), ``y`` (B, *obs_shape),
            ``recon`` (B, K, C, H, W), ``regime`` (B, K) codes of
            :data:`ldiff.metrics.REGIMES`, and ``diag_<name>`` (E, B, K) per-evaluation
            diagnostics with ``diag_t`` (E, B, K).
        """
        if self.prior is None:
            raise ValueError("InferenceModule: no prior (give `checkpoint` or call attach_prior)")
        with torch.inference_mode(False), torch.enable_grad():
            batch = {key: value.clone() if isinstance(value, Tensor) else value for key, value in batch.items()}
            return self._reconstruct(batch)

    def _reconstruct(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        index = batch["index"].long()
        truth = batch.get("x")
        field_shape = tuple(truth.shape[1:]) if truth is not None else tuple(batch["field_shape"])
        device = index.device
        y = batch["y"] if "y" in batch else self._observe(truth, index)
        obs = Observation(y, self.operator, self.std, field_shape)
        k, b = self.samples, index.numel()
        x1 = torch.cat([
            torch.randn((k, *field_shape), generator=item_generator(self.seed, int(i), 1, device), device=device)
            for i in index.tolist()
        ])
        cond = batch.get("cond")
        denoiser = Denoiser(self.prior, self.schedule, None if cond is None else cond.repeat_interleave(k, dim=0))
        guard = DivergenceGuard(b * k, self.diverge_factor * self.data_range, device)
        diagnostics = Diagnostics()
        recon = self.strategy.reconstruct(
            denoiser,
            obs.repeat(k),
            x1,
            self.sampler(),
            generator=item_generator(self.seed, int(index[0]), 2, device),
            callback=guard,
            diagnostics=diagnostics,
        ).detach()
        reference = spatial_std(truth).repeat_interleave(k) if truth is not None else torch.ones(b * k, device=device)
        labels = regime(recon, reference, self.data_range, self.flat_fraction, self.diverge_factor)
        labels = torch.where(guard.frozen, torch.full_like(labels, DIVERGED), labels)
        out = {
            "index": index,
            "y": y.detach(),
            "recon": recon.reshape(b, k, *field_shape),
            "regime": labels.reshape(b, k),
        }
        if truth is not None:
            out["x"] = truth
        for name, value in diagnostics.stacked().items():
            out[f"diag_{name}"] = value.reshape(value.shape[0], b, k)
        return out

    def _observe(self, truth: Tensor, index: Tensor) -> Tensor:
        clean = self.operator(truth)
        noise = torch.stack([
            torch.randn(clean.shape[1:], generator=item_generator(self.seed, int(i), 0, truth.device), device=truth.device)
            for i in index.tolist()
        ])
        return clean + self.std * noise
