"""The shipped cylinder window prior reconstructs a held-out Re = 100 wake window.

The prior (``checkpoints/cylinder-window/``, trained on Re 60, 80, 120, 150, 200) with
the default strategy (mmps with the prior's own skip-term Gaussian) reconstructs the first
held-out 16-frame window (2 x 16 x 99 x 199 values) from x subsampling 4 and 16
(N = 40,000 and 2,912), through ``trainer.predict``: the path of ``ldiff predict``.
One posterior sample, 32 predictor steps (the README table's), noise std 0.1 in
normalised units.

What holds: finite samples, none diverged or flat, the observations fitted to within
the noise, the wake shedding at the truth's frequency, and issue 15's energy ratio
(0.9-1.1) at both rates and normalised RMSE (rel_l2 < 0.3) at sub 4.

What does not hold yet (a strict xfail, which fails as soon as it passes): rel_l2 < 0.3
at sub 16, where one sample's error is about 0.32 (README table). One exact posterior
sample of the prior's skip-term Gaussian (x = m + S z) is at 0.36 there and its
posterior mean at 0.26: a posterior sample's error exceeds its posterior mean's by the
posterior spread.
"""

from pathlib import Path

import lightning as L
import numpy as np
import pytest

from ldiff.data.module import FieldDataModule
from ldiff.guidance.mmps import MMPS
from ldiff.lit.inference import InferenceModule
from ldiff.observe import Subsample

ROOT = Path(__file__).resolve().parents[1]
PRIOR = ROOT / "checkpoints/cylinder-window/prior.ckpt"
HELDOUT = ROOT / "checkpoints/cylinder-window/heldout.nc"
RATES = {4: 40_000, 16: 2_912}
RESIDUAL = (0.65, 1.2)  # one sample's residual std over the noise std: 0.77 measured at 32 steps, every rate


@pytest.fixture(scope="module", params=sorted(RATES))
def reconstruction(request) -> tuple[int, InferenceModule]:
    stride = request.param
    data = FieldDataModule(str(HELDOUT), split=(0.0, 0.0, 1.0), items=1, batch_size=1, condition=("mask",), window=16)
    module = InferenceModule(operator=Subsample(stride), std=0.1, samples=1, steps=32, seed=0, checkpoint=str(PRIOR))
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False, inference_mode=False)
    trainer.predict(module, datamodule=data, return_predictions=False)
    return stride, module


def test_the_shipped_cylinder_prior_reconstructs_a_held_out_window(reconstruction):
    stride, module = reconstruction
    assert isinstance(module.strategy, MMPS) and module.strategy.covariance == "prior"  # a gaussian-node prior's own skip term
    results = module.results()
    assert (results["items"], results["samples"], results["n_obs"]) == (1, 1, RATES[stride])
    assert (results["balanced"], results["flat"], results["diverged"]) == (1, 0, 0)
    assert all(np.isfinite(value) for value in results.values())
    assert RESIDUAL[0] < results["residual_ratio"] < RESIDUAL[1]
    assert results["strouhal_unresolved"] == 0 and results["strouhal_error"] < 0.05
    assert results["strouhal_truth"] == pytest.approx(0.18, rel=0.05)


def test_the_energy_ratio_meets_issue_15_bounds_at_both_rates(reconstruction):
    _, module = reconstruction
    assert 0.9 <= module.results()["energy_ratio"] <= 1.1


def test_the_normalised_rmse_meets_issue_15_bound(reconstruction, request):
    stride, module = reconstruction
    if stride == 16:
        request.applymarker(pytest.mark.xfail(strict=True, reason="issue 15: one sample's rel_l2 at sub 16 is about 0.32 (one exact sample of the skip term's Gaussian: 0.36)"))
    assert module.results()["rel_l2"] < 0.3


def test_the_shipped_cylinder_predict_config_reconstructs_from_sensor_rakes(tmp_path):
    """``ldiff predict --config configs/predict/cylinder.yaml``, the user's sensors: 4 rakes
    at x = 2, 4, 6, 8 (104 sensors, u and v of 16 frames: N = 3,328), one window, one
    sample, 8 steps. The file's observations sit on the grid nodes nearest the rakes, in
    the fluid, and the sample is finite and not diverged."""
    import xarray as xr

    from ldiff.cli import main

    out = tmp_path / "rakes.nc"
    args = ["predict", "--config", str(ROOT / "configs/predict/cylinder.yaml"), "--model.checkpoint", str(PRIOR),
            "--data.path", str(HELDOUT), "--data.items", "1", "--model.samples", "1", "--model.steps", "8",
            "--trainer.logger", "false", "--trainer.enable_progress_bar", "false", "--trainer.callbacks.init_args.output", str(out)]  # fmt: skip
    assert main(args) == 0
    with xr.open_dataset(out, engine="h5netcdf") as ds:
        assert ds.attrs["metric_n_obs"] == 3_328 and ds.sizes["obs"] == 3_328
        x = ds["x"].values
        nearest = {float(x[np.abs(x - position).argmin()]) for position in (2.0, 4.0, 6.0, 8.0)}
        assert set(np.unique(ds["obs_x"].values).tolist()) == nearest
        heights = np.unique(ds["obs_y"].values)
        assert len(heights) == 26 and heights.min() == pytest.approx(-2.0, abs=0.04) and heights.max() == pytest.approx(2.0, abs=0.04)
        assert np.isfinite(ds["recon"].values).all() and (ds["regime"].values != 2).all()
        assert ds.attrs["metric_diverged"] == 0 and np.isfinite(ds.attrs["metric_rel_l2"])
