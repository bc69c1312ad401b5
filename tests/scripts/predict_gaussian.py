"""Run trainer.predict of the InferenceModule with the oracle Gaussian prior.

Usage: python predict_gaussian.py OUTPUT.nc ITEMS DEVICES
Used by tests/test_inference.py, in a subprocess for the 2-process DDP case.
"""

import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from oracle import gaussian_prior  # noqa: E402

from ldiff.data.items import IndexedFields  # noqa: E402
from ldiff.guidance.dps_sum import DPSSum  # noqa: E402
from ldiff.lit.inference import InferenceModule  # noqa: E402
from ldiff.observe import Subsample  # noqa: E402
from ldiff.writers import ReconstructionWriter  # noqa: E402


def main(output: str, items: int, devices: int) -> None:
    torch.set_num_threads(1)
    prior = gaussian_prior(field_shape=(2, 16, 16))
    fields = prior.sample(items, torch.Generator().manual_seed(0))
    module = InferenceModule(DPSSum(gamma=1e-2), Subsample(2), std=0.1, samples=2, steps=8, seed=3)
    module.attach_prior(prior, prior.schedule, {"mean": torch.zeros(2), "std": torch.ones(2)})
    trainer = L.Trainer(
        accelerator="cpu",
        devices=devices,
        strategy="ddp" if devices > 1 else "auto",
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        inference_mode=True,
        callbacks=[ReconstructionWriter(output, attrs={"strategy": "dps-sum"})],
    )
    trainer.predict(module, DataLoader(IndexedFields(fields), batch_size=2), return_predictions=False)


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]))
