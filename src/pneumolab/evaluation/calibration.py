"""Temperature scaling (Guo et al. 2017), label-shift correction (Saerens et al. 2002) and the operating point.

``softmax(logits / T)`` keeps every ranking (AUROC unchanged) and only fixes over- or under-confidence;
``T`` is fitted on validation at the end of training and stored with the model. A site's class prior
(``pneumolab adapt``) enters as a log-odds shift. :class:`OperatingPoint` is the one owner of how a model
file's logits become P(pneumonia) and a label: every consumer (evaluate, robustness, Predictor) uses it.
Hand-written because torch has no temperature scaling and the EM prior estimate is a few lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "OperatingPoint",
    "apply_temperature",
    "estimate_prior_em",
    "fit_temperature",
    "reference_normal_calls",
    "score_reference",
]

REFERENCE_MAX = 2000  # margins kept in a model file: beyond it, evenly spaced order statistics (a smaller sample)


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


def estimate_prior_em(prob: np.ndarray, source_prior: float, *, tol: float = 1e-6, max_iter: int = 1000) -> float:
    """The positive-class prior of unlabeled data by EM on calibrated posteriors (Saerens et al. 2002).

    ``prob`` are P(positive) calibrated under ``source_prior``; each step re-weights them to the current
    prior estimate and takes their mean as the next estimate.
    """
    p = np.clip(np.asarray(prob, dtype=np.float64), 1e-12, 1 - 1e-12)
    prior = source_prior
    for _ in range(max_iter):
        w1, w0 = prior / source_prior, (1 - prior) / (1 - source_prior)
        new = float(np.mean(w1 * p / (w1 * p + w0 * (1 - p))))
        if abs(new - prior) < tol:
            return new
        prior = new
    return prior


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


@dataclass(frozen=True)
class OperatingPoint:
    """How a model's logits become a calibrated probability and a label.

    ``probability = sigmoid((z_1 - z_0) / temperature + prior_shift)``; the label is PNEUMONIA iff
    ``probability >= threshold``. ``prior_shift`` is ``logit(site prior) - logit(source prior)`` after
    ``pneumolab adapt`` (0 otherwise), so a site with fewer pneumonia cases needs more evidence for a positive call.
    """

    threshold: float = 0.5
    temperature: float = 1.0
    prior_shift: float = 0.0
    policy: str | None = None

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> OperatingPoint:
        """The operating point a model file stores (defaults where it stores none)."""
        return cls(
            float(meta.get("threshold", 0.5)),
            float(meta.get("temperature", 1.0)),
            float(meta.get("prior_shift", 0.0)),
            meta.get("threshold_policy"),
        )

    @staticmethod
    def prior_shift_for(site_prior: float, source_prior: float) -> float:
        """The log-odds shift that moves posteriors from ``source_prior`` to ``site_prior``."""
        return _logit(site_prior) - _logit(source_prior)

    def probability(self, logits: torch.Tensor) -> torch.Tensor:
        """Calibrated P(pneumonia); ``logits``: (N, 2) -> (N,) float32."""
        z = logits.double()
        return torch.sigmoid((z[:, 1] - z[:, 0]) / self.temperature + self.prior_shift).float()

    def margin_probability(self, margins: np.ndarray) -> np.ndarray:
        """Calibrated P(pneumonia) of logit margins ``z_1 - z_0`` ((N,) -> (N,) float64), as :meth:`probability`."""
        return 1 / (1 + np.exp(-(np.asarray(margins, np.float64) / self.temperature + self.prior_shift)))


def score_reference(logits: torch.Tensor | np.ndarray, split: str) -> dict[str, Any]:
    """What a model file keeps of the images it was fitted on, for comparing a site's answers with them without
    labels (``pneumolab monitor --model``): each image's logit margin ``z_1 - z_0`` ((N, 2) logits), sorted (no
    order, no label, no file name is kept), at most ``REFERENCE_MAX`` of them (evenly spaced order statistics: a
    smaller sample, so a test against it is conservative)."""
    z = torch.as_tensor(logits).double()
    margins = np.sort((z[:, 1] - z[:, 0]).numpy())
    if len(margins) > REFERENCE_MAX:
        margins = margins[np.linspace(0, len(margins) - 1, REFERENCE_MAX).round().astype(int)]
    return {"split": split, "images": len(z), "margins": [round(float(m), 4) for m in margins]}


def reference_normal_calls(meta: dict[str, Any]) -> np.ndarray | None:
    """P(pneumonia) of the reference images (:func:`score_reference`) a model file would call NORMAL, under its own
    operating point; None where the file keeps no reference (made before pneumolab stored one)."""
    ref = meta.get("reference_scores")
    if not ref:
        return None
    op = OperatingPoint.from_meta(meta)
    prob = op.margin_probability(np.array(ref["margins"]))
    return prob[prob < op.threshold]
