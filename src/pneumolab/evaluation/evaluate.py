"""``pneumolab evaluate``: predictions, metrics with patient-level CIs, and plots for one model on one split.

The threshold and temperature come from the model file (chosen on validation when training ended);
the evaluated split never changes them. ``policy`` reports an alternative threshold, again chosen on
the model's own validation split, next to the stored one.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumolab.config import AugmentConfig
from pneumolab.data.index import as_dataset
from pneumolab.data.manifest import CLASSES, Manifest, age_span
from pneumolab.data.readers import GROUPING_KEYWORDS, NPZ_SEP, dicom_header_value
from pneumolab.data.sources import csv_column, list_source
from pneumolab.data.transforms import Preprocessing
from pneumolab.errors import InputError
from pneumolab.evaluation import plots
from pneumolab.evaluation.calibration import OperatingPoint
from pneumolab.evaluation.errors import write_error_gallery
from pneumolab.evaluation.metrics import RATES, compute_metrics, metrics_with_ci, promise_p_value, promised_rates
from pneumolab.evaluation.model_card import training_ages, write_model_card
from pneumolab.evaluation.predict import predict_logits, read_val_logits, validation_logits, view_targets
from pneumolab.evaluation.thresholds import choose_threshold
from pneumolab.inference.guard import FeatureTap, guard_reasons
from pneumolab.inference.predictor import age_side, gradcam_layer
from pneumolab.io import atomic_write_json, atomic_write_text, file_sha256, is_fresh
from pneumolab.models.checkpoint import load_model_file, resolve_model_file
from pneumolab.rundir import RunDir, read_history
from pneumolab.site_adaptation.provenance import describe_site, rows_digest, threshold_origin

__all__ = ["evaluate"]

log = logging.getLogger(__name__)

SUBGROUP_METRICS = ("auroc", "sensitivity", "specificity", "balanced_accuracy")


def _probabilities(model, meta: dict[str, Any], manifest: Manifest, rows: list[int], data_dir: Path):
    logits = torch.from_numpy(predict_logits(model, Preprocessing.from_meta(meta), manifest, rows, data_dir / "cache"))
    raw = logits.softmax(1)[:, 1].numpy()
    cal = OperatingPoint.from_meta(meta).probability(logits).numpy()
    return raw.astype(np.float64), cal.astype(np.float64)


def evaluate(
    model_target: str | Path,
    data: str | Path,
    *,
    split: str | None = "test",
    out: str | Path | None = None,
    policy: str | None = None,
    n_boot: int = 2000,
    seed: int = 0,
    model_card: bool = True,
    by: str | None = None,
    errors: int = 12,
) -> dict[str, Any]:
    """Evaluate a model on ``split`` of ``data`` and write predictions, metrics and plots to ``out``; with
    ``model_card``, a model inside a run folder also gets its MODEL_CARD.md updated with the result.

    Args:
        model_target: run folder or ``model.pt``.
        data: dataset folder (``pneumolab data index``), or a Kaggle folder / CSV / npz indexed on the fly.
        split: ``test``, ``val``, ``train`` or ``all``; ``None``: ``test``, or ``all`` for a raw source without
            splits (a site's CSV without a split column, or a folder of NORMAL/ and PNEUMONIA/).
        out: output folder (default :meth:`RunDir.eval_dir`: ``<run>/eval/<data name>-<hash>-<split>``).
        policy: also report the threshold this policy picks on the model's *validation* split.
        n_boot: patient-level bootstrap resamples for the CIs.
        by: also score each group: a column of the CSV the images were listed in (scanner, view, site...), a
            DICOM attribute (``dicom:Manufacturer``, one of ``GROUPING_KEYWORDS``), or ``age`` (against the
            training ages).
        errors: how many of the most confident false positives and of the false negatives ``errors.html`` shows
            (0: no page).
    """
    model_file = resolve_model_file(model_target)
    model, meta = load_model_file(model_file)
    data = Path(data)
    split = split or _default_split(data)
    out = Path(out) if out else RunDir.of(model_file).eval_dir(data, split)
    manifest, data_dir = as_dataset(data, out / "data")
    rows = list(range(len(manifest))) if split == "all" else manifest.indices(split)
    if not rows:
        present = sorted({r.split for r in manifest.records})
        if present == ["train"] and manifest.meta.get("working_copy"):
            raise InputError(f"{data} has no train/val/test splits (its images all count as train): use --split all")
        raise InputError(f"{data} has no {split!r} images (it has {present}); choose --split from those or 'all'")
    by_values = _groups(manifest, rows, by, data, meta) if by else None  # before the model runs: a bad --by fails fast
    y = np.array([manifest.records[i].target for i in rows])
    groups = np.array([manifest.records[i].group for i in rows])
    with FeatureTap(gradcam_layer(model, meta["model_name"])) as tap:
        raw, prob = _probabilities(model, meta, manifest, rows, data_dir)
        feats = tap.take()  # (N, C) pooled features: what the service's feature guard reads
    guard = meta.get("ood_guard")
    sizes = [(manifest.records[i].width, manifest.records[i].height) for i in rows]
    assessed = np.array([not why for why in guard_reasons(sizes, guard, feats)])

    threshold = OperatingPoint.from_meta(meta).threshold
    result: dict[str, Any] = {
        "model_file": str(model_file),
        "model_sha256": file_sha256(model_file),  # which file was scored: the audit log and provenance name it so
        "model": meta["model_name"],
        "data": str(data.resolve()),
        "split": split,
        "threshold": {"value": threshold, "origin": threshold_origin(meta)},
        "site": describe_site(meta),
        "at_threshold": _metrics(prob, y, groups, threshold, n_boot, seed),
        "at_0.5": _metrics(prob, y, groups, 0.5, n_boot, seed),
        "calibration": {
            "temperature": meta.get("temperature", 1.0),
            "ece_uncalibrated": _ece(raw, y),
            "ece_calibrated": _ece(prob, y),
        },
        "counts": {c: int((y == i).sum()) for i, c in enumerate(CLASSES)},
        # what predict/serve would refuse to label (all are scored here): the coverage a site can expect
        "guard": {"images": len(rows), "not_assessed": int((~assessed).sum()), "feature_guard": guard is not None},
        # Such images are resampled alone: their CIs assume one image per patient (too narrow when they are not).
        "images_without_patient_id": int(np.char.startswith(groups.astype(str), "image:").sum()),
        "ages": _ages_against_training([manifest.records[i].age_years for i in rows], meta),
    }
    own = Path(meta["config"]["data"]["data_dir"]).resolve() == data_dir.resolve()
    if own and split in ("train", "val"):
        result["warning"] = f"the {split} split was used to train or select this model: these numbers are optimistic"
    digest = rows_digest(manifest, rows)
    if any(s["data_sha256"] == digest for s in meta.get("site") or []):
        result["warning"] = (
            "the model was calibrated or adapted on these very images (`pneumolab calibrate/adapt`): "
            "these numbers are optimistic; score it on other images of the site"
        )
    if "warning" not in result and (promise := _against_promise(meta.get("operating_point") or {}, prob, y, threshold)):
        result["promise"] = promise  # not where the promise was measured: these images test it
    if by:
        result["subgroups"] = {"column": by, "groups": _subgroups(by_values, prob, y, groups, threshold, n_boot, seed)}
    if policy:
        result["alternative_threshold"] = _policy_on_validation(
            model_file, model, meta, policy, n_boot, seed, prob, y, groups
        )

    out.mkdir(parents=True, exist_ok=True)
    _write_predictions(out / "predictions.csv", manifest, rows, prob, threshold, assessed)
    result["plots"] = _plots(result, prob, raw, y, groups, threshold, model_file, out)
    if errors > 0:
        title = f"{meta['model_name']} on the {split} split of {data.name}"
        result["errors"] = write_error_gallery(
            out / "errors.html", model, meta, manifest, rows, prob, y, assessed, errors, title
        )
        result["plots"]["errors"] = str(out / "errors.html")
    atomic_write_json(out / "metrics.json", result)
    run = RunDir.of(model_file)
    if model_card and model_file == run.model and run.config.is_file():  # inside a run folder
        evaluations = [json.loads(p.read_text()) for p in sorted(model_file.parent.glob("eval/*/metrics.json"))]
        write_model_card(model_file.parent, meta, evaluations)
    return result


def _against_promise(op: dict[str, Any], prob: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, Any]:
    """Sensitivity and specificity at the stored threshold on these images against what the operating point promised
    (:func:`promised_rates`; one-sided tests, Bonferroni over the two rates). Images, not patients: the test counts
    each image once, as the promise does."""
    promise, out = promised_rates(op), {}
    for name, cls in RATES:
        c = CLASSES.index(cls)
        mine = y == c
        if name in promise and mine.any():
            k, n = int(((prob >= threshold) == bool(c))[mine].sum()), int(mine.sum())  # right of this class
            p = promise_p_value(k, n, promise[name])
            here = {"value": k / n, "k": k, "n": n}
            out[name] = {**promise[name], "here": here, "p_value": p, "below": p < 0.05 / len(promise)}
    return out


def _ages_against_training(ages: list[float | None], meta: dict[str, Any]) -> dict[str, Any] | None:
    """How many scored images carry an age (DICOM headers) and how many of those lie outside the ages the model
    learnt from (``predict``/``serve`` answer them with a caution); None when either is unknown."""
    span = training_ages(meta.get("training_data"))
    known = [a for a in ages if a is not None]
    if span is None or not known:
        return None
    outside = sum(age_side(a, span) is not None for a in known)
    return {"training_ages_years": list(span), "images_with_age": len(known), "outside": outside}


def _default_split(data: Path) -> str:
    """``test``, or ``all`` for a raw source whose images all sit in no split (a site's CSV without a split column,
    or ``ROOT/{NORMAL,PNEUMONIA}``): listed, not decoded."""
    if (data / "manifest.csv").is_file() or data.name in ("manifest.csv", "manifest.json"):
        return "test"
    try:
        splits = {c.split for c in list_source(data).candidates}
    except InputError:
        return "test"  # as_dataset says what is wrong with it
    if splits != {"train"}:
        return "test"
    log.info("%s has no train/val/test splits: scoring all its images (--split all)", data)
    return "all"


def _groups(manifest: Manifest, rows: list[int], by: str, data: Path, meta: dict[str, Any]) -> np.ndarray:
    """Each row's group for ``--by``: where its age lies against the training ages (``age``), a DICOM attribute
    (``dicom:KEYWORD``), or its cell in a column of the CSV its images were listed in (``(empty)``: empty cell)."""
    if by == "age":
        return _age_groups(manifest, rows, meta)
    if by.lower().startswith("dicom:"):
        return _dicom_groups(manifest, rows, by.partition(":")[2])
    return _csv_groups(manifest, rows, by, data)


def _age_groups(manifest: Manifest, rows: list[int], meta: dict[str, Any]) -> np.ndarray:
    span = training_ages(meta.get("training_data"))
    if span is None:
        raise InputError(
            "--by age: this model file records no training ages (its training images had no ages in their DICOM "
            "headers and are not Kermany's), so there is nothing to place the patients against"
        )

    def group(age: float | None) -> str:
        if age is None:
            return "(no age)"
        side = age_side(age, span)
        return f"{age_span(*span)} (the training ages)" if side is None else f"{side} than the training ages"

    return np.array([group(manifest.records[i].age_years) for i in rows])


def _dicom_groups(manifest: Manifest, rows: list[int], name: str) -> np.ndarray:
    keyword = next((k for k in GROUPING_KEYWORDS if k.lower() == name.strip().lower()), None)
    if keyword is None:
        raise InputError(
            f"--by dicom:{name}: choose one of {', '.join(GROUPING_KEYWORDS)} (attributes that identify a patient "
            "or a study are not offered: the groups are printed)"
        )
    values = []
    for i in rows:
        path = manifest.root / manifest.records[i].path
        try:
            value = None if NPZ_SEP in str(path) else dicom_header_value(path, keyword)
        except OSError as e:
            raise InputError(f"{path}: cannot be read any more ({e.strerror}); prepare the dataset again") from None
        values.append("(not DICOM)" if value is None else value or "(empty)")
    if all(v == "(not DICOM)" for v in values):
        raise InputError(f"--by dicom:{keyword}: none of the evaluated images is a DICOM file")
    return np.array(values)


def _csv_groups(manifest: Manifest, rows: list[int], by: str, data: Path) -> np.ndarray:
    source = Path(manifest.meta.get("source", ""))
    if source.suffix.lower() != ".csv" or not source.is_file():
        raise InputError(
            f"--by {by} reads a column of the CSV the images were listed in, but {data} was not indexed from a CSV "
            f"({source.name or 'source not recorded'}); list the images in a CSV path,label,{by} and give that"
        )
    cells = csv_column(source, by)
    if not any(manifest.records[i].path in cells for i in rows):
        raise InputError(
            f"none of the evaluated images is listed in {source} any more: the CSV changed since the dataset was "
            "indexed; prepare it again (pneumolab data prepare) or give the CSV itself as --data"
        )
    return np.array([cells.get(manifest.records[i].path) or "(empty)" for i in rows])


def _ece(prob, y) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one class: the AUROC compute_metrics also computes is undefined
        return compute_metrics(prob, y)["ece"]


def _metrics(prob, y, groups, threshold: float, n_boot: int, seed: int) -> dict[str, Any]:
    """:func:`metrics_with_ci`, with what one class alone leaves undefined (AUROC, the absent class's rate) as
    ``null`` rather than NaN: a site may score its normal X-rays alone, for the share the model flags."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # sklearn's and our own one-class warnings: the nulls say it
        r = metrics_with_ci(prob, y, groups, threshold, n_boot=n_boot, seed=seed)
    for v in r.values():
        if isinstance(v, dict) and "value" in v:
            v.update({k: (x if np.isfinite(x) else None) for k, x in v.items()})
    return r


def _subgroups(values, prob, y, groups, threshold: float, n_boot: int, seed: int) -> dict[str, dict[str, Any]]:
    """Metrics with patient-bootstrap CIs for each value of a column, at the stored threshold (a group of one
    class has no AUROC and no rate of the other class: ``null``)."""
    out = {}
    for value in sorted(set(values)):
        m = values == value
        r = _metrics(prob[m], y[m], groups[m], threshold, n_boot, seed)
        out[str(value)] = {
            "n_images": r["n_images"],
            "n_patients": r["n_patients"],
            **{c: int((y[m] == i).sum()) for i, c in enumerate(CLASSES)},
            **{k: r[k] for k in SUBGROUP_METRICS},
        }
    return out


def _policy_on_validation(model_file, model, meta, policy, n_boot, seed, prob, y, groups) -> dict[str, Any]:
    val_dir = Path(meta["config"]["data"]["data_dir"])
    val_manifest = Manifest.load(val_dir)
    val_rows = val_manifest.indices("val")
    run = RunDir.of(model_file)
    # The run's own validation logits when they belong to this very model file (a calibrated or adapted copy
    # lives in another folder and has none); otherwise predict validation now, with the views the run used.
    kept = read_val_logits(run.val_logits, val_manifest) if is_fresh(run.val_logits, model_file) else None
    if kept is None:
        views = int(meta["config"].get("calibration_views", 0))
        augment = AugmentConfig.model_validate(meta["config"]["data"]["augment"]) if views else None
        pre = Preprocessing.from_meta(meta)
        kept = validation_logits(model, pre, val_manifest, val_rows, val_dir / "cache", augment=augment, views=views)
    val_prob = OperatingPoint.from_meta(meta).probability(torch.from_numpy(kept)).double().numpy()
    op = choose_threshold(val_prob, view_targets(val_manifest, val_rows, len(kept)), policy)
    return {
        "policy": policy,
        "value": op["threshold"],
        "origin": f"chosen now on the validation split of {val_dir} (not stored in the model file)",
        "metrics": _metrics(prob, y, groups, op["threshold"], n_boot, seed),
    }


def _write_predictions(
    path: Path, manifest: Manifest, rows: list[int], prob: np.ndarray, threshold: float, assessed: np.ndarray
) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["path", "patient_id", "label", "probability", "prediction", "assessed"])
    for i, p, a in zip(rows, prob, assessed, strict=True):
        r = manifest.records[i]
        w.writerow([r.path, r.patient_id, r.label, f"{p:.6f}", CLASSES[int(p >= threshold)], "yes" if a else "no"])
    atomic_write_text(path, buf.getvalue())


def _plots(result, prob, raw, y, groups, threshold, model_file: Path, out: Path) -> dict[str, str]:
    where = f"{result['split']} split, {Path(result['data']).name}"
    m = result["at_threshold"]
    paths = {}
    if len(np.unique(y)) == 2:  # the curves need both classes
        paths["roc"] = plots.plot_roc(prob, y, groups, threshold, m["auroc"], f"ROC ({where})", out / "roc.png")
        paths["pr"] = plots.plot_pr(prob, y, m["auprc"], f"Precision-recall ({where})", out / "pr.png")
        paths["decision_curve"] = plots.plot_decision_curve(
            prob, y, threshold, f"Decision curve ({where})", out / "decision_curve.png"
        )
    paths["confusion"] = plots.plot_confusion(
        m["confusion"], list(CLASSES), f"t={threshold:.3f} ({where})", out / "confusion.png"
    )
    eces = (result["calibration"]["ece_uncalibrated"], result["calibration"]["ece_calibrated"])
    paths["reliability"] = plots.plot_reliability(raw, prob, y, eces, f"Reliability ({where})", out / "reliability.png")
    history = read_history(RunDir.of(model_file).history)
    if history:
        paths["curves"] = plots.plot_curves(history, "Training curves (train / validation)", out / "curves.png")
    return {k: str(v) for k, v in paths.items()}
