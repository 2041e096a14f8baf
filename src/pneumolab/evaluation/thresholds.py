"""Choosing the decision threshold on validation data (never on the split being evaluated).

Policies: ``youden`` (max sensitivity + specificity - 1), ``sensitivity>=X``, ``specificity>=X``,
``fixed=X``. The threshold is stored with the model and reused unchanged by ``evaluate``.
"""

from __future__ import annotations

import math
import re

import numpy as np
from sklearn.metrics import roc_curve

from pneumolab.data.manifest import CLASSES
from pneumolab.errors import InputError

__all__ = ["choose_threshold", "effective_images", "min_images_per_class", "parse_policy", "thin_validation"]

MIN_PER_CLASS = 10  # below this a per-class rate moves by >= 10 points per image: no operating point to speak of

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


def min_images_per_class(policy: str) -> dict[int, int]:
    """Fewest images per class (0 normal, 1 pneumonia) that let ``policy`` pick a threshold worth the name.

    ``sensitivity>=X`` needs ``1 / (1 - X)`` pneumonia images so that one miss is allowed at all (20 for 0.95);
    ``specificity>=X`` the same of normal images; every policy at least 10 of each class.
    """
    kind, target = parse_policy(policy)
    need = {0: MIN_PER_CLASS, 1: MIN_PER_CLASS}
    if kind in ("sensitivity", "specificity") and target is not None and target < 1:
        need[1 if kind == "sensitivity" else 0] = max(MIN_PER_CLASS, math.ceil(1 / (1 - target) - 1e-9))
    return need


def thin_validation(images: dict[str, int] | None, policy: str | None) -> str | None:
    """Why a threshold chosen by ``policy`` on validation ``images`` (``{class: count}``) is rough, or None."""
    if not images or not policy:  # a model file from before the counts were stored
        return None
    need = min_images_per_class(policy)
    short = [c for c in need if images.get(CLASSES[c], 0) < need[c]]
    if not short:
        return None
    return (
        f"validation holds {' and '.join(f'{images.get(CLASSES[c], 0)} {CLASSES[c]}' for c in short)} images; policy "
        f"{policy} needs at least {' and '.join(f'{need[c]} {CLASSES[c]}' for c in short)} to choose a threshold "
        "worth the name: the stored threshold and its sensitivity/specificity are rough. Give validation more images "
        "(data split --val-fraction) or calibrate on labeled site images (pneumolab calibrate)"
    )


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


def effective_images(prob: np.ndarray, y: np.ndarray, threshold: float, views: int = 0) -> dict[str, float]:
    """Per class, how many separate images the rate at ``threshold`` is worth (what a test against it may count on).

    ``prob`` and ``y`` hold ``views`` copies of each of N images, view after view (as ``validation_logits`` gives
    them; 0 or 1: the images once). Copies of one image mostly agree, so the rate rests on between N and
    ``views`` x N images: N p (1 - p) / var(each image's share of copies right), from the rate's variance over
    images (the cluster-robust variance; N when every image's copies agree, ``views`` x N when they are independent).
    """
    views = max(1, views)
    right = ((np.asarray(prob) >= threshold) == (np.asarray(y) == 1)).reshape(views, -1).mean(0)  # (N,)
    first = np.asarray(y).reshape(views, -1)[0]  # (N,) each image's class
    sizes = {}
    for c, name in enumerate(CLASSES):
        share = right[first == c]
        n, var = len(share), float(share.var())
        if n:
            p = float(share.mean())
            sizes[name] = round(float(n if var == 0 else min(views * n, n * p * (1 - p) / var)), 1)
    return sizes
