"""Callbacks: TensorBoard extras (input grid, histograms), throughput, atomic checkpoint writes."""

from __future__ import annotations

import csv
import io
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.loggers import TensorBoardLogger

from pneumolab.io import atomic_path, atomic_write_text
from pneumolab.rundir import read_history

log = logging.getLogger(__name__)

__all__ = ["AtomicCheckpointIO", "EpochHistory", "EpochLog", "TensorBoardExtras", "Throughput"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Write checkpoints to a temp file and rename: a kill mid-write never leaves a broken last.ckpt."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        with atomic_path(path, suffix=".ckpt") as tmp:
            super().save_checkpoint(checkpoint, tmp, storage_options)


def _tensorboard(trainer: L.Trainer) -> Any:
    for logger in trainer.loggers:
        if isinstance(logger, TensorBoardLogger):
            return logger.experiment
    return None


class TensorBoardExtras(L.Callback):
    """A grid of the (augmented) inputs of each epoch's first batch; weight and gradient histograms
    every ``histogram_every_n_epochs`` epochs."""

    def __init__(self, histogram_every_n_epochs: int = 5, log_images: bool = True, max_images: int = 16) -> None:
        self.every = histogram_every_n_epochs
        self.log_images = log_images
        self.max_images = max_images

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        tb = _tensorboard(trainer)
        if tb is None or batch_idx != 0 or not self.log_images or not trainer.is_global_zero:
            return
        from torchvision.utils import make_grid

        x = batch[0][: self.max_images].detach().float().cpu()  # (n, 1, H, W), normalised
        if x.shape[1] not in (1, 3):  # autoencoder codes (n, C, h, w): no picture to show
            return
        tb.add_image("train/inputs", make_grid(x, nrow=4, normalize=True, scale_each=True), trainer.current_epoch)

    def _histograms_due(self, trainer: L.Trainer) -> bool:
        return bool(self.every) and trainer.current_epoch % self.every == 0 and trainer.is_global_zero

    def on_before_optimizer_step(self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any) -> None:
        tb = _tensorboard(trainer)
        # First optimisation step of a due epoch: the gradients of one real batch.
        if tb is None or not self._histograms_due(trainer) or trainer.fit_loop.epoch_loop.batch_idx != 0:
            return
        for name, p in pl_module.named_parameters():
            if p.grad is not None:
                tb.add_histogram(f"grad/{name}", p.grad.detach().float().cpu(), trainer.current_epoch)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        tb = _tensorboard(trainer)
        if tb is None or not self._histograms_due(trainer):
            return
        for name, p in pl_module.named_parameters():
            tb.add_histogram(f"weight/{name}", p.detach().float().cpu(), trainer.current_epoch)


class Throughput(L.Callback):
    """Training images per second (train epochs only, validation excluded) and total wall time."""

    def __init__(self) -> None:
        self.images = 0
        self.train_seconds = 0.0
        self.start = time.perf_counter()
        self._epoch_start: float | None = None

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx: int) -> None:
        self.images += len(batch[1]) * trainer.world_size

    def on_validation_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._pause()

    def _pause(self) -> None:
        if self._epoch_start is not None:
            self.train_seconds += time.perf_counter() - self._epoch_start
            self._epoch_start = None

    @property
    def images_per_s(self) -> float:
        return self.images / self.train_seconds if self.train_seconds else 0.0

    def summary(self) -> dict[str, float]:
        return {
            "wall_s": round(time.perf_counter() - self.start, 2),
            "train_images_per_s": round(self.images_per_s, 1),
            "train_s": round(self.train_seconds, 2),
        }


def _epoch_row(trainer: L.Trainer) -> dict[str, Any]:
    """The finished epoch's numbers: train loss/accuracy, every other train/* and val/* metric, learning rate."""
    m = {k: float(v) for k, v in trainer.callback_metrics.items()}
    return {
        "epoch": trainer.current_epoch,
        "train/loss": m.get("train/loss_epoch"),
        "train/acc": m.get("train/acc"),
        **{
            k.removesuffix("_epoch"): v
            for k, v in m.items()
            if k.startswith("train/") and k.endswith("_epoch") and k != "train/loss_epoch"
        },  # (GAN: train/d_loss, train/g_loss, ...)
        **{k: v for k, v in sorted(m.items()) if k.startswith("val/")},  # val/loss, val/auroc, val/psnr, ...
        "lr": trainer.optimizers[0].param_groups[0]["lr"] if trainer.optimizers else None,
    }


class EpochLog(L.Callback):
    """One log line per finished epoch, in place of the progress bar where it cannot redraw itself (output to a
    file or a pipe, e.g. ``nohup pneumolab train ... > log``: a bar there writes every refresh as a new line)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._fit_start, self._first_epoch = time.perf_counter(), trainer.current_epoch  # resumed: a later epoch

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        row = _epoch_row(trainer)
        numbers = ", ".join(f"{k} {v:.4g}" for k, v in row.items() if k not in ("epoch", "lr") and v is not None)
        now = time.perf_counter()
        # The epochs left at this process's mean pace so far (validation included; an early stop ends sooner).
        left = (trainer.max_epochs - trainer.current_epoch - 1) * (now - self._fit_start)
        left /= trainer.current_epoch + 1 - self._first_epoch
        eta = "" if left <= 0 else f"; ~{left:.0f} s left" if left < 90 else f"; ~{left / 60:.0f} min left"
        log.info(
            "epoch %d/%d: %s (%.0f s%s)", trainer.current_epoch + 1, trainer.max_epochs, numbers, now - self._start, eta
        )


class EpochHistory(L.Callback):
    """One row per finished epoch in ``history.csv`` (train loss/accuracy, every val/* metric, LR), rewritten
    atomically each epoch. On resume, rows of epochs that will be re-run are dropped."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        row = _epoch_row(trainer)
        old = [{**r, "epoch": int(r["epoch"])} for r in read_history(self.path) if r["epoch"] < trainer.current_epoch]
        rows = [*old, row]
        columns = list(dict.fromkeys(k for r in rows for k in r))  # union, first-seen order
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
        atomic_write_text(self.path, buf.getvalue())
