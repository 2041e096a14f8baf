"""A dataset summary: what a user checks before training (counts, balance, patients, sizes, notes)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from statistics import median
from typing import Any

from pneumolab.data.cache import prepared_sizes
from pneumolab.data.manifest import CLASSES, SPLITS, Manifest, Record
from pneumolab.data.patient import kermany_label_hint

__all__ = ["MIN_SHAPED_PER_CLASS", "SHAPE_SHORTCUT_MARGIN", "log_proportions", "summarize", "training_data_record"]

# |AUROC - 0.5| of width/height against the label from which the summary warns: a network reads the original
# proportions off a squashed image (docs/BENCHMARKS.md, issue 16), so this is a shortcut.
SHAPE_SHORTCUT_MARGIN = 0.15
MIN_SHAPED_PER_CLASS = 20  # fewer non-square images in a class: its proportions are not measured


def log_proportions(records: Iterable[Record]) -> dict[int, list[float]]:
    """log(width/height) of the non-square images, per target index (a square file may be a copy squashed from
    any shape, so it says nothing of the original's)."""
    by_class: dict[int, list[float]] = {t: [] for t in range(len(CLASSES))}
    for r in records:
        if r.width != r.height:
            by_class[r.target].append(math.log(r.width / r.height))
    return by_class


def _shape_shortcut(manifest: Manifest) -> dict[str, Any] | None:
    """AUROC of width/height alone for PNEUMONIA vs NORMAL over the real non-test images that are not square,
    or None with fewer than :data:`MIN_SHAPED_PER_CLASS` of either class."""
    from sklearn.metrics import roc_auc_score

    by_class = log_proportions(r for r in manifest.records if r.split != "test" and r.source == "real")
    if min(map(len, by_class.values())) < MIN_SHAPED_PER_CLASS:
        return None
    y = [t for t, v in by_class.items() for _ in v]
    score = [x for v in by_class.values() for x in v]
    return {"images": len(y), "auroc": round(float(roc_auc_score(y, score)), 3)}


def _ages(records: list[Record]) -> dict[str, int] | None:
    """How many of ``records`` carry the patient's age (a CSV cell or the DICOM header), the youngest and the oldest
    in whole years; None when none does."""
    known = [r.age_years for r in records if r.age_years is not None]
    if not known:
        return None
    return {
        "known": len(known),
        "of": len(records),
        "youngest": math.floor(min(known)),
        "oldest": math.floor(max(known)),
    }


def summarize(manifest: Manifest, cache_dir: Path | None = None) -> dict[str, Any]:
    """Counts per split and class, patients, images per patient, image sizes, the sizes with a cache in
    ``cache_dir`` and notes, as plain data."""
    splits: dict[str, Any] = {}
    for split in SPLITS:
        rows = [r for r in manifest.records if r.split == split]
        if not rows:
            continue
        labels = Counter(r.label for r in rows)
        known = [r.patient_id for r in rows if r.patient_id]
        per_patient = Counter(known)
        splits[split] = {
            "images": len(rows),
            **{c: labels[c] for c in CLASSES},
            "pneumonia_share": round(labels["PNEUMONIA"] / len(rows), 3),
            "patients": len(per_patient) if known else None,  # None: the source has no patient ids
            "images_per_patient_max": max(per_patient.values()) if known else None,
            "synthetic": sum(r.source == "synthetic" for r in rows),
        }
    short = [min(r.width, r.height) for r in manifest.records]
    return {
        "source": manifest.meta.get("source", str(manifest.root)),  # older manifests: the images' folder
        "source_kind": manifest.meta.get("source_kind"),
        "images": len(manifest),
        "splits": splits,
        "split_settings": manifest.meta.get("split"),
        "shorter_side_px": {"min": min(short), "median": median(short), "max": max(short)},
        "square_224": sum(r.width == r.height == 224 for r in manifest.records),
        "ages_years": _ages([r for r in manifest.records if r.split in ("train", "val") and r.source == "real"]),
        "width_height_vs_label": _shape_shortcut(manifest),
        "cached_sizes_px": prepared_sizes(manifest, cache_dir) if cache_dir is not None else [],
        "notes": manifest.meta.get("notes", []),
    }


def training_data_record(manifest: Manifest) -> dict[str, Any]:
    """What a model file records of the data it learnt from, for its model card: the source, images, classes and
    patients of train and val, and the share of Kermany file names (``person*_bacteria_*``, ``IM-*``: the card
    states Kermany's population only for Kermany's images, not for a site's own)."""
    summary = summarize(manifest)
    keep = ("images", *CLASSES, "patients")
    splits = {k: {f: v[f] for f in keep} for k, v in summary["splits"].items() if k in ("train", "val")}
    kermany = sum(kermany_label_hint(r.path) is not None for r in manifest.records) / max(len(manifest), 1)
    return {
        "source": summary["source"],
        "source_kind": summary["source_kind"],
        "splits": splits,
        "kermany_file_names": round(kermany, 3),
        "ages_years": summary["ages_years"],
    }
