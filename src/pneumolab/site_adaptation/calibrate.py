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
from pneumolab.evaluation.metrics import compute_metrics, ece_if_calibrated
from pneumolab.evaluation.predict import pixel_logits
from pneumolab.evaluation.thresholds import choose_threshold, min_images_per_class, parse_policy
from pneumolab.models.checkpoint import load_model_file, resolve_model_file
from pneumolab.site_adaptation.provenance import (
    SiteSample,
    assessable,
    check_out,
    digest_of,
    load_site_sample,
    provenance_entry,
    site_entry,
    write_site_run,
)

__all__ = ["answer_margins", "calibrate", "calibrate_from_outcomes", "calibrate_logits", "calibrate_model", "fit_platt"]


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


def _check_labels(
    y: np.ndarray, policy: str, where: str, what: str = "images", more: str = "label more site images"
) -> None:
    """Both classes, and as many of each as ``policy`` needs; ``where`` and ``what`` name the sample in the error."""
    counts = np.bincount(y, minlength=2)
    names = ("NORMAL", "PNEUMONIA")
    if (counts == 0).any():
        have = names[int(counts.argmax())]
        raise InputError(
            f"{where}: the site sample holds only {have} {what}; calibration needs labeled "
            f"{what} of both classes (NORMAL and PNEUMONIA)"
        )
    for cls, need in min_images_per_class(policy).items():
        if counts[cls] < need:
            raise InputError(
                f"{where}: {counts[cls]} {names[cls]} {what[:-1]}(s) in the site sample, but policy {policy!r} needs "
                f"at least {need}; {more} or choose a looser policy (e.g. --policy youden)"
            )


def _check_sample(sample: SiteSample, policy: str) -> None:
    _check_labels(sample.y, policy, sample.data)


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
    pre = Preprocessing.from_meta(meta)
    logits = torch.from_numpy(pixel_logits(model, pre, sample.pixels(pre.image_size)))  # (N, 2)
    return calibrate_logits(meta, logits, sample.y, policy)


def calibrate_logits(
    meta: dict[str, Any], logits: torch.Tensor, y: np.ndarray, policy: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """:func:`calibrate_model` on the site sample's ``logits`` (N, 2) and labels ``y`` (N,)."""
    before = OperatingPoint.from_meta(meta)
    prob_before = before.probability(logits).double().numpy()
    temperature, intercept = fit_platt(logits, torch.from_numpy(y))
    op = OperatingPoint(before.threshold, temperature, intercept, policy)
    prob = op.probability(logits).double().numpy()
    chosen = choose_threshold(prob, y, policy)
    ece_after = compute_metrics(prob, y)["ece"]
    details = {
        "policy": policy,
        "threshold": {"before": before.threshold, "after": chosen["threshold"]},
        "temperature": {"before": before.temperature, "after": temperature},
        "prior_shift": {"before": before.prior_shift, "after": intercept},
        "on_site_sample": {  # fitted on these images: optimistic, shown only to say what the fit reached
            "sensitivity": chosen["sensitivity"],
            "specificity": chosen["specificity"],
            "ece_before": compute_metrics(prob_before, y)["ece"],
            "ece_after": ece_after,
            # what ECE these images allow: a few hundred of them show ~0.04 for a perfectly calibrated model
            "ece_if_calibrated": ece_if_calibrated(prob, ece_after),
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


def answer_margins(probabilities: np.ndarray, meta: dict[str, Any]) -> np.ndarray:
    """The logit margins ``z_1 - z_0`` behind answers a model file gave: its operating point's
    ``p = sigmoid(d / T + b)`` inverted. A float32 probability keeps the log-odds to ~1e-5 between 0.01 and 0.99 and
    saturates at +-16; beyond, the answer was certain and its exact margin does not move a fit."""
    op = OperatingPoint.from_meta(meta)
    p = np.clip(np.asarray(probabilities, np.float64), 1e-7, 1 - 1e-7)
    return (np.log(p / (1 - p)) - op.prior_shift) * op.temperature


def _outcome_coverage(answers: list[dict[str, Any]]) -> list[str]:
    """A warning when outcomes were confirmed for a much larger share of one kind of answer than of the other
    (e.g. only the flagged ones were followed up): a threshold fitted on them is biased."""
    share = {}
    for label in ("NORMAL", "PNEUMONIA"):
        given = [r for r in answers if r["label"] == label]
        share[label] = (sum("_outcome" in r for r in given), len(given))
    (k0, n0), (k1, n1) = share["NORMAL"], share["PNEUMONIA"]
    r0, r1 = k0 / max(n0, 1), k1 / max(n1, 1)
    if n0 and n1 and min(r0, r1) < 0.5 * max(r0, r1):
        return [
            f"outcomes are known for {k1} of {n1} PNEUMONIA answers ({r1:.0%}) but {k0} of {n0} NORMAL ones "
            f"({r0:.0%}): if they were confirmed because of the answer (e.g. flagged cases followed up), the fit is "
            "biased; confirm a random sample of both kinds of answer"
        ]
    return []


def calibrate_from_outcomes(
    model_target: str | Path,
    logs: list[Path],
    outcomes: Path,
    out: str | Path,
    *,
    policy: str | None = None,
) -> dict[str, Any]:
    """Calibrate a model on the answers it gave at the site whose outcomes were confirmed, without the images.

    The answers are the service's audit log or ``predict --json`` lines (``logs``) that came from this model's file
    (``model.pt``, or its ``model.onnx``: the same weights); ``outcomes`` is the CSV ``pneumolab monitor --outcomes``
    reads. Each answer's probability gives back its logit margin (:func:`answer_margins`), and the fit is then
    :func:`calibrate_logits`'s, as on images. An answer given twice (``predict`` run again on an image) counts once:
    its latest.

    Returns:
        The provenance record written into the new model file (``meta["site"][-1]``), with ``model_file``,
        ``answers`` (what was used and left out) and ``warnings``.
    """
    from pneumolab.site_adaptation.monitor import attach_outcomes, merged, model_files, read_records

    model_file, out = resolve_model_file(model_target), Path(out)
    check_out(out, model_file)
    if policy is not None:
        parse_policy(policy)
    model, meta = load_model_file(model_file)
    policy = _policy(meta, policy)
    shas = set(merged(model_files([Path(model_target)])))  # model.pt, and a run folder's model.onnx
    records = read_records(logs)
    matched = attach_outcomes(records, outcomes)
    key = matched["key"]
    mine = [r for r in records if r.get("model_sha256") in shas and r.get("label") in ("NORMAL", "PNEUMONIA")]
    latest = {r[key]: r for r in mine if "_outcome" in r}  # records are in time order
    answers = {
        "used": len(latest),
        "repeated": sum("_outcome" in r for r in mine) - len(latest),
        "not_assessed": sum("_outcome" in r and r.get("label") == "NOT_ASSESSED" for r in records),
        "other_models": sum("_outcome" in r and r.get("model_sha256") not in shas for r in records),
        "outcomes_unmatched": matched["unmatched"],
    }
    if not latest:
        which = ", ".join(sorted(s[:12] for s in shas))
        raise InputError(
            f"{outcomes}: none of its outcomes belongs to an answer of {model_target} (SHA-256 {which}) in these "
            f"logs ({answers['other_models']} belong to other model files); give the model that gave the answers "
            "(its run folder, if the service ran its model.onnx)"
        )
    chosen = list(latest.values())
    y = np.array([r["_outcome"] == "PNEUMONIA" for r in chosen], dtype=np.int64)
    _check_labels(y, policy, str(outcomes), "confirmed answers", "confirm more outcomes")
    d = torch.from_numpy(answer_margins(np.array([r["probability"] for r in chosen]), meta))
    new, details = calibrate_logits(meta, torch.stack([torch.zeros_like(d), d], 1), y, policy)
    source = {
        "source": "outcomes",
        "data": str(outcomes.resolve()),
        "logs": [str(Path(p).resolve()) for p in logs],
        "data_sha256": digest_of(list(latest)),  # of the answers' keys: no image is known
        "images": len(chosen),
        "classes": dict(zip(CLASSES, np.bincount(y, minlength=2).tolist(), strict=True)),
    }
    entry = provenance_entry("calibrate", source, model_file, answers=answers, **details)
    new["site"] = [*meta.get("site", []), entry]
    warnings = _outcome_coverage(mine)
    return {**entry, "warnings": warnings, "model_file": str(write_site_run(out, model_file, model, new))}
