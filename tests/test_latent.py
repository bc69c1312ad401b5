"""Standardised coordinates (ldiff.diffusion.latent): the per-node fit by hand, the
selection check, and the posterior of the Gaussian x = m + S z (z stationary), which has
no stationary covariance in x, reached exactly through observations of z: by the
Gaussian's own solve, and by mmps through the InferenceModule, against dense linear
algebra in x."""

import pytest
import torch

from ldiff.diffusion.latent import Standardization, is_selection, node_moments, node_sums
from ldiff.diffusion.precond import StandardizedGaussianPreconditioned, preconditioned, standardization
from ldiff.diffusion.schedules import CosineSchedule
from ldiff.guidance.exact_gaussian import ExactGaussian
from ldiff.guidance.mmps import MMPS
from ldiff.lit.inference import InferenceModule
from ldiff.nets.gaussian import GaussianPrior, fourier_filter, power_law
from ldiff.observe import BlockMean, Compose, Frames, Pixels, Subsample

SHAPE = (2, 16, 16)
STD = 0.1


class Zero(torch.nn.Module):
    in_channels = 2

    def forward(self, x_t, t, cond=None):
        return torch.zeros_like(x_t)


def nonstationary():
    """(m, s, P_z): a mean field, a per-node std 0.05 on the left quarter (the steady
    inflow) and 0.5-1.5 elsewhere, and a red stationary power of z."""
    generator = torch.Generator().manual_seed(0)
    m = torch.randn(SHAPE, generator=generator, dtype=torch.float64) * 0.3
    s = 0.5 + torch.rand(SHAPE, generator=generator, dtype=torch.float64)
    s[..., :4] = 0.05
    return m, s, power_law(SHAPE, slope=3.0).double()


def dense_posterior(m, s, power, op, y, std):
    r"""Mean (B, C, H, W) and covariance (n, n) of x | y for x = m + S z, z ~ N(0, F^H P F),
    by dense linear algebra in x (float64)."""
    n = m.numel()
    basis = torch.eye(n, dtype=torch.float64).reshape(n, *SHAPE)
    cov_z = fourier_filter(basis, power).reshape(n, n)
    cov = s.flatten()[:, None] * cov_z * s.flatten()[None, :]
    a = op(basis).reshape(n, -1).T  # (N, n): row j is observation j
    gain = cov @ a.T @ torch.linalg.inv(a @ cov @ a.T + std**2 * torch.eye(a.shape[0], dtype=torch.float64))
    mean = m.flatten() + (y.flatten(1) - (a @ m.flatten())) @ gain.T
    return mean.reshape(-1, *SHAPE), cov - gain @ a @ cov


def test_node_moments_are_the_mean_and_std_at_every_node_floored_at_a_fraction_of_their_rms():
    x = torch.tensor([[1.0, 2.0, 5.0], [3.0, 2.0, 5.0], [5.0, 2.0, 5.0]]).reshape(3, 1, 1, 3)
    total, square, count = node_sums(x.split(2))  # sums over chunks
    assert count == 3
    mean, scale = node_moments(total, square, count, floor=0.1)
    torch.testing.assert_close(mean.flatten(), torch.tensor([3.0, 2.0, 5.0], dtype=torch.float64))
    std = (8 / 3) ** 0.5  # population std of 1, 3, 5; the other two nodes never change
    rms = (std**2 / 3) ** 0.5
    torch.testing.assert_close(scale.flatten(), torch.tensor([std, 0.1 * rms, 0.1 * rms], dtype=torch.float64))
    with pytest.raises(ValueError, match="do not vary"):
        node_moments(*node_sums([torch.ones(4, 1, 1, 3)]))


def test_selections_are_recognised_and_an_average_is_refused_by_name():
    for op in (Subsample(2), Pixels(torch.rand(SHAPE[1:]) < 0.3), Frames(1), Compose([Frames(1), Subsample(4)])):
        assert is_selection(op, SHAPE), op
    assert not is_selection(BlockMean(2), SHAPE)
    m, s, _ = nonstationary()
    latent = Standardization(m, s)
    y = BlockMean(2)(torch.zeros(1, *SHAPE, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"BlockMean\(factor=2, aat=0.25\): a prior in standardised coordinates needs observations that each read one value"):
        latent.observe(y, BlockMean(2), STD, SHAPE)
    with pytest.raises(ValueError, match=r"scale finite and > 0"):
        Standardization(m, s * 0)


def test_encode_and_decode_are_inverse_and_observations_of_z_are_the_rescaled_ones():
    m, s, _ = nonstationary()
    latent = Standardization(m, s)
    x = torch.randn(3, *SHAPE, dtype=torch.float64)
    torch.testing.assert_close(latent.decode(latent.encode(x)), x)
    op = Subsample(4, offset=1)
    y = op(x)
    y_z, std_z, scale = latent.observe(y, op, STD, SHAPE)
    torch.testing.assert_close(scale, op(s[None]))
    torch.testing.assert_close(y_z, op(latent.encode(x)))  # y - A m = (A s) A z
    torch.testing.assert_close(std_z, (STD / op(s[None])).expand_as(y))


def test_the_posterior_through_observations_of_z_is_the_exact_posterior_in_x():
    """The Gaussian of z conditioned on (y - A m)/(A s) with noise std/(A s), decoded, is
    x | y of the non-stationary Gaussian x = m + S z (dense linear algebra in x)."""
    m, s, power = nonstationary()
    schedule = CosineSchedule(1e-3)
    z_prior = GaussianPrior(schedule, power, torch.zeros(2, dtype=torch.float64)).double()
    latent = Standardization(m, s)
    truth = latent.decode(z_prior.sample(2, torch.Generator().manual_seed(1)))
    op = Subsample(3)
    y = op(truth) + STD * torch.randn(op(truth).shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    exact, _ = dense_posterior(m, s, power, op, y, STD)
    y_z, std_z, _ = latent.observe(y, op, STD, SHAPE)
    through_z = latent.decode(z_prior.posterior_mean(y_z, op, std_z, maxiter=2000))
    torch.testing.assert_close(through_z, exact, rtol=1e-6, atol=1e-6)
    # the stationary fit about the mean field (what the "gaussian" skip term sees) is worse
    stationary = GaussianPrior(schedule, power * s.square().mean(), m).double()
    wrong = stationary.posterior_mean(y, op, STD, maxiter=2000)
    assert (wrong - exact).norm() > 10 * (through_z - exact).norm()


def test_an_inference_module_on_a_standardised_prior_samples_the_exact_posterior_in_x():
    """A gaussian-node prior whose network outputs zero is the Gaussian x = m + S z; mmps
    with the prior's own covariance (the known regime at every t) is exact for it. The
    InferenceModule hands the strategy observations of z and decodes its samples: the
    mean of K = 64 samples is as close to the exact posterior mean as the mean of 64 exact
    samples is, and one sample fits the observations at the noise level."""
    m, s, power = nonstationary()
    schedule = CosineSchedule(1e-3)
    prior = preconditioned(Zero(), schedule, "gaussian-node")
    assert isinstance(prior, StandardizedGaussianPreconditioned) and not prior.fitted
    prior.set_standardization(m.float(), s.float())
    prior.set_gaussian(power.float(), torch.zeros(SHAPE))
    assert prior.fitted and standardization(prior) is not None
    latent = Standardization(m, s)
    z_prior = GaussianPrior(schedule, power, torch.zeros(2, dtype=torch.float64)).double()
    truth = latent.decode(z_prior.sample(1, torch.Generator().manual_seed(1))).float()
    op, k = Subsample(3), 64
    default = InferenceModule.from_prior(prior, schedule, operator=op).strategy
    assert isinstance(default, MMPS) and default.covariance == "prior"  # not a fit of x beside a checkpoint
    strategy = MMPS(known_above=1e-9, covariance="prior", known_maxiter=50)
    module = InferenceModule.from_prior(prior, schedule, strategy=strategy, operator=op, std=STD, samples=k, steps=64, seed=0)
    out = module.predict_step({"x": truth, "index": torch.tensor([0])})
    samples = out["recon"][0].double()  # (K, C, H, W), decoded to x
    exact_mean, post_cov = dense_posterior(m, s, power, op, out["y"].double(), STD)
    expected = post_cov.diagonal().sum().sqrt() / k**0.5  # rms distance of a K-mean from the exact mean
    error = (samples.mean(dim=0) - exact_mean[0]).norm()
    assert error < 1.5 * expected, (error, expected)
    # each sample spreads like the exact posterior (in x: tiny where s is, wide elsewhere)
    spread = (samples - exact_mean).square().mean(dim=0).flatten()
    for region in (slice(0, 4), slice(4, None)):
        ratio = spread.reshape(SHAPE)[..., region].sum() / post_cov.diagonal().reshape(SHAPE)[..., region].sum()
        assert 0.7 < ratio.item() < 1.4, (region, ratio)
    residual = (out["y"][0].double() - op(samples[:1])).square().mean().sqrt()
    assert 0.8 < residual.item() / STD < 1.25
    # the analytic baseline runs on the fields as they are: its own Gaussian, the y of x
    stationary = GaussianPrior(schedule, (power * s.square().mean()).float(), m.float())
    module = InferenceModule.from_prior(prior, schedule, strategy=ExactGaussian(stationary), operator=op, std=STD, samples=1, seed=0)
    baseline = module.predict_step({"x": truth, "index": torch.tensor([0])})["recon"][:, 0]
    torch.testing.assert_close(baseline, stationary.posterior_mean(out["y"], op, STD), rtol=1e-5, atol=1e-5)
    # ... and the skip term's own Gaussian, in the prior's coordinates, is the exact posterior in x
    skip = ExactGaussian(GaussianPrior(schedule, prior.power, prior.mean), maxiter=500, prior_coordinates=True)
    module = InferenceModule.from_prior(prior, schedule, strategy=skip, operator=op, std=STD, samples=1, seed=0)
    skip_mean = module.predict_step({"x": truth, "index": torch.tensor([0])})["recon"][:, 0]
    torch.testing.assert_close(skip_mean.double(), exact_mean, rtol=1e-4, atol=1e-4)


def test_unconditional_samples_of_a_standardised_prior_are_decoded_to_fields():
    """ldiff quality samples the prior on z and measures fields m + S z: for the Gaussian
    x = m + S z itself (a zero network) the samples' velocity std is the data's."""
    from ldiff.quality import measure

    m, s, power = nonstationary()
    s = 3 * s  # fields 3x as variable as z: undecoded samples would show it
    schedule = CosineSchedule(1e-3)
    prior = preconditioned(Zero(), schedule, "gaussian-node")
    prior.set_standardization(m.float(), s.float())
    prior.set_gaussian(power.float(), torch.zeros(SHAPE))
    z_prior = GaussianPrior(schedule, power, torch.zeros(2, dtype=torch.float64)).double()
    data = Standardization(m, s).decode(z_prior.sample(64, torch.Generator().manual_seed(5))).float()
    unit = {"mean": torch.zeros(2, dtype=torch.float64), "std": torch.ones(2, dtype=torch.float64)}
    result = measure(prior, schedule, unit, data, 1.0, 1.0, True, samples=64, steps=32, k_max=4)
    assert result.velocity_std_samples == pytest.approx(result.velocity_std_data, rel=0.05)
    assert result.spectrum_ratio_min > 0.8 and result.spectrum_ratio_max < 1.25


def test_a_noise_rule_stated_in_normalised_units_is_applied_there_for_observations_of_z():
    """The user's clamped-linear rule std = max(0.2 r, 0.15) is a std of the fields'
    normalised units: on observations of z it is that std over A s, per observation."""
    from ldiff.guidance.base import Observation
    from ldiff.guidance.scaled import DualScaled

    m, s, _ = nonstationary()
    op = Subsample(4)
    x = torch.randn(2, *SHAPE, dtype=torch.float64)
    y_z, std_z, scale = Standardization(m, s).observe(op(x), op, STD, SHAPE)
    obs = Observation(y_z, op, std_z, SHAPE, scale)
    n = obs.n_obs  # 2 x 4 x 4 = 32
    rule = DualScaled(n_ref=16, std_ref=0.2, std_exponent=1.0, std_floor=0.15)
    std, _ = rule.noise(obs)
    torch.testing.assert_close(std.expand_as(y_z), (max(0.2 * n / 16, 0.15) / scale).expand_as(y_z))
    plain = DualScaled(n_ref=256, std_floor=0.05)  # std_ref None: the observations' own std, 0.1 in normalised units
    std, _ = plain.noise(obs)
    torch.testing.assert_close(std.expand_as(y_z), (max(STD * (n / 256) ** 0.5, 0.05) / scale).expand_as(y_z))
    repeated = obs.repeat(3)  # 2 observation sets x K = 3: std per set repeated, the scale (1, N) broadcast
    torch.testing.assert_close(repeated.std * repeated.scale, torch.full_like(repeated.y, STD))


def test_mmps_with_the_prior_s_covariance_refuses_a_prior_without_a_gaussian_skip_term():
    from ldiff.diffusion.denoise import Denoiser
    from ldiff.guidance.base import Diagnostics, Observation

    schedule = CosineSchedule(1e-3)
    unit = preconditioned(Zero(), schedule, "unit")
    x_t = torch.randn(1, *SHAPE)
    obs = Observation(Subsample(4)(x_t), Subsample(4), STD, SHAPE)
    with pytest.raises(ValueError, match="covariance 'prior' needs a prior with a fitted Gaussian skip term .* not a SkipPreconditioned"):
        MMPS(known_above=1e-9, covariance="prior").guided_eps(Denoiser(unit, schedule), x_t, torch.tensor([0.5]), obs, Diagnostics())
