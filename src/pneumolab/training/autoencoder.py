"""The autoencoder task in the shared engine: reconstruction loss, PSNR/SSIM, previews, OOD threshold.

``train_autoencoder`` writes ``runs/autoencoder/<name>/`` like a classifier run (config, checkpoints,
history, TensorBoard, resume) plus ``autoencoder.pt`` (weights, preprocessing, the training split's
reconstruction-error distribution and OOD threshold) and ``reconstructions.png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure
from torchvision.utils import make_grid

from pneumolab.config import AutoencoderConfig
from pneumolab.data.datamodule import ChestXrayDataModule
from pneumolab.generative.autoencoder import ConvAutoencoder, fit_ood_guard, save_autoencoder
from pneumolab.io import atomic_path
from pneumolab.rundir import RunDir, read_history
from pneumolab.training.optim import configure_optimizers
from pneumolab.training.trainer import TrainResult, begin_run, end_run, fit

__all__ = ["AutoencoderModule", "train_autoencoder"]


class AutoencoderModule(L.LightningModule):
    """MSE reconstruction of the normalised image; PSNR and SSIM measured on [0, 1] pixels."""

    def __init__(self, channels: list[int], optim: dict[str, Any], preprocessing: dict[str, Any], config: dict) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.net = ConvAutoencoder(tuple(channels))
        self.psnr = PeakSignalNoiseRatio(data_range=1.0)
        self.ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        size = preprocessing["image_size"]
        self.example_input_array = torch.zeros(2, 1, size, size)
        self._preview: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, S, S) -> (B, 1, S, S)
        return self.net(x)

    def _pixels(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised -> [0, 1] pixels (dataset normalisation; per-image is shown min-max scaled)."""
        pre = self.hparams.preprocessing
        if pre["normalization"] == "dataset":
            return (x * pre["std"] + pre["mean"]).clamp(0, 1)
        lo, hi = x.amin(dim=(1, 2, 3), keepdim=True), x.amax(dim=(1, 2, 3), keepdim=True)
        return (x - lo) / (hi - lo + 1e-6)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        x, _ = batch
        loss = F.mse_loss(self(x).float(), x)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(x))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        x, _ = batch
        recon = self(x).float()
        self.log("val/loss", F.mse_loss(recon, x), on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(x))
        px, pr = self._pixels(x), self._pixels(recon)
        self.psnr(pr, px)
        self.ssim(pr, px)
        self.log("val/psnr", self.psnr, on_epoch=True, batch_size=len(x))
        self.log("val/ssim", self.ssim, on_epoch=True, batch_size=len(x))
        if batch_idx == 0:
            self._preview = torch.cat([px[:8], pr[:8]]).detach().cpu()  # row 1 originals, row 2 reconstructions

    def on_validation_epoch_end(self) -> None:
        tb = next((lg.experiment for lg in self.loggers if hasattr(lg.experiment, "add_image")), None)
        if self._preview is not None and tb is not None and not self.trainer.sanity_checking:
            grid = make_grid(self._preview, nrow=len(self._preview) // 2)
            tb.add_image("val/reconstructions", grid, self.current_epoch)

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.hparams.optim, "val/loss")


def train_autoencoder(cfg: AutoencoderConfig, *, resume: Path | None = None, progress_bar: bool = True) -> TrainResult:
    """Train the autoencoder on the training split only (validation selects the checkpoint)."""
    run_dir, last, dm = begin_run(cfg, resume)
    module = AutoencoderModule(
        list(cfg.channels), cfg.optim.model_dump(mode="json"), dm.preprocessing().to_dict(), cfg.model_dump(mode="json")
    )
    trainer, throughput = fit(cfg, module, dm, run_dir, last, progress_bar)
    if not trainer.is_global_zero:
        return TrainResult(run_dir, {})
    best = AutoencoderModule.load_from_checkpoint(
        trainer.checkpoint_callback.best_model_path, map_location="cpu", weights_only=True
    ).eval()
    # The OOD guard: reconstruction errors of the (un-augmented) training images and their upper percentile.
    train_x = torch.cat([x for x, _ in dm.eval_loader("train")])
    guard = fit_ood_guard(best.net, train_x, cfg.ood_percentile)
    history = read_history(RunDir(run_dir).history)
    best_row = min(history, key=lambda r: r.get("val/loss", np.inf)) if history else {}
    pre = dm.preprocessing().to_dict()
    meta = {
        "preprocessing": pre,
        "config": cfg.model_dump(mode="json"),
        "code_shape": list(best.net.code_shape(pre["image_size"])),
        "metrics": {"split": "val", **{k: v for k, v in best_row.items() if k.startswith("val/")}},
        "ood": guard,
    }
    save_autoencoder(run_dir / "autoencoder.pt", best.net, meta)
    _save_preview(best, dm, run_dir / "reconstructions.png")
    summary = {
        "run_dir": str(run_dir),
        "code_shape": meta["code_shape"],
        "best_val": meta["metrics"],
        "ood_threshold": guard["threshold"],
        **throughput.summary(),
    }
    return end_run(run_dir, summary)


@torch.no_grad()
def _save_preview(module: AutoencoderModule, dm: ChestXrayDataModule, path: Path) -> None:
    x, _ = next(iter(dm.eval_loader("val")))
    x = x[:8]
    grid = make_grid(torch.cat([module._pixels(x), module._pixels(module(x))]), nrow=len(x))  # (3, H, W)
    from PIL import Image

    with atomic_path(path, suffix=".png") as tmp:
        Image.fromarray((grid[0].numpy() * 255).round().astype(np.uint8)).save(tmp, format="PNG")
