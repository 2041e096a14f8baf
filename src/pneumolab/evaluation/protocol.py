"""How much the original study's protocol inflates its numbers: one table for the comparison report.

The same model and recipe, trained (a) on our patient-disjoint split with GAN images in train only and
scored on the held-out real split, and (b) under the study's protocol (``pneumolab.data.seed_protocol``:
real + synthetic images pooled and split image by image) and scored on its own test split -- all of it,
its real images only, and its synthetic images only.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np

from pneumolab.data.manifest import Manifest
from pneumolab.evaluation.evaluate import evaluate
from pneumolab.evaluation.metrics import metrics_with_ci

__all__ = ["protocol_section"]

HEADER = [
    "protocol",
    "evaluated on",
    "images (real / synthetic)",
    "real test images whose patient is in train",
    "AUROC [95% CI]",
    "accuracy",
    "sensitivity",
    "specificity",
]


def _row(protocol: str, on: str, m: dict[str, Any], n_real: int, n_syn: int, shared: int | str) -> list[str]:
    def ci(k: str) -> str:
        v = m[k]
        return f"{v['value']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"

    return [
        protocol,
        on,
        f"{n_real} / {n_syn}",
        str(shared),
        ci("auroc"),
        ci("accuracy"),
        ci("sensitivity"),
        ci("specificity"),
    ]


def protocol_section(
    reference_run: Path, data: Path, split: str, leaky_run: Path, leaky_data: Path, *, n_boot: int = 2000
) -> dict[str, Any]:
    """Rows: ``reference_run`` on ``split`` of the patient-disjoint ``data``; ``leaky_run`` on the test split of
    ``leaky_data`` (all / real / synthetic images), each at its own validation-chosen threshold."""
    ref = evaluate(reference_run, data, split=split, n_boot=n_boot)
    out = Path(leaky_run) / "eval" / "seed-protocol-test"
    leaky = evaluate(leaky_run, leaky_data, split="test", out=out, n_boot=n_boot)
    manifest = Manifest.load(leaky_data)
    by_path = {r.path: r for r in manifest.records}
    train_patients = {r.patient_id for r in manifest.records if r.split == "train" and r.patient_id}
    with (out / "predictions.csv").open() as f:
        preds = list(csv.DictReader(f))
    prob = np.array([float(p["probability"]) for p in preds])
    y = np.array([int(p["label"] == "PNEUMONIA") for p in preds])
    records = [by_path[p["path"]] for p in preds]
    groups = np.array([r.group for r in records])
    real = np.array([r.source == "real" for r in records])
    shared = sum(r.source == "real" and r.patient_id in train_patients for r in records)
    n_real, n_syn = int(real.sum()), int((~real).sum())
    m_ref = ref["at_threshold"]
    rows = [
        _row("patient-disjoint (pneumolab)", f"{split} split", m_ref, m_ref["n_images"], 0, 0),
        _row("seed protocol (image level, 70/15/15)", "its test split", leaky["at_threshold"], n_real, n_syn, shared),
    ]
    t = leaky["threshold"]["value"]
    for name, mask, counts in (
        ("its real test images", real, (n_real, 0, shared)),
        ("its synthetic test images", ~real, (0, n_syn, 0)),
    ):
        if len(np.unique(y[mask])) == 2:  # AUROC needs both classes
            m = metrics_with_ci(prob[mask], y[mask], groups[mask], t, n_boot=n_boot)
            rows.append(_row("seed protocol", name, m, *counts))
    return {"header": HEADER, "rows": rows}
