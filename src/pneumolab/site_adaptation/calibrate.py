"""``pneumolab calibrate``: refit the temperature and intercept and re-choose the threshold on a labeled site sample.

Platt scaling on the logit margin, ``sigmoid((z_1 - z_0) / T + b)``: ``T`` fixes confidence, ``b`` absorbs
the site's prevalence and any shift of the score; both keep the ranking (AUROC unchanged). The threshold
policy (by default the model's own, e.g. ``sensitivity>=0.95``) then runs on the site's calibrated
probabilities instead of the training source's validation split.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pneumolab.data.manifest import CLASSES
from pneumolab.data.transforms import Preprocessing
from pneumolab.errors import InputError
from pneumolab.evaluation.calibration import OperatingPoint, score_reference
from pneumolab.evaluation.metrics import compute_metrics
from pneumolab.evaluation.predict import pixel_logits
from pneumolab.evaluation.thresholds import choose_threshold, min_images_per_class, parse_policy
from pneumolab.models.checkpoint import load_model_file, resolve_model_file
from pneumolab.site_adaptation.provenance import (
    SiteSample,
    assessable,
    check_out,
    load_site_sample,
    site_entry,
    write_site_run,
)

__all__ = ["calibrate", "calibrate_model", "fit_platt"]


def fit_platt(logits: torch.Tensor, y: torch.Tensor, max_iter: int = 200) -> tuple[float, float]:
    """``(T, b)`` minimising the NLL of ``sigmoid((z_1 - z_0) / T + b)``; ``logits``: (N, 2), ``y``: (N,)."""
    d = (logits[:, 1] - logits[:, 0]).detach().double()
    y = y.double()
    params = torch.zeros(2, dtype=torch.float64, requires_grad=True)  # (log T, b): T stays > 0
    opt = torch.optim.LBFGS([params], lr=0.1, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = F.binary_cross_entropy_with_logits(d / params[0].exp() + params[1], y)
        loss.backward()
        return loss

    opt.step(closure)
    log_t, b = params.detach().tolist()
    return float(min(max(math.exp(log_t), 0.2), 10.0)), float(b)  # T bounded as in fit_temperature


def _policy(meta: dict[str, Any], policy: str | None) -> str:
    """The policy given, else the model's own."""
    return policy or meta.get("threshold_policy") or "youden"


def _check_sample(sample: SiteSample, policy: str) -> None:
    counts = np.bincount(sample.y, minlength=2)
    names = ("NORMAL", "PNEUMONIA")
    if (counts == 0).any():
        have = names[int(counts.argmax())]
        raise InputError(
            f"{sample.data}: the site sample holds only {have} images; calibration needs labeled "
            "images of both classes (NORMAL and PNEUMONIA)"
        )
    for cls, need in min_images_per_class(policy).items():
        if counts[cls] < need:
            raise InputError(
                f"{sample.data}: {counts[cls]} {names[cls]} image(s) in the site sample, but policy {policy!r} needs "
                f"at least {need}; label more site images or choose a looser policy (e.g. --policy youden)"
            )


def calibrate_model(
    model: torch.nn.Module, meta: dict[str, Any], sample: SiteSample, policy: str | None = None
) -> tuple[dict[str, Any], dict[str, Any]]:
    """New metadata for ``model`` calibrated on ``sample`` (labels used), and what changed.

    Returns:
        ``(meta, details)``: the updated metadata (temperature, prior_shift, threshold, policy, operating point,
        calibration on the site) and the numbers for the provenance record.
    """
    policy = _policy(meta, policy)
    _check_sample(sample, policy)
    y = sample.y
    pre = Preprocessing.from_meta(meta)
    logits = torch.from_numpy(pixel_logits(model, pre, sample.pixels(pre.image_size)))  # (N, 2)
    before = OperatingPoint.from_meta(meta)
    prob_before = before.probability(logits).double().numpy()
    temperature, intercept = fit_platt(logits, torch.from_numpy(y))
    op = OperatingPoint(before.threshold, temperature, intercept, policy)
    prob = op.probability(logits).double().numpy()
    chosen = choose_threshold(prob, y, policy)
    details = {
        "policy": policy,
        "threshold": {"before": before.threshold, "after": chosen["threshold"]},
        "temperature": {"before": before.temperature, "after": temperature},
        "prior_shift": {"before": before.prior_shift, "after": intercept},
        "on_site_sample": {  # fitted on these images: optimistic, shown only to say what the fit reached
            "sensitivity": chosen["sensitivity"],
            "specificity": chosen["specificity"],
            "ece_before": compute_metrics(prob_before, y)["ece"],
            "ece_after": compute_metrics(prob, y)["ece"],
        },
    }
    new = {
        **meta,
        "threshold": chosen["threshold"],
        "temperature": temperature,
        "prior_shift": intercept,
        "threshold_policy": policy,
        "operating_point": {
            "split": "site",
            "sensitivity": chosen["sensitivity"],
            "specificity": chosen["specificity"],
            "images": dict(zip(CLASSES, np.bincount(y.astype(int), minlength=2).tolist(), strict=True)),
        },
        "calibration": {
            "split": "site",
            "ece_before": details["on_site_sample"]["ece_before"],
            "ece_after": details["on_site_sample"]["ece_after"],
        },
        # the threshold now rests on the site's images: the site's later answers are compared with them
        "reference_scores": score_reference(logits, "site"),
    }
    return new, details


def calibrate(
    model_target: str | Path, data: str | Path, out: str | Path, *, policy: str | None = None, split: str = "all"
) -> dict[str, Any]:
    """Calibrate a model on a labeled site sample and write the result as a new run folder ``out``.

    Args:
        model_target: run folder or ``model.pt`` (never modified).
        data: the site sample: dataset folder, Kaggle-layout folder, CSV or npz, with labels.
        out: the new run folder (must not hold a model already).
        policy: threshold policy on the site's probabilities (default: the model's own).
        split: which rows of ``data`` form the sample (``all`` by default).

    Returns:
        The provenance record written into the new model file (``meta["site"][-1]``), with ``model_file``.
    """
    model_file, out = resolve_model_file(model_target), Path(out)
    check_out(out, model_file)
    if policy is not None:
        parse_policy(policy)
    model, meta = load_model_file(model_file)
    # A raw source is indexed and cached in a temporary folder: the new run keeps no copy of the site's pixels.
    with tempfile.TemporaryDirectory(prefix="pneumolab-site-") as tmp:
        sample = load_site_sample(data, Path(tmp), split)
        _check_sample(sample, _policy(meta, policy))  # before the images are decoded; again after the screening
        sample = assessable(sample, model, meta)
        new, details = calibrate_model(model, meta, sample, policy)
        entry = site_entry("calibrate", sample, model_file, **details)
    new["site"] = [*meta.get("site", []), entry]
    return {**entry, "model_file": str(write_site_run(out, model_file, model, new))}
