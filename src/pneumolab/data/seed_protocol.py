"""The original study's evaluation protocol, reproduced only to measure how much it inflates results.

The study pooled every real X-ray with its 2,560 GAN images and split the pool image by image at random
(70/15/15): images of one child, and synthetic images, landed in its test set. ``seed_protocol_manifest``
rebuilds that pool from a patient-disjoint dataset and synthetic sets, and marks the result with
``protocol: seed-leaky`` -- the only manifests :meth:`Manifest.load` accepts with leakage (with a
warning). Never select or report a model on such a split except beside the patient-disjoint numbers.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
from sklearn.model_selection import train_test_split

from pneumolab.data.manifest import LEAKY_PROTOCOL, Manifest

__all__ = ["seed_protocol_manifest"]


def seed_protocol_manifest(
    manifest: Manifest,
    synthetic: list[Path],
    *,
    fractions: tuple[float, float, float] = (0.70, 0.15, 0.15),
    seed: int = 0,
) -> Manifest:
    """All real rows of ``manifest`` plus the synthetic sets' rows, re-split at random by image (stratified by
    label) into train/val/test with ``fractions``; synthetic paths become absolute (their own roots)."""
    records = [replace(r, split="train") for r in manifest.records if r.source == "real"]
    for folder in synthetic:
        syn = Manifest.load(folder)
        records += [replace(r, path=str((syn.root / r.path).resolve()), split="train") for r in syn.records]
    y = np.array([r.target for r in records])
    idx = np.arange(len(records))
    train, rest = train_test_split(idx, train_size=fractions[0], stratify=y, random_state=seed)
    val, test = train_test_split(rest, test_size=fractions[2] / (1 - fractions[0]), stratify=y[rest], random_state=seed)
    splits = np.empty(len(records), dtype=object)
    splits[train], splits[val], splits[test] = "train", "val", "test"
    meta = {
        "protocol": LEAKY_PROTOCOL,
        "split": {"fractions": list(fractions), "seed": seed, "by_image": True},
        "synthetic": [str(Path(s).resolve()) for s in synthetic],
    }
    return Manifest(manifest.root, [replace(r, split=str(s)) for r, s in zip(records, splits, strict=True)], meta)
