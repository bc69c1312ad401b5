r"""A time-conditioned U-Net that predicts the noise of a diffusion state.

The network is an *epsilon model*: given a noisy state
:math:`x_t = \mu(t) x + \sigma(t) \varepsilon` and its time :math:`t \in [0, 1]` it
returns :math:`\hat\varepsilon(x_t, t)`, an estimate of :math:`\varepsilon`. It knows
nothing of the schedule: :math:`\mu`, :math:`\sigma`, Tweedie's formula and the loss live
in ``ldiff.diffusion``. A window of frames arrives already flattened into channels
(``C = 2 T``), so the network is purely 2-D.

Architecture (Ronneberger et al. 2015, with the diffusion conditioning of Ho et al. 2020
and Dhariwal & Nichol 2021):

* **Inputs.** Optional condition channels are concatenated with :math:`x_t`, and a
  convolution lifts the ``C + C_cond`` channels to ``widths[0]``.
* **Levels.** Level :math:`l` works at resolution :math:`H / 2^l` with ``widths[l]``
  channels. The encoder runs ``blocks_per_level[l]`` residual blocks per level and then a
  stride-2 convolution down to the next level; the decoder climbs back, upsampling by
  nearest-neighbour doubling and concatenating the encoder's output of the same level (the
  skip connection) before its first block.
* **Residual blocks** (He et al. 2016, pre-activation), with FiLM (Perez et al. 2018) on
  the diffusion time:

  .. math:: h = W_1 * a(n_1(x)), \qquad
            h = W_2 * a\big(n_2(h) \odot (1 + s(t)) + b(t)\big), \qquad
            y = P x + h,

  where :math:`a` is the activation, :math:`n_1, n_2` normalisations, :math:`P` a 1x1
  convolution when the channel count changes (identity otherwise), and the per-channel
  scale :math:`s(t)` and shift :math:`b(t)` are linear in the time embedding.
* **Time embedding.** :math:`t` is mapped to sinusoids at ``E / 2`` angular frequencies
  :math:`\omega_k`, geometrically spaced from 1 to 1000 (Vaswani et al. 2017),
  :math:`[\sin(\omega_k t), \cos(\omega_k t)]_k`, followed by a two-layer MLP; every
  block reads its own :math:`(s, b)` from the MLP's output.
* **Output.** Normalisation, activation and a convolution back to ``C`` channels whose
  weights start at zero, so an untrained network predicts :math:`\hat\varepsilon = 0`
  (Tweedie's estimate then starts at :math:`x_t / \mu`).
* **Activation checkpointing** (opt-in, Chen et al. 2016). A backward pass needs every
  intermediate of every residual block; with ``checkpointing=True`` the forward keeps
  only each block's input and the backward recomputes the block's intermediates, one
  block at a time. Output and gradients are unchanged; the price is one more forward
  pass of the blocks per backward pass. It matters wherever a gradient flows through
  the network: training, and every gradient-guided sampler step (one vector-Jacobian
  product per evaluation); ``benchmarks/results/memory.md`` has the measured saving.

Every convolution pads with the same ``padding`` mode: ``"circular"`` for periodic fields
(Kolmogorov flow), ``"reflect"`` or ``"zeros"`` for bounded ones (a cylinder wake). With
circular padding and sides that are multiples of :math:`2^{L-1}` (``L`` levels) the
network commutes with circular shifts by multiples of :math:`2^{L-1}` pixels: stride-2
convolutions and nearest upsampling are equivariant to even shifts, and both norms are
shift invariant.

Any spatial size works: the input is padded, with the same mode, to the next multiple of
:math:`2^{L-1}` on each side (half before, the rest after), and the output cropped back,
so a 199 x 399 IBPM field and a 64 x 64 Kolmogorov field pass through the same network.

References:
    Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical Image
    Segmentation", MICCAI 2015, arXiv:1505.04597.
    Ho, Jain & Abbeel, "Denoising Diffusion Probabilistic Models", NeurIPS 2020,
    arXiv:2006.11239.
    Dhariwal & Nichol, "Diffusion Models Beat GANs on Image Synthesis", NeurIPS 2021,
    arXiv:2105.05233.
    Perez et al., "FiLM: Visual Reasoning with a General Conditioning Layer", AAAI 2018,
    arXiv:1709.07871.
    Vaswani et al., "Attention Is All You Need", NeurIPS 2017, arXiv:1706.03762.
    Chen, Xu, Zhang & Guestrin, "Training Deep Nets with Sublinear Memory Cost", 2016,
    arXiv:1604.06174.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

PADDINGS = ("circular", "reflect", "zeros")
ACTIVATIONS = {"silu": nn.SiLU, "gelu": nn.GELU, "relu": nn.ReLU}
NORMS = ("group", "layer")

MAX_FREQUENCY = 1000.0
"""Highest angular frequency of the time embedding: resolves ``t`` steps of ~1e-3."""

MAX_GROUPS = 8
"""Group norm uses ``gcd(channels, MAX_GROUPS)`` groups."""


def num_parameters(module: nn.Module) -> int:
    """Number of scalar parameters of ``module`` (trainable or not)."""
    return sum(p.numel() for p in module.parameters())


class ChannelLayerNorm(nn.Module):
    """Layer norm over the channels of each pixel, (B, C, H, W) -> (B, C, H, W).

    Unlike group norm its statistics are local, so a pixel's output depends only on its
    receptive field (no coupling through image-wide means).
    """

    def __init__(self, channels: int, affine: bool = True, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(channels, 1, 1)) if affine else None
        self.bias = nn.Parameter(torch.zeros(channels, 1, 1)) if affine else None

    def forward(self, x: Tensor) -> Tensor:
        var, mean = torch.var_mean(x, dim=1, keepdim=True, unbiased=False)
        x = (x - mean) * torch.rsqrt(var + self.eps)
        if self.weight is None:
            return x
        return torch.addcmul(self.bias, x, self.weight)


def _norm(kind: str, channels: int, affine: bool = True) -> nn.Module:
    if kind == "group":
        return nn.GroupNorm(math.gcd(channels, MAX_GROUPS), channels, affine=affine)
    return ChannelLayerNorm(channels, affine=affine)


def circular_pad(x: Tensor, reach: int) -> Tensor:
    """Periodic extension by ``reach`` pixels per side, (B, C, H, W) -> (B, C, H + 2r, W + 2r).

    Two concatenations: about half the forward-plus-backward cost of ``F.pad``'s circular
    mode, which copies the extension region by region. Needs ``reach <= min(H, W)``.
    """
    x = torch.cat((x[..., -reach:], x, x[..., :reach]), dim=-1)
    return torch.cat((x[..., -reach:, :], x, x[..., :reach, :]), dim=-2)


class CircularConv2d(nn.Conv2d):
    """Convolution of a periodic field, (B, c_in, H, W) -> (B, c_out, H / stride, W / stride)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, stride: int = 1):
        super().__init__(c_in, c_out, kernel_size, stride=stride)
        self.reach = kernel_size // 2

    def forward(self, x: Tensor) -> Tensor:
        return super().forward(circular_pad(x, self.reach) if self.reach else x)


def _conv(c_in: int, c_out: int, kernel_size: int, padding: str, stride: int = 1) -> nn.Conv2d:
    if padding == "circular":
        return CircularConv2d(c_in, c_out, kernel_size, stride)
    return nn.Conv2d(
        c_in, c_out, kernel_size, stride=stride, padding=kernel_size // 2, padding_mode=padding
    )


class SinusoidalEmbedding(nn.Module):
    r"""Fourier features of the diffusion time, (B,) -> (B, features).

    :math:`[\sin(\omega_k t), \cos(\omega_k t)]` with ``features / 2`` angular frequencies
    :math:`\omega_k` geometrically spaced from 1 to ``MAX_FREQUENCY``.
    """

    def __init__(self, features: int):
        super().__init__()
        half = features // 2
        log_omega = torch.linspace(0.0, math.log(MAX_FREQUENCY), half)
        self.register_buffer("omega", torch.exp(log_omega), persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        phase = t[:, None] * self.omega.to(t.dtype)
        return torch.cat((phase.sin(), phase.cos()), dim=1)


class ResidualBlock(nn.Module):
    """Pre-activation residual block with FiLM on the time embedding.

    ``forward(x: (B, c_in, H, W), emb: (B, E)) -> (B, c_out, H, W)``.
    """

    def __init__(
        self,
        c_in: int,
        c_out: int,
        embedding: int,
        kernel_size: int,
        padding: str,
        activation: str,
        norm: str,
    ):
        super().__init__()
        self.norm1 = _norm(norm, c_in)
        self.conv1 = _conv(c_in, c_out, kernel_size, padding)
        self.film = nn.Linear(embedding, 2 * c_out)
        # No affine here: FiLM's (1 + s, b) already supplies a scale and shift per channel.
        self.norm2 = _norm(norm, c_out, affine=False)
        self.conv2 = _conv(c_out, c_out, kernel_size, padding)
        self.act = ACTIVATIONS[activation]()
        self.skip = nn.Identity() if c_in == c_out else nn.Conv2d(c_in, c_out, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(self.act(self.norm1(x)))
        scale, shift = self.film(emb)[:, :, None, None].chunk(2, dim=1)
        h = torch.addcmul(shift, self.norm2(h), 1.0 + scale)
        h = self.conv2(self.act(h))
        return self.skip(x) + h


class UNet(nn.Module):
    r"""Epsilon network :math:`\hat\varepsilon(x_t, t, \text{cond})` on (B, C, H, W) fields.

    Args:
        in_channels: ``C``, channels of ``x_t`` and of the output (``2 T`` for a window of
            ``T`` frames of ``(u, v)``).
        cond_channels: ``C_cond``, channels of the condition concatenated at the input;
            0 for an unconditional network.
        widths: channels of each level, finest first; ``len(widths)`` levels.
        blocks_per_level: residual blocks per level in the encoder and again in the
            decoder; one int for all levels or one per level.
        padding: ``"circular"``, ``"reflect"`` or ``"zeros"``, used by every convolution
            and by the padding of sizes that are not multiples of ``2^(levels-1)``.
        time_embedding: ``E``, features of the time embedding (even).
        kernel_size: side of the convolution kernels (odd).
        activation: ``"silu"``, ``"gelu"`` or ``"relu"``.
        norm: ``"group"`` (``gcd(channels, 8)`` groups, Wu & He 2018) or ``"layer"``
            (over the channels of each pixel).
        checkpointing: recompute the residual blocks' intermediates in the backward pass
            instead of storing them (see the module docstring); no effect without grad.

    Shapes:
        ``forward(x_t: (B, C, H, W), t: (B,) or scalar, cond: (B, C_cond, H, W) | None)
        -> eps_hat: (B, C, H, W)``, for any ``H, W`` above ``2^(levels-1) *
        max(kernel_size // 2, 1)`` (the coarsest level must be wider than the kernel's
        reach for reflect padding).
    """

    def __init__(
        self,
        in_channels: int,
        cond_channels: int = 0,
        widths: Sequence[int] = (32, 64, 128),
        blocks_per_level: int | Sequence[int] = 2,
        padding: str = "circular",
        time_embedding: int = 64,
        kernel_size: int = 3,
        activation: str = "silu",
        norm: str = "group",
        checkpointing: bool = False,
    ):
        super().__init__()
        widths = list(widths)
        blocks = _check_args(
            in_channels, cond_channels, widths, blocks_per_level, padding,
            time_embedding, kernel_size, activation, norm,
        )  # fmt: skip
        self.in_channels = in_channels
        self.cond_channels = cond_channels
        self.widths = widths
        self.blocks_per_level = blocks
        self.padding = padding
        self.kernel_size = kernel_size
        self.time_embedding = time_embedding
        self.checkpointing = checkpointing

        act = ACTIVATIONS[activation]
        self.embed = nn.Sequential(
            SinusoidalEmbedding(time_embedding),
            nn.Linear(time_embedding, time_embedding),
            act(),
            nn.Linear(time_embedding, time_embedding),
            act(),
        )

        def block(c_in: int, c_out: int) -> ResidualBlock:
            return ResidualBlock(
                c_in, c_out, time_embedding, kernel_size, padding, activation, norm
            )

        self.lift = _conv(in_channels + cond_channels, widths[0], kernel_size, padding)
        self.down = nn.ModuleList()
        self.encoder = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for level, (width, n) in enumerate(zip(widths, blocks)):
            self.encoder.append(nn.ModuleList(block(width, width) for _ in range(n)))
            if level > 0:
                self.down.append(_conv(widths[level - 1], width, kernel_size, padding, 2))
            # The decoder's first block below the bottom also eats the upsampled
            # coarser features concatenated with this level's skip.
            first_in = width if level == len(widths) - 1 else width + widths[level + 1]
            sizes = [first_in] + [width] * (n - 1)
            self.decoder.append(nn.ModuleList(block(c, width) for c in sizes))
        self.head = nn.Sequential(
            _norm(norm, widths[0]),
            act(),
            _conv(widths[0], in_channels, kernel_size, padding),
        )
        nn.init.zeros_(self.head[-1].weight)
        nn.init.zeros_(self.head[-1].bias)

    @property
    def multiple(self) -> int:
        """Side multiple the levels need: ``2^(levels-1)``."""
        return 2 ** (len(self.widths) - 1)

    def forward(self, x_t: Tensor, t: Tensor | float, cond: Tensor | None = None) -> Tensor:
        """Predict the noise: (B, C, H, W), (B,), (B, C_cond, H, W) -> (B, C, H, W)."""
        t = self._check_inputs(x_t, t, cond)
        emb = self.embed(t)
        h = x_t if cond is None else torch.cat((x_t, cond), dim=1)
        h, crop = self._pad(h)
        h = self.lift(h)
        skips = []
        for level, blocks in enumerate(self.encoder):
            if level > 0:
                h = self.down[level - 1](h)
            for blk in blocks:
                h = self._run_block(blk, h, emb)
            skips.append(h)
        for level in reversed(range(len(self.decoder))):
            if level < len(self.decoder) - 1:
                h = F.interpolate(h, scale_factor=2.0, mode="nearest")
                h = torch.cat((h, skips[level]), dim=1)
            for blk in self.decoder[level]:
                h = self._run_block(blk, h, emb)
        return self.head(h)[crop]

    def _run_block(self, block: ResidualBlock, h: Tensor, emb: Tensor) -> Tensor:
        if self.checkpointing and torch.is_grad_enabled():
            return checkpoint(block, h, emb, use_reentrant=False)
        return block(h, emb)

    def _pad(self, x: Tensor) -> tuple[Tensor, tuple[slice, ...]]:
        """Pad (B, C, H, W) to sides divisible by ``multiple``; return the crop back."""
        H, W = x.shape[-2:]
        dh, dw = -H % self.multiple, -W % self.multiple
        crop = (..., slice(dh // 2, dh // 2 + H), slice(dw // 2, dw // 2 + W))
        if dh == dw == 0:
            return x, crop
        pads = (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2)
        mode = "constant" if self.padding == "zeros" else self.padding
        return F.pad(x, pads, mode=mode), crop

    def check_size(self, H: int, W: int, what: str = "x_t") -> None:
        """``ValueError`` unless an H x W field passes every level: after the padding to a
        multiple of ``2^(levels - 1)``, the coarsest level must still exceed the
        kernel's reach."""
        least = self.multiple * max(self.kernel_size // 2, 1)
        if min(H, W) <= least:
            raise ValueError(
                f"{what} is {H}x{W}, too small for {len(self.widths)} levels with "
                f"kernel_size {self.kernel_size}: H and W must exceed {least}"
            )

    def _check_inputs(self, x_t: Tensor, t: Tensor | float, cond: Tensor | None) -> Tensor:
        """Validate shapes; return ``t`` as a (B,) tensor of ``x_t``'s dtype and device."""
        if x_t.dim() != 4:
            raise ValueError(f"x_t must have shape (B, C, H, W), got {tuple(x_t.shape)}")
        B, C, H, W = x_t.shape
        if C != self.in_channels:
            raise ValueError(f"x_t has {C} channels, the UNet expects {self.in_channels}")
        self.check_size(H, W)
        if self.cond_channels == 0 and cond is not None:
            raise ValueError("cond was given, but the UNet has cond_channels=0")
        if self.cond_channels > 0:
            if cond is None:
                raise ValueError(f"cond is missing, the UNet expects {self.cond_channels} channels")
            if cond.shape != (B, self.cond_channels, H, W):
                raise ValueError(
                    f"cond has shape {tuple(cond.shape)}, the UNet expects "
                    f"{(B, self.cond_channels, H, W)}"
                )
        t = torch.as_tensor(t, dtype=x_t.dtype, device=x_t.device)
        if t.numel() == 1:
            return t.reshape(1).expand(B)
        if t.shape != (B,):
            raise ValueError(f"t has shape {tuple(t.shape)}, expected ({B},) or a scalar")
        return t

    def extra_repr(self) -> str:
        return (
            f"in_channels={self.in_channels}, cond_channels={self.cond_channels}, "
            f"widths={self.widths}, blocks_per_level={self.blocks_per_level}, "
            f"padding={self.padding!r}, parameters={num_parameters(self):,}"
        )


def _check_args(
    in_channels: int,
    cond_channels: int,
    widths: list[int],
    blocks_per_level: int | Sequence[int],
    padding: str,
    time_embedding: int,
    kernel_size: int,
    activation: str,
    norm: str,
) -> list[int]:
    """Raise ValueError naming the first bad argument; return blocks per level as a list."""
    if in_channels < 1:
        raise ValueError(f"UNet: in_channels must be >= 1, got {in_channels}")
    if cond_channels < 0:
        raise ValueError(f"UNet: cond_channels must be >= 0, got {cond_channels}")
    if not widths or min(widths) < 1:
        raise ValueError(f"UNet: widths must be a non-empty list of positive ints, got {widths}")
    if isinstance(blocks_per_level, int):
        blocks = [blocks_per_level] * len(widths)
    else:
        blocks = list(blocks_per_level)
    if len(blocks) != len(widths) or min(blocks) < 1:
        raise ValueError(
            f"UNet: blocks_per_level must be a positive int or one per level "
            f"({len(widths)} levels), got {blocks_per_level}"
        )
    if padding not in PADDINGS:
        raise ValueError(f"UNet: padding must be one of {PADDINGS}, got {padding!r}")
    if time_embedding < 2 or time_embedding % 2:
        raise ValueError(f"UNet: time_embedding must be even and >= 2, got {time_embedding}")
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"UNet: kernel_size must be odd and >= 1, got {kernel_size}")
    if activation not in ACTIVATIONS:
        raise ValueError(
            f"UNet: activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}"
        )
    if norm not in NORMS:
        raise ValueError(f"UNet: norm must be one of {NORMS}, got {norm!r}")
    return blocks
