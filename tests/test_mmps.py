"""mmps on the Gaussian oracle, where it is exact: the Tweedie covariance, the guided
Tweedie estimate equal to E[x | x_t, y] (dense conditioning) with the network's and with
the known covariance, posterior quality close to exact samples at every N, finite samples
from an oracle whose Jacobian is made indefinite, independence, bad input."""

import unittest.mock

import pytest
import torch
from oracle import (
    FIELD_SHAPE,
    STD,
    alone_and_batched,
    bad_inputs,
    dense_conditional_mean,
    problem,
    relative_rmse,
    residual_rms,
    sample,
    sample_mean,
)

from ldiff.diffusion.denoise import Denoiser, tweedie
from ldiff.diffusion.sampler import PredictorCorrector
from ldiff.guidance.base import Diagnostics, Observation
from ldiff.guidance.mmps import MMPS
from ldiff.linalg import truncated_cg
from ldiff.nets.gaussian import GaussianPrior, _fft, _ifft
from ldiff.observe import Subsample
from ldiff.quality import jacobian_agreement


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
def test_tweedie_covariance_is_exact(t):
    r"""(sigma^2/mu) J v equals Cov[x | x_t] v = sigma^2 Sigma (mu^2 Sigma + sigma^2)^{-1} v.

    In float64: at large t, x_hat = (x_t - sigma eps_hat)/mu divides a near-cancelling
    difference by a small mu, and float32 keeps only ~1e-1 relative precision in J at t = 0.9."""
    prior = problem().prior.double()
    tt = torch.full((1,), t, dtype=torch.float64)
    x = torch.randn((1, *FIELD_SHAPE), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    x.requires_grad_(True)
    _, x_hat = Denoiser(prior, prior.schedule)(x, tt)
    v = torch.randn((1, *FIELD_SHAPE), generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (jv,) = torch.autograd.grad(x_hat, x, v)
    mu, sigma = float(prior.schedule.mu(t)), float(prior.schedule.sigma(t))
    exact = _ifft(_fft(v) * sigma**2 * prior.power / (mu**2 * prior.power + sigma**2))
    torch.testing.assert_close(sigma**2 / mu * jv, exact, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("t", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("regime", ["network", "known", "known-prior"])
def test_guided_estimate_is_the_exact_conditional_mean(t, regime):
    """With the network's covariance (VJPs, known_above = inf) and with the prior's own
    Gaussian as the known covariance (known_above tiny: FFTs, no VJP; given as the
    Gaussian, or as ``"prior"``, read from the denoiser's model) alike."""
    pb = problem(stride=4, batch=2)
    prior = pb.prior.double()
    obs = Observation(pb.obs.y.double(), pb.obs.op, STD, FIELD_SHAPE)
    tt = torch.full((2,), t, dtype=torch.float64)
    noise = torch.randn((2, *FIELD_SHAPE), generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x_t = prior.schedule.perturb(pb.truth.double(), tt, noise)
    d = Diagnostics()
    if regime == "network":
        strategy = MMPS(maxiter=300, known_above=float("inf"))
    else:  # the Gaussian given, or read from the denoiser's model ("prior")
        strategy = MMPS(known_above=1e-9, covariance=pb.prior if regime == "known" else "prior", known_maxiter=300)
    eps_tilde = strategy.guided_eps(Denoiser(prior, prior.schedule), x_t, tt, obs, d)
    x_hat = tweedie(x_t, eps_tilde, *prior.schedule.coefficients(tt, x_t))
    exact = dense_conditional_mean(prior, x_t, t, obs.y, obs.op, STD)
    assert relative_rmse(x_hat, exact).max() < 1e-6
    stacked = d.stacked()
    assert stacked["gamma_share"].isnan().all()
    assert (stacked["known"] == (0.0 if regime == "network" else 1.0)).all()
    assert (stacked["cg_truncated"] == 0).all()


@pytest.mark.parametrize("t, network_bound, known_bound", [(0.3, 0.01, 1e-5), (0.6, 0.02, 1e-5), (0.9, None, 0.01)])
def test_a_std_per_observation_is_solved_in_a_few_iterations(t, network_bound, known_bound):
    """Observations of standardised coordinates carry a std per observation spanning
    orders of magnitude (0.035 to 13 on the cylinder). CG preconditioned by the diagonal
    of s^2 I + A V A^T reaches E[x | x_t, y] in mmps's default 3 iterations (network) and
    10 (known covariance); measured without the preconditioner: 0.09 / 0.32 and 0.07 /
    0.12 / 0.27 relative error at t = 0.3 / 0.6 / 0.9, with it 0.003 / 0.008 and < 1e-6 /
    1e-6 / 0.002 (std log-spaced over 1e-2 .. 10 here)."""
    pb = problem(stride=4, batch=2)
    prior, op = pb.prior.double(), pb.obs.op
    clean = op(pb.truth.double())
    generator = torch.Generator().manual_seed(5)
    n = clean[0].numel()
    std = torch.logspace(-2, 1, n, dtype=torch.float64)[torch.randperm(n, generator=generator)].reshape(clean.shape[1:])
    y = clean + std * torch.randn(clean.shape, generator=generator, dtype=torch.float64)
    obs = Observation(y, op, std.expand_as(y), FIELD_SHAPE)
    tt = torch.full((2,), t, dtype=torch.float64)
    x_t = prior.schedule.perturb(pb.truth.double(), tt, torch.randn((2, *FIELD_SHAPE), generator=generator, dtype=torch.float64))
    exact = dense_conditional_mean(prior, x_t, t, y, op, std)
    strategies = {"known": (MMPS(known_above=1e-9, covariance=pb.prior), known_bound)}
    if network_bound is not None:
        strategies["network"] = (MMPS(known_above=float("inf")), network_bound)
    for name, (strategy, bound) in strategies.items():
        eps_tilde = strategy.guided_eps(Denoiser(prior, prior.schedule), x_t, tt, obs, Diagnostics())
        x_hat = tweedie(x_t, eps_tilde, *prior.schedule.coefficients(tt, x_t))
        assert relative_rmse(x_hat, exact).max().item() < bound, name


def test_isotropic_known_covariance_is_the_unit_gaussian_conditioning():
    """Without a Gaussian fit the known regime uses V = sigma^2/(mu^2 + sigma^2) I, the
    exact covariance under x ~ N(0, I): the guided estimate is then E[x | x_t, y] of the
    unit white prior, which the dense conditioning gives with P = 1."""
    pb = problem(stride=4, batch=2)
    white = GaussianPrior(pb.prior.schedule, torch.ones(FIELD_SHAPE), torch.zeros(2)).double()
    obs = Observation(pb.obs.y.double(), pb.obs.op, STD, FIELD_SHAPE)
    tt = torch.full((2,), 0.9, dtype=torch.float64)
    x_t = white.schedule.perturb(pb.truth.double(), tt, torch.randn((2, *FIELD_SHAPE), dtype=torch.float64))
    eps_tilde = MMPS(known_above=1.0).guided_eps(Denoiser(white, white.schedule), x_t, tt, obs, None)
    x_hat = tweedie(x_t, eps_tilde, *white.schedule.coefficients(tt, x_t))
    assert relative_rmse(x_hat, dense_conditional_mean(white, x_t, 0.9, obs.y, obs.op, STD)).max() < 1e-9


@pytest.mark.parametrize(
    "stride, exact_error, error_bound, residual",
    # Measured (K = 32, 64 DDIM steps, maxiter 8, the prior's own Gaussian as the known
    # covariance above sigma/mu = 10): mean error 0.208 / 0.100 / 0.042 against
    # 0.237 / 0.104 / 0.045 for 32 exact samples; one sample's residual 1.02 / 0.88 / 0.89
    # std against 0.81 / 1.04 / 0.99 for one exact sample. (Without the Gaussian, the
    # isotropic known covariance gives 0.390 / 0.177 / 0.054: white where the prior is red.)
    [(8, 0.237, 0.25, 1.02), (4, 0.104, 0.12, 0.88), (2, 0.045, 0.05, 0.89)],
)
def test_posterior_quality_is_close_to_exact_at_every_n(stride, exact_error, error_bound, residual):
    k = 32
    pb = problem(stride=stride)
    exact = pb.posterior_samples(k)
    x = sample(MMPS(maxiter=8, covariance=pb.prior), pb, k)
    assert relative_rmse(sample_mean(exact, k), pb.posterior_mean).item() == pytest.approx(exact_error, abs=0.005)
    assert relative_rmse(sample_mean(x, k), pb.posterior_mean).item() < error_bound
    assert residual_rms(x[:1], pb.obs).item() / STD == pytest.approx(residual, abs=0.05)


def test_one_iteration_is_close():
    """Measured (stride 2, maxiter 1): mean error 0.059 (exact samples 0.045), residual 0.93 std."""
    k = 32
    pb = problem(stride=2)
    x = sample(MMPS(maxiter=1, covariance=pb.prior), pb, k)
    assert relative_rmse(sample_mean(x, k), pb.posterior_mean).item() < 0.07
    assert 0.85 < residual_rms(x[:1], pb.obs).item() / STD < 1.0


class IndefiniteJacobian(torch.nn.Module):
    r"""The oracle's exact epsilon plus a ripple whose value is small and whose Jacobian is
    a large symmetric indefinite matrix at large t, as a network's trained with the epsilon
    loss: :math:`\hat\varepsilon \to \hat\varepsilon - (g/\sigma) \nabla\phi(x_t)`
    with :math:`\phi = c^2 \sum_i (1 - \cos((S x_t)_i / c))`, :math:`S` a symmetric Fourier
    multiplier of random signs and :math:`g(t) = \beta` where :math:`\sigma/\mu > 3`, 0
    elsewhere. The Tweedie covariance becomes
    :math:`V + g (\sigma/\mu)^2 S \operatorname{diag}(\cos(S x_t / c)) S`: a symmetric
    perturbation growing like :math:`(\sigma/\mu)^2`, :math:`10^6` at t = 1, while
    :math:`|\delta\hat\varepsilon| \le g c / \sigma`."""

    def __init__(self, prior: GaussianPrior, beta: float = 1.0, c: float = 1e-2):
        super().__init__()
        self.prior, self.beta, self.c = prior, beta, c
        signs = torch.randint(0, 2, FIELD_SHAPE, generator=torch.Generator().manual_seed(9)) * 2.0 - 1.0
        # a real multiplier even in k (P(k) = P(-k)) is a symmetric operator
        self.signs = torch.sign(signs + torch.roll(torch.flip(signs, (-2, -1)), (1, 1), (-2, -1)) + 0.5)

    def ripple_gradient(self, x_t):
        s = lambda v: _ifft(_fft(v) * self.signs)  # noqa: E731
        return self.c * s(torch.sin(s(x_t) / self.c))

    def forward(self, x_t, t, cond=None):
        mu, sigma = self.prior.schedule.coefficients(t, x_t)
        gate = torch.where(sigma / mu > 3, self.beta, 0.0)
        return self.prior(x_t, t) - gate / sigma * self.ripple_gradient(x_t)


def test_indefinite_jacobian_gives_finite_samples():
    """Every setting gives finite samples on the perturbed oracle; the Jacobian diagnostic
    finds where the perturbation starts (sigma/mu = 3), and with that threshold mmps's
    samples are those of the unperturbed oracle."""
    pb = problem(stride=4, batch=2)
    bad = Denoiser(IndefiniteJacobian(pb.prior), pb.prior.schedule)
    k = 4
    obs = pb.obs.repeat(k)
    x1 = torch.randn((obs.y.shape[0], *FIELD_SHAPE), generator=torch.Generator().manual_seed(2))
    sampler = PredictorCorrector(pb.prior.schedule, steps=32)
    # the perturbation does make V indefinite at large t: probes see both signs
    tt = torch.full((1,), 0.95)
    x = pb.truth[:1].clone().requires_grad_(True)
    _, x_hat = bad(x, tt)
    mu, sigma = pb.prior.schedule.coefficients(tt, x)
    quotients = []
    for seed in range(8):
        probe = torch.randn((1, *FIELD_SHAPE), generator=torch.Generator().manual_seed(seed))
        (jv,) = torch.autograd.grad(x_hat, x, probe, retain_graph=True)
        quotients.append((sigma**2 / mu * jv * probe).sum().item())
    assert min(quotients) < 0 < max(quotients)
    # the diagnostic: agreement up to the last grid time below sigma/mu = 3
    times = [0.1, 0.3, 0.5, 0.6, 0.65, 0.7, 0.8, 0.9, 1.0]
    found = jacobian_agreement(bad.model, pb.prior.schedule, pb.prior.power, pb.truth, {"sub4": Subsample(4)}, times)
    assert found.agrees_up_to_t == 0.6 and found.agrees_up_to_sigma_bar < 3 < pb.prior.schedule.sigma_bar(0.65)
    # plain conjugate gradients (no truncation) at the network's covariance everywhere
    plain = MMPS(known_above=float("inf"))
    plain_solver = "ldiff.guidance.mmps.truncated_cg"
    with unittest.mock.patch(plain_solver, lambda f, b, maxiter, curvature_floor=0.0, **kw: truncated_cg(f, b, maxiter, curvature_floor=-float("inf"))):
        assert not torch.isfinite(plain.reconstruct(bad, obs, x1, sampler)).all()
    for strategy in (MMPS(known_above=float("inf")), MMPS(covariance=pb.prior), MMPS()):
        d = Diagnostics()
        x = strategy.reconstruct(bad, obs, x1, sampler, diagnostics=d)
        assert torch.isfinite(x).all(), strategy
    assert d.stacked()["known"].any() and d.stacked()["cg_truncated"].any()
    measured = MMPS(covariance=pb.prior, known_above=found.agrees_up_to_sigma_bar)
    exact = MMPS(covariance=pb.prior, known_above=found.agrees_up_to_sigma_bar).reconstruct(pb.denoiser, obs, x1, sampler)
    x = measured.reconstruct(bad, obs, x1, sampler)
    torch.testing.assert_close(residual_rms(x, obs), residual_rms(exact, obs), rtol=0.02, atol=0)
    # measured 0.037-0.042: the ripple's value, |delta eps| <= c / sigma, still moves the
    # prior's own steps; the guidance no longer amplifies it
    assert relative_rmse(x, exact).max() < 0.06


def test_truncated_cg_stops_at_negative_curvature_and_solves_the_rest():
    """Sample 0's map is indefinite (eigenvalues 2, -1), sample 1's positive definite: sample
    1 is solved exactly, sample 0 stops without dividing by its curvature."""
    m = torch.stack([torch.diag(torch.tensor([2.0, -1.0])), torch.tensor([[2.0, 0.5], [0.5, 1.0]])])
    b = torch.tensor([[0.1, 1.0], [1.0, 2.0]])
    solve = truncated_cg(lambda v: torch.einsum("bij,bj->bi", m, v), b, maxiter=10, rtol=1e-12)
    assert torch.isfinite(solve.x).all()
    assert solve.truncated.tolist() == [True, False]
    torch.testing.assert_close(solve.x[1], torch.linalg.solve(m[1], b[1]))
    assert solve.iterations.tolist() == [0, 2]
    torch.testing.assert_close(solve.x[0], torch.zeros(2))


def test_samples_are_independent():
    alone, batched = alone_and_batched(MMPS(maxiter=4))
    torch.testing.assert_close(alone, batched, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("case", list(bad_inputs()))
def test_bad_input(case):
    pattern, run = bad_inputs()[case]
    with pytest.raises(ValueError, match=pattern):
        run(MMPS())


@pytest.mark.parametrize("maxiter", [0, -1, 2.0, True])
def test_bad_maxiter(maxiter):
    with pytest.raises(ValueError, match="maxiter"):
        MMPS(maxiter)


def test_jacobian_diagnostic_on_the_exact_oracle_agrees_at_every_t():
    """The exact prior's Tweedie covariance is its Gaussian's: quotients equal to float32
    precision wherever t <= 0.9, agreement up to t = 1."""
    pb = problem(stride=4, batch=2)
    times = [0.1, 0.5, 0.9, 1.0]
    found = jacobian_agreement(pb.prior, pb.prior.schedule, pb.prior.power, pb.truth, {"sub4": Subsample(4), "sub2": Subsample(2)}, times)
    assert found.agrees_up_to_t == 1.0
    for i in range(3):
        for net, gauss in zip(found.network[i], found.gaussian[i]):
            assert net == pytest.approx(gauss, rel=1e-3)
    assert found.negative == [[0.0, 0.0]] * 4
