"""The DCGAN task in the shared engine: manual optimisation (D step, then G step) per batch.

Logs the losses, D(x) and D(G(z)); a fixed-noise sample grid goes to TensorBoard every epoch;
checkpoints and resume come from the shared Trainer. Trained on one class of the training split only.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchvision.utils import make_grid

from pneumolab.config import GanConfig, load_config
from pneumolab.errors import InputError
from pneumolab.generative.dcgan import Discriminator, Generator, save_generator
from pneumolab.io import atomic_path
from pneumolab.training.trainer import TrainResult, begin_run, end_run, fit

__all__ = ["GanModule", "train_gan"]


class GanModule(L.LightningModule):
    """Inputs arrive normalised with the dataset's mean/std; they are mapped to [-1, 1] for the Tanh generator."""

    def __init__(
        self,
        size: int,
        nz: int,
        width: int,
        lr: float,
        beta1: float,
        preprocessing: dict[str, Any],
        config: dict[str, Any],
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.generator = Generator(size, nz, width)
        self.discriminator = Discriminator(size, width)
        self.register_buffer("fixed_noise", torch.randn(64, nz, 1, 1, generator=torch.Generator().manual_seed(0)))

    def _to_tanh_range(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.hparams.preprocessing
        return ((x * pre["std"] + pre["mean"]) * 2 - 1).clamp(-1, 1)  # (B, 1, S, S) in [-1, 1]

    def training_step(self, batch, batch_idx: int) -> None:
        real = self._to_tanh_range(batch[0])
        opt_d, opt_g = self.optimizers()
        z = torch.randn(len(real), self.hparams.nz, 1, 1, device=self.device)
        fake = self.generator(z)
        ones, zeros = torch.ones(len(real), device=self.device), torch.zeros(len(real), device=self.device)
        # Discriminator: real -> 1, fake -> 0 (fake detached so G gets no gradient here).
        d_real, d_fake = self.discriminator(real), self.discriminator(fake.detach())
        d_loss = F.binary_cross_entropy(d_real, ones) + F.binary_cross_entropy(d_fake, zeros)
        opt_d.zero_grad()
        self.manual_backward(d_loss)
        opt_d.step()
        # Generator: make D call the fakes real (the non-saturating loss).
        d_gz = self.discriminator(fake)
        g_loss = F.binary_cross_entropy(d_gz, ones)
        opt_g.zero_grad()
        self.manual_backward(g_loss)
        opt_g.step()
        log = {"train/d_loss": d_loss, "train/g_loss": g_loss, "train/D_x": d_real.mean(), "train/D_G_z": d_gz.mean()}
        self.log_dict(log, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(real))

    def on_train_epoch_end(self) -> None:
        tb = next((lg.experiment for lg in self.loggers if hasattr(lg.experiment, "add_image")), None)
        if tb is not None:
            tb.add_image("samples/fixed_noise", self.sample_grid(), self.current_epoch)

    @torch.no_grad()
    def sample_grid(self) -> torch.Tensor:
        """(3, H, W) grid of the generator's images for the fixed noise, in [0, 1]."""
        was = self.generator.training
        self.generator.eval()
        imgs = (self.generator(self.fixed_noise) + 1) / 2
        self.generator.train(was)
        return make_grid(imgs.cpu(), nrow=8)

    def configure_optimizers(self) -> Any:
        betas = (self.hparams.beta1, 0.999)
        return (
            torch.optim.Adam(self.discriminator.parameters(), lr=self.hparams.lr, betas=betas),
            torch.optim.Adam(self.generator.parameters(), lr=self.hparams.lr, betas=betas),
        )


def gan_config(
    label: str,
    overrides: list[str] | None = None,
    config: str | Path | None = None,
    *,
    set_values: dict[str, Any] | None = None,
) -> GanConfig:
    """``config``, then the study's DCGAN setting for one class (64 px, no augmentation, no class balancing),
    then ``overrides`` and ``set_values`` (as in :func:`pneumolab.config.load_config`)."""
    base = [
        f"label={label.upper()}",
        f"name=dcgan_{label.upper()}",
        "data.image_size=64",
        "data.augment.enabled=false",
        "data.balance=none",
    ]
    return load_config(GanConfig, config, [*base, *(overrides or [])], set_values=set_values)


def train_gan(cfg: GanConfig, *, resume: Path | None = None, progress_bar: bool = True) -> TrainResult:
    """Train one class's DCGAN on the training split; writes ``generator.pt`` and ``samples.png``."""
    if cfg.data.normalization != "dataset":
        raise InputError("the DCGAN needs data.normalization=dataset (it maps pixels to [-1, 1] itself)")
    run_dir, last, dm = begin_run(cfg, resume)
    n_images = dm.keep_one_class(cfg.label)  # a generator per class
    if n_images < cfg.data.batch_size:
        raise InputError(f"only {n_images} {cfg.label} training images: fewer than one batch")
    pre = dm.preprocessing().to_dict()
    module = GanModule(cfg.data.image_size, cfg.nz, cfg.width, cfg.lr, cfg.beta1, pre, cfg.model_dump(mode="json"))
    trainer, throughput = fit(cfg, module, dm, run_dir, last, progress_bar)
    if not trainer.is_global_zero:
        return TrainResult(run_dir, {})
    meta = {
        "label": cfg.label,
        "config": cfg.model_dump(mode="json"),
        "epochs": trainer.current_epoch,
        "trained_on": {"data": str(cfg.data.data_dir), "split": "train", "images": n_images},
    }
    save_generator(run_dir / "generator.pt", module.generator.cpu(), meta)
    from PIL import Image

    grid = module.sample_grid()
    with atomic_path(run_dir / "samples.png", suffix=".png") as tmp:
        Image.fromarray((grid[0].numpy() * 255).round().astype("uint8")).save(tmp, format="PNG")
    summary = {
        "run_dir": str(run_dir),
        "label": cfg.label,
        "images": n_images,
        "epochs": trainer.current_epoch,
        **throughput.summary(),
    }
    return end_run(run_dir, summary)
