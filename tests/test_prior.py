"""ScorePrior: EMA against its hand-computed recursion, learning rates against their closed
forms, the fixed-generator validation loss, and the checks on bad input."""

import math

import lightning as L
import pytest
import torch
from torch import nn

from ldiff.diffusion.denoise import epsilon_loss
from ldiff.diffusion.precond import SkipPreconditioned
from ldiff.diffusion.schedules import CosineSchedule
from ldiff.lit.ema import averaged_copy, check_decay, update_average
from ldiff.lit.prior import VAL_SEED, ScorePrior, check_channels, is_plain, lr_factor


class Tiny(nn.Module):
    """A 1x1 convolution scaled by t: an epsilon model with 6 parameters."""

    in_channels = 2

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(2, 2, 1)

    def forward(self, x_t, t, cond=None):
        return self.conv(x_t) * t[:, None, None, None]


def batches(n: int, seed: int = 0) -> list[dict]:
    generator = torch.Generator().manual_seed(seed)
    return [{"x": torch.randn(3, 2, 4, 4, generator=generator)} for _ in range(n)]


class Recorder(L.Callback):
    """Copies the online weights and the learning rate after every optimiser step."""

    def __init__(self):
        self.weights, self.lrs = [], []

    def on_train_start(self, trainer, module):
        self.weights.append([p.detach().double().clone() for p in module.online.parameters()])

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.weights.append([p.detach().double().clone() for p in module.online.parameters()])
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def fit_tiny(steps: int, lr_schedule: str, ema_decay: float) -> tuple[ScorePrior, Recorder]:
    torch.manual_seed(0)
    module = ScorePrior(Tiny(), CosineSchedule(), lr=0.05, lr_schedule=lr_schedule, ema_decay=ema_decay, precondition=False)
    recorder = Recorder()
    trainer = L.Trainer(
        max_epochs=1, accelerator="cpu", logger=False, enable_checkpointing=False,
        enable_progress_bar=False, enable_model_summary=False, callbacks=[recorder],
    )  # fmt: skip
    trainer.fit(module, torch.utils.data.DataLoader(batches(steps), batch_size=None))
    return module, recorder


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("cosine", [1.0, 0.5 * (1 + math.cos(math.pi / 4)), 0.5, 0.5 * (1 + math.cos(3 * math.pi / 4)), 0.0]),
        ("linear", [1.0, 0.75, 0.5, 0.25, 0.0]),
        ("constant", [1.0, 1.0, 1.0, 1.0, 1.0]),
    ],
)
def test_lr_factor_closed_forms(kind, expected):
    assert [lr_factor(kind, step, 8) for step in (0, 2, 4, 6, 8)] == pytest.approx(expected, abs=1e-15)
    assert lr_factor(kind, 12, 8) == pytest.approx(expected[-1], abs=1e-15)  # clipped past the end


def test_update_average_is_the_ema_recursion():
    average, net = nn.Linear(2, 1), nn.Linear(2, 1)
    with torch.no_grad():
        average.weight.copy_(torch.tensor([[1.0, -2.0]]))
        net.weight.copy_(torch.tensor([[3.0, 2.0]]))
        average.bias.fill_(0.0)
        net.bias.fill_(1.0)
    update_average(average, net, decay=0.75)
    # 0.75 * [1, -2] + 0.25 * [3, 2] = [1.5, -1]; 0.75 * 0 + 0.25 * 1 = 0.25 (exact in binary)
    assert average.weight.tolist() == [[1.5, -1.0]]
    assert average.bias.tolist() == [0.25]
    assert net.weight.tolist() == [[3.0, 2.0]]


def test_averaged_copy_is_frozen_and_equal():
    net = nn.Linear(3, 2)
    average = averaged_copy(net)
    assert all(not p.requires_grad for p in average.parameters())
    assert all(torch.equal(a, b) for a, b in zip(average.parameters(), net.parameters()))
    assert all(a.data_ptr() != b.data_ptr() for a, b in zip(average.parameters(), net.parameters()))


@pytest.mark.parametrize("decay", [1.0, -0.1, 1.5])
def test_decay_outside_unit_interval_is_refused(decay):
    with pytest.raises(ValueError, match="ema_decay must lie in"):
        check_decay(decay)


def test_ema_weights_equal_the_hand_computed_average_of_the_trained_weights():
    steps, decay = 5, 0.8
    module, recorder = fit_tiny(steps, "constant", decay)
    assert module.global_step == steps and len(recorder.weights) == steps + 1
    # bar w_0 = w_0, bar w_k = decay bar w_{k-1} + (1 - decay) w_k, in float64
    average = recorder.weights[0]
    for weights in recorder.weights[1:]:
        average = [decay * a + (1 - decay) * w for a, w in zip(average, weights)]
    for got, want in zip(module.net.parameters(), average):
        torch.testing.assert_close(got.double(), want, rtol=0, atol=1e-6)
    # the average trails the trained weights: it is not a copy of them
    assert not torch.allclose(module.net.conv.weight, module.online.conv.weight)


def test_learning_rate_follows_the_cosine_closed_form_during_fit():
    steps = 4
    _, recorder = fit_tiny(steps, "cosine", 0.9)
    # after optimiser step k the scheduler has stepped k times: lr = 0.05 f(k / 4)
    expected = [0.05 * 0.5 * (1 + math.cos(math.pi * k / steps)) for k in range(1, steps + 1)]
    assert recorder.lrs == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_validation_loss_uses_the_averaged_net_and_a_fixed_generator():
    torch.manual_seed(0)
    module = ScorePrior(Tiny(), CosineSchedule(), ema_decay=0.5, precondition=False)
    with torch.no_grad():
        module.online.conv.weight.add_(1.0)  # online and averaged weights now differ
    batch = batches(1, seed=3)[0]
    (first, first_eps), (second, _) = module.held_out_loss(batch, 7), module.held_out_loss(batch, 7)
    generator = torch.Generator().manual_seed(VAL_SEED + 7)
    expected = epsilon_loss(module.net, batch["x"], module.schedule, generator=generator)
    assert first.item() == second.item() == expected.item() == first_eps.item()
    generator = torch.Generator().manual_seed(VAL_SEED + 7)
    online = epsilon_loss(module.online, batch["x"], module.schedule, generator=generator)
    assert online.item() != first.item()


def test_a_standardised_prior_takes_its_loss_on_z():
    """precondition "gaussian-node": training and held-out losses are the epsilon loss of
    z = (x - m) / s (the diffusion runs on z), each node weighted by s^2 / mean s^2 (the
    denoising error of x = m + S z), not the loss of x nor the unweighted loss of z."""
    torch.manual_seed(0)
    module = ScorePrior(Tiny(), CosineSchedule(), precondition="gaussian-node")
    batch = batches(1, seed=3)[0]
    shape = tuple(batch["x"].shape[1:])
    m, s = torch.randn(shape), torch.rand(shape) + 0.5
    for net in (module.online, module.net):
        net.set_standardization(m, s)
        net.set_gaussian(torch.ones(shape), torch.zeros(shape))
    loss, _ = module.held_out_loss(batch, 7)

    def loss_of(x, weight=None):
        return epsilon_loss(module.net, x, module.schedule, generator=torch.Generator().manual_seed(VAL_SEED + 7), node_weight=weight)

    weight = s.square() / s.square().mean()
    on_z = loss_of((batch["x"] - m) / s, weight)
    z, generator = (batch["x"] - m) / s, torch.Generator().manual_seed(VAL_SEED + 7)
    t, eps = torch.rand(3, generator=generator), torch.randn(z.shape, generator=generator)
    by_hand = (weight * (module.net(module.schedule.perturb(z, t, eps), t) - eps).square()).mean()
    assert loss.item() == pytest.approx(on_z.item(), rel=1e-6) == pytest.approx(by_hand.item(), rel=1e-5)
    assert loss.item() != pytest.approx(loss_of((batch["x"] - m) / s).item(), rel=1e-3)
    assert loss.item() != pytest.approx(loss_of(batch["x"]).item(), rel=1e-3)


class Data:
    channels, cond_channels, window = 4, 0, 2


def test_channel_mismatch_names_both_numbers():
    with pytest.raises(ValueError, match=r"network in_channels 2 vs data channels 4 .*window 2"):
        check_channels(Tiny(), Data())
    check_channels(Tiny(), None)  # nothing declared, nothing to check


@pytest.mark.parametrize("kwargs, match", [
    ({"lr": 0.0}, "need lr > 0"),
    ({"lr_schedule": "step"}, "lr_schedule must be one of"),
    ({"ema_decay": 1.0}, "ema_decay must lie in"),
])  # fmt: skip
def test_bad_hyperparameters_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ScorePrior(Tiny(), **kwargs)


def test_objects_in_hyperparameters_are_refused_at_checkpoint_time():
    module = ScorePrior(Tiny())  # built in Python: hparams hold the Tiny object itself
    with pytest.raises(ValueError, match="hyperparameter 'net' is a Tiny object"):
        module.on_save_checkpoint({"hyper_parameters": dict(module.hparams)})
    assert is_plain({"a": [1, 2.0, "x", None, (True,)]}) and not is_plain({"a": torch.zeros(1)})


def test_edm_weighting_is_the_network_output_loss_at_unit_weight():
    """With eps_hat = c_skip x_t + c_out F, the "edm" loss equals mean (F - F*)^2 with
    F* = (eps - c_skip x_t) / c_out, computed here by hand from the same draws."""
    torch.manual_seed(0)
    schedule = CosineSchedule(eta=1e-3)
    raw = Tiny()
    model = SkipPreconditioned(raw, schedule)
    x = torch.randn(6, 2, 8, 8)
    loss = epsilon_loss(model, x, schedule, generator=torch.Generator().manual_seed(5), weighting="edm")
    generator = torch.Generator().manual_seed(5)
    t = torch.rand(6, generator=generator)
    eps = torch.randn(x.shape, generator=generator)
    mu, sigma = schedule.coefficients(t, x)
    x_t = mu * x + sigma * eps
    total = mu**2 + sigma**2
    target = (eps - sigma / total * x_t) / (mu / total.sqrt())
    expected = (raw(x_t, t, None) - target).square().mean()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    plain = epsilon_loss(model, x, schedule, generator=torch.Generator().manual_seed(5))
    assert plain.item() < 0.5 * loss.item()  # the epsilon loss down-weights F by c_out^2 <= 1


def test_loss_weighting_is_checked_by_name():
    with pytest.raises(ValueError, match="loss_weighting must be one of"):
        ScorePrior(Tiny(), CosineSchedule(), loss_weighting="snr")
