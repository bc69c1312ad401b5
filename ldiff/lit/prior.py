r"""``ScorePrior``: trains an epsilon network as a diffusion prior (``ldiff fit``).

The module owns only the training logic around two plain-PyTorch pieces it receives, an
epsilon network and a VP schedule (chosen in YAML by ``class_path``):

- **Loss.** Denoising score matching in epsilon form with a weight :math:`\lambda(t)`,
  :math:`\mathcal{L} = \operatorname{mean}\, \lambda(t) (\hat\varepsilon(\mu x + \sigma\varepsilon, t) - \varepsilon)^2`,
  :math:`t \sim U(0, 1)` (:func:`ldiff.diffusion.denoise.epsilon_loss`): ``loss_weighting``
  ``"epsilon"`` (:math:`\lambda = 1`) or ``"edm"`` (:math:`\lambda = 1/c_{out}^2`, unit
  weight on the network's output at every t, which trains the Jacobian of
  :math:`\hat x` at large t where ``mmps`` needs it).
- **Optimiser.** AdamW (Loshchilov & Hutter 2019) with learning rate
  :math:`\eta_k = \eta\, f(k / K)` at optimiser step :math:`k` of
  :math:`K` = ``trainer.estimated_stepping_batches``:
  ``cosine`` :math:`f(p) = \tfrac12 (1 + \cos \pi p)` (Loshchilov & Hutter 2017),
  ``linear`` :math:`f(p) = 1 - p`, ``constant`` :math:`f(p) = 1`.
- **Weight average.** ``net`` holds the exponential moving average of the trained weights
  (:mod:`ldiff.lit.ema`), ``online`` the weights the optimiser steps. Validation and
  every later use (sampling, ``load_prior``) read ``net``; the checkpoint's
  ``state_dict`` holds both, ``net.*`` (the prior) and ``online.*`` (for exact resume).
- **Validation loss** (``val/loss``, with the training weighting; ``val/loss_epsilon``,
  unweighted, comparable across weightings) draws :math:`t` and :math:`\varepsilon` from a generator seeded by
  the batch index, so ``val/loss`` compares across epochs: it changes only with the
  weights.
- **Exact resume.** The loss's :math:`t` and :math:`\varepsilon` come from a generator of
  (run seed, epoch, batch index, rank) (:func:`ldiff.diffusion.noise.keyed_generator`),
  and the data's order and draws from :mod:`ldiff.data.order`, so a run resumed from a
  checkpoint, even one written mid-epoch, trains on exactly the draws of the run it
  continues: its final weights equal those of an uninterrupted run, bit for bit on a
  CPU. The run seed is ``torch.initial_seed()`` at the start of the run (the trainer's
  ``seed_everything``), kept in ``checkpoint["rng"]`` with the global random states
  (torch, CUDA, numpy, Python) for any other code that draws from them, such as a
  user's network with dropout; they are restored before the first resumed batch.
- **Checkpoint.** Besides Lightning's state, the checkpoint stores the data normaliser's
  state (``checkpoint["normalizer"]``) and, as hyperparameters, the network's and the
  schedule's ``class_path`` configs, plain data that :func:`ldiff.lit.checkpoint.load_prior`
  rebuilds without unpickling anything.

Gradient clipping and precision are trainer settings: ``trainer.gradient_clip_val`` in the
YAML, and ``trainer.precision: bf16-mixed`` on a GPU, which runs the network under bf16
autocast while weights, optimiser state, the EMA and the loss's ``t`` and
:math:`\varepsilon` stay float32.

References:
    Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020,
    arXiv:2006.11239.
    Loshchilov & Hutter, "SGDR: Stochastic Gradient Descent with Warm Restarts",
    ICLR 2017, arXiv:1608.03983; "Decoupled Weight Decay Regularization", ICLR 2019,
    arXiv:1711.05101.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from typing import Any, Literal, get_args

import lightning as L
import numpy as np
import torch
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor, nn

from ldiff.diffusion.denoise import LOSS_WEIGHTINGS, LossWeighting, epsilon_errors, epsilon_loss, loss_weight
from ldiff.diffusion.noise import keyed_generator
from ldiff.diffusion.latent import node_moments, node_sums
from ldiff.diffusion.precond import (
    GaussianPreconditioned,
    StandardizedGaussianPreconditioned,
    precondition_kind,
    preconditioned,
    standardization,
)
from ldiff.diffusion.schedules import CosineSchedule, Schedule
from ldiff.lit.ema import averaged_copy, check_decay, update_average
from ldiff.nets.gaussian import moment_sums, moments_from_sums
from ldiff.nets.unet import num_parameters

LRSchedule = Literal["cosine", "linear", "constant"]
LR_SCHEDULES = get_args(LRSchedule)

VAL_SEED = 0
"""Seed of the validation loss's generator; batch ``b`` uses ``VAL_SEED + b``."""


def lr_factor(kind: str, step: int, total: float) -> float:
    r"""The factor :math:`f(k/K)` on the base learning rate at optimiser step ``step`` of
    ``total`` (see the module docstring); progress is clipped at 1."""
    progress = min(step / total, 1.0)
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "linear":
        return 1.0 - progress
    return 1.0


class ScorePrior(L.LightningModule):
    """Diffusion-prior training of an epsilon network (see the module docstring).

    Args:
        net: epsilon model, ``net(x_t, t, cond) -> eps_hat`` on (B, C, H, W).
        schedule: the VP schedule that defines ``x_t``.
        lr: base learning rate of AdamW.
        weight_decay: AdamW's decoupled weight decay.
        lr_schedule: ``"cosine"``, ``"linear"`` or ``"constant"`` decay of the learning
            rate over the run's optimiser steps.
        ema_decay: decay of the weight average, in [0, 1).
        precondition: ``"unit"`` (or ``True``) wraps ``net`` in
            :class:`~ldiff.diffusion.precond.SkipPreconditioned`, ``"gaussian"`` in
            :class:`~ldiff.diffusion.precond.GaussianPreconditioned`, whose Gaussian is
            fitted to every training window when ``fit`` starts (a resumed run then
            loads the checkpoint's copy over it), ``"gaussian-node"`` in
            :class:`~ldiff.diffusion.precond.StandardizedGaussianPreconditioned`, which
            first fits the mean and std of every node and then the Gaussian of the
            standardised windows (:mod:`ldiff.diffusion.latent`; the loss is taken on
            :math:`z`, each node weighted by :math:`s^2`: the fields' denoising error),
            ``"none"`` (or ``False``) trains ``net`` as it is.
            Recorded in the checkpoint; :func:`~ldiff.lit.checkpoint.load_prior`
            rebuilds the same model.
        loss_weighting: ``"epsilon"`` or ``"edm"`` (see the module docstring).
        init_from: a prior checkpoint (``ldiff fit``'s or :func:`~ldiff.lit.checkpoint.export_prior`'s)
            to start a new run from, to train a shipped prior longer or fine-tune it on
            other data: its averaged weights (and its fitted Gaussian and
            standardisation, which are then not refitted) start both ``online`` and
            ``net``, and its normaliser replaces the one fitted to this run's data, so
            the weights see the units they were trained in. The optimiser, learning-rate
            schedule and weight average start afresh. The checkpoint must have this
            run's architecture, ``precondition`` and schedule and the data's window
            shape (else a ``ValueError`` names the file and what differs). Ignored when
            the run resumes (``--ckpt_path``), whose checkpoint holds all of it.

    Batches are dicts with ``x`` (B, C, H, W) in normalised units and optionally ``cond``
    (B, C_cond, H, W).
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: Schedule = CosineSchedule(eta=1e-3),
        lr: float = 2e-4,
        weight_decay: float = 1e-3,
        lr_schedule: LRSchedule = "cosine",
        ema_decay: float = 0.999,
        precondition: bool | Literal["unit", "gaussian", "gaussian-node", "none"] = True,
        loss_weighting: LossWeighting = "epsilon",
        init_from: str | None = None,
    ):
        super().__init__()
        if lr <= 0 or weight_decay < 0:
            raise ValueError(f"ScorePrior: need lr > 0 and weight_decay >= 0, got {lr}, {weight_decay}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"ScorePrior: lr_schedule must be one of {LR_SCHEDULES}, got {lr_schedule!r}")
        if loss_weighting not in LOSS_WEIGHTINGS:
            raise ValueError(f"ScorePrior: loss_weighting must be one of {LOSS_WEIGHTINGS}, got {loss_weighting!r}")
        self.save_hyperparameters()
        self.online = preconditioned(net, schedule, precondition)
        self.net = averaged_copy(self.online)
        self.schedule = schedule
        self.lr, self.weight_decay, self.lr_schedule = lr, weight_decay, lr_schedule
        self.ema_decay = check_decay(ema_decay)
        self.loss_weighting = loss_weighting
        self.init_from = init_from
        self.run_seed: int | None = None
        self._resumed_rng: dict[str, Any] | None = None

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        """The averaged network's epsilon: (B, C, H, W), (B,) -> (B, C, H, W)."""
        return self.net(x_t, t, cond)

    def setup(self, stage: str) -> None:
        check_channels(self.online, self.trainer.datamodule)
        if stage == "fit" and isinstance(self.online, GaussianPreconditioned) and not self.online.fitted:
            # sized now, filled in on_fit_start: a resume has loaded the checkpoint's by then
            shape = tuple(next(self._training_windows(chunk=1)).shape[1:])
            for module in (self.online, self.net):
                module.size_gaussian(shape)

    def start_from(self, path: str) -> None:
        """Load the prior checkpoint ``path`` into ``online`` and ``net`` and its normaliser
        into the data module (see ``init_from``)."""
        from ldiff.lit.checkpoint import check_state, load_prior

        prior, schedule, normalizer, hparams = load_prior(path)
        where = f"init_from {path}"
        precondition = self.hparams.get("precondition", True)
        if precondition_kind(hparams.get("precondition", False)) != precondition_kind(precondition):
            raise ValueError(f"{where}: precondition {hparams.get('precondition')!r}, this run's is {precondition!r}")
        grid = torch.linspace(0.0, 1.0, 11, dtype=torch.float64)
        for name in ("mu", "sigma"):
            ours, theirs = getattr(self.schedule, name)(grid), getattr(schedule, name)(grid)
            if not torch.allclose(ours.double(), theirs.double(), rtol=1e-6, atol=1e-9):
                raise ValueError(f"{where}: its schedule's {name}(t) differs from this run's ({type(schedule).__name__} against {type(self.schedule).__name__})")
        state = prior.state_dict()
        check_state(self.online, state, where)  # setup sized the Gaussian to this run's windows: checked too
        for module in (self.online, self.net):
            module.load_state_dict(state)
        datamodule_normalizer = getattr(self.trainer.datamodule, "normalizer", None)
        if datamodule_normalizer is not None:
            datamodule_normalizer.load_state_dict(normalizer)
        rank_zero_info(f"ScorePrior: starting from {path} (its averaged weights, Gaussian and normaliser)")

    def _training_windows(self, **kwargs: Any) -> Iterator[Tensor]:
        """The data module's ``training_windows(**kwargs)``; ``ValueError`` if it has none."""
        datamodule = self.trainer.datamodule
        windows = getattr(datamodule, "training_windows", None)
        if windows is None:
            raise ValueError(f"ScorePrior: precondition 'gaussian' needs a data module with training_windows(), not a {type(datamodule).__name__}")
        return windows(**kwargs)

    def fit_gaussian(self) -> None:
        """Fit the Gaussian of ``precondition="gaussian"`` (mean field, stationary
        covariance) to every training window (the data module's ``training_windows()``,
        streamed in chunks), in the normalised units the network sees. Under DDP each rank sums its shard of the
        windows (:func:`~ldiff.nets.gaussian.moment_sums`) and the sums are all-reduced,
        so every rank holds the fit of all of them, computed once. For
        ``precondition="gaussian-node"`` a first such pass fits every node's mean and
        std (:func:`~ldiff.diffusion.latent.node_sums`) and the Gaussian is then fitted
        to the standardised windows."""
        shape = tuple(self.online.power.shape)
        if isinstance(self.online, StandardizedGaussianPreconditioned):
            node_mean, node_scale = node_moments(*self._all_reduced(node_sums, shape))
            for module in (self.online, self.net):
                module.set_standardization(node_mean, node_scale)
        square, total, count = self._all_reduced(moment_sums, shape, self._coordinates)
        power, mean = moments_from_sums(square, total, count)
        for module in (self.online, self.net):
            module.set_gaussian(power, mean)
        rank_zero_info(f"ScorePrior: Gaussian skip term fitted to the {count:,} training windows ({tuple(power.shape)})")

    def _all_reduced(self, sums, shape: tuple[int, int, int], transform=None) -> tuple[Tensor, Tensor, int]:
        """``sums(chunks, shape=shape)`` (two float64 tensors and a count) of this rank's
        shard of the training windows, each chunk mapped by ``transform`` if given, summed
        over every rank."""
        rank, replicas = self.global_rank, self.trainer.world_size
        chunks = self._training_windows(rank=rank, replicas=replicas)
        chunks = chunks if transform is None else map(transform, chunks)
        first, second, count = sums(chunks, shape=shape)
        if replicas > 1:
            reduce = self.trainer.strategy.reduce
            first, second = (reduce(t.to(self.device), reduce_op="sum").cpu() for t in (first, second))
            count = int(reduce(torch.tensor(float(count), dtype=torch.float64, device=self.device), reduce_op="sum").item())
        return first, second, count

    def on_fit_start(self) -> None:
        # after a resume's restore (trainer.ckpt_path is set by then), before the Gaussian's fit
        if self.init_from is not None and self.trainer.ckpt_path is None:
            self.start_from(self.init_from)
        if isinstance(self.online, GaussianPreconditioned) and not self.online.fitted:
            self.fit_gaussian()  # a resume restored its checkpoint's Gaussian instead
        count = num_parameters(self.online)
        rank_zero_info(f"ScorePrior: {type(self.online).__name__} with {count:,} parameters")
        for logger in self.loggers:
            logger.log_hyperparams({"parameters": count})

    def on_train_start(self) -> None:
        if self.run_seed is None:
            self.run_seed = torch.initial_seed()

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        if self._resumed_rng is not None:  # the first batch after a resume
            set_rng_states(self._resumed_rng)
            self._resumed_rng = None

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        x = self._coordinates(batch["x"])
        generator = keyed_generator(self.run_seed, self.current_epoch, batch_idx, self.global_rank, device=x.device)
        loss = epsilon_loss(self.online, x, self.schedule, batch.get("cond"), generator, self.loss_weighting, self._node_weight())
        self.log("train/loss", loss, prog_bar=True, batch_size=x.shape[0])
        self.log("train/lr", self.trainer.optimizers[0].param_groups[0]["lr"], batch_size=x.shape[0])
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._log_held_out("val", batch, batch_idx, prog_bar=True)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self._log_held_out("test", batch, batch_idx)

    def _log_held_out(self, stage: str, batch: dict[str, Tensor], batch_idx: int, prog_bar: bool = False) -> Tensor:
        loss, unweighted = self.held_out_loss(batch, batch_idx)
        size = batch["x"].shape[0]
        self.log(f"{stage}/loss", loss, prog_bar=prog_bar, batch_size=size, sync_dist=True)
        self.log(f"{stage}/loss_epsilon", unweighted, batch_size=size, sync_dist=True)
        return loss

    def held_out_loss(self, batch: dict[str, Tensor], batch_idx: int) -> tuple[Tensor, Tensor]:
        """The averaged network's loss, weighted as in training and unweighted, with ``t``
        and ``eps`` drawn from a generator seeded ``VAL_SEED + batch_idx``: a function of
        the weights and the batch only."""
        x = self._coordinates(batch["x"])
        generator = torch.Generator(device=x.device).manual_seed(VAL_SEED + batch_idx)
        t, err = epsilon_errors(self.net, x, self.schedule, batch.get("cond"), generator, self._node_weight())
        return (loss_weight(self.loss_weighting, self.schedule, t) * err).mean(), err.mean()

    def _node_weight(self) -> Tensor | None:
        r"""The loss's weight per node: :math:`s^2 / \operatorname{mean} s^2` for a prior on
        standardised coordinates, so that it trains on the fields' denoising error (the
        standardisation preconditions the model, it does not re-weight the objective
        toward the nodes where the fields hardly vary); None otherwise."""
        latent = standardization(self.online)
        return None if latent is None else latent.scale.square() / latent.scale.square().mean()

    def _coordinates(self, x: Tensor) -> Tensor:
        """Fields ``x`` (B, C, H, W) in the coordinates the network runs on (standardised
        for ``precondition="gaussian-node"``, else as they are)."""
        latent = standardization(self.online)
        return x if latent is None else latent.encode(x)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        super().optimizer_step(*args, **kwargs)
        update_average(self.net, self.online, self.ema_decay)

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(self.online.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        total = self.trainer.estimated_stepping_batches
        if self.lr_schedule != "constant" and not math.isfinite(total):
            raise ValueError(
                f"ScorePrior: lr_schedule {self.lr_schedule!r} needs a finite run: set trainer.max_epochs or trainer.max_steps"
            )
        kind = self.lr_schedule
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(kind, step, total))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        for key, value in checkpoint["hyper_parameters"].items():
            if not is_plain(value):
                raise ValueError(
                    f"ScorePrior: hyperparameter '{key}' is a {type(value).__name__} object, not plain data; "
                    "build ScorePrior from a class_path config (ldiff fit) so the checkpoint can rebuild it"
                )
        normalizer = getattr(self.trainer.datamodule, "normalizer", None)
        if normalizer is None:
            raise ValueError("ScorePrior: the data module has no normalizer to store in the checkpoint")
        checkpoint["normalizer"] = normalizer.state_dict()
        checkpoint["rng"] = {"seed": self.run_seed, **rng_states()}

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Refuse, naming the parameter, weights of another architecture (before
        Lightning's ``load_state_dict`` raises a size mismatch), then restore the
        normaliser."""
        from ldiff.lit.checkpoint import check_state

        check_state(self, checkpoint.get("state_dict", {}), f"checkpoint {self.trainer.ckpt_path}", prefix="")
        normalizer = getattr(self.trainer.datamodule, "normalizer", None)
        if normalizer is not None and "normalizer" in checkpoint:
            normalizer.load_state_dict(checkpoint["normalizer"])
        if "rng" in checkpoint:
            self.run_seed, self._resumed_rng = checkpoint["rng"]["seed"], checkpoint["rng"]


def rng_states() -> dict[str, Any]:
    """The global random states, as data ``torch.load(weights_only=True)`` reads back:
    torch's (CPU, and each CUDA device's), numpy's legacy generator and Python's."""
    kind, key, pos, has_gauss, gauss = np.random.get_state()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }


def set_rng_states(states: dict[str, Any]) -> None:
    """Restore what :func:`rng_states` returned (CUDA states only onto as many devices)."""
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"][: torch.cuda.device_count()])
    kind, key, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, key.numpy().astype(np.uint32), pos, has_gauss, gauss))
    random.setstate(states["python"])


def check_channels(net: nn.Module, datamodule: Any) -> None:
    """``ValueError`` naming both numbers when the network's ``in_channels`` or
    ``cond_channels`` differ from the data module's ``channels`` or ``cond_channels``,
    and naming the data file when its grid is too small for the network's levels
    (``check_size``) or, for a prior with a fitted Gaussian skip term, not the grid that
    term was fitted on (its power spectrum is the training grid's); objects that do not
    declare these are not checked."""
    check_size = getattr(net, "check_size", None) or getattr(getattr(net, "net", None), "check_size", None)
    coords = getattr(datamodule, "coords", None)
    power = getattr(net, "power", None) if getattr(net, "fitted", False) else None
    if power is not None and power.dim() == 3 and coords is not None:
        grid, fitted = (coords["y"].size, coords["x"].size), tuple(power.shape[1:])
        if grid != fitted:
            raise ValueError(
                f"{datamodule.path}: a grid of {grid[0]} x {grid[1]} nodes (y, x); this prior's Gaussian skip term was fitted "
                f"on {fitted[0]} x {fitted[1]}, and the prior runs on that grid only (regrid the data, or train a prior on it)"
            )
    if check_size is not None and coords is not None:
        try:
            check_size(coords["y"].size, coords["x"].size, what="the grid")
        except ValueError as error:
            raise ValueError(f"{datamodule.path}: {error} (model.net.init_args.widths sets the levels)") from None
    pairs = (("in_channels", "channels"), ("cond_channels", "cond_channels"))
    for net_key, data_key in pairs:
        expected, given = getattr(net, net_key, None), getattr(datamodule, data_key, None)
        if expected is not None and given is not None and expected != given:
            raise ValueError(
                f"network {net_key} {expected} vs data {data_key} {given} "
                f"(2 channels per frame; data window {getattr(datamodule, 'window', '?')})"
            )


def is_plain(value: Any) -> bool:
    """True for data that ``torch.load(weights_only=True)`` reads back: None, bool, int,
    float, str, and lists, tuples and str-keyed dicts of them."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(is_plain(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and is_plain(v) for k, v in value.items())
    return False
