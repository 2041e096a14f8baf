"""Choosing the decision threshold on validation data (never on the split being evaluated).

Policies: ``youden`` (max sensitivity + specificity - 1), ``sensitivity>=X``, ``specificity>=X``,
``fixed=X``. The threshold is stored with the model and reused unchanged by ``evaluate``.
"""

from __future__ import annotations

import re

import numpy as np
from sklearn.metrics import roc_curve

from pneumolab.errors import InputError

__all__ = ["choose_threshold", "parse_policy"]

_POLICY = re.compile(r"^(youden|(sensitivity|specificity)>=(0?\.\d+|1(\.0+)?)|fixed=(0?\.\d+|1(\.0+)?|0))$")


def parse_policy(policy: str) -> tuple[str, float | None]:
    """``"sensitivity>=0.95"`` -> ``("sensitivity", 0.95)``; ``"youden"`` -> ``("youden", None)``."""
    text = policy.replace(" ", "").lower()
    if not _POLICY.match(text):
        raise InputError(
            f"threshold policy {policy!r} not understood; use youden, sensitivity>=0.95, specificity>=0.9 or fixed=0.5"
        )
    if text == "youden":
        return "youden", None
    name, _, value = text.replace(">=", "=").partition("=")
    return name, float(value)


def choose_threshold(prob: np.ndarray, y: np.ndarray, policy: str = "youden") -> dict[str, float | str]:
    """The threshold a policy picks on (validation) probabilities ``prob`` and labels ``y``.

    Candidate thresholds are the observed scores (predict positive iff ``prob >= t``). Ties in the
    objective go to the higher threshold for ``youden``/``sensitivity`` (fewer false positives) and to
    the lower one for ``specificity`` (fewer misses).

    Returns:
        ``{"threshold", "policy", "sensitivity", "specificity"}`` measured on the given data.
    """
    kind, target = parse_policy(policy)
    prob, y = np.asarray(prob, dtype=np.float64), np.asarray(y).astype(int)
    if kind == "fixed":
        t = float(target)
    else:
        if len(np.unique(y)) < 2:
            raise InputError("choosing a threshold needs both classes in the validation data")
        # sklearn's ROC: every distinct score as a threshold (descending), with the rates of "positive iff
        # prob >= t"; O(N log N) time and O(N) memory. [0] is +inf (nothing positive). Back to integer counts,
        # so that exact ties stay ties for the tie-breaking rules above.
        fpr, tpr, thresholds = roc_curve(y, prob, drop_intermediate=False)
        n_pos, n_neg = int((y == 1).sum()), int((y == 0).sum())
        tp, tn = np.rint(tpr[1:] * n_pos).astype(int), n_neg - np.rint(fpr[1:] * n_neg).astype(int)
        cand, sens, spec = thresholds[1:], tp / n_pos, tn / n_neg
        if kind == "youden":
            j = tp * n_neg + tn * n_pos  # (sensitivity + specificity) x n_pos x n_neg, an integer
            t = float(cand[np.flatnonzero(j == j.max())[0]])  # the highest of the tied thresholds
        elif kind == "sensitivity":
            t = float(cand[np.flatnonzero(sens >= target)[0]])  # sensitivity falls as t rises: the largest t
        else:
            ok = np.flatnonzero(spec >= target)  # specificity rises with t: the smallest t that meets it
            if not len(ok):
                raise InputError(f"no threshold reaches specificity >= {target} on the validation data")
            t = float(cand[ok[-1]])
    pred = prob >= t
    sens_t = float((pred & (y == 1)).sum() / max(1, (y == 1).sum()))
    spec_t = float((~pred & (y == 0)).sum() / max(1, (y == 0).sum()))
    return {"threshold": t, "policy": policy, "sensitivity": sens_t, "specificity": spec_t}
