"""Honest numbers for the site features: fit on one patient-disjoint fold of a labeled site set, score the other.

Never adapt and score on the same images: the site set is split into ``k`` folds by patient (stratified,
seeded); each fold is scored by the model calibrated (or adapted) on the other folds, and the pooled
out-of-fold predictions are scored once, with patient-bootstrap CIs. Threshold metrics use each fold's own
threshold; AUROC and ECE use the pooled calibrated probabilities.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.model_selection import StratifiedGroupKFold

from pneumolab.data.transforms import Preprocessing
from pneumolab.evaluation.calibration import OperatingPoint
from pneumolab.evaluation.metrics import metrics_with_ci
from pneumolab.evaluation.predict import pixel_logits
from pneumolab.models.checkpoint import load_model_file
from pneumolab.site_adaptation.adapt import adapt_model
from pneumolab.site_adaptation.calibrate import calibrate_model
from pneumolab.site_adaptation.provenance import load_site_sample

__all__ = ["site_fold_metrics"]

_KEYS = ("auroc", "sensitivity", "specificity", "accuracy", "balanced_accuracy", "ece")


def _margin(prob: np.ndarray, threshold: float) -> np.ndarray:
    """Scores whose 0.5 is ``threshold``: ``sigmoid(logit(p) - logit(t))`` keeps each fold's decisions when pooled."""
    p = np.clip(prob, 1e-9, 1 - 1e-9)
    t = min(max(threshold, 1e-9), 1 - 1e-9)
    return 1 / (1 + np.exp(-(np.log(p / (1 - p)) - np.log(t / (1 - t)))))


def site_fold_metrics(
    model_target: str | Path,
    data: str | Path,
    *,
    split: str = "all",
    folds: int = 2,
    n_boot: int = 2000,
    seed: int = 0,
    policy: str | None = None,
    work_dir: str | Path | None = None,
) -> dict[str, Any]:
    """Out-of-fold metrics of ``calibrate``, ``adapt``, both and zero-shot on a labeled site set.

    ``data`` is a dataset folder, or a source indexed into ``work_dir`` (default: a new temporary folder).

    Returns ``{how: {"pooled": {metric: value}, "ci": {metric: [lo, hi]}, "folds": [...]}}`` for ``how`` in
    zero-shot, calibrate, adapt, adapt-bn-only (no prior) and adapt+calibrate (adapt, then calibrate on the
    same fold).
    """
    model0, meta0 = load_model_file(model_target)
    sample = load_site_sample(data, Path(work_dir or tempfile.mkdtemp(prefix="pneumolab-site-")), split)
    y_all = sample.y
    groups_all = np.array([sample.manifest.records[i].group for i in sample.rows])
    splitter = StratifiedGroupKFold(folds, shuffle=True, random_state=seed)
    parts = list(splitter.split(np.zeros(len(y_all)), y_all, groups_all))
    out: dict[str, Any] = {}
    for how in ("zero-shot", "calibrate", "adapt", "adapt-bn-only", "adapt+calibrate"):
        prob, margin, fold_info = np.zeros(len(y_all)), np.zeros(len(y_all)), []
        for fit_idx, score_idx in parts:
            model, meta, details = copy.deepcopy(model0), dict(meta0), {}
            fit = sample.subset([sample.rows[j] for j in fit_idx])
            if how.startswith("adapt"):
                meta, details = adapt_model(model, meta, fit, prior=how != "adapt-bn-only")
            if how.endswith("calibrate"):
                meta, _ = calibrate_model(model, meta, fit, policy)
            score_rows = [sample.rows[j] for j in score_idx]
            pre = Preprocessing.from_meta(meta)
            logits = torch.from_numpy(pixel_logits(model, pre, sample.subset(score_rows).pixels(pre.image_size)))
            op = OperatingPoint.from_meta(meta)
            p = op.probability(logits).double().numpy()
            prob[score_idx], margin[score_idx] = p, _margin(p, op.threshold)
            info = {"fit_images": len(fit_idx), "scored_images": len(score_idx), "threshold": op.threshold}
            if details.get("prior"):
                info["site_prior_estimate"] = details["prior"]["site_estimate"]
            fold_info.append(info)
        at_t = metrics_with_ci(margin, y_all, groups_all, 0.5, n_boot=n_boot, seed=seed)
        ranked = metrics_with_ci(prob, y_all, groups_all, 0.5, n_boot=n_boot, seed=seed)
        merged = {k: (ranked if k in ("auroc", "ece") else at_t)[k] for k in _KEYS}
        out[how] = {
            "pooled": {k: merged[k]["value"] for k in _KEYS},
            "ci": {k: [merged[k]["ci_low"], merged[k]["ci_high"]] for k in _KEYS},
            "folds": fold_info,
            "true_prevalence": float(y_all.mean()),
        }
    return out
