"""Time to accuracy: the study's recipe against the fast recipe, side by side on the same machine and data.

Usage::

    python benchmarks/time_to_accuracy.py --data runs/data/kermany --budget-s 900 --out runs/time-to-accuracy

Recipes (each an ordinary ``train`` run through the same engine):

- ``study``: ResNet34, 224 px, Adam 1e-3, batch 32, fp32 (the study's setting, ``seed/resnet34``);
- ``fast``: ``configs/fast.yaml``.

Every ``--eval-every`` of an epoch the model is scored on the validation split (accuracy at 0.5 and AUROC);
the clock counts training only (evaluation, Lightning's own validation and start-up are excluded), from
the first training batch. A recipe stops when it reaches ``--target`` validation accuracy (92.8%, Kermany
et al. 2018) or when its training time exceeds ``--budget-s``; then its time to target is unknown and the
reported ratio is a lower bound. The fast recipe runs ``--fast-seeds`` seeds and its median time counts.
With ``--external DATA`` (e.g. ``../shared/data/chest_xray_external``, half of the official test split) every
scoring also measures accuracy at 0.5 on that set, and each recipe reports when it first reached the target there
(``time_to_external_target_s``); training then goes on until both targets are reached, the budget is spent or
the recipe's epochs end. The external set never steers training (no checkpoint, epoch or threshold): it is watched.
Writes ``curves.csv`` and ``summary.json`` under ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import WeightAveraging
from sklearn.metrics import roc_auc_score

from pneumolab.config import TrainConfig, load_config
from pneumolab.data.cache import load_cache
from pneumolab.data.index import as_dataset
from pneumolab.data.manifest import Manifest
from pneumolab.training.trainer import train

RECIPES = {
    "study": ("seed/resnet34", ["data.image_size=224", "trainer.precision=32", "trainer.channels_last=false"]),
    "fast": ("fast", []),
}


class Clock(L.Callback):
    """Scores the model on validation every ``every`` training images; stops at the target or the budget."""

    def __init__(self, every: int, target: float, budget_s: float, external: tuple[Manifest, Path] | None) -> None:
        self.every, self.target, self.budget_s, self.external = every, target, budget_s, external
        self.external_x: torch.Tensor | None = None  # (N, 1, S, S): the external images, preprocessed once
        self.external_y: np.ndarray | None = None
        self.reached_external: float | None = None
        self.start: float | None = None
        self.paused = 0.0  # seconds spent outside training (our evaluations, Lightning's validation)
        self.seen = self.next_eval = 0
        self.curve: list[dict[str, float]] = []
        self.reached: float | None = None
        self._val_start = 0.0

    def train_seconds(self) -> float:
        return time.perf_counter() - self.start - self.paused if self.start else 0.0

    def on_train_start(self, trainer, pl_module) -> None:
        if self.external is not None and self.external_x is None:
            manifest, folder = self.external
            pre = trainer.datamodule.preprocessing()  # the training split's normalisation, as validation uses
            self.external_x = pre(np.asarray(load_cache(manifest, pre.image_size, folder / "cache")))
            self.external_y = np.array([r.target for r in manifest.records])

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if self.start is None:
            self.start, self.next_eval = time.perf_counter(), self.every

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        self.seen += len(batch[1])
        if self.seen >= self.next_eval:
            self.next_eval += self.every
            self._score(trainer, pl_module)
        # With an external set, training goes on until both targets are reached (or the budget / the recipe's
        # own epochs end): the external target usually comes later, if at all.
        done = self.reached is not None and (self.external is None or self.reached_external is not None)
        if done or self.train_seconds() > self.budget_s:
            trainer.should_stop = True

    def on_validation_epoch_start(self, trainer, pl_module) -> None:
        self._val_start = time.perf_counter()

    def on_validation_epoch_end(self, trainer, pl_module) -> None:
        self.paused += time.perf_counter() - self._val_start

    @torch.no_grad()
    def _score(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        t0, train_s = time.perf_counter(), self.train_seconds()
        # With trainer.ema_decay the model a user would get now is the weight average, not the raw weights
        # (Lightning only swaps it in for its own validation; `_average_model` is the callback's copy).
        ema = next((c for c in trainer.callbacks if isinstance(c, WeightAveraging)), None)
        module = ema._average_model.module if ema is not None else module
        module.eval()
        probs, ys = [], []
        with trainer.precision_plugin.forward_context():  # the same autocast as training
            for x, y in trainer.datamodule.val_dataloader():
                probs.append(module(x.to(module.device)).float().softmax(1)[:, 1].cpu())
                ys.append(y)
            ext = None
            if self.external_x is not None:
                ext = torch.cat(
                    [module(x.to(module.device)).float().softmax(1)[:, 1].cpu() for x in self.external_x.split(128)]
                ).numpy()
        module.train()
        p, y = torch.cat(probs).numpy(), torch.cat(ys).numpy()
        acc = float(((p >= 0.5) == (y == 1)).mean())
        row = {
            "train_s": round(train_s, 2),
            "images": self.seen,
            "val_acc": round(acc, 4),
            "val_auroc": round(float(roc_auc_score(y, p)), 4),
        }
        if ext is not None:
            ext_acc = float(((ext >= 0.5) == (self.external_y == 1)).mean())
            row.update(ext_acc=round(ext_acc, 4), ext_auroc=round(float(roc_auc_score(self.external_y, ext)), 4))
            if ext_acc >= self.target and self.reached_external is None:
                self.reached_external = train_s
        self.curve.append(row)
        print(json.dumps(row), flush=True)
        if acc >= self.target and self.reached is None:
            self.reached = train_s
        self.paused += time.perf_counter() - t0


def run(name: str, seed: int, data: Path, out: Path, args: argparse.Namespace) -> dict:
    preset, extra = RECIPES[name]
    extra = [*extra, *(args.fast_overrides if name == "fast" else []), f"seed={seed}", f"data.seed={seed}"]
    cfg = load_config(
        TrainConfig,
        preset,
        [
            f"data.data_dir={data}",
            f"out_dir={out / 'runs'}",
            f"name={name}-s{seed}",
            "trainer.early_stopping_patience=null",
            *extra,
        ],
    )
    n_train = len(Manifest.load(data).indices("train", "real"))
    clock = Clock(max(1, int(args.eval_every * n_train)), args.target, args.budget_s, args.external_data)
    train(cfg, progress_bar=False, extra_callbacks=[clock])
    ext_rows = [r for r in clock.curve if "ext_acc" in r]
    external = (
        {
            "time_to_external_target_s": clock.reached_external,
            "best_external_acc": max((r["ext_acc"] for r in ext_rows), default=None),
            "external_acc_at_stop": ext_rows[-1]["ext_acc"] if ext_rows else None,
        }
        if ext_rows
        else {}
    )
    return {
        "recipe": name,
        "seed": seed,
        "config": preset,
        "overrides": extra,
        "image_size": cfg.data.image_size,
        "model": cfg.model.name,
        "precision": cfg.trainer.precision,
        "batch_size": cfg.data.batch_size,
        "time_to_target_s": clock.reached,
        "train_s": round(clock.train_seconds(), 1),
        "images_seen": clock.seen,
        "threads": torch.get_num_threads(),
        **external,
        "curve": clock.curve,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="dataset folder (pneumolab data prepare)")
    ap.add_argument("--target", type=float, default=0.928, help="validation accuracy at threshold 0.5")
    ap.add_argument("--budget-s", type=float, default=900.0, help="training seconds after which a recipe stops")
    ap.add_argument("--eval-every", type=float, default=0.25, help="score validation every this share of an epoch")
    ap.add_argument("--recipes", nargs="+", default=["fast", "study"], choices=sorted(RECIPES))
    ap.add_argument("--out", type=Path, default=Path("runs/time-to-accuracy"))
    ap.add_argument("--fast-overrides", nargs="*", default=[], help="key=value changes to the fast recipe")
    ap.add_argument("--fast-seeds", type=int, default=3, help="seeds of the fast recipe (the median is compared)")
    ap.add_argument("--external", type=Path, help="also watch accuracy on this set (Kaggle folder or dataset dir)")
    args = ap.parse_args()
    args.external_data = None
    if args.external is not None:
        args.external_data = as_dataset(args.external, args.out / "external_data")
    # Accuracy at 0.5 swings early in training, so one run's time to target is noisy: the cheap recipe runs
    # several seeds and its median counts; the study's recipe (~15 min a run on 2 cores) runs seed 0.
    results = [
        run(name, seed, args.data, args.out, args)
        for name in args.recipes
        for seed in (range(args.fast_seeds) if name == "fast" else [0])
    ]
    with open(args.out / "curves.csv", "w", newline="") as f:
        fields = ["recipe", "seed", "train_s", "images", "val_acc", "val_auroc", "ext_acc", "ext_auroc"]
        w = csv.DictWriter(f, fieldnames=fields if args.external else fields[:6])
        w.writeheader()
        for r in results:
            w.writerows({"recipe": r["recipe"], "seed": r["seed"], **row} for row in r["curve"])
    summary = {
        "target_val_acc": args.target,
        "budget_s": args.budget_s,
        "recipes": [{k: v for k, v in r.items() if k != "curve"} for r in results],
    }
    times = {name: [r["time_to_target_s"] or r["train_s"] for r in results if r["recipe"] == name] for name in RECIPES}
    if times["fast"] and times["study"]:
        summary["speed_up"] = {
            "fast_median_s": float(np.median(times["fast"])),
            "ratio": round(times["study"][0] / float(np.median(times["fast"])), 1),
            # a recipe that missed the target counts its whole budget: the ratio is then a bound, not a value
            "lower_bound": any(r["time_to_target_s"] is None for r in results if r["recipe"] == "study"),
            "fast_all_reached": all(r["time_to_target_s"] is not None for r in results if r["recipe"] == "fast"),
        }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
