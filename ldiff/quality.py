"""How good is a prior? Unconditional samples against data, in physical units.

Two measured numbers go into every model card:

- the kinetic-energy spectrum ratio :math:`E_{samples}(k) / E_{data}(k)` for shells
  :math:`1 \\le k \\le k_{max}` (target: within a factor 1.5 everywhere);
- the vorticity std ratio :math:`\\operatorname{std}(\\omega_{samples}) /
  \\operatorname{std}(\\omega_{data})` (target: within 20 %).

Samples come from SDA's predictor-corrector with the prior's own epsilon; spectra and
vorticity use :mod:`ldiff.physics` on the data's grid.

A third measurement, :func:`jacobian_agreement` (``ldiff quality --jacobian``), tells how
far up in t the network's Tweedie covariance agrees with the prior's Gaussian fit: the
threshold of ``mmps``'s known-covariance regime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ldiff.data.normalizer import Normalizer
from ldiff.diffusion.precond import standardization
from ldiff.diffusion.sampler import PredictorCorrector
from ldiff.diffusion.schedules import Schedule
from ldiff.observe import Operator
from ldiff.physics import energy_spectrum, vorticity, wake_fluctuation, wake_strouhal


@dataclass
class Quality:
    """Measured prior quality (see the module docstring)."""

    samples: int
    steps: int
    k_max: int
    spectrum_ratio_min: float
    spectrum_ratio_max: float
    spectrum_ratio: list[float]  # k = 1 .. k_max
    vorticity_std_data: float
    vorticity_std_samples: float
    vorticity_std_ratio: float
    velocity_std_data: float
    velocity_std_samples: float
    strouhal_samples: float | None = None  # cylinder-wake windows: mean St of the resolved windows
    strouhal_data: float | None = None
    strouhal_unresolved: int | None = None  # sample windows with no resolved shedding peak
    inflow_fluctuation_samples: float | None = None  # cylinder-wake windows: rms unsteadiness ahead of the body (physical units)
    inflow_fluctuation_data: float | None = None
    wake_fluctuation_samples: float | None = None  # ... and behind it
    wake_fluctuation_data: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


@torch.no_grad()
def measure(
    model: nn.Module,
    schedule: Schedule,
    normalizer: dict[str, Tensor],
    data: Tensor,
    dx: float,
    dy: float,
    periodic: bool,
    samples: int = 64,
    steps: int = 64,
    k_max: int = 16,
    batch: int = 16,
    seed: int = 0,
    cond: Tensor | None = None,
    wake: dict | None = None,
) -> Quality:
    """Sample the prior unconditionally and compare with ``data``.

    Args:
        model: epsilon model (normalised units).
        data: reference fields, shape (N, C, H, W), in normalised units.
        dx, dy, periodic: the grid.
        cond: condition channels of every sample, shape (C_cond, H, W), or None.
        wake: for windows of a cylinder wake, :func:`ldiff.physics.wake_geometry`'s
            arguments: adds the Strouhal numbers of the sample and data windows
            (:func:`~ldiff.physics.wake_strouhal`) and their unsteadiness ahead of and
            behind the cylinder (:func:`~ldiff.physics.wake_fluctuation`).
    """
    generator = torch.Generator().manual_seed(seed)
    sampler = PredictorCorrector(schedule, steps)
    drawn = []
    for start in range(0, samples, batch):
        x1 = torch.randn((min(batch, samples - start), *data.shape[1:]), generator=generator)
        c = None if cond is None else cond.expand(x1.shape[0], *cond.shape)
        drawn.append(sampler.sample(lambda x, t: model(x, t, c), x1, generator))
    latent = standardization(model)
    drawn = torch.cat(drawn) if latent is None else latent.decode(torch.cat(drawn))
    to_physical = Normalizer.from_state(normalizer).denormalize
    fields = {name: to_physical(x.double()) for name, x in (("samples", drawn), ("data", data))}
    spectra = {name: energy_spectrum(x, dx, dy)[1].mean(dim=(0, 1)) for name, x in fields.items()}
    ratio = (spectra["samples"][1 : k_max + 1] / spectra["data"][1 : k_max + 1]).tolist()
    w = {name: vorticity(x, dx, dy, periodic).std().item() for name, x in fields.items()}
    # per-component std over every sample and grid point, root-mean-squared over components
    velocity = {name: x.transpose(0, 1).flatten(1).var(dim=1).mean().sqrt().item() for name, x in fields.items()}
    wake_stats = {}
    if wake is not None:
        st = {name: wake_strouhal(x, **wake, strict=False) for name, x in fields.items()}
        wake_stats = {
            "strouhal_samples": st["samples"].nanmean().item(), "strouhal_data": st["data"].nanmean().item(),
            "strouhal_unresolved": int(st["samples"].isnan().sum()),
        }  # fmt: skip
        for name, x in fields.items():
            for band, value in wake_fluctuation(x, **wake).items():
                wake_stats[f"{band}_fluctuation_{name}"] = value
    return Quality(
        samples=samples,
        steps=steps,
        k_max=k_max,
        spectrum_ratio_min=min(ratio),
        spectrum_ratio_max=max(ratio),
        spectrum_ratio=[round(r, 4) for r in ratio],
        vorticity_std_data=w["data"],
        vorticity_std_samples=w["samples"],
        vorticity_std_ratio=w["samples"] / w["data"],
        velocity_std_data=velocity["data"],
        velocity_std_samples=velocity["samples"],
        **wake_stats,
    )


@dataclass
class JacobianAgreement:
    r"""The network's Tweedie covariance against the Gaussian fit's, over t (see
    :func:`jacobian_agreement`).

    Attributes:
        t, sigma_bar: the diffusion times and their :math:`\sigma/\mu`, ascending in t.
        operators: the operator names, in column order.
        network, gaussian: mean Rayleigh quotients, ``[t][operator]``.
        negative: fraction of the network's quotients that are <= 0, ``[t][operator]``.
        agrees_up_to_t, agrees_up_to_sigma_bar: the largest t (and its :math:`\sigma/\mu`)
            such that every quotient at that t and below is positive, and at that t within
            a factor ``tolerance`` of the Gaussian's at every operator; None if there is
            none. (At small t a trained network may legitimately differ from the
            Gaussian, which is not the data; positivity is what ``mmps`` cannot do without.)
        tolerance: that factor.
    """

    t: list[float]
    sigma_bar: list[float]
    operators: list[str]
    network: list[list[float]]
    gaussian: list[list[float]]
    negative: list[list[float]]
    agrees_up_to_t: float | None
    agrees_up_to_sigma_bar: float | None
    tolerance: float

    def as_dict(self) -> dict:
        return asdict(self)


def jacobian_agreement(
    model: nn.Module,
    schedule: Schedule,
    power: Tensor,
    data: Tensor,
    operators: dict[str, Operator],
    times: list[float],
    probes: int = 4,
    tolerance: float = 2.0,
    seed: int = 0,
    cond: Tensor | None = None,
) -> JacobianAgreement:
    r"""Rayleigh quotients :math:`q = e^T A V A^T e / |e|^2` of the network's Tweedie
    covariance :math:`V = (\sigma^2/\mu)\, \partial\hat x/\partial x_t` at noised data
    :math:`x_t = \mu x + \sigma\varepsilon`, against those of the stationary Gaussian fit's
    :math:`V_G = F^H \operatorname{diag}(\sigma^2 P/(\mu^2 P + \sigma^2)) F`, for random
    probes :math:`e \sim \mathcal{N}(0, I)` in observation space.

    This is what ``mmps`` relies on: its solve needs :math:`A V A^T` positive definite and
    close to right. As :math:`\sigma/\mu \to \infty` the true :math:`\mathbb{V}[x \mid x_t]`
    tends to the data covariance, which the Gaussian fit holds exactly for stationary
    data, so disagreement at large t measures the network's Jacobian error; at small t
    both tend to :math:`(\sigma/\mu)^2 I`. The largest t up to which they agree sets
    ``MMPS(known_above=...)``.

    Args:
        model: epsilon model (normalised units).
        power: the Gaussian fit's eigenvalues, shape (C, H, W) (:class:`GaussianPrior`).
        data: fields, shape (B, C, H, W), normalised units.
        operators: name -> observation operator.
        times: diffusion times to probe.
        probes: probes per field and time.
        cond: condition channels (B, C_cond, H, W), or None.
    """
    from ldiff.nets.gaussian import tweedie_cov

    generator = torch.Generator().manual_seed(seed)
    times = sorted(float(t) for t in times)
    network, gaussian, negative = [], [], []
    field = tuple(data.shape[1:])
    for time in times:
        t = torch.full((data.shape[0],), time, dtype=data.dtype)
        mu, sigma = schedule.coefficients(t, data)
        eps = torch.randn(data.shape, generator=generator, dtype=data.dtype)
        x = (mu * data + sigma * eps).requires_grad_(True)
        with torch.enable_grad():
            x_hat = (x - sigma * model(x, t, cond)) / mu
        row_net, row_gauss, row_neg = [], [], []
        for op in operators.values():
            q_net, q_gauss = [], []
            for _ in range(probes):
                e = torch.randn(op(data).shape, generator=generator, dtype=data.dtype)
                u = op.adjoint(e, field)
                (ju,) = torch.autograd.grad(x_hat, x, u, retain_graph=True)
                scale = e.flatten(1).square().sum(dim=1)
                q_net.append(((sigma**2 / mu) * ju * u).flatten(1).sum(dim=1) / scale)
                q_gauss.append((tweedie_cov(power, u, mu, sigma) * u).flatten(1).sum(dim=1) / scale)
            q_net, q_gauss = torch.cat(q_net), torch.cat(q_gauss)
            row_net.append(q_net.mean().item())
            row_gauss.append(q_gauss.mean().item())
            row_neg.append((q_net <= 0).float().mean().item())
        network.append(row_net)
        gaussian.append(row_gauss)
        negative.append(row_neg)
    # scan up in t while the network's covariance stays positive on every probe; the
    # threshold is the last time there where it also agrees with the Gaussian fit
    agrees = None
    for i, time in enumerate(times):
        if any(share > 0 for share in negative[i]):
            break
        if all(1 / tolerance <= network[i][j] / gaussian[i][j] <= tolerance for j in range(len(operators))):
            agrees = time
    return JacobianAgreement(
        t=times,
        sigma_bar=[float(schedule.sigma_bar(t)) for t in times],
        operators=list(operators),
        network=network,
        gaussian=gaussian,
        negative=negative,
        agrees_up_to_t=agrees,
        agrees_up_to_sigma_bar=None if agrees is None else float(schedule.sigma_bar(agrees)),
        tolerance=tolerance,
    )
