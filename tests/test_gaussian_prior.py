"""The analytic Gaussian prior and the sampler: exact-score checks."""

import pytest
import torch

from ldiff.diffusion.denoise import Denoiser, tweedie
from ldiff.diffusion.sampler import PredictorCorrector
from ldiff.diffusion.schedules import CosineSchedule, LinearBetaSchedule
from ldiff.nets.gaussian import GaussianPrior
from ldiff.observe import Pixels, Subsample, observe


def power_law_prior(schedule, size=16, channels=2, slope=3.0):
    k = torch.fft.fftfreq(size) * size
    k = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2)
    spectrum = (1 + k**2) ** (-slope / 2)
    power = torch.stack([spectrum / spectrum.mean() * (c + 1) / channels for c in range(channels)])
    return GaussianPrior(schedule, power, torch.linspace(-0.3, 0.3, channels))


def dense_covariance(prior):
    """Sigma as a dense matrix, built column by column from prior.cov."""
    c, h, w = prior.power.shape
    basis = torch.eye(c * h * w, dtype=torch.float64).reshape(-1, c, h, w)
    return prior.cov(basis.float()).double().reshape(c * h * w, -1)


def mean_pattern(channels, size):
    """A non-constant mean field (C, H, W): a wake-like bump per channel, scaled by c + 1."""
    grid = torch.linspace(-1, 1, size)
    bump = torch.exp(-4 * (grid[:, None] ** 2 + (grid[None, :] - 0.3) ** 2))
    return torch.stack([(c + 1) * bump for c in range(channels)])


@pytest.mark.parametrize("field_mean", [False, True], ids=["channel-mean", "field-mean"])
def test_eps_is_exact_against_dense_linear_algebra(field_mean):
    schedule = CosineSchedule()
    prior = power_law_prior(schedule, size=6)
    if field_mean:  # a mean field (C, H, W); a (C,) mean is a constant per channel
        prior = GaussianPrior(schedule, prior.power, mean_pattern(2, 6))
    cov = dense_covariance(prior)
    x_t = torch.randn(3, 2, 6, 6)
    t = torch.tensor([0.1, 0.5, 0.9])
    eps = prior(x_t, t)
    m = (prior.mean[:, None, None] if prior.mean.dim() == 1 else prior.mean).expand(2, 6, 6).reshape(-1).double()
    for b in range(3):
        mu, sigma = schedule.mu(t[b]).item(), schedule.sigma(t[b]).item()
        marginal = mu**2 * cov + sigma**2 * torch.eye(72, dtype=torch.float64)
        expected = sigma * torch.linalg.solve(marginal, x_t[b].reshape(-1).double() - mu * m)
        torch.testing.assert_close(eps[b].reshape(-1).double(), expected, rtol=1e-4, atol=1e-5)


def test_fit_recovers_the_generating_spectrum():
    prior = power_law_prior(CosineSchedule(), size=16)
    samples = prior.sample(4000, torch.Generator().manual_seed(0))
    fitted = GaussianPrior.fit(samples, CosineSchedule())
    # each node's mean averages 4000 draws of variance mean(P) <= 1: std <= 0.016
    assert fitted.mean.shape == (2, 16, 16)
    assert (fitted.mean - prior.mean[:, None, None]).abs().max().item() < 0.08
    # each periodogram bin averages 4000 chi-square(2)/2 draws: relative std ~ 1/sqrt(4000)
    ratio = fitted.power / prior.power
    assert (ratio - 1).abs().max().item() < 0.1


def test_fit_takes_the_mean_field_out_of_the_spectrum():
    """Fields = a fixed non-constant pattern + stationary noise: the fit returns the
    pattern as its mean and the noise's spectrum as its power. Centred on a constant per
    channel instead, the pattern's Fourier energy (about 400x the noise's at its lowest
    wavenumbers) would sit in P."""
    prior = power_law_prior(CosineSchedule(), size=16)
    pattern = mean_pattern(2, 16)
    samples = pattern + prior.sample(4000, torch.Generator().manual_seed(2)) - prior.mean[:, None, None]
    fitted = GaussianPrior.fit(samples, CosineSchedule())
    assert (fitted.mean - pattern).abs().max().item() < 0.08
    ratio = fitted.power / prior.power
    assert (ratio - 1).abs().max().item() < 0.1


def test_fit_in_chunks_is_the_whole_batch_formula():
    x = torch.randn(23, 3, 6, 10, generator=torch.Generator().manual_seed(1)) + mean_pattern(3, 10)[:, 2:8]
    x64 = x.double()
    mean = x64.mean(dim=0)
    power = torch.fft.fft2(x64 - mean, norm="ortho").abs().square().mean(dim=0)
    for chunk in (1, 5, 23, 100):  # 23 = 4 chunks of 5 and one of 3
        fitted = GaussianPrior.fit(x, CosineSchedule(), chunk=chunk)
        torch.testing.assert_close(fitted.mean.double(), mean, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(fitted.power.double(), power.clamp_min(1e-6 * power.mean()), rtol=1e-6, atol=1e-7)


def radial_spectrum(x, bins):
    power = torch.fft.fft2(x - x.mean(dim=(0, 2, 3), keepdim=True), norm="ortho").abs().square().mean(dim=(0, 1))
    n = x.shape[-1]
    k = torch.fft.fftfreq(n) * n
    radius = torch.sqrt(k[:, None] ** 2 + k[None, :] ** 2).round().long().clamp_max(bins - 1)
    return torch.zeros(bins).index_add_(0, radius.flatten(), power.flatten()) / torch.bincount(radius.flatten(), minlength=bins)


@pytest.mark.parametrize("schedule", [CosineSchedule(eta=1e-3), LinearBetaSchedule()])
def test_sampler_with_exact_score_reproduces_variance_and_spectrum(schedule):
    """With the exact epsilon, SDA's sampler must reproduce the prior's variance and spectrum.

    Tolerances: 1024 samples of 2 x 16 x 16 give a sampling error of ~3% on each channel's
    variance and ~5% on a radial spectrum shell; 128 DDIM steps add ~1-2% of
    discretisation bias (measured: variance 3-4% low, worst shell 9.5% off).
    """
    prior = power_law_prior(schedule)
    generator = torch.Generator().manual_seed(1)
    sampler = PredictorCorrector(schedule, steps=128)
    x1 = torch.randn(1024, 2, 16, 16, generator=generator)
    samples = sampler.sample(lambda x, t: prior(x, t), x1, generator)
    reference = prior.sample(1024, generator)
    expected_var = prior.power.mean(dim=(1, 2))
    torch.testing.assert_close(samples.var(dim=(0, 2, 3)), expected_var, rtol=0.06, atol=0)
    torch.testing.assert_close(samples.mean(dim=(0, 2, 3)), prior.mean, atol=0.05, rtol=0)
    shells = radial_spectrum(samples, 9)
    assert ((shells / radial_spectrum(reference, 9)) - 1).abs().max().item() < 0.15


def test_langevin_corrections_keep_the_exact_prior():
    schedule = CosineSchedule()
    prior = power_law_prior(schedule)
    generator = torch.Generator().manual_seed(2)
    sampler = PredictorCorrector(schedule, steps=32, corrections=1, tau=0.1)
    samples = sampler.sample(lambda x, t: prior(x, t), torch.randn(1024, 2, 16, 16, generator=generator), generator)
    torch.testing.assert_close(samples.var(dim=(0, 2, 3)), prior.power.mean(dim=(1, 2)), rtol=0.08, atol=0)


def test_tweedie_of_the_exact_eps_is_the_exact_conditional_mean():
    # For a 1-D Gaussian x ~ N(m, v): E[x | x_t] = m + mu v (x_t - mu m) / (mu^2 v + sigma^2)
    schedule = CosineSchedule()
    power = torch.full((1, 4, 4), 2.0)
    prior = GaussianPrior(schedule, power, torch.tensor([0.5]))
    x_t = torch.randn(2, 1, 4, 4)
    t = torch.tensor([0.3, 0.7])
    denoiser = Denoiser(prior, schedule)
    _, x_hat = denoiser(x_t, t)
    mu, sigma = schedule.coefficients(t, x_t)
    expected = 0.5 + mu * 2.0 * (x_t - mu * 0.5) / (mu**2 * 2.0 + sigma**2)
    torch.testing.assert_close(x_hat, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(tweedie(x_t, prior(x_t, t), mu, sigma), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("op", [Subsample(2), Subsample(3, 1), Pixels.random((6, 6), 0.3, seed=1)])
def test_posterior_mean_and_sample_are_exact(op):
    schedule = CosineSchedule()
    prior = power_law_prior(schedule, size=6)
    generator = torch.Generator().manual_seed(3)
    truth = prior.sample(2, generator)
    std = 0.1
    y = observe(truth, op, std, generator)
    # dense reference: K = Sigma A^T (A Sigma A^T + s^2)^-1
    cov = dense_covariance(prior)
    a = torch.stack([op(e.reshape(1, 2, 6, 6).float()).reshape(-1) for e in torch.eye(72)], dim=1).double()
    gain = cov @ a.T @ torch.linalg.inv(a @ cov @ a.T + std**2 * torch.eye(a.shape[0], dtype=torch.float64))
    m = prior.mean[:, None, None].expand(2, 6, 6).reshape(-1).double()
    expected = m + (gain @ (y.reshape(2, -1).double() - (a @ m)).T).T
    torch.testing.assert_close(prior.posterior_mean(y, op, std).reshape(2, -1).double(), expected, rtol=1e-4, atol=1e-4)
    # perturb-and-solve: 2000 samples for one observation set match the exact covariance
    samples = prior.posterior_sample(y[:1].expand(2000, *y.shape[1:]), op, std, generator).reshape(2000, -1).double()
    posterior_cov = cov - gain @ a @ cov
    torch.testing.assert_close(samples.mean(0), expected[0], atol=0.1, rtol=0)
    empirical = torch.cov(samples.T)
    assert (empirical.diagonal() / posterior_cov.diagonal() - 1).abs().max().item() < 0.2


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="non-negative"):
        GaussianPrior(CosineSchedule(), -torch.ones(1, 4, 4), torch.zeros(1))
    with pytest.raises(ValueError, match="NaN or Inf"):
        GaussianPrior.fit(torch.full((3, 1, 4, 4), float("nan")), CosineSchedule())
    prior = power_law_prior(CosineSchedule(), size=6)
    with pytest.raises(ValueError, match="std"):
        prior.posterior_mean(torch.zeros(1, 2, 3, 3), Subsample(2), 0.0)


def test_save_and_load_round_trip_and_refuse_other_files(tmp_path):
    prior = power_law_prior(CosineSchedule(), size=6)
    prior.save(tmp_path / "g.pt")
    loaded = GaussianPrior.load(tmp_path / "g.pt", CosineSchedule())
    torch.testing.assert_close(loaded.power, prior.power)
    torch.testing.assert_close(loaded.mean, prior.mean)
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="other.pt: not a Gaussian prior file"):
        GaussianPrior.load(tmp_path / "other.pt", CosineSchedule())
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        GaussianPrior.load(tmp_path / "missing.pt", CosineSchedule())
    torch.save({"power": prior.power, "mean": torch.full_like(prior.mean, float("nan"))}, tmp_path / "nan-mean.pt")
    with pytest.raises(ValueError, match="nan-mean.pt: GaussianPrior: mean must be finite"):  # would make every epsilon NaN
        GaussianPrior.load(tmp_path / "nan-mean.pt", CosineSchedule())


def test_exact_gaussian_preconditions_strided_observations_where_the_stride_does_not_divide_the_grid():
    """At sub 2 of a 31 x 31 grid (16 x 16 observed nodes, not a circulant on the coarse
    grid) with noise std 0.01, plain CG stops at relative residual 0.14 after 40 iterations, and says so; the strategy's
    circulant-preconditioned CG reaches the dense posterior mean."""
    from ldiff.guidance.base import Observation
    from ldiff.guidance.exact_gaussian import ExactGaussian

    prior = power_law_prior(CosineSchedule(), size=31, slope=4.0)
    generator = torch.Generator().manual_seed(4)
    truth = prior.sample(2, generator)
    op, std = Subsample(2), 0.01
    y = observe(truth, op, std, generator)
    cov = dense_covariance(prior)
    a = torch.stack([op(e.reshape(1, 2, 31, 31).float()).reshape(-1) for e in torch.eye(1922)], dim=1).double()
    m = prior.mean[:, None, None].expand(2, 31, 31).reshape(-1).double()
    gain = cov @ a.T @ torch.linalg.inv(a @ cov @ a.T + std**2 * torch.eye(a.shape[0], dtype=torch.float64))
    expected = (m + (gain @ (y.reshape(2, -1).double() - a @ m).T).T).reshape(2, 2, 31, 31)
    with pytest.warns(UserWarning, match="conjugate gradients stopped at relative residual"):
        plain = prior.posterior_mean(y, op, std, maxiter=40)
    assert ((plain.double() - expected).norm() / expected.norm()).item() > 1e-2
    obs = Observation(y, op, std, (2, 31, 31))
    strategy = ExactGaussian(prior, maxiter=40)
    mean = strategy.reconstruct(None, obs, torch.zeros(2, 2, 31, 31), None)
    torch.testing.assert_close(mean.double(), expected, rtol=0, atol=1e-4 * expected.abs().max().item())
