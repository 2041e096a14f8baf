"""Optimiser and LR schedule from an :class:`~pneumolab.config.OptimConfig` dict, shared by every task."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

__all__ = ["configure_optimizers"]


def configure_optimizers(module: L.LightningModule, o: dict[str, Any], monitor: str) -> Any:
    """What ``LightningModule.configure_optimizers`` returns for ``module``'s trainable parameters."""
    params = [p for p in module.parameters() if p.requires_grad]
    # No weight decay on biases and norm parameters (1-D tensors): decaying them only hurts.
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": o["weight_decay"]},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if o["optimizer"] == "sgd":
        opt = torch.optim.SGD(groups, lr=o["lr"], momentum=o["momentum"], nesterov=True)
    elif o["optimizer"] == "adam":
        opt = torch.optim.Adam(groups, lr=o["lr"])
    else:
        opt = torch.optim.AdamW(groups, lr=o["lr"])
    if o["schedule"] == "plateau":
        mode = "min" if monitor.endswith("loss") else "max"
        sched = torch.optim.lr_scheduler.ReduceLROnPlateau(
            opt, mode=mode, factor=o["plateau_factor"], patience=o["plateau_patience"]
        )
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "monitor": monitor}}
    if o["schedule"] == "cosine":
        trainer = module.trainer
        total = max(1, int(trainer.estimated_stepping_batches))
        warm = min(total - 1, int(o["warmup_epochs"] * total / max(1, trainer.max_epochs)))

        def lr_lambda(step: int) -> float:
            if step < warm:
                return (step + 1) / warm
            return 0.5 * (1.0 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
    return opt
