r"""Benchmark: ``ldiff predict`` with ``dps-sum`` against SDA's algorithm in plain PyTorch.

**The reference** (:func:`sda_loop`) is SDA's predictor-corrector with its
``GaussianScore``, written here from the formulas of ``DESIGN.md`` and nothing else:
the cosine schedule :math:`\mu = \cos(\arccos(\sqrt\eta)\, t)^2`,
:math:`\sigma = \sqrt{1 - \mu^2 + \eta^2}`; the guided epsilon
:math:`\tilde\varepsilon = \hat\varepsilon - \sigma \nabla_{x_t} \log p(y \mid x_t)` with
:math:`\log p = -\tfrac12 \sum (y - A\hat x)^2 / (s^2 + \gamma(\sigma/\mu)^2)`; the DDIM
predictor and the Langevin corrector. No diagnostics, no guard, no validation.

**ldiff** is ``InferenceModule.predict_step`` on the same network, truth, steps,
corrections, observation noise, initial noise and corrector noise: it draws the
observations, validates them, records the diagnostics of every evaluation, guards
against divergence and labels regimes. Both produce the same samples (the report gives
the largest difference), so the time ratio is the price of everything ``ldiff`` adds.
Target: at most 1.05.

**Fast paths** (opt-in, measured in the same rounds on the same problem):

- *channels-last*: the network's weights in ``torch.channels_last`` memory format, which
  some convolution kernels prefer; the samples change only by rounding.
- *isotropic-Jacobian guidance* (:class:`IsotropicJacobianDPS`): ``dps-sum`` with the
  denoiser's Jacobian :math:`J = \partial\hat x/\partial x_t` replaced by
  :math:`c\, I`, :math:`c = \mu/(\mu^2 + \sigma^2)`, the exact Jacobian for a white,
  unit-variance prior (data normalised to unit variance): the likelihood's gradient is
  taken with respect to the Tweedie estimate and not through the network (the isotropic
  covariance of Song et al.'s PiGDM, without its VJP). One forward pass per evaluation
  and no graph. It changes the posterior approximation, so its effect on the
  reconstruction error is measured where the exact answer is known: on the stationary
  Gaussian prior (:class:`~ldiff.nets.gaussian.GaussianPrior`: exact epsilon, exact
  posterior mean), against ``dps-sum`` with the same seeds. (The plain identity
  :math:`J = I/\mu` diverges at once: at ``t = 1`` it over-states the true Jacobian
  :math:`\approx \mu` by a factor :math:`1/\mu^2 = 10^6`.)

References:
    Rozet & Louppe, "Score-based Data Assimilation", NeurIPS 2023, arXiv:2306.10574.
    Song, Vahdat, Mardani & Kautz, "Pseudoinverse-Guided Diffusion Models for Inverse
    Problems", ICLR 2023.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmarks import (
    KOLMOGOROV,
    KOLMOGOROV_SDA,
    TINY,
    NetSpec,
    interleaved_minimum,
    machine_line,
    markdown_table,
    number,
)
from ldiff.diffusion.denoise import Denoiser
from ldiff.diffusion.sampler import PredictorCorrector
from ldiff.diffusion.schedules import CosineSchedule
from ldiff.guidance.base import Observation
from ldiff.guidance.base import check_state, record
from ldiff.guidance.dps_sum import DPSSum
from ldiff.lit.inference import InferenceModule, item_generator
from ldiff.nets.gaussian import GaussianPrior
from ldiff.observe import Subsample, observe

ETA = 1e-3
GAMMA = 1.0
"""SDA's gamma for the timed runs: with random U-Nets and few steps, gamma 1e-2 makes
dps-sum diverge (and the divergence guard then changes ``ldiff``'s samples)."""
ORACLE_GAMMA = 1e-2
"""gamma on the Gaussian oracle (64 steps): ``DPSSum``'s default."""
STD = 0.1
STRIDE = 2
SEED = 0
TAU = 1.0


def sda_loop(
    net: nn.Module,
    y: Tensor,
    x1: Tensor,
    steps: int,
    corrections: int,
    generators: list[torch.Generator],
    stride: int = STRIDE,
    std: float = STD,
    gamma: float = GAMMA,
    eta: float = ETA,
    tau: float = TAU,
) -> Tensor:
    """SDA's predictor-corrector with ``GaussianScore`` on ``A x = x[..., ::stride, ::stride]``.

    Args:
        net: epsilon model ``net(x_t, t) -> eps_hat``.
        y: observations, shape (B, C, ceil(H / stride), ceil(W / stride)).
        x1: initial state at t = 1, shape (B, C, H, W).
        generators: the corrector's noise, one generator per item (row of ``x``).

    Returns:
        The state at t = 0, shape (B, C, H, W).
    """

    def mu(t: Tensor) -> Tensor:
        return torch.cos(math.acos(math.sqrt(eta)) * t) ** 2

    def sigma(t: Tensor) -> Tensor:
        return torch.sqrt(1 - mu(t) ** 2 + eta**2)

    def guided(x: Tensor, t: Tensor) -> Tensor:
        x = x.detach().requires_grad_(True)
        with torch.enable_grad():
            eps = net(x, t)
            x_hat = (x - sigma(t) * eps) / mu(t)
            var = std**2 + gamma * (sigma(t) / mu(t)) ** 2
            log_p = -0.5 * ((y - x_hat[..., ::stride, ::stride]) ** 2 / var).sum()
            (score,) = torch.autograd.grad(log_p, x)
        return eps.detach() - sigma(t) * score

    x = x1
    grid = torch.linspace(1.0, 0.0, steps + 1)
    for i in range(steps):
        t, s = grid[i], grid[i + 1]
        r = mu(s) / mu(t)
        x = r * x + (sigma(s) - r * sigma(t)) * guided(x, t)
        for _ in range(corrections):
            eps = guided(x, s)
            z = torch.cat([torch.randn((1, *x.shape[1:]), generator=g) for g in generators])
            delta = tau / eps.square().mean(dim=(1, 2, 3), keepdim=True)
            x = x - (delta * eps + torch.sqrt(2 * delta) * z) * sigma(s)
    return x


class IsotropicJacobianDPS(DPSSum):
    r"""``dps-sum`` with :math:`J = \partial\hat x/\partial x_t` replaced by :math:`c I`,
    :math:`c = \mu/(\mu^2 + \sigma^2)`: :math:`g = c\, A^T (y - A\hat x) / \mathrm{var}`,
    :math:`\tilde\varepsilon = \hat\varepsilon - \sigma g`. One forward pass without graph per
    evaluation (see the module docstring)."""

    name = "dps-sum (isotropic Jacobian)"

    def guided_eps(self, denoiser, x_t, t, obs, diagnostics):
        check_state(x_t, obs)
        var, gamma_share = self.variance(denoiser.schedule, obs, t)
        mu, sigma = denoiser.schedule.coefficients(t, x_t)
        with torch.no_grad():
            eps_hat, x_hat = denoiser(x_t, t)
        jacobian = mu / (mu**2 + sigma**2)
        correction = sigma * jacobian * obs.op.adjoint((obs.y - obs.op(x_hat)) / var, obs.field_shape)
        record(diagnostics, t, eps_hat, correction, gamma_share)
        return eps_hat - correction


def module(net: nn.Module, steps: int, corrections: int, strategy: DPSSum | None = None) -> InferenceModule:
    """The ``InferenceModule`` that :func:`sda_loop` reproduces (one sample per item)."""
    return InferenceModule.from_prior(
        net, CosineSchedule(ETA), strategy=strategy or DPSSum(GAMMA), operator=Subsample(STRIDE),
        std=STD, samples=1, steps=steps, corrections=corrections, tau=TAU, seed=SEED,
    )


def reference_inputs(batch: int, field_shape: tuple[int, ...]) -> tuple[Tensor, list[torch.Generator]]:
    """The initial state and the corrector generators ``predict_step`` uses for items 0..B-1."""
    x1 = torch.cat([torch.randn((1, *field_shape), generator=item_generator(SEED, i, 1)) for i in range(batch)])
    return x1, [item_generator(SEED, i, 2) for i in range(batch)]


@dataclass
class Comparison:
    """Seconds per run of the reference, ``ldiff`` and its fast paths, and sample differences."""

    spec: NetSpec
    batch: int
    steps: int
    corrections: int
    seconds: dict[str, float]
    difference: dict[str, float]


def compare(spec: NetSpec, batch: int, steps: int, corrections: int, repeats: int) -> Comparison:
    """Time the reference, ``ldiff``, channels-last and isotropic-Jacobian guidance in
    interleaved rounds on ``batch`` random truths; ``difference`` is each one's largest
    absolute difference from the reference's samples, relative to their largest value."""
    truth = torch.randn((batch, *spec.field_shape), generator=torch.Generator().manual_seed(1))
    data = {"x": truth, "index": torch.arange(batch)}
    schedule = CosineSchedule(ETA)
    net = spec.prior(schedule)
    modules = {
        "ldiff": module(net, steps, corrections),
        "ldiff, channels-last": module(spec.prior(schedule).to(memory_format=torch.channels_last), steps, corrections),
        "ldiff, isotropic Jacobian": module(net, steps, corrections, IsotropicJacobianDPS(GAMMA)),
    }
    y = module(net, 1, 0).predict_step(data)["y"]  # the observations do not depend on the steps
    samples: dict[str, Tensor] = {}

    def reference() -> None:
        x1, generators = reference_inputs(batch, spec.field_shape)
        samples["reference"] = sda_loop(net, y, x1, steps, corrections, generators)

    def predict(name: str) -> None:
        samples[name] = modules[name].predict_step(data)["recon"][:, 0]

    runs = {"reference": reference} | {name: lambda name=name: predict(name) for name in modules}
    seconds = interleaved_minimum(runs, repeats)
    scale = samples["reference"].abs().max()
    difference = {name: float((x - samples["reference"]).abs().max() / scale) for name, x in samples.items()}
    return Comparison(spec, batch, steps, corrections, seconds, difference)


def power_law_prior(field_shape: tuple[int, int, int], slope: float = 4.0, k0: float = 2.0) -> GaussianPrior:
    r"""A stationary Gaussian prior with spectrum :math:`(1 + |k|^2/k_0^2)^{-s/2}`, unit
    variance per value: most energy in a few large scales, like a turbulent field."""
    c, h, w = field_shape
    ky = torch.fft.fftfreq(h, 1.0 / h, dtype=torch.float64)
    kx = torch.fft.fftfreq(w, 1.0 / w, dtype=torch.float64)
    power = (1 + (ky[:, None] ** 2 + kx[None, :] ** 2) / k0**2) ** (-slope / 2)
    return GaussianPrior(CosineSchedule(ETA), (power / power.mean()).expand(c, h, w).clone(), torch.zeros(c))


@dataclass
class Accuracy:
    """Errors of a strategy on the Gaussian oracle, averaged over observation sets."""

    mean_error: float
    residual: float


def oracle_accuracy(strategy: DPSSum, field_shape: tuple[int, int, int], batch: int, samples: int, steps: int, stride: int) -> Accuracy:
    r"""``mean_error``: :math:`\|\bar x - m_{post}\| / \|m_{post}\|` of the mean of ``samples``
    samples against the exact posterior mean; ``residual``: root-mean-square of
    :math:`y - A x` over the observations, per sample, in units of the noise std (about 1 for
    exact posterior samples)."""
    prior = power_law_prior(field_shape)
    generator = torch.Generator().manual_seed(3)
    op = Subsample(stride)
    truth = prior.sample(batch, generator)
    y = observe(truth, op, STD, generator)
    exact = prior.posterior_mean(y, op, STD)
    obs = Observation(y, op, STD, field_shape).repeat(samples)
    x1 = torch.randn((batch * samples, *field_shape), generator=generator)
    sampler = PredictorCorrector(prior.schedule, steps=steps)
    x = strategy.reconstruct(Denoiser(prior, prior.schedule), obs, x1, sampler, generator).detach()
    mean = x.unflatten(0, (batch, samples)).mean(dim=1)
    mean_error = (mean - exact).flatten(1).norm(dim=1) / exact.flatten(1).norm(dim=1)
    residual = (obs.y - op(x)).flatten(1).square().mean(dim=1).sqrt() / STD
    return Accuracy(float(mean_error.mean()), float(residual.mean()))


def comparison_table(c: Comparison) -> str:
    reference, ldiff = c.seconds["reference"], c.seconds["ldiff"]
    rows = []
    for name, seconds in c.seconds.items():
        met = "—"
        if name == "ldiff":
            met = "yes" if seconds / reference <= 1.05 else f"no: {100 * (seconds / reference - 1):.0f} % over the reference"
        rows.append([name, number(seconds), number(seconds / reference), number(ldiff / seconds), f"{c.difference[name]:.1e}", met])
    columns = ["run", "seconds", "x reference", "speed-up over ldiff", "sample difference", "<= 1.05 x reference"]
    return markdown_table(columns, rows)


def accuracy_table(accuracy: dict[tuple[int, str], Accuracy]) -> str:
    rows = [[f"`Subsample({stride})`", name, f"{a.mean_error:.3f}", number(a.residual)] for (stride, name), a in accuracy.items()]
    columns = ["observations", "guidance", "posterior-mean error (relative)", "residual rms / noise std"]
    return markdown_table(columns, rows)


def report(comparisons: list[Comparison], accuracy: dict[tuple[int, str], Accuracy], oracle: str, note: str) -> str:
    parts = [
        "# ldiff predict against SDA's algorithm in plain PyTorch",
        "",
        machine_line(),
        "",
        "`reference`: SDA's predictor-corrector with `GaussianScore`, written from the formulas "
        "(`benchmarks/bench_reference.py`, `sda_loop`); `ldiff`: `InferenceModule.predict_step` "
        "with `dps-sum`, same network, truth, observations, steps, corrections and noises "
        f"(`Subsample({STRIDE})`, std {STD}, gamma {GAMMA}, cosine eta {ETA}); random U-Nets with a "
        "white-noise skip (`benchmarks.WhiteNoiseSkip`) stand in for trained priors. "
        "*Sample difference*: the largest absolute difference between a run's samples and the "
        "reference's, over the reference's largest absolute value. " + note,
    ]
    for c in comparisons:
        parts += [
            "",
            f"## {c.spec.label()}: batch {c.batch}, {c.steps} steps, {c.corrections} correction(s)",
            "",
            comparison_table(c),
        ]
    parts += [
        "",
        "## Effect of the fast paths on the reconstruction",
        "",
        (
            "channels-last changes the samples only by rounding (the tables above). Isotropic-Jacobian "
            "guidance changes the method; its error is measured on the exact Gaussian oracle "
            f"({oracle}). Posterior-mean error: the mean of the samples against the exact posterior "
            "mean, relative; residual: the root-mean-square of `y - A x` over the observations, "
            "per sample, in units of the noise std."
        ),
        "",
        accuracy_table(accuracy),
    ]
    return "\n".join(parts) + "\n"


def run(quick: bool = False) -> str:
    """Measure and return the report (``quick``: a tiny network, seconds)."""
    strategies = {"dps-sum": DPSSum(ORACLE_GAMMA), "dps-sum, isotropic Jacobian": IsotropicJacobianDPS(ORACLE_GAMMA)}
    if quick:
        comparisons = [compare(TINY, 2, 8, 1, 2)]
        shape, batch, samples, steps = (2, 16, 16), 2, 4, 32
        note = "Quick run: a tiny network, for a smoke test only."
    else:
        comparisons = [compare(KOLMOGOROV, 2, 16, 1, 3), compare(KOLMOGOROV_SDA, 1, 8, 0, 2)]
        shape, batch, samples, steps = (2, 32, 32), 4, 16, 64
        note = ""
    accuracy = {
        (stride, name): oracle_accuracy(s, shape, batch, samples, steps, stride)
        for stride in (4, 2)
        for name, s in strategies.items()
    }
    oracle = (
        f"power-law spectrum, fields {' x '.join(map(str, shape))}, std {STD}, {batch} observation "
        f"sets x {samples} samples, {steps} steps, no correction, gamma {ORACLE_GAMMA}"
    )
    return report(comparisons, accuracy, oracle, note)
