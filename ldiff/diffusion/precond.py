r"""Preconditioning: how a raw network becomes a well-conditioned epsilon model.

With a VP schedule the Tweedie estimate divides by :math:`\mu(t)`, which falls to
:math:`\eta = 10^{-3}` at :math:`t = 1` for SDA's cosine schedule:
:math:`\hat x = (x_t - \sigma\hat\varepsilon)/\mu`. A raw network that predicts
:math:`\varepsilon` to 1 % near :math:`t = 1` leaves :math:`\hat x` wrong by about 10
data standard deviations there, and the sampler's first steps (each multiplying the
state by :math:`\mu(s)/\mu(t) \approx 6` at 32 steps) amplify that error until the
sample diverges. Measured on our Kolmogorov prior after 560 steps: the raw network's
:math:`\hat\varepsilon` had std 0.956 at :math:`t = 1` and unconditional samples blew up
to 250x the data's vorticity.

The fix, as in EDM's preconditioning (Karras et al. 2022), is to let the network learn
only what a unit Gaussian prior does not already explain. For data of unit variance
per value (normalised units), :math:`\mathbb{E}[\varepsilon \mid x_t] =
\sigma x_t/(\mu^2 + \sigma^2)` under :math:`x \sim \mathcal{N}(0, I)`, with residual
std :math:`\mu/\sqrt{\mu^2 + \sigma^2}`; so

.. math:: \hat\varepsilon(x_t, t) = c_{skip}\, x_t + c_{out}\, F(x_t, t), \qquad
          c_{skip} = \frac{\sigma}{\mu^2 + \sigma^2}, \quad
          c_{out} = \frac{\mu}{\sqrt{\mu^2 + \sigma^2}} .

At :math:`t = 1` the network's error reaches :math:`\hat x` multiplied by
:math:`\sigma c_{out}/\mu \approx 1` instead of :math:`\sigma/\mu = 1000`; at
:math:`t = 0` (:math:`c_{out} \to 1`) the network predicts the noise as before. The
training target of :math:`F` has unit variance at every t under the Gaussian model.

**Gaussian residual.** The unit Gaussian is a poor default for fields whose variance
sits in a few large scales (the cylinder wake: 99 % of the energy in the first shells):
every direction the network has not learned to handle keeps unit variance, white noise
at the grid scale. :class:`GaussianPreconditioned` takes the skip term from the
Gaussian fitted to the training fields instead (:mod:`ldiff.nets.gaussian`: the data's
mean field :math:`m` and a stationary covariance of eigenvalues :math:`P`, exact in
closed form),

.. math:: \hat\varepsilon(x_t, t) = \varepsilon_G(x_t, t) + c_{out}\, F(x_t, t),
          \qquad \varepsilon_G = \sigma F^H \big[(\mu^2 P + \sigma^2)^{-1} \odot F(x_t - \mu m)\big],

so :math:`F = 0` is the Gaussian fit, whose samples have the data's mean field, variance
and spectrum, and the network learns only what is not Gaussian with a stationary
covariance (the mask's effect on the fluctuations, the steady inflow, the phase
coherence of the shedding). Centring on the mean field (the mean wake) instead of a
constant per channel matters: on the cylinder windows it takes 41 % of the data's
variance out of :math:`P`, and the exact posterior mean of the fit at x subsampling 16
improves from rel l2 0.38 to 0.29. With :math:`P = 1, m = 0` it
is :class:`SkipPreconditioned`. :math:`c_{out}` is the same scalar: for
:math:`\operatorname{mean} P = 1` (normalised units) the mean over modes of the Gaussian's
residual variance :math:`\mu^2 P/(\mu^2 P + \sigma^2)` is at most
:math:`\mu^2/(\mu^2 + \sigma^2)` (Jensen), so the target of :math:`F` has at most unit
variance per value under the Gaussian model, as before.

**Standardised coordinates.** A stationary covariance gives every node the same
variance, and the cylinder's steady inflow is not like its wake.
:class:`StandardizedGaussianPreconditioned` (``precondition: gaussian-node``) runs the
diffusion on :math:`z = S^{-1}(x - m)`, every node standardised by its own mean and std
over the training windows (:mod:`ldiff.diffusion.latent`), with the Gaussian skip term
fitted to :math:`z`: :math:`F = 0` is then the Gaussian :math:`x = m + S z` with
:math:`z` stationary, which has the data's variance at every node. Callers map
observations to :math:`z` and samples back (:func:`standardization`).

References:
    Karras, Aittala, Aila & Laine, "Elucidating the Design Space of Diffusion-Based
    Generative Models", NeurIPS 2022, arXiv:2206.00364 (preconditioning).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ldiff.diffusion.latent import Standardization
from ldiff.diffusion.schedules import Schedule
from ldiff.nets.gaussian import check_gaussian, gaussian_epsilon


class _Wrapper(nn.Module):
    """A raw network ``net`` and the schedule it is preconditioned for; the channels are the network's."""

    def __init__(self, net: nn.Module, schedule: Schedule):
        super().__init__()
        self.net = net
        self.schedule = schedule

    @property
    def in_channels(self) -> int:
        return self.net.in_channels

    @property
    def cond_channels(self) -> int | None:
        return getattr(self.net, "cond_channels", None)


class SkipPreconditioned(_Wrapper):
    """An epsilon model ``c_skip(t) x_t + c_out(t) net(x_t, t, cond)`` (see the module docstring).

    Args:
        net: the raw network, ``net(x_t, t, cond)`` on (B, C, H, W); its parameters are
            this module's (state-dict keys ``net.*``).
        schedule: the VP schedule that defines ``mu`` and ``sigma``.
    """

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        mu, sigma = self.schedule.coefficients(t, x_t)
        total = mu**2 + sigma**2
        return (sigma / total) * x_t + (mu / total.sqrt()) * self.net(x_t, t, cond)


class GaussianPreconditioned(_Wrapper):
    """An epsilon model ``eps_G(x_t, t) + c_out(t) net(x_t, t, cond)``, ``eps_G`` the exact
    epsilon of a fitted Gaussian (see the module docstring).

    The Gaussian's ``power`` (C, H, W) and ``mean`` (C, H, W) are buffers (state-dict keys
    ``power``, ``mean``; the network's are ``net.*``), empty until :meth:`size_gaussian`
    allocates them, :meth:`set_gaussian` fills them or a state dict is loaded, which sizes
    them to the stored tensors (a checkpoint written before the mean was a field holds a
    mean of shape (C,), a constant per channel, and keeps it): the grid is the data's, not the network's, so it is not
    known when the module is built. ``fitted`` is true once values are set or loaded.

    Args:
        net: the raw network, ``net(x_t, t, cond)`` on (B, C, H, W).
        schedule: the VP schedule that defines ``mu`` and ``sigma``.
    """

    def __init__(self, net: nn.Module, schedule: Schedule):
        super().__init__(net, schedule)
        self.register_buffer("power", torch.zeros(0))
        self.register_buffer("mean", torch.zeros(0))
        self._fitted = False

    @property
    def fitted(self) -> bool:
        return self._fitted

    def size_gaussian(self, shape: tuple[int, int, int]) -> None:
        """Allocate zero, not-yet-fitted buffers for fields of ``shape`` (C, H, W), so that a
        later :meth:`set_gaussian` (or load) writes into the same tensors: DDP and the
        optimizer's device move keep references to a module's buffers."""
        like = {"device": self.power.device, "dtype": self.power.dtype}
        self.power = torch.zeros(shape, **like)
        self.mean = torch.zeros(shape, **like)
        self._fitted = False

    def set_gaussian(self, power: Tensor, mean: Tensor) -> None:
        """Use the Gaussian of eigenvalues ``power`` (C, H, W) and mean ``mean`` ((C, H, W),
        or (C,) constant per channel), written in place into buffers of that shape (see
        :meth:`size_gaussian`)."""
        check_gaussian(power, mean, "GaussianPreconditioned", getattr(self.net, "in_channels", None))
        if self.power.shape != power.shape:
            self.size_gaussian(tuple(power.shape))
        if self.mean.shape != mean.shape:
            self.mean = torch.zeros(mean.shape, device=self.mean.device, dtype=self.mean.dtype)
        with torch.no_grad():
            self.power.copy_(power.detach())
            self.mean.copy_(mean.detach())
        self._fitted = True

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        power, mean = state_dict.get(prefix + "power"), state_dict.get(prefix + "mean")
        if power is not None and mean is not None and power.numel():
            try:
                self.set_gaussian(power, mean)
            except ValueError as error:
                error_msgs.append(f"{prefix}power / {prefix}mean: {error}")
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)

    def forward(self, x_t: Tensor, t: Tensor, cond: Tensor | None = None) -> Tensor:
        if not self.fitted:
            raise RuntimeError("GaussianPreconditioned: no Gaussian yet (ScorePrior fits it to the training split when fit starts)")
        if x_t.shape[-3:] != self.power.shape:
            raise ValueError(f"GaussianPreconditioned: fields of shape {tuple(x_t.shape[-3:])}, the Gaussian's are {tuple(self.power.shape)}")
        mu, sigma = self.schedule.coefficients(t, x_t)
        skip = gaussian_epsilon(x_t, mu, sigma, self.power, self.mean)
        return skip + (mu / (mu**2 + sigma**2).sqrt()) * self.net(x_t, t, cond)


class StandardizedGaussianPreconditioned(GaussianPreconditioned):
    r""":class:`GaussianPreconditioned` on standardised coordinates
    :math:`z = S^{-1}(x - m)` (:mod:`ldiff.diffusion.latent`): the network, the skip
    term's Gaussian and the diffusion all act on :math:`z`; ``standardization`` maps
    fields and observations to :math:`z` and samples back to :math:`x`.

    Buffers, besides the Gaussian's ``power`` and ``mean`` (of :math:`z`): ``node_mean``
    (:math:`m`) and ``node_scale`` (:math:`s`), both (C, H, W), sized and loaded like the
    Gaussian's; ``fitted`` once both are set.
    """

    def __init__(self, net: nn.Module, schedule: Schedule):
        super().__init__(net, schedule)
        self.register_buffer("node_mean", torch.zeros(0))
        self.register_buffer("node_scale", torch.zeros(0))
        self._standardized = False

    @property
    def fitted(self) -> bool:
        return self._fitted and self._standardized

    def size_gaussian(self, shape: tuple[int, int, int]) -> None:
        """Also size the standardisation's buffers, unless they already have ``shape``
        (a standardisation set before the Gaussian stays)."""
        super().size_gaussian(shape)
        if tuple(self.node_mean.shape) != tuple(shape):
            self._size_standardization(tuple(shape))

    def _size_standardization(self, shape: tuple[int, ...]) -> None:
        like = {"device": self.power.device, "dtype": self.power.dtype}
        self.node_mean, self.node_scale = torch.zeros(shape, **like), torch.ones(shape, **like)
        self._standardized = False

    def set_standardization(self, mean: Tensor, scale: Tensor) -> None:
        """Use :math:`x = m + s z` with ``mean`` :math:`m` and ``scale`` :math:`s`, both
        (C, H, W), written in place (see :meth:`size_gaussian`)."""
        check = Standardization(mean, scale)  # refuses bad values
        if self.node_mean.shape != mean.shape:
            self._size_standardization(tuple(mean.shape))
        with torch.no_grad():
            self.node_mean.copy_(check.mean.detach())
            self.node_scale.copy_(check.scale.detach())
        self._standardized = True

    @property
    def standardization(self) -> Standardization:
        if not self._standardized:
            raise RuntimeError("StandardizedGaussianPreconditioned: no standardisation yet (ScorePrior fits it when fit starts)")
        return Standardization(self.node_mean, self.node_scale)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs)
        mean, scale = state_dict.get(prefix + "node_mean"), state_dict.get(prefix + "node_scale")
        if mean is not None and scale is not None and mean.numel():
            try:
                self.set_standardization(mean, scale)
            except ValueError as error:
                error_msgs.append(f"{prefix}node_mean / {prefix}node_scale: {error}")


def skip_gaussian(model: nn.Module) -> tuple[Tensor, Tensor] | None:
    """``(power, mean)`` of the Gaussian that ``model`` holds (a fitted Gaussian skip
    term, or a :class:`~ldiff.nets.gaussian.GaussianPrior` itself), in the coordinates it
    runs on; None when it holds none."""
    power = getattr(model, "power", None)
    if not isinstance(power, Tensor) or power.dim() != 3 or not getattr(model, "fitted", True):
        return None
    return power, model.mean


def standardization(model: nn.Module) -> Standardization | None:
    """The map to the coordinates ``model`` runs on, or None when they are the fields' own."""
    return model.standardization if isinstance(model, StandardizedGaussianPreconditioned) else None


PRECONDITIONINGS = ("unit", "gaussian", "gaussian-node", "none")
"""Values of ``ScorePrior(precondition=...)``; ``True`` and ``False`` mean ``unit`` and ``none``."""


def precondition_kind(kind: bool | str) -> str:
    """The canonical name of a ``precondition`` setting: ``True`` is ``"unit"``,
    ``False`` is ``"none"``, a name stays as it is."""
    return {True: "unit", False: "none"}[kind] if isinstance(kind, bool) else kind


def preconditioned(net: nn.Module, schedule: Schedule, kind: bool | str) -> nn.Module:
    """``net`` wrapped as ``kind`` says: ``"unit"`` (or ``True``) in
    :class:`SkipPreconditioned`, ``"gaussian"`` in :class:`GaussianPreconditioned`
    (unfitted), ``"gaussian-node"`` in :class:`StandardizedGaussianPreconditioned`
    (unfitted), ``"none"`` (or ``False``) as it is."""
    kind = precondition_kind(kind)
    if kind not in PRECONDITIONINGS:
        raise ValueError(f"precondition must be one of {PRECONDITIONINGS} (or true / false), got {kind!r}")
    if kind == "unit":
        return SkipPreconditioned(net, schedule)
    if kind == "gaussian":
        return GaussianPreconditioned(net, schedule)
    if kind == "gaussian-node":
        return StandardizedGaussianPreconditioned(net, schedule)
    return net
