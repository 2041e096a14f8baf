"""Temperature scaling (Guo et al. 2017): one scalar ``T`` fitted on validation logits.

``softmax(logits / T)`` keeps every ranking (AUROC unchanged) and only fixes over- or
under-confidence. Fitted on validation data at the end of training and stored with the model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["apply_temperature", "fit_temperature"]


def fit_temperature(logits: torch.Tensor, y: torch.Tensor, max_iter: int = 200) -> float:
    """The ``T > 0`` minimising the NLL of ``softmax(logits / T)``; ``logits``: (N, C), ``y``: (N,)."""
    logits, y = logits.detach().double(), y.long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # optimise log T so that T stays > 0
    opt = torch.optim.LBFGS([log_t], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), y)
        loss.backward()
        return loss

    opt.step(closure)
    # Bounded: on a tiny validation split the NLL optimum can run off to absurd sharpening or flattening.
    return float(log_t.detach().exp().clamp(0.2, 10.0))


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """P(class 1) after temperature scaling; ``logits``: (N, 2) -> (N,)."""
    return (logits.float() / temperature).softmax(dim=1)[:, 1]
