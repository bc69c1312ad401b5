"""Tests of the epsilon U-Net: shapes at any size, padding semantics, conditioning,
exact parameter counts, per-sample independence, fitting, and input validation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ldiff.nets.unet import UNet, num_parameters


def _tiny(**kwargs) -> UNet:
    """A small net whose output convolution is random, so its output is not all zero."""
    torch.manual_seed(0)
    args = dict(in_channels=2, widths=[8, 16, 16], blocks_per_level=1, time_embedding=8)
    net = UNet(**(args | kwargs))
    torch.nn.init.normal_(net.head[-1].weight, std=0.1)
    return net


@pytest.mark.parametrize("padding", ["circular", "reflect", "zeros"])
@pytest.mark.parametrize("size", [(199, 399), (63, 65), (64, 64)])
def test_output_has_the_input_size(padding, size):
    net = _tiny(padding=padding)
    x = torch.randn(1, 2, *size)
    with torch.no_grad():
        assert net(x, torch.tensor([0.3])).shape == (1, 2, *size)


def test_untrained_output_is_exactly_zero():
    net = UNet(2, widths=[8, 16])
    assert torch.equal(net(torch.randn(2, 2, 32, 32), torch.rand(2)), torch.zeros(2, 2, 32, 32))


@pytest.mark.parametrize("padding", ["circular", "reflect", "zeros"])
def test_odd_sizes_are_extended_with_the_padding_mode(padding):
    """A 13 x 22 field is padded to 16 x 24 (3 levels) as (1, 2) rows and (1, 1) columns,
    in the net's own mode, and the output is cropped back to the original pixels."""
    net = _tiny(padding=padding)
    x, t = torch.randn(2, 2, 13, 22), torch.rand(2)
    mode = "constant" if padding == "zeros" else padding
    padded = F.pad(x, (1, 1, 1, 2), mode=mode)
    with torch.no_grad():
        torch.testing.assert_close(net(x, t), net(padded, t)[..., 1:14, 1:23], rtol=0, atol=0)


@pytest.mark.parametrize("norm", ["group", "layer"])
def test_circular_net_commutes_with_shifts_by_the_level_multiple(norm):
    net = _tiny(norm=norm)  # 3 levels: shifts by multiples of 4 pixels
    x, t = torch.randn(2, 2, 32, 48), torch.rand(2)
    shift = dict(shifts=(8, -12), dims=(-2, -1))
    with torch.no_grad():
        out = net(x, t)
        torch.testing.assert_close(net(torch.roll(x, **shift), t), torch.roll(out, **shift))
        assert (out - torch.roll(out, **shift)).abs().max() > 0.1  # the output is not flat


def test_padding_mode_changes_the_output_only_within_reach_of_the_border():
    """With per-pixel layer norm a pixel sees only its receptive field. For 2 levels,
    kernel 3 and one block per level that field reaches at most 6 px through the level-0
    convolutions (lift, 2 + 2 in blocks, head) plus 1 + 2 x 4 + 2 px through the
    downsampling, the 4 level-1 convolutions and the upsampling: 17 px. Pixels farther
    from the border than that are the same for every padding mode."""
    nets = {p: _tiny(padding=p, norm="layer", widths=[8, 16]) for p in ("circular", "reflect")}
    nets["reflect"].load_state_dict(nets["circular"].state_dict())
    x, t = torch.randn(1, 2, 64, 64), torch.rand(1)
    with torch.no_grad():
        out = {p: net(x, t) for p, net in nets.items()}
    inner = (..., slice(17, 47), slice(17, 47))
    torch.testing.assert_close(out["reflect"][inner], out["circular"][inner])
    border = (out["reflect"] - out["circular"])[..., 0, :]
    assert border.abs().min() > 0.0 and border.abs().mean() > 1e-2


def test_condition_and_time_change_the_output():
    net = _tiny(cond_channels=3)
    x, t = torch.randn(2, 2, 32, 32), torch.full((2,), 0.5)
    cond = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        out = net(x, t, cond)
        assert (net(x, t, cond + 1.0) - out).abs().mean() > 1e-2
        assert (net(x, t + 0.25, cond) - out).abs().mean() > 1e-2


def test_samples_are_independent_and_scalar_t_broadcasts():
    net = _tiny()
    x = torch.randn(3, 2, 32, 32)
    with torch.no_grad():
        batch = net(x, torch.tensor([0.2, 0.7, 0.9], dtype=torch.float64))
        torch.testing.assert_close(batch[1:2], net(x[1:2], torch.tensor([0.7])))
        torch.testing.assert_close(net(x, 0.2), net(x, torch.full((3,), 0.2)))


def _expected_count(c, c_cond, widths, blocks, e, k):
    """Parameters by the architecture's formula: conv = k^2 c_in c_out + c_out, etc."""

    def conv(ci, co, kk=k):
        return kk * kk * ci * co + co

    def block(ci, co):
        norm1, film = 2 * ci, e * 2 * co + 2 * co
        skip = 0 if ci == co else conv(ci, co, 1)
        return norm1 + conv(ci, co) + film + conv(co, co) + skip

    total = 2 * (e * e + e) + conv(c + c_cond, widths[0])  # time MLP, lift
    for level, (w, n) in enumerate(zip(widths, blocks)):
        total += n * block(w, w)  # encoder
        if level > 0:
            total += conv(widths[level - 1], w)  # stride-2 down
        first_in = w if level == len(widths) - 1 else w + widths[level + 1]
        total += block(first_in, w) + (n - 1) * block(w, w)  # decoder
    return total + 2 * widths[0] + conv(widths[0], c)  # head: norm, conv


def test_parameter_count_of_a_tiny_net_by_hand():
    # in 2, cond 1, widths [4, 8], one block per level, E = 4, 3x3 kernels:
    time_mlp = 2 * (4 * 4 + 4)  # 40
    lift = 9 * 3 * 4 + 4  # 112
    enc0 = 2 * 4 + (9 * 4 * 4 + 4) + (4 * 8 + 8) + (9 * 4 * 4 + 4)  # 344
    down = 9 * 4 * 8 + 8  # 296
    enc1 = 2 * 8 + (9 * 8 * 8 + 8) + (4 * 16 + 16) + (9 * 8 * 8 + 8)  # 1264
    dec1 = enc1
    dec0 = 2 * 12 + (9 * 12 * 4 + 4) + (4 * 8 + 8) + (9 * 4 * 4 + 4) + (12 * 4 + 4)  # 700
    head = 2 * 4 + (9 * 4 * 2 + 2)  # 82
    net = UNet(2, cond_channels=1, widths=[4, 8], blocks_per_level=1, time_embedding=4)
    assert num_parameters(net) == time_mlp + lift + enc0 + down + enc1 + dec1 + dec0 + head
    assert num_parameters(net) == 4102
    assert "parameters=4,102" in repr(net)


@pytest.mark.parametrize(
    "c, c_cond, widths, blocks, e, k",
    [
        (2, 0, [32, 64, 128], [2, 2, 2], 64, 3),
        (32, 2, [16, 32, 64, 64], [1, 2, 3, 1], 32, 5),
        (1, 0, [8], [3], 16, 1),
    ],
)
def test_parameter_count_matches_the_formula(c, c_cond, widths, blocks, e, k):
    net = UNet(c, c_cond, widths, blocks, time_embedding=e, kernel_size=k)
    assert num_parameters(net) == _expected_count(c, c_cond, widths, blocks, e, k)


def test_default_config_has_1_878_274_parameters():
    assert num_parameters(UNet(2)) == 1_878_274


def test_tiny_net_fits_one_target():
    torch.manual_seed(0)
    net = UNet(2, widths=[16, 32], blocks_per_level=1, time_embedding=16)
    x_t, t, target = torch.randn(1, 2, 16, 16), torch.tensor([0.4]), torch.randn(1, 2, 16, 16)
    optimizer = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        loss = (net(x_t, t) - target).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 100


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(in_channels=0), "in_channels must be >= 1"),
        (dict(cond_channels=-1), "cond_channels must be >= 0"),
        (dict(widths=[]), "widths must be a non-empty"),
        (dict(widths=[8, 0]), "widths must be a non-empty"),
        (dict(blocks_per_level=[1, 2]), r"blocks_per_level .* \(3 levels\)"),
        (dict(blocks_per_level=0), "blocks_per_level"),
        (dict(padding="periodic"), "padding must be one of .* got 'periodic'"),
        (dict(time_embedding=7), "time_embedding must be even"),
        (dict(kernel_size=4), "kernel_size must be odd"),
        (dict(activation="tanh"), "activation must be one of"),
        (dict(norm="batch"), "norm must be one of"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UNet(**({"in_channels": 2} | kwargs))


@pytest.mark.parametrize(
    "cond_channels, x_shape, t, cond_shape, message",
    [
        (0, (2, 4, 32, 32), 0.5, None, "x_t has 4 channels, the UNet expects 2"),
        (0, (2, 32, 32), 0.5, None, r"x_t must have shape \(B, C, H, W\)"),
        (0, (2, 2, 32, 32), 0.5, (2, 1, 32, 32), "cond was given, but the UNet has cond_channels=0"),
        (1, (2, 2, 32, 32), 0.5, None, "cond is missing, the UNet expects 1 channels"),
        (1, (2, 2, 32, 32), 0.5, (2, 2, 32, 32), r"cond has shape \(2, 2, 32, 32\)"),
        (0, (2, 2, 32, 32), torch.rand(3), None, r"t has shape \(3,\), expected \(2,\)"),
        (0, (2, 2, 4, 32), 0.5, None, "x_t is 4x32, too small .* must exceed 4"),
    ],
)
def test_bad_inputs_raise(cond_channels, x_shape, t, cond_shape, message):
    net = UNet(2, cond_channels, widths=[4, 8, 8], blocks_per_level=1, time_embedding=4)
    cond = None if cond_shape is None else torch.zeros(cond_shape)
    with pytest.raises(ValueError, match=message):
        net(torch.zeros(x_shape), t, cond)


@pytest.mark.parametrize("padding", ["circular", "reflect"])
def test_activation_checkpointing_changes_neither_output_nor_gradients(padding):
    """The same weights with and without ``checkpointing``: the recomputed blocks run the
    same operations on the same inputs, so output, input gradient and weight gradients
    agree to the last bit; without grad the option does nothing. The forward of the
    checkpointed net keeps far fewer values for the backward (the blocks' inputs only)."""
    plain = _tiny(padding=padding, cond_channels=1)
    ckpt = _tiny(padding=padding, cond_channels=1, checkpointing=True)
    ckpt.load_state_dict(plain.state_dict())
    x, t, cond = torch.randn(2, 2, 20, 28), torch.rand(2), torch.randn(2, 1, 20, 28)
    grads, saved = {}, {}
    for name, net in (("plain", plain), ("ckpt", ckpt)):
        xr = x.clone().requires_grad_(True)
        saved[name] = 0

        def pack(tensor, name=name):
            saved[name] += tensor.numel()
            return tensor

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            out = net(xr, t, cond)
        weight = torch.linspace(-1.0, 1.0, out.numel()).reshape(out.shape)
        (out * weight).sum().backward()
        grads[name] = (out.detach(), xr.grad, [p.grad for p in net.parameters()])
    (out_p, gx_p, gw_p), (out_c, gx_c, gw_c) = grads["plain"], grads["ckpt"]
    assert torch.equal(out_p, out_c)
    assert torch.equal(gx_p, gx_c) and gx_p.abs().max() > 0
    assert len(gw_p) == len(gw_c) and all(torch.equal(a, b) for a, b in zip(gw_p, gw_c))
    assert saved["ckpt"] < saved["plain"] / 2
    with torch.no_grad():
        assert torch.equal(plain(x, t, cond), ckpt(x, t, cond))
