"""Threshold policies chosen on validation, scored on an external set, for finished runs (no training).

Usage::

    python benchmarks/operating_point.py runs/external/runs/fast-s* \
        [--policies youden "sensitivity>=0.95" "sensitivity>=0.9" "sensitivity>=0.8"] [--ensemble]

Each run needs ``val_logits.npz`` (written by ``train``) and ``eval/external/predictions.csv`` (written by
``benchmarks/external_validity.py``). For every policy the threshold is chosen on the run's validation
probabilities (stored temperature applied), then sensitivity, specificity and accuracy are measured on the
external predictions at it. Nothing is chosen on the external set: the policies are compared there. With
``--ensemble`` the runs' mean logit margin is scored as one model (temperature refitted on its validation margins).
"""

from __future__ import annotations

import argparse
import csv
import statistics
from pathlib import Path

import numpy as np
import torch

from pneumolab.data.manifest import Manifest
from pneumolab.evaluation.calibration import OperatingPoint, fit_temperature
from pneumolab.evaluation.metrics import compute_metrics
from pneumolab.evaluation.predict import read_val_logits, view_targets
from pneumolab.evaluation.thresholds import choose_threshold
from pneumolab.models.checkpoint import load_model_file
from pneumolab.site_adaptation.calibrate import answer_margins

POLICIES = ["youden", "sensitivity>=0.95", "sensitivity>=0.9", "sensitivity>=0.85", "sensitivity>=0.8"]


def _margins(run: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict]:
    """A run's validation logit margins ``z_1 - z_0`` ((views *) N) with their targets, its external margins (the
    stored probabilities inverted through the model's operating point) with theirs, and its model metadata."""
    _, meta = load_model_file(run / "model.pt")
    val = Manifest.load(Path(meta["config"]["data"]["data_dir"]))
    logits = read_val_logits(run / "val_logits.npz", val)
    val_y = view_targets(val, val.indices("val"), len(logits))
    with open(run / "eval" / "external" / "predictions.csv", newline="") as f:
        ext = list(csv.DictReader(f))
    ext_margins = answer_margins(np.array([float(r["probability"]) for r in ext]), meta)
    y = np.array([r["label"] == "PNEUMONIA" for r in ext])
    return logits[:, 1] - logits[:, 0], val_y, ext_margins, y, meta


def score(
    op: OperatingPoint, val: np.ndarray, val_y: np.ndarray, ext: np.ndarray, y: np.ndarray, policies: list[str]
) -> dict[str, dict[str, float]]:
    """``{policy: {threshold, sensitivity, specificity, accuracy}}`` on the external margins ``ext`` under ``op``,
    each policy's threshold chosen on the validation margins ``val``; plus the external AUROC and ECE."""
    val_prob, prob = op.margin_probability(val), op.margin_probability(ext)
    # the ceiling set by the ranking: the best specificity of any threshold that keeps external sensitivity >= 0.95
    # (chosen on the external labels: a bound, not an operating point)
    t_best = np.sort(prob[y])[int(np.floor(0.05 * y.sum()))]
    thresholds = {policy: choose_threshold(val_prob, val_y, policy)["threshold"] for policy in policies}
    thresholds["ceiling"] = float(t_best)
    out = {key: _at(prob, y, t) for key, t in thresholds.items()}
    out["ranking"] = {k: v for k, v in compute_metrics(prob, y.astype(int)).items() if k in ("auroc", "ece")}
    return out


def ensemble(runs: list[Path], policies: list[str]) -> dict[str, dict[str, float]]:
    """The runs' mean logit margin as one model: its temperature fitted on the mean validation margins (the
    views are drawn with one seed, so every run's row i is the same augmented image), thresholds as in
    :func:`score`."""
    parts = [_margins(run) for run in runs]
    val, ext = np.mean([p[0] for p in parts], 0), np.mean([p[2] for p in parts], 0)
    val_y, y = parts[0][1], parts[0][3]
    two = torch.from_numpy(np.stack([np.zeros_like(val), val], 1))  # (N, 2) logits with that margin
    op = OperatingPoint(temperature=fit_temperature(two, torch.from_numpy(val_y)))
    return score(op, val, val_y, ext, y, policies)


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
    ap.add_argument("--ensemble", action="store_true", help="score the runs' mean logit margin as one model")
    args = ap.parse_args()
    if args.ensemble:
        results = {"ensemble": ensemble(args.runs, args.policies)}
    else:
        results = {}
        for run in args.runs:
            val, val_y, ext, y, meta = _margins(run)
            results[run.name] = score(OperatingPoint.from_meta(meta), val, val_y, ext, y, args.policies)
    print("| policy (chosen on validation) | threshold | ext. sens. | ext. spec. | ext. acc. |")
    print("|---|---|---|---|---|")
    for policy in [*args.policies, "ceiling"]:
        cells = []
        for key in ("threshold", "sensitivity", "specificity", "accuracy"):
            v = [r[policy][key] for r in results.values()]
            cells.append(f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})")
        name = "best threshold for ext. sens. >= 0.95 (on external labels: the ranking's ceiling)"
        print(f"| {name if policy == 'ceiling' else f'`{policy}`'} | " + " | ".join(cells) + " |")
    for key in ("auroc", "ece"):
        v = [r["ranking"][key] for r in results.values()]
        print(f"ext. {key.upper()}: {statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})")


if __name__ == "__main__":
    main()
