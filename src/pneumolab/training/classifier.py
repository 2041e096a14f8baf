"""The one LightningModule that trains every registered classifier (nothing here knows an architecture)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC

from pneumolab.models import create_model
from pneumolab.training.optim import configure_optimizers

__all__ = ["ClassifierModule"]


class ClassifierModule(L.LightningModule):
    """Cross-entropy classifier over ``classes`` (index 1 = PNEUMONIA, the positive class).

    Args:
        model_name: registry name; ``model_kwargs`` are passed to :func:`~pneumolab.models.create_model`.
        init_weights: local ImageNet weights for a fresh run (``None`` when resuming or loading).
        optim: :class:`~pneumolab.config.OptimConfig` as a dict.
        class_weights: per-class loss weights from the training split.
        preprocessing: what inference needs to rebuild the eval transform.
        classes: class names in target order.
        config: the resolved run config (stored in every checkpoint).
        channels_last: NHWC memory format (faster convolutions on CPU: docs/BENCHMARKS.md).
    """

    def __init__(
        self,
        model_name: str,
        model_kwargs: dict[str, Any],
        optim: dict[str, Any],
        class_weights: list[float],
        preprocessing: dict[str, Any],
        classes: list[str],
        config: dict[str, Any],
        init_weights: str | None = None,
        channels_last: bool = False,
        monitor: str = "val/auroc",
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["init_weights"])
        self.net = create_model(model_name, num_classes=len(classes), weights=init_weights, **model_kwargs)
        if channels_last:
            self.net = self.net.to(memory_format=torch.channels_last)
        self.register_buffer("class_weights", torch.tensor(class_weights, dtype=torch.float32))
        self.train_acc = BinaryAccuracy()
        self.val_acc = BinaryAccuracy()
        self.val_auroc = BinaryAUROC()
        self.example_input_array = torch.zeros(2, *preprocessing["input_shape"])  # (2, C, H, W): the model graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 1, H, W) -> (B, num_classes) logits
        if self.hparams.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return self.net(x)

    def _loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:  # (B, K) logits, (B,) targets
        smoothing = self.hparams.optim.get("label_smoothing", 0.0)
        return F.cross_entropy(logits.float(), y, weight=self.class_weights, label_smoothing=smoothing)

    def _step(self, batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x, y = batch
        logits = self(x)
        prob = logits.float().softmax(dim=1)[:, 1]  # (B,) P(pneumonia)
        return self._loss(logits, y), prob, y

    def _mixup_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], alpha: float
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Mixup: input ``lam * x + (1 - lam) * x[perm]``, loss ``lam * CE(y) + (1 - lam) * CE(y[perm])``,
        one ``lam ~ Beta(alpha, alpha)`` per batch."""
        x, y = batch
        lam = float(torch.distributions.Beta(alpha, alpha).sample())
        perm = torch.randperm(len(y), device=y.device)
        logits = self(lam * x + (1 - lam) * x[perm])
        loss = lam * self._loss(logits, y) + (1 - lam) * self._loss(logits, y[perm])
        # training accuracy is scored against the dominant image's label
        return loss, logits.float().softmax(dim=1)[:, 1], y if lam >= 0.5 else y[perm]

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        alpha = self.hparams.optim.get("mixup_alpha", 0.0)
        loss, prob, y = self._mixup_step(batch, alpha) if alpha > 0 else self._step(batch)
        self.train_acc(prob, y)
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, batch_size=len(y))
        return loss

    def validation_step(self, batch, batch_idx: int) -> None:
        loss, prob, y = self._step(batch)
        self.val_auroc.update(prob, y)
        self.val_acc.update(prob, y)
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=len(y))
        # Metric objects: Lightning computes them over the whole epoch and reduces across DDP ranks.
        self.log("val/auroc", self.val_auroc, on_epoch=True, prog_bar=True, batch_size=len(y))
        self.log("val/acc", self.val_acc, on_epoch=True, prog_bar=True, batch_size=len(y))

    def configure_optimizers(self) -> Any:
        return configure_optimizers(self, self.hparams.optim, self.hparams.monitor)
