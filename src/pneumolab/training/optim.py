"""Optimiser and LR schedule from an :class:`~pneumolab.config.OptimConfig` dict, shared by every task."""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

__all__ = ["SAM", "configure_optimizers"]


class SAM(torch.optim.Optimizer):
    """Sharpness-aware minimisation (Foret et al. 2021): the gradient is taken at ``w + rho * g / |g|``, the
    worst nearby point, and applied at ``w`` by the base optimiser. Two forward/backward passes a step: ``step``
    calls the closure twice (Lightning's automatic optimisation passes one, as for LBFGS)."""

    def __init__(self, params: Any, base: type[torch.optim.Optimizer], rho: float, **kwargs: Any) -> None:
        super().__init__(params, {"rho": rho, **kwargs})
        self.base = base(self.param_groups, **kwargs)
        self.param_groups = self.base.param_groups  # one set of groups: the LR schedule moves the base's

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        if closure is None:
            raise RuntimeError("SAM needs the closure (two forward/backward passes a step)")
        with torch.enable_grad():
            loss = closure()
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        shifts = [p.grad * (self.defaults["rho"] / (norm + 1e-12)) for p in params]
        torch._foreach_add_(params, shifts)
        with torch.enable_grad():
            closure()  # gradients at the shifted weights
        torch._foreach_sub_(params, shifts)
        self.base.step()
        return loss

    def state_dict(self) -> dict[str, Any]:
        return self.base.state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.base.load_state_dict(state_dict)


def configure_optimizers(module: L.LightningModule, o: dict[str, Any], monitor: str) -> Any:
    """What ``LightningModule.configure_optimizers`` returns for ``module``'s trainable parameters."""
    params = [p for p in module.parameters() if p.requires_grad]
    # No weight decay on biases and norm parameters (1-D tensors): decaying them only hurts.
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": o["weight_decay"]},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    if o["optimizer"] == "sgd":
        cls, kwargs = torch.optim.SGD, {"lr": o["lr"], "momentum": o["momentum"], "nesterov": True}
    else:
        cls, kwargs = (torch.optim.Adam if o["optimizer"] == "adam" else torch.optim.AdamW), {"lr": o["lr"]}
    rho = o.get("sam_rho", 0.0)
    opt = SAM(groups, cls, rho=rho, **kwargs) if rho > 0 else cls(groups, **kwargs)
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
