"""Self-supervised pre-training (SimCLR) in the shared engine: an encoder learnt from the training images alone.

``pretrain`` writes ``runs/pretrain/<name>/`` like every training run (config, checkpoints, history,
TensorBoard, resume) plus ``encoder.pt``: the registered model's weights without its head, for
``pneumolab train ... model.init=RUN/encoder.pt``. Labels are never read; validation images are not used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from pneumolab.config import PretrainConfig
from pneumolab.errors import InputError
from pneumolab.models import create_model, get_spec
from pneumolab.models.checkpoint import save_encoder_file
from pneumolab.rundir import RunDir, read_history
from pneumolab.training.optim import configure_optimizers
from pneumolab.training.trainer import TrainResult, begin_run, end_run, fit

__all__ = ["SimCLRModule", "nt_xent", "pretrain"]


def nt_xent(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's loss on ``z`` ``(2B, D)``: rows ``i`` and ``i + B`` are two views of one image. Each row's
    cosine similarities to the other ``2B - 1`` rows, over ``temperature``, are a softmax whose target is the
    other view (cross-entropy), averaged over the ``2B`` rows."""
    z = F.normalize(z.float(), dim=1)
    sim = z @ z.T / temperature  # (2B, 2B)
    sim = sim.masked_fill(torch.eye(len(z), dtype=torch.bool, device=z.device), float("-inf"))  # not itself
    return F.cross_entropy(sim, torch.arange(len(z), device=z.device).roll(len(z) // 2))  # i <-> i + B


class SimCLRModule(L.LightningModule):
    """The registered model with its head replaced by ``nn.Identity`` (pooled features ``(B, F)``), then a
    projection ``Linear(F, 2F) -> BN -> ReLU -> Linear(2F, projection_dim)`` that only the loss sees."""

    def __init__(
        self,
        model_name: str,
        model_kwargs: dict[str, Any],
        projection_dim: int,
        temperature: float,
        optim: dict[str, Any],
        preprocessing: dict[str, Any],
        config: dict[str, Any],
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.encoder = create_model(model_name, **model_kwargs)
        head_path = get_spec(model_name).classifier
        features = self.encoder.get_submodule(head_path).in_features
        self.encoder.set_submodule(head_path, nn.Identity())
        self.projection = nn.Sequential(
            nn.Linear(features, 2 * features),
            nn.BatchNorm1d(2 * features),
            nn.ReLU(inplace=True),
            nn.Linear(2 * features, projection_dim),
        )
        if channels_last:
            self.encoder = self.encoder.to(memory_format=torch.channels_last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (N, 1, S, S) -> (N, projection_dim)
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.projection(self.encoder(x))

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        views, _ = batch  # (2B, 1, S, S); the labels are never used
        loss = nt_xent(self(views), self.hparams.temperature)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(views) // 2)
        return loss

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.hparams.optim, "train/loss")


def pretrain(cfg: PretrainConfig, *, resume: Path | None = None, progress_bar: bool = True) -> TrainResult:
    """SimCLR on the training split's images; writes ``encoder.pt`` from the last epoch."""
    aug = cfg.data.augment
    if aug.views != 2:
        raise InputError(f"SimCLR pairs two views of each image: set data.augment.views=2 (got {aug.views})")
    if aug.aspect_balance:
        raise InputError("pretrain never reads the labels: data.augment.aspect_balance needs them, set it to false")
    # The datamodule returns (2B, 1, S, S): rows i and i + B are the two views of image i, as nt_xent pairs them.
    run_dir, last, dm = begin_run(cfg, resume)
    pre = dm.preprocessing()
    # No dropout before the (removed) head: the features go to the projection whole.
    kwargs = {**cfg.model.kwargs, "dropout": 0.0, "in_chans": pre.input_shape[0]}
    module = SimCLRModule(
        cfg.model.name,
        kwargs,
        cfg.projection_dim,
        cfg.temperature,
        cfg.optim.model_dump(mode="json"),
        pre.to_dict(),
        cfg.model_dump(mode="json"),
        cfg.trainer.channels_last,
    )
    trainer, throughput = fit(cfg, module, dm, run_dir, last, progress_bar)
    if not trainer.is_global_zero:
        return TrainResult(run_dir, {})
    history = read_history(RunDir(run_dir).history)
    loss = history[-1].get("train/loss") if history else None
    meta = {
        "model_name": cfg.model.name,
        "model_kwargs": kwargs,
        "preprocessing": pre.to_dict(),
        "config": cfg.model_dump(mode="json"),
        "epochs": trainer.current_epoch,
        "train_loss": loss,
        "trained_on": {"data": str(cfg.data.data_dir), "split": "train", "labels": "not used"},
    }
    save_encoder_file(run_dir / "encoder.pt", module.encoder.cpu(), meta)
    summary = {
        "run_dir": str(run_dir),
        "encoder_file": str(run_dir / "encoder.pt"),
        "model": cfg.model.name,
        "epochs": trainer.current_epoch,
        "train_loss": loss,
        **throughput.summary(),
    }
    return end_run(run_dir, summary)
