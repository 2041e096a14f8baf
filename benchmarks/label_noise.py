"""Likely mislabeled training images (confident learning, the ``cleanlab`` library), and a dataset without them.

Usage::

    pip install cleanlab
    python benchmarks/label_noise.py --data runs/data/kermany --out runs/label_noise [--folds 3] [--recipe fast]
    python benchmarks/external_validity.py --data runs/label_noise/clean \\
        --external ../shared/data/chest_xray_external --out runs/external-clean --recipes fast --no-robustness --no-site

1. Out-of-fold probabilities for every training image: the training patients are split into ``--folds``
   patient-disjoint folds; for each, ``--recipe`` is trained on the others with that fold as its validation
   split (the original validation split is left out of these runs), and predicts the fold.
2. ``cleanlab.filter.find_label_issues`` ranks the images whose given label disagrees most confidently with
   the out-of-fold prediction (Northcutt et al., 2021).
3. ``OUT/clean`` is the dataset without them (train only: validation keeps every image, so the operating
   point is chosen on the same images as before); ``OUT/label_issues.csv`` lists them, worst first, with
   the out-of-fold probability, to look at.

Nothing here reads the external set.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from pathlib import Path

import numpy as np
import torch
from external_validity import stale_settings  # benchmarks/ is this script's first import path

from pneumolab.config import TrainConfig, load_config
from pneumolab.data.manifest import Manifest
from pneumolab.data.transforms import Preprocessing
from pneumolab.evaluation.calibration import OperatingPoint
from pneumolab.evaluation.predict import predict_logits
from pneumolab.models.checkpoint import load_model_file
from pneumolab.training.trainer import train


def fold_of(groups: list[str], folds: int, seed: int) -> dict[str, int]:
    """Patient group -> fold, balanced by count of groups."""
    unique = sorted(set(groups))
    order = np.random.default_rng(seed).permutation(len(unique))
    return {unique[i]: k % folds for k, i in enumerate(order)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/label_noise"))
    ap.add_argument("--folds", type=int, default=3)
    ap.add_argument("--recipe", default="fast")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from cleanlab.filter import find_label_issues

    manifest = Manifest.load(args.data)
    train_rows = manifest.indices("train")
    groups = [manifest.records[i].group for i in train_rows]
    fold = fold_of(groups, args.folds, args.seed)
    oof = np.full((len(manifest), 2), np.nan)
    for k in range(args.folds):
        fold_dir = args.out / f"fold{k}"
        splits = ["val" if fold[manifest.records[i].group] == k else "train" for i in train_rows]
        if not (fold_dir / "manifest.csv").is_file():
            sub = Manifest(manifest.root, [manifest.records[i] for i in train_rows], dict(manifest.meta))
            sub.with_splits(splits, label_noise_fold=k).save(fold_dir)
        run_dir = args.out / "runs" / f"fold{k}"
        where = [f"data.data_dir={fold_dir}", f"out_dir={args.out / 'runs'}", f"name=fold{k}", f"seed={args.seed}"]
        cfg = load_config(TrainConfig, args.recipe, where)
        if not (run_dir / "model.pt").is_file():
            train(cfg, progress_bar=False)
        elif changed := stale_settings(run_dir, cfg):  # a fold run of another recipe or seed: not this one's
            raise SystemExit(
                f"{run_dir} was trained otherwise ({'; '.join(changed[:4])}): delete {args.out} or use another"
            )
        model, meta = load_model_file(run_dir)
        sub = Manifest.load(fold_dir)
        held = sub.indices("val")
        logits = torch.from_numpy(predict_logits(model, Preprocessing.from_meta(meta), sub, held, fold_dir / "cache"))
        p = OperatingPoint.from_meta(meta).probability(logits).numpy()
        for j, prob in zip(held, p, strict=True):
            oof[train_rows[j]] = (1 - prob, prob)
        print(f"fold {k}: {len(held)} held-out training images predicted", flush=True)

    rows = np.array(train_rows)
    labels = np.array([manifest.records[i].target for i in rows])
    issues = find_label_issues(labels, oof[rows], return_indices_ranked_by="self_confidence")
    flagged = rows[issues]
    args.out.mkdir(parents=True, exist_ok=True)
    with (args.out / "label_issues.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "given_label", "oof_p_pneumonia"])
        for i in flagged:
            r = manifest.records[i]
            w.writerow([r.path, r.label, f"{oof[i, 1]:.4f}"])
    drop = set(flagged.tolist())
    kept = [r for i, r in enumerate(manifest.records) if i not in drop]
    noise = {"dropped": len(drop), "method": "cleanlab find_label_issues, out-of-fold, self_confidence"}
    clean = Manifest(manifest.root, kept, {**manifest.meta, "label_noise": noise})
    clean_dir = args.out / "clean"
    if clean_dir.exists():
        shutil.rmtree(clean_dir)
    clean.save(clean_dir)
    by_label = {c: int(sum(manifest.records[i].label == c for i in drop)) for c in ("NORMAL", "PNEUMONIA")}
    summary = {"train_images": len(rows), "flagged": len(drop), "flagged_by_given_label": by_label}
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
