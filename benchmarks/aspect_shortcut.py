"""The width/height shortcut: how much of the original proportions survive the squash, and where the sets differ.

Usage::

    python benchmarks/aspect_shortcut.py --data runs/data/kermany --external runs/external/external_data \
        [--runs runs/external/runs/fast-s0 runs/external/runs/fast-aspect-0.3-s0]

Every image is squashed to a square before the network sees it, so the original width/height is not an input;
but the anatomy is squashed with it. This script

1. measures how well width/height alone separates the classes in train (the non-square files, whose shape is
   the original's: square 224x224 files are copies squashed from an unknown shape);
2. trains a small regressor (``cnn_improved`` with one output, per-image normalisation, 64 px) to read
   log(width/height) off the squashed image, on 80% of the patients with a non-square file, and scores it on
   the other 20% (R^2): if it can, a classifier can too;
3. estimates the original width/height of every image it never saw (the square training copies, the
   external set) per class;
4. for each run in ``--runs``: Spearman's rho between the model's P(pneumonia) on the external NORMAL images and
   their estimated width/height (a model that reads the shortcut calls the wider-framed normals pneumonia).

Labels are read from train only for step 1 and for nothing else; the external set is only predicted.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy.stats import spearmanr
from sklearn.metrics import roc_auc_score

from pneumolab.data.cache import load_cache
from pneumolab.data.manifest import Manifest
from pneumolab.data.transforms import EvalPreset, Preprocessing
from pneumolab.evaluation.calibration import OperatingPoint
from pneumolab.evaluation.predict import batched_logits
from pneumolab.models.checkpoint import load_model_file
from pneumolab.models.registry import create_model

SIZE = 64


def _inputs(images: np.ndarray) -> torch.Tensor:
    """``(N, S, S) uint8`` -> ``(N, 1, S, S)`` per-image standardised (the fast recipe's input)."""
    return EvalPreset(mean=0.5, std=0.25, normalization="per_image")(torch.from_numpy(np.array(images))[:, None])


def fit_regressor(x: torch.Tensor, y: torch.Tensor, epochs: int = 25, seed: int = 0) -> torch.nn.Module:
    """``cnn_improved`` with one output, trained by MSE on ``y`` = log(width/height); no augmentation (a zoom
    would keep the proportions, a stretch would change the target)."""
    torch.manual_seed(seed)
    net = create_model("cnn_improved", num_classes=1, in_chans=1)
    opt = torch.optim.AdamW(net.parameters(), lr=2e-3)
    for _ in range(epochs):
        net.train()
        for b in torch.randperm(len(x)).split(64):
            loss = F.mse_loss(net(x[b])[:, 0], y[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


def _estimate(net: torch.nn.Module, x: torch.Tensor) -> np.ndarray:
    """Estimated original width/height ``(N,)``."""
    with torch.no_grad():
        return np.exp(batched_logits(net, x.split(256))[:, 0].numpy())


def _quartiles(v: np.ndarray) -> str:
    q1, q2, q3 = np.percentile(v, [25, 50, 75])
    return f"{q2:.3f} ({q1:.3f}-{q3:.3f})"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="the training dataset folder (pneumolab data prepare)")
    ap.add_argument("--external", type=Path, required=True, help="an indexed external set (its test split)")
    ap.add_argument("--runs", type=Path, nargs="*", default=[], help="finished runs to check for the shortcut")
    ap.add_argument("--out", type=Path, default=None, help="write results.json here")
    args = ap.parse_args()

    man = Manifest.load(args.data)
    images = load_cache(man, SIZE, args.data / "cache")
    recs = man.records
    shaped = [i for i, r in enumerate(recs) if r.width != r.height and r.source == "real"]
    y_label = np.array([recs[i].label == "PNEUMONIA" for i in shaped])
    log_ratio = np.array([np.log(recs[i].width / recs[i].height) for i in shaped])
    result: dict = {"non_square_images": len(shaped), "auroc_width_height": float(roc_auc_score(y_label, log_ratio))}
    for label in ("NORMAL", "PNEUMONIA"):
        result[f"train_{label}_width_height"] = _quartiles(np.exp(log_ratio[y_label == (label == "PNEUMONIA")]))

    patients = sorted({recs[i].patient_id for i in shaped})
    held = set(np.random.default_rng(0).choice(patients, len(patients) // 5, replace=False).tolist())
    fit = [k for k, i in enumerate(shaped) if recs[i].patient_id not in held]
    test = [k for k, i in enumerate(shaped) if recs[i].patient_id in held]
    x = _inputs(images[shaped])
    net = fit_regressor(x[fit], torch.tensor(log_ratio[fit], dtype=torch.float32))
    pred = np.log(_estimate(net, x[test]))
    truth = log_ratio[test]
    result["held_out_patients_r2"] = float(1 - ((pred - truth) ** 2).mean() / truth.var())
    result["held_out_images"] = len(test)

    square = [i for i, r in enumerate(recs) if r.width == r.height and r.source == "real"]
    est_square = _estimate(net, _inputs(images[square]))
    ext = Manifest.load(args.external)
    ext_rows = ext.indices("test")
    ext_images = load_cache(ext, SIZE, args.external / "cache")[ext_rows]
    est_ext = _estimate(net, _inputs(ext_images))
    for label in ("NORMAL", "PNEUMONIA"):
        sq = np.array([recs[i].label == label for i in square])
        ex = np.array([ext.records[i].label == label for i in ext_rows])
        result[f"square_train_{label}_estimated"] = _quartiles(est_square[sq])
        result[f"external_{label}_estimated"] = _quartiles(est_ext[ex])

    normal = np.array([ext.records[i].label == "NORMAL" for i in ext_rows])
    for run in args.runs:
        model, meta = load_model_file(run / "model.pt")
        pre = Preprocessing.from_meta(meta)
        logits = batched_logits(model, pre(ext_images).split(256))
        prob = OperatingPoint.from_meta(meta).probability(logits).double().numpy()
        rho, p = spearmanr(prob[normal], est_ext[normal])
        result[f"rho_{run.name}"] = {"rho": float(rho), "p": float(p)}

    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(text)


if __name__ == "__main__":
    main()
