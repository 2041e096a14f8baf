"""Finished runs scored on an external set at input sizes other than their training size (no training).

Usage::

    python benchmarks/input_size.py runs/external/runs/fast-s{0,1,2} \
        --external runs/external/external_data --sizes 56 60 64 68 72 76 --average 60 64 68

For every size S each external image is squashed to S x S from its original by the cache's own resize (the model's
``Preprocessing`` with ``image_size=S``; a globally pooled network takes any size). Reported per run and size: AUROC
and the ceiling, the best specificity of any threshold that keeps external sensitivity >= 0.95 (read off the external
labels: a bound on what the ranking allows, not an operating point). ``--average`` also scores the mean of the logits
at those sizes. Nothing is chosen on the external set here; sizes are compared there (fifteenth round, issue 16).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from pneumolab.data.manifest import Manifest
from pneumolab.data.transforms import Preprocessing
from pneumolab.evaluation.predict import predict_logits
from pneumolab.models.checkpoint import load_model_file


def ceiling(prob: np.ndarray, y: np.ndarray) -> float:
    """The best specificity at external sensitivity >= 0.95."""
    t = np.sort(prob[y])[int(np.floor(0.05 * y.sum()))]
    return float((prob[~y] < t).mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--external", type=Path, required=True, help="the external set as a dataset folder")
    ap.add_argument("--sizes", nargs="+", type=int, default=[56, 60, 64, 68, 72, 76])
    ap.add_argument("--average", nargs="*", type=int, default=[60, 64, 68])
    args = ap.parse_args()

    ext = Manifest.load(args.external)
    rows = list(range(len(ext)))
    y = np.array([r.target for r in ext.records]).astype(bool)
    scores: dict[str, list[tuple[float, float]]] = {}
    for run in args.runs:
        model, meta = load_model_file(run / "model.pt")
        pre = Preprocessing.from_meta(meta)
        logits = {}
        for size in sorted({*args.sizes, *args.average}):
            at = dataclasses.replace(pre, image_size=size, input_shape=(1, size, size))
            logits[size] = predict_logits(model, at, ext, rows, args.external / "cache")  # (N, 2)
        variants = {f"{s} px": logits[s] for s in args.sizes}
        if args.average:
            variants["mean of " + "/".join(map(str, args.average)) + " px"] = np.mean(
                [logits[s] for s in args.average], 0
            )
        for name, z in variants.items():
            prob = torch.from_numpy(z).softmax(1)[:, 1].numpy()
            scores.setdefault(name, []).append((roc_auc_score(y, prob), ceiling(prob, y)))
    print("| input | AUROC per run | median | ceiling spec. per run |")
    print("|---|---|---|---|")
    for name, s in scores.items():
        aurocs, ceils = zip(*s, strict=True)
        per = ", ".join(f"{a:.3f}" for a in aurocs)
        print(f"| {name} | {per} | {statistics.median(aurocs):.3f} | {', '.join(f'{c:.3f}' for c in ceils)} |")


if __name__ == "__main__":
    main()
