"""Choosing the decision threshold on validation data (never on the split being evaluated).

Policies: ``youden`` (max sensitivity + specificity - 1), ``sensitivity>=X``, ``specificity>=X``,
``fixed=X``. The threshold is stored with the model and reused unchanged by ``evaluate``.
"""

from __future__ import annotations

import re

import numpy as np

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
        cand = np.unique(prob)  # ascending
        pred = prob[None, :] >= cand[:, None]  # (T, N)
        sens = (pred & (y == 1)).sum(1) / (y == 1).sum()
        spec = (~pred & (y == 0)).sum(1) / (y == 0).sum()
        if kind == "youden":
            j = sens + spec - 1
            t = float(cand[np.flatnonzero(j == j.max())[-1]])
        elif kind == "sensitivity":
            ok = np.flatnonzero(sens >= target)  # sensitivity falls as t rises: the largest t that still meets it
            t = float(cand[ok[-1]])
        else:
            ok = np.flatnonzero(spec >= target)  # specificity rises with t: the smallest t that meets it
            if not len(ok):
                raise InputError(f"no threshold reaches specificity >= {target} on the validation data")
            t = float(cand[ok[0]])
    pred = prob >= t
    sens_t = float((pred & (y == 1)).sum() / max(1, (y == 1).sum()))
    spec_t = float((~pred & (y == 0)).sum() / max(1, (y == 0).sum()))
    return {"threshold": t, "policy": policy, "sensitivity": sens_t, "specificity": spec_t}
