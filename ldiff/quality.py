"""How good is a prior? Unconditional samples against data, in physical units.

Two measured numbers go into every model card:

- the kinetic-energy spectrum ratio :math:`E_{samples}(k) / E_{data}(k)` for shells
  :math:`1 \\le k \\le k_{max}` (target: within a factor 1.5 everywhere);
- the vorticity std ratio :math:`\\operatorname{std}(\\omega_{samples}) /
  \\operatorname{std}(\\omega_{data})` (target: within 20 %).

Samples come from SDA's predictor-corrector with the prior's own epsilon; spectra and
vorticity use :mod:`ldiff.physics` on the data's grid.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import Tensor, nn

from ldiff.data.normalizer import Normalizer
from ldiff.diffusion.sampler import PredictorCorrector
from ldiff.diffusion.schedules import Schedule
from ldiff.physics import energy_spectrum, vorticity


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
) -> Quality:
    """Sample the prior unconditionally and compare with ``data``.

    Args:
        model: epsilon model (normalised units).
        data: reference fields, shape (N, C, H, W), in normalised units.
        dx, dy, periodic: the grid.
        cond: condition channels of every sample, shape (C_cond, H, W), or None.
    """
    generator = torch.Generator().manual_seed(seed)
    sampler = PredictorCorrector(schedule, steps)
    drawn = []
    for start in range(0, samples, batch):
        x1 = torch.randn((min(batch, samples - start), *data.shape[1:]), generator=generator)
        c = None if cond is None else cond.expand(x1.shape[0], *cond.shape)
        drawn.append(sampler.sample(lambda x, t: model(x, t, c), x1, generator))
    to_physical = Normalizer.from_state(normalizer).denormalize
    fields = {name: to_physical(x.double()) for name, x in (("samples", torch.cat(drawn)), ("data", data))}
    spectra = {name: energy_spectrum(x, dx, dy)[1].mean(dim=(0, 1)) for name, x in fields.items()}
    ratio = (spectra["samples"][1 : k_max + 1] / spectra["data"][1 : k_max + 1]).tolist()
    w = {name: vorticity(x, dx, dy, periodic).std().item() for name, x in fields.items()}
    # per-component std over every sample and grid point, root-mean-squared over components
    velocity = {name: x.transpose(0, 1).flatten(1).var(dim=1).mean().sqrt().item() for name, x in fields.items()}
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
    )
