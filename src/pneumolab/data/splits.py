"""``pneumolab data split``: carve a patient-disjoint, stratified, seeded validation split from train.

The source's test split is never touched. The source's own val split is merged back into the pool
and re-split when it is tiny (Kaggle's 16 images), kept when it is a real split (MedMNIST's 10%).
"""

from __future__ import annotations

import logging
from typing import Literal

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold

from pneumolab.data.manifest import Manifest, check_no_leakage
from pneumolab.errors import InputError

__all__ = ["split_manifest"]

log = logging.getLogger(__name__)
SourceVal = Literal["auto", "merge", "keep"]
_KEEP_MIN_FRACTION = 0.05  # "auto": a source val split below 5% of train+val is too small to select models on


def split_manifest(
    manifest: Manifest,
    *,
    val_fraction: float = 0.1,
    seed: int = 0,
    by_image: bool = False,
    source_val: SourceVal = "auto",
    test_fraction: float = 0.0,
) -> Manifest:
    """Assign ``train``/``val`` to the source's train (and maybe val) rows, grouped by patient.

    Args:
        manifest: an indexed manifest; its ``source_split`` column is the starting point, so
            splitting again with other settings starts from the source, not from the last split.
        val_fraction: share of the pooled images that go to validation (approximate: whole patients move).
        seed: makes the split reproducible.
        by_image: allow splitting images without patient ids one by one (MedMNIST). Images of one
            patient may then sit in both splits; only do this knowingly.
        source_val: ``merge`` pools the source's val with train before splitting, ``keep`` keeps it as
            is, ``auto`` keeps it only if it holds at least 5% of train+val.
        test_fraction: if > 0, also carve an internal test split (patient-disjoint from train and val) for a
            source without one, so that the split that selects checkpoints is not the one reported.

    Raises:
        InputError: no patient ids and not ``by_image``, too few patients, or a bad fraction.
    """
    if not 0.0 < val_fraction < 0.5:
        raise InputError(f"--val-fraction {val_fraction} must be between 0 and 0.5 (e.g. 0.1 for 10%)")
    if not 0.0 <= test_fraction < 0.5:
        raise InputError(f"--test-fraction {test_fraction} must be between 0 and 0.5 (e.g. 0.15 for 15%)")
    src = [r.source_split for r in manifest.records]
    if test_fraction and "test" in src:
        raise InputError("--test-fraction: the source has its own test split; keep it (drop --test-fraction)")
    n_train, n_val = src.count("train"), src.count("val")
    if n_train == 0:
        raise InputError("the source has no train split to carve validation data from")
    if source_val == "auto":
        source_val = "keep" if n_val >= _KEEP_MIN_FRACTION * (n_train + n_val) else "merge"
    if source_val == "keep" and n_val == 0:
        raise InputError("--source-val keep: the source has no val split; use --source-val merge")
    splits = [s if s == "test" else "train" for s in src]
    meta = {
        "split": {
            "val_fraction": val_fraction,
            "seed": seed,
            "by_image": by_image,
            "source_val": source_val,
            "test_fraction": test_fraction,
        }
    }
    if source_val == "keep":
        splits = list(src)
        out = manifest.with_splits(splits, **meta)
        check_no_leakage(out.records)
        return out

    pool = [i for i, s in enumerate(src) if s in ("train", "val")]
    y = np.array([manifest.records[i].target for i in pool])
    has_pid = [bool(manifest.records[i].patient_id) for i in pool]
    if not any(has_pid) and not by_image:
        raise InputError(
            "this source has no patient ids (MedMNIST, or a CSV without a patient_id column), so validation cannot "
            "be grouped by patient; add a patient_id column to the CSV, or pass --by-image to split image by image "
            "(one patient's images may then sit in train and val), or --source-val keep to use the source's own "
            "val split"
        )
    # Group = patient, or the image's hash when the patient is unknown, so byte-identical copies stay together.
    groups = np.array([manifest.records[i].group for i in pool])
    if test_fraction:  # first the internal test split, then validation from what is left, both whole patients
        test_idx = _carve(y, groups, test_fraction, seed + 1)
        for j in test_idx:
            splits[pool[j]] = "test"
        rest = np.setdiff1d(np.arange(len(pool)), test_idx)
        pool, y, groups = [pool[j] for j in rest], y[rest], groups[rest]
        val_fraction = val_fraction / (1 - test_fraction)  # a share of all images, not of what is left
    val_idx = _carve(y, groups, val_fraction, seed)
    for j in val_idx:
        splits[pool[j]] = "val"
    out = manifest.with_splits(splits, **meta)
    check_no_leakage(out.records)
    n_v = len(val_idx)
    log.info("validation: %d of %d images (%.1f%%), seed %d", n_v, len(pool), 100 * n_v / len(pool), seed)
    return out


def _carve(y: np.ndarray, groups: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """Positions of about ``fraction`` of the rows, whole groups only, stratified by ``y``."""
    n_folds = max(2, round(1.0 / fraction))
    if len(set(groups)) < n_folds:
        raise InputError(f"only {len(set(groups))} patients: too few for a {fraction:.0%} split")
    folds = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split(np.zeros(len(y)), y, groups)
    return next(iter(folds))[1]
