"""Evaluation figures (PNG): ROC with a bootstrap band and the operating point, precision-recall,
confusion matrix, reliability diagram and training curves. Every title names the split."""

from __future__ import annotations

import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt
import numpy as np
from sklearn.calibration import calibration_curve

from pneumolab.evaluation.metrics import N_ECE_BINS, bootstrap_weights, consistency_bands
from pneumolab.io import atomic_path

__all__ = [
    "decision_curves",
    "fig_to_png",
    "plot_confusion",
    "plot_curves",
    "plot_decision_curve",
    "plot_pr",
    "plot_reliability",
    "plot_robustness",
    "plot_roc",
    "roc_band",
]


def fig_to_png(fig) -> bytes:
    """Render and close a figure; PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, dpi=110, bbox_inches="tight", format="png")
    plt.close(fig)
    return buf.getvalue()


def _save(fig, path: Path) -> Path:
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(fig_to_png(fig))
    return path


def _roc_points(prob: np.ndarray, y: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Weighted ROC for each row of ``w``: (B, G+1) FPR and TPR at every distinct threshold. All bootstrap
    resamples in one pass of array ops (sklearn's roc_curve takes one weight vector per call)."""
    order = np.argsort(-prob, kind="stable")
    p, yy, ww = prob[order], y[order], w[:, order]
    starts = np.r_[0, np.flatnonzero(np.diff(p)) + 1]
    tp = np.cumsum(np.add.reduceat(ww * (yy == 1), starts, axis=1), 1)
    fp = np.cumsum(np.add.reduceat(ww * (yy == 0), starts, axis=1), 1)
    zeros = np.zeros((len(w), 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.hstack([zeros, fp / fp[:, -1:]]), np.hstack([zeros, tp / tp[:, -1:]])


def roc_band(prob, y, groups, n_boot: int = 300, seed: int = 0, grid: int = 101):
    """FPR grid, ROC TPR and its 95% patient-bootstrap band (2.5th/97.5th percentiles)."""
    fpr_grid = np.linspace(0, 1, grid)
    fpr, tpr = _roc_points(prob, y, np.ones((1, len(y))))
    curve = np.interp(fpr_grid, fpr[0], tpr[0])
    bf, bt = _roc_points(prob, y, bootstrap_weights(groups, n_boot, seed))
    ok = np.isfinite(bf[:, -1]) & np.isfinite(bt[:, -1])
    band = np.array([np.interp(fpr_grid, f, t) for f, t in zip(bf[ok], bt[ok], strict=True)])
    return fpr_grid, curve, np.quantile(band, 0.025, axis=0), np.quantile(band, 0.975, axis=0)


def plot_roc(prob, y, groups, threshold: float, auroc: dict, title: str, path: Path) -> Path:
    grid, curve, lo, hi = roc_band(prob, y, groups)
    pred = prob >= threshold
    sens = (pred & (y == 1)).sum() / max(1, (y == 1).sum())
    spec = (~pred & (y == 0)).sum() / max(1, (y == 0).sum())
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.fill_between(grid, lo, hi, alpha=0.25, label="95% CI (patient bootstrap)")
    ax.plot(grid, curve, label=f"AUROC {auroc['value']:.3f} [{auroc['ci_low']:.3f}, {auroc['ci_high']:.3f}]")
    ax.plot([1 - spec], [sens], "o", color="C3", label=f"operating point t={threshold:.3f}")
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=7)
    return _save(fig, path)


def plot_pr(prob, y, auprc: dict, title: str, path: Path) -> Path:
    order = np.argsort(-prob, kind="stable")
    tp = np.cumsum(y[order] == 1)
    fp = np.cumsum(y[order] == 0)
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.step(tp / max(1, tp[-1]), tp / (tp + fp), where="post", label=f"AUPRC {auprc['value']:.3f}")
    ax.axhline((y == 1).mean(), ls=":", color="grey", label="prevalence")
    ax.set(xlabel="recall (sensitivity)", ylabel="precision (PPV)", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower left", fontsize=7)
    return _save(fig, path)


def decision_curves(probs: dict[str, np.ndarray], y: np.ndarray, title: str, threshold: float | None = None):
    """Net benefit against the threshold probability for each model's probabilities (all of the same images ``y``),
    flagging every image and flagging none; ``threshold`` is marked. Where a model's curve lies above both, acting
    on it beats either policy (Vickers & Elkin 2006). Returns the figure."""
    from pneumolab.evaluation.metrics import net_benefit

    grid = np.linspace(0.01, 0.99, 99)
    prevalence = float((y == 1).mean())
    fig, ax = plt.subplots(figsize=(4.8, 4.6))
    for name, prob in probs.items():
        ax.plot(grid, net_benefit(prob, y, grid), label=name)
    ax.plot(grid, net_benefit(np.ones_like(y, dtype=float), y, grid), ":", color="grey", label="flag every image")
    ax.axhline(0, ls="--", color="black", lw=1, label="flag none")
    if threshold is not None:
        ax.axvline(threshold, color="C3", lw=1, label=f"stored threshold {threshold:.3f}")
    ax.set(xlabel="threshold probability", ylabel="net benefit", title=title, xlim=(0, 1))
    ax.set_ylim(-0.05, max(0.05, prevalence * 1.1))
    ax.text(0.02, 0.02, f"at this set's prevalence {100 * prevalence:.0f}%", transform=ax.transAxes, fontsize=7)
    if len(probs) > 1:  # a report's many runs: the legend beside the axes, not over the curves
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1), fontsize=7)
    else:
        ax.legend(loc="upper right", fontsize=7)
    return fig


def plot_decision_curve(prob, y, threshold: float, title: str, path: Path) -> Path:
    """One model's decision curve with its stored threshold (``evaluate``)."""
    return _save(decision_curves({"model": prob}, y, title, threshold), path)


def plot_confusion(confusion: dict, classes: list[str], title: str, path: Path) -> Path:
    m = np.array([[confusion["tn"], confusion["fp"]], [confusion["fn"], confusion["tp"]]])  # rows: truth
    fig, ax = plt.subplots(figsize=(3.8, 3.4))
    ax.imshow(m, cmap="Blues")
    for (i, j), v in np.ndenumerate(m):
        ax.text(j, i, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
    ax.set(
        xticks=[0, 1],
        yticks=[0, 1],
        xticklabels=classes,
        yticklabels=classes,
        xlabel="predicted",
        ylabel="true",
        title=title,
    )
    return _save(fig, path)


def plot_reliability(prob_raw, prob_cal, y, ece: tuple[float, float], title: str, path: Path) -> Path:
    edges = np.linspace(0, 1, N_ECE_BINS + 1)
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for p, name, e in ((prob_raw, "uncalibrated", ece[0]), (prob_cal, "temperature-scaled", ece[1])):
        # the same equal-width bins as the ECE; empty bins are left out
        acc, conf = calibration_curve(y, p, n_bins=N_ECE_BINS, strategy="uniform")
        ax.plot(conf, acc, "o-", label=f"{name} (ECE {e:.3f})")
    # where a perfectly calibrated model's points would fall by chance, bin by bin (of the temperature-scaled
    # probabilities): a point outside its bar is miscalibration, one inside is noise
    band = consistency_bands(prob_cal)
    bars = {"color": "grey", "alpha": 0.3, "lw": 6, "zorder": 0, "label": "95% if calibrated"}
    ax.vlines(band["confidence"], band["low"], band["high"], **bars)
    ax.plot(edges, edges, ":", color="grey")
    ax.set(xlabel="predicted P(pneumonia)", ylabel="observed pneumonia rate", title=title, xlim=(0, 1), ylim=(0, 1))
    ax.legend(loc="upper left", fontsize=7)
    return _save(fig, path)


def plot_curves(history: list[dict[str, float]], title: str, path: Path) -> Path:
    """Loss, accuracy and AUROC per epoch from a run's ``history.csv``."""
    epochs = [int(r["epoch"]) for r in history]
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    for ax, key in zip(axes, ("loss", "acc", "auroc"), strict=True):
        for split in ("train", "val"):
            vals = [r.get(f"{split}/{key}", np.nan) for r in history]
            if not np.all(np.isnan(vals)):
                ax.plot(epochs, vals, "o-", label=split)
        ax.set(xlabel="epoch", title=key)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def plot_robustness(result: dict, title: str, path: Path) -> Path:
    """Specificity, sensitivity and ECE of one model per shift, from clean (0) to the strongest severity (3):
    a ``robustness()`` result; metrics at the model's stored threshold."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), sharex=True)
    clean = result["clean"]
    for i, (name, rows) in enumerate(result["shifts"].items()):
        for ax, key in zip(axes, ("specificity", "sensitivity", "ece"), strict=True):
            vals = [clean[key], *(r[key] for r in rows)]
            ax.plot(range(len(vals)), vals, "o-", ms=3, color=plt.cm.tab10(i % 10), label=name)
    levels = range(1 + max(len(rows) for rows in result["shifts"].values()))
    for ax, key in zip(axes, ("specificity", "sensitivity", "ECE"), strict=True):
        ax.set(xlabel="severity (0 = clean)", title=key, xticks=levels)
        if key != "ECE":
            ax.set_ylim(-0.02, 1.02)
    axes[2].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.02, 0.5))
    fig.suptitle(f"{title} (threshold {result['threshold']:.3f})", y=1.03)
    return _save(fig, path)
