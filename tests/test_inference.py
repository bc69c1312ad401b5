"""InferenceModule and ReconstructionWriter through trainer.predict (1 and 2 processes)."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import xarray as xr
from oracle import gaussian_prior

from ldiff.diffusion.sampler import PredictorCorrector
from ldiff.guidance.base import Observation, ScoreGuidance
from ldiff.guidance.dps_sum import DPSSum
from ldiff.lit.inference import InferenceModule, item_generator
from ldiff.metrics import BALANCED, DIVERGED
from ldiff.observe import Frames, Subsample

SCRIPT = Path(__file__).parent / "scripts" / "predict_gaussian.py"


def run_script(tmp_path, items, devices):
    output = tmp_path / "recon.nc"
    result = subprocess.run([sys.executable, str(SCRIPT), str(output), str(items), str(devices)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    with xr.open_dataset(output, engine="h5netcdf") as ds:
        return ds.load()


def test_single_process_predict_writes_every_item_with_its_reconstruction(tmp_path):
    ds = run_script(tmp_path, items=5, devices=1)
    assert ds["item"].values.tolist() == [0, 1, 2, 3, 4]
    assert ds["recon"].shape == (5, 2, 2, 16, 16)
    assert ds["truth"].shape == (5, 2, 16, 16)
    assert ds["y"].shape == (5, 2 * 8 * 8)
    # 8 steps, one guided evaluation each
    assert ds["diag_ratio"].shape == (8, 5, 2)
    assert np.isfinite(ds["recon"].values).all()
    assert ds.attrs["strategy"] == "dps-sum"
    # the writer stores exactly what predict_step returns for the same item
    prior = gaussian_prior(field_shape=(2, 16, 16))
    module = InferenceModule(DPSSum(gamma=1e-2), Subsample(2), std=0.1, samples=2, steps=8, seed=3)
    module.attach_prior(prior, prior.schedule)
    truth = torch.from_numpy(ds["truth"].values[:2])
    out = module.predict_step({"x": truth, "index": torch.tensor([0, 1])})
    np.testing.assert_allclose(out["recon"].numpy(), ds["recon"].values[:2], rtol=1e-5, atol=1e-6)
    assert not list(tmp_path.glob(".*"))  # no shard or temporary file left


@pytest.mark.slow
def test_two_process_ddp_predict_writes_each_of_7_items_exactly_once(tmp_path):
    ds = run_script(tmp_path, items=7, devices=2)
    assert ds["item"].values.tolist() == list(range(7))
    single = run_script(tmp_path / "single", items=7, devices=1)
    # observation noise is seeded per item, so both runs pose the same problems
    np.testing.assert_array_equal(ds["y"].values, single["y"].values)
    np.testing.assert_array_equal(ds["truth"].values, single["truth"].values)


def test_observation_noise_depends_only_on_seed_and_item():
    prior = gaussian_prior(field_shape=(2, 8, 8))
    module = InferenceModule(DPSSum(), Subsample(2), std=0.1, samples=1, steps=2, seed=5)
    module.attach_prior(prior, prior.schedule)
    truth = prior.sample(3, torch.Generator().manual_seed(1))
    together = module._observe(truth, torch.tensor([0, 1, 2]))
    alone = module._observe(truth[2:], torch.tensor([2]))
    torch.testing.assert_close(together[2:], alone)
    expected = Subsample(2)(truth[2:]) + 0.1 * torch.randn((2, 4, 4), generator=item_generator(5, 2, 0))
    torch.testing.assert_close(alone, expected)


class ExplodesOnSecondSample(ScoreGuidance):
    """Exact prior epsilon, except sample 1 is pushed to +inf after a few steps."""

    def __init__(self):
        self.calls = 0

    def guided_eps(self, denoiser, x_t, t, obs, diagnostics):
        self.calls += 1
        eps = denoiser.eps(x_t, t)
        if self.calls >= 3:
            eps = eps.clone()
            eps[1] = -1e30
        return eps


def test_a_diverging_sample_is_frozen_and_labelled_and_spares_the_others():
    prior = gaussian_prior(field_shape=(2, 8, 8))
    truth = prior.sample(2, torch.Generator().manual_seed(2))
    module = InferenceModule(ExplodesOnSecondSample(), Subsample(2), std=0.1, samples=1, steps=6, seed=0)
    module.attach_prior(prior, prior.schedule)
    out = module.predict_step({"x": truth, "index": torch.tensor([0, 1])})
    assert out["regime"][:, 0].tolist() == [BALANCED, DIVERGED]
    assert torch.isfinite(out["recon"]).all()
    assert out["recon"][1].abs().max() <= module.diverge_factor * module.data_range
    # sample 0 is exactly what an unguided run of it alone gives
    x1 = torch.randn((1, 2, 8, 8), generator=item_generator(0, 0, 1))
    alone = PredictorCorrector(prior.schedule, 6).sample(lambda x, t: prior(x, t), x1)
    torch.testing.assert_close(out["recon"][0], alone, rtol=1e-5, atol=1e-6)


def test_bad_observations_are_refused():
    prior = gaussian_prior(field_shape=(2, 8, 8))
    module = InferenceModule(DPSSum(), Subsample(2), std=0.1, steps=2)
    module.attach_prior(prior, prior.schedule)
    y = torch.zeros(1, 2, 4, 4)
    y[0, 0, 0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        module.predict_step({"y": y, "index": torch.tensor([0]), "field_shape": (2, 8, 8)})
    with pytest.raises(ValueError, match="shape"):
        module.predict_step({"y": torch.zeros(1, 2, 3, 3), "index": torch.tensor([0]), "field_shape": (2, 8, 8)})
    with pytest.raises(ValueError, match="std"):
        InferenceModule(DPSSum(), Subsample(2), std=0.0)
    # a window of 2 frames has no frame 3: zero observations
    with pytest.raises(ValueError, match="zero observations"):
        Observation(torch.zeros(1, 0, 8, 8), Frames(4, offset=3), 0.1, (4, 8, 8))


def test_the_default_strategy_is_mmps_with_the_prior_s_gaussian_fit():
    from ldiff.guidance.mmps import MMPS
    from ldiff.lit.inference import default_strategy

    module = InferenceModule(operator=Subsample(2))
    assert isinstance(module.strategy, MMPS) and module.strategy.covariance is None
    shipped = default_strategy("checkpoints/kolmogorov/prior.ckpt")
    assert shipped.covariance == "checkpoints/kolmogorov/gaussian.pt" and shipped._power.shape == (2, 64, 64)
    assert default_strategy("checkpoints/cylinder/prior.ckpt").covariance is None  # no gaussian.pt there
    with pytest.raises(ValueError, match="operator"):
        InferenceModule(DPSSum())
