"""Threshold policies chosen on validation, scored on an external set, for finished runs (no training).

Usage::

    python benchmarks/operating_point.py runs/external/runs/fast-s* \
        [--policies youden "sensitivity>=0.95" "sensitivity>=0.9" "sensitivity>=0.8"]

Each run needs ``val_logits.npz`` (written by ``train``) and ``eval/external/predictions.csv`` (written by
``benchmarks/external_validity.py``). For every policy the threshold is chosen on the run's validation
probabilities (stored temperature applied), then sensitivity, specificity and accuracy are measured on the
external predictions at it. Nothing is chosen on the external set: the policies are compared there.
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

import numpy as np
import torch

from pneumolab.data.manifest import Manifest
from pneumolab.evaluation.calibration import OperatingPoint
from pneumolab.evaluation.predict import read_val_logits, view_targets
from pneumolab.evaluation.thresholds import choose_threshold
from pneumolab.models.checkpoint import load_model_file

POLICIES = ["youden", "sensitivity>=0.95", "sensitivity>=0.9", "sensitivity>=0.85", "sensitivity>=0.8"]


def score(run: Path, policies: list[str]) -> dict[str, dict[str, float]]:
    """``{policy: {threshold, sensitivity, specificity, accuracy}}`` on the run's external predictions."""
    _, meta = load_model_file(run / "model.pt")
    val = Manifest.load(Path(meta["config"]["data"]["data_dir"]))
    rows = val.indices("val")
    logits = read_val_logits(run / "val_logits.npz", val)
    val_prob = OperatingPoint.from_meta(meta).probability(torch.from_numpy(logits)).double().numpy()
    val_y = view_targets(val, rows, len(logits))  # (views *) N
    with open(run / "eval" / "external" / "predictions.csv", newline="") as f:
        ext = list(csv.DictReader(f))
    prob = np.array([float(r["probability"]) for r in ext])
    y = np.array([r["label"] == "PNEUMONIA" for r in ext])
    # the ceiling set by the ranking: the best specificity of any threshold that keeps external sensitivity >= 0.95
    # (chosen on the external labels: a bound, not an operating point)
    t_best = np.sort(prob[y])[int(np.floor(0.05 * y.sum()))]
    thresholds = {policy: choose_threshold(val_prob, val_y, policy)["threshold"] for policy in policies}
    thresholds["ceiling"] = float(t_best)
    return {key: _at(prob, y, t) for key, t in thresholds.items()}


def _at(prob: np.ndarray, y: np.ndarray, t: float) -> dict[str, float]:
    pred = prob >= t
    return {
        "threshold": t,
        "sensitivity": float(pred[y].mean()),
        "specificity": float((~pred[~y]).mean()),
        "accuracy": float((pred == y).mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--policies", nargs="+", default=POLICIES)
    args = ap.parse_args()
    results = {run.name: score(run, args.policies) for run in args.runs}
    print("| policy (chosen on validation) | threshold | ext. sens. | ext. spec. | ext. acc. |")
    print("|---|---|---|---|---|")
    for policy in [*args.policies, "ceiling"]:
        cells = []
        for key in ("threshold", "sensitivity", "specificity", "accuracy"):
            v = [r[policy][key] for r in results.values()]
            cells.append(f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})")
        name = "best threshold for ext. sens. >= 0.95 (on external labels: the ranking's ceiling)"
        print(f"| {name if policy == 'ceiling' else f'`{policy}`'} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
