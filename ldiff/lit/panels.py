"""``SamplePanel``: a look at what the prior has learnt, every few epochs of ``fit``.

SDA's training logs a panel of sample vorticity now and then; a loss curve alone does
not show a prior that makes smooth blobs or noise. Every ``every_n_epochs`` epochs, rank
0 draws ``samples`` unconditional samples from the averaged (EMA) network with SDA's
predictor (``steps`` steps, no corrector, a fixed seed so panels compare across epochs),
maps them to physical units with the DataModule's normaliser, and draws the vorticity
of their first frame (:func:`ldiff.physics.vorticity` on the store's grid), one panel
each on one symmetric colour range with a colour bar. The figure is saved as
``<log dir>/samples/epoch-<NNN>.png`` and logged as the image ``samples/vorticity`` to a
``WandbLogger``.
"""

from __future__ import annotations

from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from ldiff.diffusion.denoise import Denoiser
from ldiff.diffusion.precond import standardization
from ldiff.diffusion.sampler import PredictorCorrector
from ldiff.physics import vorticity


class SamplePanel(Callback):
    """Log a panel of unconditional sample vorticity every ``every_n_epochs`` epochs.

    Args:
        every_n_epochs: epochs between panels (a panel after epochs n, 2n, ...).
        samples: samples per panel.
        steps: predictor steps per sample.
        seed: seed of the samples' initial noise.
    """

    def __init__(self, every_n_epochs: int = 4, samples: int = 4, steps: int = 32, seed: int = 0):
        if every_n_epochs < 1 or samples < 1 or steps < 1:
            raise ValueError(f"SamplePanel: every_n_epochs, samples and steps must be >= 1, got {every_n_epochs}, {samples}, {steps}")
        self.every_n_epochs, self.samples, self.steps, self.seed = every_n_epochs, samples, steps, seed

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if (trainer.current_epoch + 1) % self.every_n_epochs or not trainer.is_global_zero or trainer.sanity_checking:
            return
        figure = self.figure(pl_module, trainer.datamodule, trainer.current_epoch)
        directory = Path(trainer.log_dir or trainer.default_root_dir) / "samples"
        directory.mkdir(parents=True, exist_ok=True)
        figure.savefig(directory / f"epoch-{trainer.current_epoch:03d}.png", dpi=100)
        from lightning.pytorch.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(key="samples/vorticity", images=[figure], step=trainer.global_step)
        import matplotlib.pyplot as plt

        plt.close(figure)

    @torch.no_grad()
    def draw(self, pl_module, datamodule) -> torch.Tensor:
        """``samples`` fields (S, C, H, W) in physical units from the averaged network."""
        height, width = datamodule.fields["train"].shape[-2:]
        device = pl_module.device
        generator = torch.Generator(device=device).manual_seed(self.seed)
        x1 = torch.randn((self.samples, datamodule.channels, height, width), generator=generator, device=device)
        cond = None if datamodule.cond is None else datamodule.cond.to(device).expand(self.samples, *datamodule.cond.shape)
        denoiser = Denoiser(pl_module.net, pl_module.schedule, cond)
        x = PredictorCorrector(pl_module.schedule, self.steps).sample(denoiser.eps, x1)
        latent = standardization(pl_module.net)
        return datamodule.normalizer.denormalize((x if latent is None else latent.decode(x)).cpu())

    def figure(self, pl_module, datamodule, epoch: int):
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        attrs = datamodule.attrs
        fields = self.draw(pl_module, datamodule).double()
        w = vorticity(fields, float(attrs["dx"]), float(attrs["dy"]), bool(int(attrs["periodic"])))[:, 0].numpy()
        limit = float(abs(w).max()) or 1.0
        fig, axes = plt.subplots(1, len(w), figsize=(2.4 * len(w) + 0.8, 2.6), squeeze=False, layout="constrained")
        for ax, field in zip(axes[0], w):
            image = ax.imshow(field, cmap="RdBu_r", vmin=-limit, vmax=limit, origin="lower")
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(image, ax=axes, shrink=0.9, label="vorticity")
        fig.suptitle(f"unconditional samples, epoch {epoch + 1} ({self.steps} steps)", fontsize=9)
        return fig
