"""Optimiser and LR schedule from an :class:`~pneumolab.config.OptimConfig` dict, shared by every task."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

__all__ = ["MuonAdamW", "configure_optimizers", "orthogonalize"]


# Muon's quintic Newton-Schulz coefficients (Jordan et al. 2024; torch.optim.Muon's defaults) and its momentum
_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
_NS_STEPS = 5
_MUON_MOMENTUM = 0.95


def orthogonalize(g: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``U S' V^T`` for ``g = U S V^T`` (2-D), ``S'`` roughly in [0.5, 1.5]: Muon's Newton-Schulz iteration, in
    bf16 as torch.optim.Muon computes it."""
    a, b, c = _NS_COEFFICIENTS
    x = g.bfloat16()
    tall = x.size(0) > x.size(1)
    if tall:  # iterate on the wide orientation: the Gram matrix is the smaller one
        x = x.T
    x = x / x.norm().clamp(min=eps)  # spectral norm <= Frobenius norm <= 1: inside the iteration's basin
    for _ in range(_NS_STEPS):
        gram = x @ x.T
        x = torch.addmm(x, torch.addmm(gram, gram, gram, beta=b, alpha=c), x, beta=a)
    return x.T if tall else x


class MuonAdamW(torch.optim.AdamW):
    """AdamW, but Muon for the parameter groups flagged ``muon=True``.

    torch.optim.Muon takes 2-D weights only; a convolution's ``(out, in, kh, kw)`` weight is orthogonalised here as
    the ``(out, in * kh * kw)`` matrix it multiplies the image patches by. Each Muon step is scaled by
    ``0.2 * sqrt(max(rows, cols))`` (torch's ``adjust_lr_fn="match_rms_adamw"``) to AdamW's update size, so both
    kinds of parameter share one learning rate, weight decay and schedule. On a 2-D weight the update is
    torch.optim.Muon's (nesterov, momentum 0.95, 5 iterations; a test compares them).
    """

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        taken = []
        for group in self.param_groups:
            if not group.get("muon"):
                continue
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad.reshape(len(p), -1)  # (out, fan_in)
                state = self.state[p]
                if not state:  # a "step" as every AdamW state has: AdamW's load_state_dict reads it
                    state["step"] = torch.tensor(0.0)
                    state["muon_momentum"] = torch.zeros_like(g)
                state["step"] += 1
                buf = state["muon_momentum"]
                buf.lerp_(g, 1 - _MUON_MOMENTUM)
                update = orthogonalize(g.lerp(buf, _MUON_MOMENTUM))  # nesterov
                p.mul_(1 - group["lr"] * group["weight_decay"])
                scale = 0.2 * max(g.shape) ** 0.5  # Muon's unit-spectral-norm step to AdamW's RMS
                p.add_(update.view_as(p), alpha=-group["lr"] * scale)
                taken.append((p, p.grad))
                p.grad = None  # AdamW's step skips a parameter without a gradient
        super().step()
        for p, grad in taken:  # back for whatever reads gradients after the step (histograms)
            p.grad = grad
        return loss


def configure_optimizers(module: L.LightningModule, o: dict[str, Any], monitor: str) -> Any:
    """What ``LightningModule.configure_optimizers`` returns for ``module``'s trainable parameters."""
    params = [p for p in module.parameters() if p.requires_grad]
    # No weight decay on biases and norm parameters (1-D tensors): decaying them only hurts.
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": o["weight_decay"]},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if o["optimizer"] == "muon":  # convolution weights by Muon; linear layers (the head), norms, biases by AdamW
        decayed = groups[0]["params"]
        groups[:1] = [
            {"params": [p for p in decayed if p.ndim == 4], "weight_decay": o["weight_decay"], "muon": True},
            {"params": [p for p in decayed if p.ndim != 4], "weight_decay": o["weight_decay"]},
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
