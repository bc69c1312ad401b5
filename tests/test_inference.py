"""InferenceModule and ReconstructionWriter through trainer.predict (1 and 2 processes)."""

import csv
import runpy
import subprocess
import sys
from pathlib import Path
from unittest import mock

import h5py
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


def run_script(tmp_path, items, devices, strategy="ddrm", batch=2, corrections=0):
    output = tmp_path / "recon.nc"
    args = [str(output), str(items), str(devices), strategy, str(batch), str(corrections)]
    result = subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"ldiff: wrote {output} ({items} items x 2 samples)" in result.stdout  # the closing line
    with xr.open_dataset(output, engine="h5netcdf") as ds:
        return ds.load()


def logged_metrics(tmp_path) -> dict[str, float]:
    """What the module logged (CSVLogger of the script): the ``predict/*`` row."""
    with open(tmp_path / "log" / "version_0" / "metrics.csv") as f:
        (row,) = [r for r in csv.DictReader(f) if r.get("predict/rmse")]
    return {key[len("predict/"):]: float(value) for key, value in row.items() if key.startswith("predict/")}


def test_single_process_predict_writes_every_item_with_its_reconstruction(tmp_path):
    ds = run_script(tmp_path, items=5, devices=1, strategy="dps-sum")
    assert ds["item"].values.tolist() == [0, 1, 2, 3, 4]
    assert ds["recon"].dims == ("item", "sample", "frame", "component", "y", "x")
    assert ds["recon"].shape == (5, 2, 1, 2, 16, 16)
    assert ds["truth"].shape == (5, 1, 2, 16, 16)
    assert ds["observation"].shape == (5, 2 * 8 * 8)
    # 8 steps, one guided evaluation each
    assert ds["diag_ratio"].shape == (8, 5, 2)
    assert np.isfinite(ds["recon"].values).all()
    assert (ds.attrs["strategy"], ds.attrs["label"], ds.attrs["n_obs"], ds.attrs["std_normalised"]) == ("DPSSum", "dps-sum", 128, 0.1)
    # every numeric variable carries Fletcher-32 checksums: a corrupted chunk of the
    # reconstruction is an error when read, not silently wrong numbers
    path = tmp_path / "recon.nc"
    with h5py.File(path) as file:
        assert all(file[name].fletcher32 for name in ("recon", "truth", "observation", "regime", "diag_ratio"))
        chunk = file["recon"].id.get_chunk_info(0)
    data = bytearray(path.read_bytes())
    for i in range(chunk.byte_offset + chunk.size // 4, chunk.byte_offset + chunk.size // 2):
        data[i] ^= 0x5A
    (tmp_path / "bad.nc").write_bytes(data)
    with pytest.raises(OSError):
        xr.load_dataset(tmp_path / "bad.nc", engine="h5netcdf")["recon"].values
    # the file holds what predict_step returns for the same item, in physical units:
    # u = 0.5 + 2 u', v = -0.25 + 0.5 v' (the script's normaliser), x and y on the grid (0.5, 0.25)
    prior = gaussian_prior(field_shape=(2, 16, 16))
    module = InferenceModule.from_prior(prior, prior.schedule, strategy=DPSSum(gamma=1e-2), operator=Subsample(2), std=0.1, samples=2, steps=8, seed=3)
    truth = prior.sample(5, torch.Generator().manual_seed(0))[:2]
    out = module.predict_step({"x": truth, "index": torch.tensor([0, 1])})
    scale, shift = np.array([2.0, 0.5])[:, None, None], np.array([0.5, -0.25])[:, None, None]
    np.testing.assert_allclose(ds["recon"].values[:2, :, 0], out["recon"].numpy() * scale + shift, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds["truth"].values[:2, 0], truth.numpy() * scale + shift, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(ds["x"].values, 0.5 * np.arange(16))
    np.testing.assert_allclose(ds["y"].values, 0.25 * np.arange(16))
    # observation i sits at node (obs_y, obs_x) of component obs_component: every 2nd node
    u = ds["observation"].where(ds["obs_component"] == "u", drop=True)
    assert np.allclose(np.unique(u["obs_x"]), 0.5 * np.arange(0, 16, 2)) and np.allclose(np.unique(u["obs_y"]), 0.25 * np.arange(0, 16, 2))
    residual = (u - ds["truth"].sel(frame=0, component="u").sel(x=u["obs_x"], y=u["obs_y"])) / 2.0
    assert 0.07 < float(residual.std()) < 0.13  # noise std 0.1 in normalised units
    assert ds["regime"].attrs["flag_meanings"] == "balanced flat diverged"
    assert not list(tmp_path.glob(".*"))  # no shard or temporary file left


BITWISE_CASES = {"dps-sum with one correction": ("dps-sum", 1), "ddrm": ("ddrm", 0)}


@pytest.mark.slow
@pytest.mark.parametrize("case", BITWISE_CASES)
def test_reconstructions_are_bitwise_equal_whatever_the_batching_and_the_devices(tmp_path, case):
    """Each item's K samples depend only on (seed, item, sample): 7 items in batches of
    1, 4 and 7 on one process, and in batches of 3 on 2 processes (ranks of 4 and 3
    items), give the same bits: initial noise, observation noise, Langevin noise (one
    correction per step) and DDRM's transition noise. Each item is written once, no
    shard is left, and the metrics (reduced over both ranks) and what the module logged
    are those of one process."""
    strategy, corrections = BITWISE_CASES[case]
    script = runpy.run_path(str(SCRIPT))  # one process: in this one
    runs = {}
    for batch in (1, 4, 7):
        (tmp_path / f"b{batch}").mkdir()
        script["main"](str(tmp_path / f"b{batch}" / "recon.nc"), 7, 1, strategy, batch, corrections)
        runs[f"batch {batch}"] = xr.load_dataset(tmp_path / f"b{batch}" / "recon.nc", engine="h5netcdf")
    two = runs["2 devices, batch 3"] = run_script(tmp_path / "ddp", 7, 2, strategy, 3, corrections)
    reference = runs.pop("batch 1")
    assert np.isfinite(reference["recon"].values).all()
    for name, ds in runs.items():
        for variable in ("recon", "truth", "observation", "regime"):
            np.testing.assert_array_equal(ds[variable].values, reference[variable].values, err_msg=f"{name}: {variable}")
    assert two["item"].values.tolist() == list(range(7)) and not list((tmp_path / "ddp").glob(".*"))
    metrics = {k: v for k, v in two.attrs.items() if k.startswith("metric_")}
    assert metrics["metric_items"] == 7 and metrics["metric_balanced"] + metrics["metric_flat"] + metrics["metric_diverged"] == 14
    for key, value in metrics.items():
        assert value == pytest.approx(reference.attrs[key], rel=1e-9, nan_ok=True), key
    logged, logged_single = logged_metrics(tmp_path / "ddp"), logged_metrics(tmp_path / "b1")
    assert logged.keys() == {key[len("metric_"):] for key in metrics}
    for key, value in logged.items():
        assert value == pytest.approx(logged_single[key], rel=1e-9, nan_ok=True), key
        assert value == pytest.approx(float(metrics[f"metric_{key}"]), rel=1e-9, nan_ok=True), key


def test_a_csv_only_predict_logs_its_metrics_without_drawing_the_w_and_b_panels(tmp_path):
    """The reconstruction panels are images for W&B; with only a CSVLogger they are not
    drawn (each took about a second), and the metrics are still logged."""
    script = runpy.run_path(str(SCRIPT))
    with mock.patch("ldiff.figures.reconstruction_figure", side_effect=AssertionError("drawn for a CSVLogger")):
        script["main"](str(tmp_path / "recon.nc"), 2, 1, "dps-sum", 2, 0)
    assert logged_metrics(tmp_path)["items"] == 2


def test_observation_noise_depends_only_on_seed_and_item():
    prior = gaussian_prior(field_shape=(2, 8, 8))
    module = InferenceModule.from_prior(prior, prior.schedule, strategy=DPSSum(), operator=Subsample(2), std=0.1, samples=1, steps=2, seed=5)
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
    module = InferenceModule.from_prior(prior, prior.schedule, strategy=ExplodesOnSecondSample(), operator=Subsample(2), std=0.1, samples=1, steps=6, seed=0)
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
    module = InferenceModule.from_prior(prior, prior.schedule, strategy=DPSSum(), operator=Subsample(2), std=0.1, steps=2)
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


def test_the_default_strategy_is_mmps_with_the_prior_s_gaussian_fit(tmp_path):
    import shutil

    from ldiff.guidance.mmps import MMPS
    from ldiff.lit.inference import default_strategy

    module = InferenceModule(operator=Subsample(2))
    assert isinstance(module.strategy, MMPS) and module.strategy.covariance is None
    shipped = default_strategy("checkpoints/kolmogorov/prior.ckpt")
    assert shipped.covariance == "checkpoints/kolmogorov/gaussian.pt" and shipped._power.shape == (2, 64, 64)
    shipped = default_strategy("checkpoints/cylinder-window/prior.ckpt")  # by path alone: the fit beside it
    assert shipped.covariance == "checkpoints/cylinder-window/gaussian.pt" and shipped._power.shape == (32, 99, 199)
    cylinder = InferenceModule(operator=Subsample(2), checkpoint="checkpoints/cylinder-window/prior.ckpt")
    assert cylinder.strategy.covariance == "prior"  # a gaussian-node prior: its own skip term, not the fit of x
    alone = shutil.copy("checkpoints/kolmogorov/prior.ckpt", tmp_path / "prior.ckpt")
    assert default_strategy(str(alone)).covariance is None  # no gaussian.pt beside it
    with pytest.raises(ValueError, match="operator"):
        InferenceModule(DPSSum())


@pytest.fixture(scope="module")
def small_wake(tmp_path_factory):
    """A small simulated wake (63 x 31 nodes, 2 trajectories of 40 frames 1 D/U apart)
    as a store, and its attributes."""
    from ldiff.data.cylinder import generate_cylinder
    from ldiff.data.store import save

    ds = generate_cylinder(40, spacing=0.25, dt_frame=1.0, spinup_time=40.0, n_traj=2, seed=0)
    return save(ds, tmp_path_factory.mktemp("wake") / "wake.nc"), ds.attrs


def exact_gaussian_run(store, operator, condition=()):
    """trainer.predict of the exact Gaussian posterior (a Gaussian fitted to the train
    half's 16-frame windows) on the test half; returns the module."""
    import lightning as L

    from ldiff.data.module import FieldDataModule
    from ldiff.diffusion.schedules import CosineSchedule
    from ldiff.guidance.exact_gaussian import ExactGaussian
    from ldiff.nets.gaussian import GaussianPrior

    data = FieldDataModule(str(store), window=16, split=(0.5, 0.0, 0.5), random_window=False, batch_size=2, condition=condition)
    data.setup()
    train = data.dataset("train")
    schedule = CosineSchedule(eta=1e-3)
    prior = GaussianPrior.fit(torch.stack([train[i]["x"] for i in range(len(train))]), schedule)
    module = InferenceModule.from_prior(prior, schedule, data.normalizer.state_dict(), strategy=ExactGaussian(prior),
                                        operator=operator, std=0.1, samples=2, steps=8, seed=0)  # fmt: skip
    trainer = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False)
    trainer.predict(module, datamodule=data, return_predictions=False)
    return module


def test_cylinder_wake_windows_are_scored_by_their_strouhal_number(small_wake):
    """16-frame windows of a wake (its store says ``flow: cylinder``) get the Strouhal
    metrics; the exact Gaussian posterior at x subsampling 4 sheds at the truth's
    frequency (within 1 %), which the run's lift puts near the store's St."""
    store, attrs = small_wake
    results = exact_gaussian_run(store, Subsample(4)).results()
    assert results["items"] == 2 and results["strouhal_unresolved"] == 0
    assert results["strouhal_truth"] == pytest.approx(attrs["strouhal"], rel=0.05)
    assert results["strouhal_error"] < 0.01


def test_sensor_rakes_and_random_fluid_sensors_are_placed_on_the_datas_grid_by_the_module(small_wake):
    """Operators named by physical position are bound to the data's grid and its mask
    condition in ``setup``: rakes 1, 3 and 5 diameters downstream, a sensor every 0.5 in
    y from -2 to 2 (9 per rake), and 5 % of the fluid nodes at random."""
    from ldiff.observe import Rakes, RandomSensors

    store, _ = small_wake
    rakes = Rakes(x=[1.0, 3.0, 5.0], y_min=-2.0, y_max=2.0, spacing=0.5)
    module = exact_gaussian_run(store, rakes, condition=("mask",))
    assert module.results()["n_obs"] == 2 * 16 * 3 * 9
    random = RandomSensors(0.05, seed=1)
    module = exact_gaussian_run(store, random, condition=("mask",))
    fluid = module.trainer.datamodule.cond[0] > 0.5
    assert not (random._mask & ~fluid).any() and random.points == round(0.05 * int(fluid.sum()))
    assert module.results()["n_obs"] == 2 * 16 * random.points
