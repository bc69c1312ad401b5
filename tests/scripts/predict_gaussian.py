"""Run trainer.predict of the InferenceModule with the oracle Gaussian prior.

Usage: python predict_gaussian.py OUTPUT.nc ITEMS DEVICES [STRATEGY [BATCH [CORRECTIONS]]]
STRATEGY: ``ddrm`` (stochastic: draws sampler noise at every step, the default) or
``dps-sum``; BATCH items per batch (2); CORRECTIONS Langevin corrections per step (0). Used by tests/test_inference.py, in a subprocess for the 2-process DDP case.
The module's metrics (computed on every rank) and its settings are logged to a
CSVLogger in OUTPUT's directory, ``log/``.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import CSVLogger
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oracle import gaussian_prior  # noqa: E402

from ldiff.data.items import IndexedFields  # noqa: E402
from ldiff.guidance.ddrm import DDRM  # noqa: E402
from ldiff.guidance.dps_sum import DPSSum  # noqa: E402
from ldiff.lit.inference import InferenceModule  # noqa: E402
from ldiff.observe import Subsample  # noqa: E402
from ldiff.writers import ReconstructionWriter  # noqa: E402

STRATEGIES = {"ddrm": lambda: DDRM(eta=0.85, eta_b=1.0), "dps-sum": lambda: DPSSum(gamma=1e-2)}


def main(output: str, items: int, devices: int, strategy: str = "ddrm", batch: int = 2, corrections: int = 0) -> None:
    torch.set_num_threads(1)
    prior = gaussian_prior(field_shape=(2, 16, 16))
    fields = prior.sample(items, torch.Generator().manual_seed(0))
    normalizer = {"mean": torch.tensor([0.5, -0.25]), "std": torch.tensor([2.0, 0.5])}
    module = InferenceModule.from_prior(
        prior, prior.schedule, normalizer,
        strategy=STRATEGIES[strategy](), operator=Subsample(2), std=0.1, samples=2, steps=8, corrections=corrections, seed=3,
        grid=(0.5, 0.25, True),
    )
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=CSVLogger(str(Path(output).parent), name="log", version=0),
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=True,
        callbacks=[ReconstructionWriter(output, attrs={"label": strategy})],
    )
    trainer.predict(module, DataLoader(IndexedFields(fields), batch_size=batch), return_predictions=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), *sys.argv[4:5], *map(int, sys.argv[5:]))
