"""Optimiser and LR schedule from an :class:`~pneumolab.config.OptimConfig` dict, shared by every task."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

__all__ = ["MuonAdamW", "configure_optimizers"]


class MuonAdamW(torch.optim.AdamW):
    """AdamW, except for the groups flagged ``muon``: there Muon (Jordan et al. 2024; torch.optim.Muon's update)
    on each weight seen as a matrix ``(out, in * kh * kw)``, which torch's Muon refuses for convolutions.
    Its step is scaled to AdamW's RMS (Moonlight's ``0.2 * sqrt(max(out, fan_in))``) so both share lr and decay."""

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        from torch.optim._muon import DEFAULT_A, DEFAULT_B, DEFAULT_C, _zeropower_via_newtonschulz

        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        stashed = []
        for group in self.param_groups:
            if not group.get("muon"):
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.reshape(len(p), -1).float()  # (out, fan_in)
                buf = self.state[p].setdefault("muon_momentum", torch.zeros_like(g))
                buf.lerp_(g, 0.05)  # momentum 0.95
                update = _zeropower_via_newtonschulz(g.lerp(buf, 0.95), (DEFAULT_A, DEFAULT_B, DEFAULT_C), 5, 1e-7)
                scale = 0.2 * max(g.shape) ** 0.5
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update.view_as(p).to(p.dtype), alpha=-group["lr"] * scale)
                stashed.append((p, p.grad))
                p.grad = None  # AdamW skips parameters without a gradient
        super().step()
        for p, g in stashed:
            p.grad = g
        return loss


def configure_optimizers(module: L.LightningModule, o: dict[str, Any], monitor: str) -> Any:
    """What ``LightningModule.configure_optimizers`` returns for ``module``'s trainable parameters."""
    params = [p for p in module.parameters() if p.requires_grad]
    # No weight decay on biases and norm parameters (1-D tensors): decaying them only hurts.
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": o["weight_decay"]},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if o["optimizer"] == "muon":  # convolution weights by Muon; norms, biases and the head by AdamW
        conv = [p for p in params if p.ndim == 4]
        rest = [p for p in params if p.ndim != 4]
        groups = [
            {"params": conv, "weight_decay": o["weight_decay"], "muon": True},
            {"params": [p for p in rest if p.ndim > 1], "weight_decay": o["weight_decay"]},
            {"params": [p for p in rest if p.ndim <= 1], "weight_decay": 0.0},
        ]
        opt = MuonAdamW(groups, lr=o["lr"])
    elif o["optimizer"] == "sgd":
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
