"""Binary classification metrics with patient-level bootstrap confidence intervals.

Every metric is computed from *weighted* confusion counts and weighted rank statistics, so one
code path serves both the point estimate (all weights 1) and ``B`` bootstrap resamples at once
(weights = how often each image's patient was drawn, shape ``(B, N)``): no Python loop over
resamples. The positive class is PNEUMONIA (target 1).

Hand-written on purpose: the bootstrap resamples *patients* (an X-ray's images share a patient, and
resampling images would understate the uncertainty), and torchmetrics/sklearn take one weight vector per
call where this takes all ``B`` resamples in one pass of array operations.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import numpy as np

from pneumolab.errors import InputError

__all__ = [
    "METRICS",
    "RATES",
    "bootstrap_weights",
    "compute_metrics",
    "consistency_bands",
    "ece_if_calibrated",
    "metrics_with_ci",
    "net_benefit",
    "promise_p_value",
    "promised_rates",
    "rank_metrics",
    "wilson",
]

RATES = (("sensitivity", "PNEUMONIA"), ("specificity", "NORMAL"))  # each rate and the class it is measured on

log = logging.getLogger(__name__)

METRICS = (
    "accuracy",
    "balanced_accuracy",
    "sensitivity",
    "specificity",
    "precision",
    "npv",
    "f1",
    "auroc",
    "auprc",
    "brier",
    "ece",
    "net_benefit",
    "net_benefit_treat_all",
)
N_ECE_BINS = 15


def _div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(b > 0, a / np.where(b > 0, b, 1), np.nan)


def _weighted_metrics(prob: np.ndarray, y: np.ndarray, w: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """Metrics for each row of ``w`` (shape ``(B, N)``); returns arrays of shape ``(B,)``."""
    pred = prob >= threshold  # (N,)
    pos, neg = y == 1, y == 0
    tp, fn = (w * (pred & pos)).sum(1), (w * (~pred & pos)).sum(1)
    fp, tn = (w * (pred & neg)).sum(1), (w * (~pred & neg)).sum(1)
    n = tp + fn + fp + tn
    sens, spec = _div(tp, tp + fn), _div(tn, tn + fp)
    prec = _div(tp, tp + fp)
    out = {
        "accuracy": _div(tp + tn, n),
        "balanced_accuracy": (sens + spec) / 2,
        "sensitivity": sens,
        "specificity": spec,
        "precision": prec,
        "npv": _div(tn, tn + fn),
        "f1": _div(2 * tp, 2 * tp + fp + fn),
        "brier": _div((w * (prob - y) ** 2).sum(1), n),
        # decision curve analysis at this threshold (see net_benefit); "treat all" flags every image
        "net_benefit": _div(tp - fp * _odds(threshold), n),
        "net_benefit_treat_all": _div((tp + fn) - (fp + tn) * _odds(threshold), n),
        "tp": tp,
        "fp": fp,
        "tn": tn,
        "fn": fn,
    }
    out.update(rank_metrics(prob, y, w))
    out["ece"] = _ece(prob, y, w)
    return out


def _odds(threshold: float) -> float:
    return threshold / (1 - threshold) if threshold < 1 else np.inf


def net_benefit(prob: np.ndarray, y: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Net benefit of flagging ``prob >= t`` at each threshold probability ``t`` (Vickers & Elkin 2006): the true
    positives per image, less the false positives weighted by the odds ``t / (1 - t)`` at which a reader who chose
    ``t`` trades one for the other. ``(T,)``; "treat all" is ``net_benefit(np.ones_like(prob), y, thresholds)``,
    "treat none" is 0. Meaningful on calibrated probabilities, at this set's prevalence."""
    pred = prob[None, :] >= thresholds[:, None]  # (T, N)
    tp, fp = (pred & (y == 1)).sum(1), (pred & (y == 0)).sum(1)
    return (tp - fp * thresholds / (1 - thresholds)) / len(y)


def rank_metrics(prob: np.ndarray, y: np.ndarray, w: np.ndarray) -> dict[str, np.ndarray]:
    """Weighted AUROC (Mann-Whitney, ties count 1/2) and average precision (AUPRC), per row of ``w``."""
    order = np.argsort(-prob, kind="stable")  # descending score
    p, yy, ww = prob[order], y[order], w[:, order]
    # Group tied scores: metrics only change between distinct thresholds.
    starts = np.r_[0, np.flatnonzero(np.diff(p)) + 1]  # (G,)
    wpos = np.add.reduceat(ww * (yy == 1), starts, axis=1)  # (B, G) positive weight per tie group
    wneg = np.add.reduceat(ww * (yy == 0), starts, axis=1)
    tp, fp = np.cumsum(wpos, 1), np.cumsum(wneg, 1)  # predicted positive at each group's threshold
    P, Nn = tp[:, -1], fp[:, -1]
    # AUROC: each positive beats the negatives ranked below it, and half of those tied with it.
    neg_below = Nn[:, None] - fp  # negatives with a strictly lower score than the group
    auroc = _div((wpos * (neg_below + 0.5 * wneg)).sum(1), P * Nn)
    precision = _div(tp, tp + fp)
    auprc = _div((wpos * np.nan_to_num(precision)).sum(1), P)
    return {"auroc": auroc, "auprc": auprc}


def _bins(prob: np.ndarray, bins: int = N_ECE_BINS) -> np.ndarray:
    """``(N, bins)`` one-hot of each probability's equal-width bin."""
    return np.eye(bins)[np.minimum((prob * bins).astype(int), bins - 1)]


def _ece(prob: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Expected calibration error with equal-width bins on P(pneumonia), per row of ``w``."""
    onehot = _bins(prob)  # (N, bins)
    wb = w @ onehot  # (B, bins) weight per bin
    conf = w @ (onehot * prob[:, None])
    acc = w @ (onehot * y[:, None])
    total = wb.sum(1)
    return _div(np.abs(conf - acc).sum(1), total)


def _check(prob: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prob, y = np.asarray(prob, dtype=np.float64), np.asarray(y).astype(int)
    if prob.shape != y.shape or prob.ndim != 1 or len(y) == 0:
        raise InputError(f"need equal-length 1-D probabilities and labels, got {prob.shape} and {y.shape}")
    if np.isnan(prob).any() or (prob < 0).any() or (prob > 1).any():
        raise InputError("probabilities must lie in [0, 1] with no NaN")
    if not set(np.unique(y)) <= {0, 1}:
        raise InputError(f"labels must be 0/1, got {sorted(set(np.unique(y)))}")
    return prob, y


def compute_metrics(prob: np.ndarray, y: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """All metrics at ``threshold`` (predict pneumonia iff ``prob >= threshold``).

    With one class only, AUROC/AUPRC (and whatever divides by an empty class) are NaN, with a warning.
    """
    prob, y = _check(prob, y)
    if len(np.unique(y)) < 2:
        warnings.warn("only one class present: AUROC, AUPRC and class-conditional metrics are NaN", stacklevel=2)
    m = _weighted_metrics(prob, y, np.ones((1, len(y))), threshold)
    return {k: float(v[0]) for k, v in m.items()}


def wilson(k: int, n: int) -> tuple[float, float]:
    """95% Wilson score interval of the proportion ``k / n`` (``n > 0``): a rate's precision where no patients are
    there to resample (a site's confirmed outcomes, a stored operating point)."""
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=0.95, method="wilson")
    return float(ci.low), float(ci.high)


def promised_rates(op: dict) -> dict[str, dict]:
    """The rates a stored operating point promises (``op``: a model file's ``operating_point``), each with the
    images it rests on (``effective_images``, else ``images``; None in a file that stores neither) and its 95% Wilson
    interval from them."""
    sizes = op.get("effective_images") or op.get("images") or {}
    rates = {}
    for name, cls in RATES:
        if op.get(name) is not None:
            n = round(sizes.get(cls) or 0)
            ci = list(wilson(round(op[name] * n), n)) if n else None
            rates[name] = {"value": op[name], "images": n or None, "ci": ci}
    return rates


def promise_p_value(k: int, n: int, promised: dict) -> float:
    """One-sided p-value of ``k`` right of ``n`` new images against a promised rate (one of :func:`promised_rates`):
    Fisher's exact test against the images the promise rests on, the rate as if exact (binomial test) where the
    model file stores no sample size."""
    from scipy.stats import binomtest, fisher_exact

    if not promised["images"]:
        return float(binomtest(k, n, promised["value"], alternative="less").pvalue)
    n_ref = promised["images"]
    k_ref = round(promised["value"] * n_ref)
    return float(fisher_exact([[k, n - k], [k_ref, n_ref - k_ref]], alternative="less").pvalue)


def bootstrap_weights(groups: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """``(n_boot, N)`` image weights from resampling *patients* with replacement.

    Each resample draws as many patients as there are, and every image of a drawn patient gets the
    number of times its patient was drawn, so a patient's images always travel together.
    """
    _, inverse = np.unique(np.asarray(groups), return_inverse=True)  # image -> patient index
    n_groups = inverse.max() + 1
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))  # (B, G) patients drawn
    counts = np.zeros((n_boot, n_groups))
    np.add.at(counts, (np.arange(n_boot)[:, None], draws), 1)
    return counts[:, inverse]  # (B, N)


def _calibrated_draws(prob: np.ndarray, n_sim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The probabilities ``(N,)`` as float64, their bins ``(N, bins)``, and the outcomes a perfectly calibrated
    model would meet, ``y ~ Bernoulli(p)`` ``(S, N)``: consistency resampling (Broecker & Smith 2007)."""
    prob = np.asarray(prob, np.float64)
    return prob, _bins(prob), (np.random.default_rng(seed).random((n_sim, len(prob))) < prob).astype(np.float64)


def ece_if_calibrated(prob: np.ndarray, observed: float, *, n_sim: int = 2000, seed: int = 0) -> dict[str, float]:
    """What a perfectly calibrated model's ECE would be on these probabilities ``(N,)`` (outcomes drawn from them,
    ``n_sim`` times). Binned ECE is biased upward on a few hundred images (a calibrated model scores ~0.04 on 314 of
    them), so an observed ECE means something only against this: ``{"mean", "low", "high"}`` (95% range) and
    ``p_value``, the share of calibrated draws at least as large as ``observed``."""
    prob, onehot, y = _calibrated_draws(prob, n_sim, seed)
    sims = np.abs(prob @ onehot - y @ onehot).sum(1) / len(prob)  # (S,)
    low, high = np.quantile(sims, [0.025, 0.975])
    p_value = float(np.mean(sims >= observed))
    return {"mean": float(sims.mean()), "low": float(low), "high": float(high), "p_value": p_value}


def consistency_bands(prob: np.ndarray, *, n_sim: int = 2000, seed: int = 0) -> dict[str, np.ndarray]:
    """Per non-empty ECE bin of the probabilities ``(N,)``: their mean (``confidence``) and the 95% range of the
    pneumonia rate a perfectly calibrated model would show there (``low``, ``high``), each ``(K,)``: the reliability
    diagram's consistency bars. A bin of 5 images at 0.2 shows 0% or 40% by chance alone."""
    prob, onehot, y = _calibrated_draws(prob, n_sim, seed)
    counts = onehot.sum(0)  # (bins,)
    full = counts > 0
    rates = (y @ onehot)[:, full] / counts[full]  # (S, K)
    low, high = np.quantile(rates, [0.025, 0.975], axis=0)
    return {"confidence": (prob @ onehot)[full] / counts[full], "low": low, "high": high}


def metrics_with_ci(
    prob: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    threshold: float,
    *,
    n_boot: int = 2000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Point estimates and percentile ``1 - alpha`` CIs from a patient-level bootstrap.

    Returns ``{metric: {"value", "ci_low", "ci_high"}, ..., "confusion": {...}, "ece_if_calibrated": {...},
    "n_images", "n_patients"}``.
    Resamples in which a metric is undefined (e.g. no negatives drawn) are left out of its CI. The ECE's interval is
    the *basic* bootstrap interval (the percentiles reflected about the estimate, from 0): binned ECE is biased
    upward, a resample's more than the sample's, so its percentile interval lies above the estimate and missed the
    true ECE of simulated models nearly always (docs/BENCHMARKS.md). ``ece_if_calibrated``: :func:`ece_if_calibrated`.
    """
    prob, y = _check(prob, y)
    point = compute_metrics(prob, y, threshold)
    boot = _weighted_metrics(prob, y, bootstrap_weights(groups, n_boot, seed), threshold)
    out: dict[str, Any] = {}
    for name in METRICS:
        vals = boot[name][np.isfinite(boot[name])]
        lo, hi = np.quantile(vals, [alpha / 2, 1 - alpha / 2]) if len(vals) else (np.nan, np.nan)
        if name == "ece":
            lo, hi = max(2 * point[name] - hi, 0.0), max(2 * point[name] - lo, 0.0)
        out[name] = {"value": point[name], "ci_low": float(lo), "ci_high": float(hi)}
    out["ece_if_calibrated"] = ece_if_calibrated(prob, point["ece"], seed=seed)
    out["confusion"] = {k: int(point[k]) for k in ("tp", "fp", "tn", "fn")}
    out["n_images"] = len(y)
    out["n_patients"] = len(np.unique(groups))
    out["bootstrap"] = {"resamples": n_boot, "seed": seed, "unit": "patient", "ci": 1 - alpha}
    return out
