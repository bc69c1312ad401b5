r"""``InferenceModule``: sparse reconstruction through ``trainer.predict``.

For each batch of true windows (or of given observations) the module

1. observes the truth: :math:`y = A x + n`, :math:`n \sim \mathcal{N}(0, \text{std}^2)`,
   with noise seeded per item (``seed``, item index), so the problem an item poses does
   not depend on batching or on the number of devices;
2. draws ``samples`` (K) posterior samples per observation set with the configured
   guidance ``strategy`` and the prior's :class:`~ldiff.diffusion.denoise.Denoiser`
   (for a prior on standardised coordinates :math:`z = S^{-1}(x - m)`, the strategy
   gets the observations of :math:`z`, ``(y - A m) / (A s)`` with noise std
   ``std / (A s)``, and its samples are decoded to :math:`m + S z`:
   :mod:`ldiff.diffusion.latent`);
3. guards the sampler: a sample whose state becomes non-finite or leaves
   ``diverge_factor * data_range`` (normalised units) is frozen at its last sane state
   and labelled ``diverged``; the others continue untouched;
4. labels each sample's regime (``diverged``, ``flat``, ``balanced``, see
   :func:`ldiff.metrics.regime`) and returns everything the writer stores: truth,
   observations, reconstructions, regimes, per-step diagnostics;
5. updates the run's metrics (:class:`~ldiff.evaluate.ReconstructionMetrics`) and the
   per-step diagnostic series (:class:`~ldiff.evaluate.DiagnosticSeries`).

At the end of the epoch every rank computes the metrics (a collective: the states are
reduced across processes, so N devices give the numbers of one), and the module logs
them, the experiment's settings (:meth:`InferenceModule.experiment`), the diagnostic
series against the step and a panel of one reconstruction to the trainer's loggers (W&B
with a ``WandbLogger``).

The module is built whole from its arguments, its checkpoint and the DataModule: the
prior and its normaliser come from ``checkpoint``, the grid (for vorticity and spectra)
and the coordinates from the :class:`~ldiff.data.module.FieldDataModule` in
:meth:`setup`, whose normaliser it sets to the prior's. Everything it computes is in
normalised units; the writer maps to physical units. Guidance needs autograd, so
prediction runs outside inference mode whatever the trainer's setting. Sampler noise is
drawn per item (:class:`~ldiff.diffusion.noise.ItemNoise`), so a reconstruction does not
depend on batching or on the number of devices.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

import ldiff
from ldiff.diffusion.denoise import Denoiser
from ldiff.diffusion.noise import ItemNoise
from ldiff.diffusion.precond import standardization
from ldiff.diffusion.sampler import PredictorCorrector
from ldiff.diffusion.schedules import Schedule
from ldiff.evaluate import DiagnosticSeries, ReconstructionMetrics
from ldiff.guidance.base import Diagnostics, Observation, Strategy
from ldiff.guidance.mmps import MMPS
from ldiff.lit.prior import check_channels
from ldiff.metrics import DIVERGED, regime, spatial_std
from ldiff.observe import Operator, check_std
from ldiff.physics import wake_geometry


def _fluid(datamodule) -> Tensor | None:
    """The data's fluid mask (H, W), True in the fluid: its ``mask`` condition channel
    (:mod:`ldiff.data.conditions`), or None when the data are not conditioned on one."""
    cond, names = getattr(datamodule, "cond", None), tuple(getattr(datamodule, "condition", ()))
    if cond is not None and "mask" in names:
        return cond[names.index("mask")] > 0.5
    return None


def item_generator(seed: int, index: int, stream: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one item and one purpose (``stream``), independent of batching."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + index * 7 + stream)


GAUSSIAN_FILE = "gaussian.pt"
"""The prior's stationary Gaussian fit (``ldiff baseline``), shipped beside its checkpoint."""


def default_strategy(checkpoint: str | None = None, prior: nn.Module | None = None) -> MMPS:
    """ldiff's default: :class:`~ldiff.guidance.mmps.MMPS` with its default setting, and as
    its known covariance the prior's own skip-term Gaussian for a prior on standardised
    coordinates (``covariance="prior"``: a Gaussian fit of the fields is in the wrong
    coordinates for it), else the Gaussian fit shipped beside ``checkpoint``
    (:data:`GAUSSIAN_FILE`) if that file exists, else the isotropic model."""
    if prior is not None and standardization(prior) is not None:
        return MMPS(covariance="prior")
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
            ``checkpoint``, when there is one; the skip term's Gaussian for a
            ``gaussian-node`` prior) as the covariance at large sigma/mu
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
        checkpoint: the prior, a checkpoint written by ``ldiff fit`` (loaded weights-only).
        grid: ``(dx, dy, periodic)`` of the data, for vorticity and spectra; by default
            the FieldDataModule's. Needed to score truth given without a DataModule.
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
        grid: tuple[float, float, bool] | None = None,
    ):
        super().__init__()
        check_std(std)
        if operator is None:
            raise ValueError("InferenceModule: an observation operator is required (model.operator)")
        if samples < 1:
            raise ValueError(f"InferenceModule: samples must be >= 1, got {samples}")
        self._default_strategy = strategy is None  # chosen again once the prior is known
        self.strategy = default_strategy(checkpoint) if strategy is None else strategy
        self.operator = operator
        self.std = float(std)
        self.samples = samples
        self.steps, self.corrections, self.tau = steps, corrections, tau
        self.seed = seed
        self.data_range, self.diverge_factor, self.flat_fraction = data_range, diverge_factor, flat_fraction
        self.grid = None if grid is None else _check_grid(grid)
        self.checkpoint, self.checkpoint_sha256 = checkpoint, None
        self.prior: nn.Module | None = None
        self.schedule: Schedule | None = None
        self.normalizer_state: dict[str, Tensor] | None = None
        self.coords: dict[str, Any] = {}  # x, y, time of the data (xarray coordinates), from the DataModule
        self.field_shape: tuple[int, ...] | None = None
        self.metrics: ReconstructionMetrics | None = None
        self.series = DiagnosticSeries()
        self.example: dict[str, Tensor] | None = None  # the first item seen on rank 0, for the panel
        self._results: dict[str, float] | None = None
        self._series: dict[str, Tensor] = {}
        if checkpoint is not None:
            from ldiff.lit.checkpoint import load_prior
            from ldiff.tracking import sha256

            net, schedule, normalizer, _ = load_prior(checkpoint)
            self._use_prior(net, schedule, normalizer)
            self.checkpoint_sha256 = sha256(checkpoint)

    @classmethod
    def from_prior(cls, model: nn.Module, schedule: Schedule, normalizer: dict[str, Tensor] | None = None, **kwargs) -> "InferenceModule":
        """A module on a prior given as objects (an epsilon model trained with
        ``schedule``, and its normaliser) rather than a checkpoint; ``kwargs`` as for
        the constructor."""
        module = cls(**kwargs)
        module._use_prior(model, schedule, normalizer)
        return module

    def _use_prior(self, model: nn.Module, schedule: Schedule, normalizer: dict[str, Tensor] | None) -> None:
        if self._default_strategy:
            self.strategy = default_strategy(self.checkpoint, model)
        self.prior = model.eval().requires_grad_(False)
        self.schedule = schedule
        self.normalizer_state = normalizer

    def setup(self, stage: str) -> None:
        """Take what the run needs from the DataModule: refuse data whose window does not
        fit the prior's network (naming both channel counts), put the data in the
        prior's normalisation, and read the grid and the coordinates."""
        if self.prior is None:
            raise ValueError("InferenceModule: no prior: name the prior checkpoint written by `ldiff fit` with --model.checkpoint")
        datamodule = getattr(self.trainer, "datamodule", None)
        if datamodule is None:
            return
        check_channels(self.prior, datamodule)
        if self.normalizer_state is not None and hasattr(datamodule, "normalizer"):
            datamodule.normalizer.load_state_dict(self.normalizer_state)
        attrs = getattr(datamodule, "attrs", None)
        if attrs is not None and self.grid is None:
            self.grid = _check_grid((attrs["dx"], attrs["dy"], bool(int(attrs["periodic"]))))
        self.coords = dict(getattr(datamodule, "coords", {}))
        if "x" in self.coords and "y" in self.coords:
            self.field_shape = (datamodule.channels, self.coords["y"].size, self.coords["x"].size)
            self.operator.bind(torch.tensor(self.coords["x"].values), torch.tensor(self.coords["y"].values), _fluid(datamodule))  # copies: the store may be read-only

    def on_predict_epoch_start(self) -> None:
        """Fresh metrics for the epoch (on every rank, whether it gets batches or not)."""
        scale = None if self.normalizer_state is None else torch.as_tensor(self.normalizer_state["std"], dtype=torch.float64)
        self.metrics = None if self.grid is None else ReconstructionMetrics(self.operator, self.std, *self.grid, scale=scale, wake=self._wake()).to(self.device)
        self.series.reset()
        self.example, self._results = None, None

    def _wake(self) -> dict | None:
        """The Strouhal metric's arguments for windows of a cylinder wake
        (:func:`ldiff.physics.wake_geometry`), else None."""
        attrs = getattr(getattr(self.trainer, "datamodule", None), "attrs", None) or {}
        frames = self.field_shape[0] // 2 if self.field_shape else 0
        if not {"x", "y"} <= set(self.coords):
            return None
        return wake_geometry(attrs, self.coords["x"].values, self.coords["y"].values, frames)

    def sampler(self) -> PredictorCorrector:
        return PredictorCorrector(self.schedule, self.steps, self.corrections, self.tau)

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int = 0) -> dict[str, Tensor]:
        """Reconstruct a batch and update the run's metrics.

        Args:
            batch: ``x`` (B, C, H, W) true fields in normalised units (or ``y``
                (B, *obs_shape) given observations with ``field_shape``), ``index`` (B,)
                item indices, optional ``cond`` (B, C_cond, H, W), and optional per-item
                ``trajectory`` and ``time`` (B,), passed through.

        Returns:
            ``index`` (B,), ``x`` (B, C, H, W) truth (if given), ``y`` (B, *obs_shape),
            ``recon`` (B, K, C, H, W), ``regime`` (B, K) codes of
            :data:`ldiff.metrics.REGIMES`, ``diag_<name>`` (E, B, K) per-evaluation
            diagnostics with ``diag_t`` (E, B, K), and ``trajectory``/``time`` if given.
        """
        if self.prior is None:
            raise ValueError("InferenceModule: no prior (give `checkpoint`, or build it with InferenceModule.from_prior)")
        with torch.inference_mode(False), torch.enable_grad():
            batch = {key: value.clone() if isinstance(value, Tensor) else value for key, value in batch.items()}
            out = self._reconstruct(batch, batch_idx)
        self._update(out)
        return out

    def _update(self, out: dict[str, Tensor]) -> None:
        """Update the epoch's metrics, series and example; nothing outside a trainer
        (``predict_step`` called directly is a plain function of the batch)."""
        self.field_shape = tuple(out["recon"].shape[2:])
        if self._trainer is None:
            return
        if "x" in out:
            if self.metrics is None:
                raise ValueError("InferenceModule: no grid to score the truth on: give grid=(dx, dy, periodic) or predict from a FieldDataModule")
            self.metrics.update(out["recon"], out["x"], out["y"], out["regime"])
        diagnostics = {key[len("diag_"):]: value.flatten(1) for key, value in out.items() if key.startswith("diag_")}
        if diagnostics:
            self.series.update(diagnostics)
        if self.example is None and self.trainer.is_global_zero:
            self.example = {key: out[key][:1].detach().cpu() for key in ("x", "y", "recon", "index") if key in out}

    def results(self) -> dict[str, float]:
        """The epoch's metrics (:class:`~ldiff.evaluate.ReconstructionMetrics`), empty
        without truth. Under DDP a collective: every rank calls it (the writer does, and
        :meth:`on_predict_epoch_end`); it is computed once per epoch."""
        if self._results is None:
            with warnings.catch_warnings():  # a rank (or a strategy) may have nothing to reduce
                warnings.filterwarnings("ignore", message=".*compute.*called before the ..update", category=UserWarning)
                self._results = {} if self.metrics is None else self.metrics.compute()
                self._series = self.series.compute()
        return self._results

    def diagnostic_series(self) -> dict[str, Tensor]:
        """The per-step diagnostics of the epoch (:class:`~ldiff.evaluate.DiagnosticSeries`),
        name -> (E,), ``t`` included; computed with :meth:`results`."""
        self.results()
        return self._series

    def experiment(self) -> dict[str, Any]:
        """The settings that identify the run: strategy and its arguments, operator, N,
        std, sampler, K, seed, the checkpoint and its SHA-256, the ldiff version."""
        strategy = self.strategy
        return {
            "strategy": type(strategy).__name__,
            "strategy_class": f"{type(strategy).__module__}.{type(strategy).__qualname__}",
            "strategy_args": {key: _plain(value) for key, value in vars(strategy).items() if not key.startswith("_")},
            "operator": repr(self.operator),
            "operator_class": f"{type(self.operator).__module__}.{type(self.operator).__qualname__}",
            "n_obs": None if self.field_shape is None else self.operator.n_obs(self.field_shape),
            "std": self.std,
            "samples": self.samples,
            "steps": self.steps,
            "corrections": self.corrections,
            "tau": self.tau,
            "seed": self.seed,
            "checkpoint": self.checkpoint,
            "checkpoint_sha256": self.checkpoint_sha256,
            "ldiff_version": ldiff.__version__,
        }

    def on_predict_epoch_end(self) -> None:
        """Compute the metrics on every rank, then log them, the settings, the
        diagnostic series (one logger step per sampler evaluation, then the metrics at
        the next step) to every logger, and the reconstruction panels to W&B (the one
        logger that takes images: they are not drawn for the others)."""
        results = self.results()
        series = self.diagnostic_series()
        if not self.trainer.loggers:
            return
        from lightning.pytorch.loggers import WandbLogger

        from ldiff.tracking import log_run

        draw = self.trainer.is_global_zero and any(isinstance(logger, WandbLogger) for logger in self.trainer.loggers)
        log_run(self.trainer.loggers, self.experiment(), results, series, self.panels() if draw else {})

    def panels(self) -> dict[str, Any]:
        """Figures of the first item (truth, observed points, posterior mean, error,
        spread; spectra), in physical units; empty without truth or normaliser."""
        if self.example is None or "x" not in self.example or self.normalizer_state is None or self.grid is None:
            return {}
        from ldiff.data.normalizer import Normalizer
        from ldiff.figures import observed_points, reconstruction_figure, spectra_figure

        physical = Normalizer.from_state(self.normalizer_state).denormalize
        truth = physical(self.example["x"].double())[0].numpy()
        recon = physical(self.example["recon"][0].double()).numpy()
        dx, dy, periodic = self.grid
        observed = observed_points(self.operator, truth.shape)
        title = f"{type(self.strategy).__name__}, {self.operator!r}, item {int(self.example['index'][0])}"
        return {
            "reconstruction": reconstruction_figure(truth, recon, observed, dx, dy, periodic, title=title),
            "spectra": spectra_figure(truth, recon, dx, dy, title=title),
        }

    def _reconstruct(self, batch: dict[str, Tensor], batch_idx: int = 0) -> dict[str, Tensor]:
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
        noise = ItemNoise([item_generator(self.seed, int(i), 2, device) for i in index.tolist()], k)
        latent = standardization(self.prior) if self.strategy.prior_coordinates else None
        if latent is not None:  # the prior runs on z = (x - m) / s: observe z instead
            y_z, std_z, scale = latent.observe(y, self.operator, self.std, field_shape)
            obs = Observation(y_z, self.operator, std_z, field_shape, scale)
        with _StepProgress(self, batch_idx) as progress:
            recon = self.strategy.reconstruct(
                denoiser,
                obs.repeat(k),
                x1,
                self.sampler(),
                generator=noise,
                callback=progress.wrap(guard),
                diagnostics=diagnostics,
            ).detach()
        if latent is not None:
            recon = latent.decode(recon)
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
        for key in ("trajectory", "time"):
            if key in batch:
                out[key] = batch[key]
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


class _StepProgress:
    """A progress bar over the sampler's steps within one batch, on rank 0 of a trainer
    whose progress bar is on (nothing otherwise)."""

    def __init__(self, module: InferenceModule, batch_idx: int):
        trainer = module._trainer
        self.enabled = trainer is not None and trainer.is_global_zero and trainer.progress_bar_callback is not None
        self.total, self.description = module.steps, f"batch {batch_idx}: sampler steps"
        self.bar = None

    def __enter__(self) -> "_StepProgress":
        if self.enabled:
            from tqdm.auto import tqdm

            self.bar = tqdm(total=self.total, desc=self.description, leave=False, dynamic_ncols=True)
        return self

    def wrap(self, callback):
        if self.bar is None:
            return callback

        def step(i, s, x_prev, x):
            self.bar.update(1)
            return callback(i, s, x_prev, x)

        return step

    def __exit__(self, *exc) -> None:
        if self.bar is not None:
            self.bar.close()


def _check_grid(grid) -> tuple[float, float, bool]:
    if len(grid) != 3:
        raise ValueError(f"grid: need (dx, dy, periodic), got {grid!r}")
    dx, dy, periodic = float(grid[0]), float(grid[1]), bool(grid[2])
    if not (math.isfinite(dx) and math.isfinite(dy) and dx > 0 and dy > 0):
        raise ValueError(f"grid: need finite positive spacings dx, dy, got {dx}, {dy}")
    return dx, dy, periodic


def _plain(value: Any) -> Any:
    """``value`` if it is a number, string, bool or None, else its repr (for configs)."""
    return value if value is None or isinstance(value, (bool, int, float, str)) else repr(value)
