"""External validity: recipes x seeds trained on the training source, scored on an external set.

Usage::

    python benchmarks/external_validity.py --data runs/data/kermany \
        --external ../shared/data/chest_xray_external --out runs/external [--recipes fast resnet18-64] [--seeds 0 1 2]

For every recipe and seed (each an ordinary ``train`` run; a finished run is reused if its saved config is the
recipe's as defined now, and stops the benchmark with the settings that differ if not):

- internal: validation AUROC (the split that selected the checkpoint and threshold);
- zero-shot external: AUROC, sensitivity, specificity, accuracy, balanced accuracy and ECE at the threshold and
  temperature stored in the model (chosen on validation), with patient-bootstrap 95% CIs;
- the synthetic-shift benchmark (``pneumolab robustness`` on validation) and how well it ranks the models by
  external specificity (Spearman's rho over recipes' medians and over all models);
- site features on the external set in 2 patient-disjoint folds (fit on one fold, score the other, swap; the
  pooled predictions are scored): ``calibrate`` (labeled site sample: temperature + threshold) and ``adapt``
  (unlabeled: BatchNorm statistics + class prior). These numbers use the external set as a site sample.

The external set is never trained on, and nothing (epoch, checkpoint, threshold) is chosen on it for the
zero-shot numbers. Writes ``results.json`` and ``results.md`` under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
from scipy.stats import spearmanr

from pneumolab.config import TrainConfig, load_config
from pneumolab.data.index import index_source
from pneumolab.data.manifest import Manifest
from pneumolab.evaluation.evaluate import evaluate
from pneumolab.evaluation.robustness import robustness_many
from pneumolab.rundir import read_history
from pneumolab.training.trainer import train

# name -> (preset, overrides). Cheap recipes only: 3 seeds of each fit a 2-core session.
# Each recipe is a preset plus overrides. The `fast` preset gained the aspect stretch in the fifth round of issue 16:
# the earlier "fast + X" recipes were measured without it (`fast-no-aspect` is that reference; add
# "data.augment.aspect=0" to reproduce one of them). In the seventh round it gained a second view of each batch
# (data.augment.views=2): recipes of rounds 1-6 were measured with one (`fast-1view` is the sixth round's `fast`).
# In the ninth it gained supersample=2 and lr 1.5e-3 (R8 restores the eighth round's `fast`). In the 26th Muon for
# its convolutions at lr 3e-3 (R25 restores AdamW at 1.5e-3: add it to reproduce a recipe of rounds 9-25).
R25 = ["optim.optimizer=adamw", "optim.lr=1.5e-3"]
R8 = ["optim.optimizer=adamw", "optim.lr=3e-3", "data.augment.supersample=1"]
# The SimCLR augmentation strength (configs/pretrain/simclr.yaml), tried in supervised training:
STRONG = [
    "data.augment.rotation_deg=10",
    "data.augment.translate=0.1",
    "data.augment.scale=[0.7,1.4]",
    "data.augment.border_erase=0.25",
    "data.augment.brightness=0.4",
    "data.augment.contrast=0.5",
    "data.augment.blur=1.0",
    "data.augment.noise=0.04",
]
RECIPES: dict[str, tuple[str, list[str]]] = {
    "fast": ("fast", []),
    "fast-adamw": ("fast", R25),  # `fast` of rounds 9-25
    "fast-muon-lr1.5e-3": ("fast", ["optim.lr=1.5e-3"]),  # round 26: Muon at AdamW's learning rate
    "fast-6ep": ("fast", ["trainer.max_epochs=6"]),  # round 26: does Muon buy time instead?
    "fast-stem2": ("fast", ["model.kwargs.stem_stride=2"]),  # round 26: Muon with the cheaper first convolution
    # round 27: weight decay that counters the growth of the convolution weights under Muon (1.1-2.9x their initial
    # RMS in 8 epochs at 1e-4: behind BatchNorm a larger weight is a smaller effective learning rate)
    "fast-wd0.1": ("fast", ["optim.weight_decay=0.1"]),
    "fast-wd0.5": ("fast", ["optim.weight_decay=0.5"]),
    "fast-muon-lr6e-3": ("fast", ["optim.lr=6e-3"]),  # round 27: twice fast's learning rate
    # Round 28: more optimiser steps at fast's cost, for an optimiser whose every step has a fixed size. fast-bs32
    # (below, round 11 with AdamW) halves the batch (with Muon: sensitivity 0.944, lost); this one trains one view
    # for twice the epochs (nine seeds: the same AUROC, specificity 0.915 against 0.906, ~15% more time).
    "fast-1view-16ep": ("fast", ["data.augment.views=1", "trainer.max_epochs=16"]),
    "fast-1view-12ep": ("fast", ["data.augment.views=1", "trainer.max_epochs=12"]),  # 1.5x the steps: seed 0 0.984
    "fast-1view": ("fast", ["data.augment.views=1"]),
    "fast-7ep": ("fast", ["trainer.max_epochs=7"]),  # round 29: between fast-6ep and fast's 8 epochs
    "fast-ema0.9": ("fast", ["trainer.ema_decay=0.9"]),  # round 29: the weight average's horizon under Muon
    "fast-ema0.98": ("fast", ["trainer.ema_decay=0.98"]),
    # round 29: fast's steps and inputs a step, but 128 different images a step instead of 64 seen twice
    "fast-bs128-1view-16ep": (
        "fast",
        ["data.batch_size=128", "data.augment.views=1", "trainer.max_epochs=16", "optim.warmup_epochs=1"],
    ),
    "fast-no-aspect": ("fast", ["data.augment.aspect=0"]),
    "fast-no-zoom-border": ("fast", ["data.augment.scale=[0.9,1.1]", "data.augment.border_erase=0.0"]),
    "fast-dataset-norm": ("fast", ["data.normalization=dataset"]),
    "cnn_improved-64": ("cpu/cnn_improved", ["data.image_size=64"]),
    "resnet18-64": ("cpu/resnet18", ["data.image_size=64"]),
    # candidates for generalisation (issue 16): noisy train labels, framing, resolution
    "fast-label-smoothing": ("fast", ["optim.label_smoothing=0.1"]),
    "fast-strong-zoom": ("fast", ["data.augment.scale=[0.8,1.6]", "data.augment.translate=0.1"]),
    "fast-128": ("fast", ["data.image_size=128"]),
    "fast-equalize": ("fast", ["data.normalization=equalize"]),
    "fast-resnet18": ("fast", ["model.name=resnet18"]),
    "resnet18-64-per-image": ("cpu/resnet18", ["data.image_size=64", "data.normalization=per_image"]),
    # third round (issue 16): resolution down, regularisation, training length
    "fast-48": ("fast", ["data.image_size=48"]),
    "fast-wd": ("fast", ["optim.weight_decay=0.05"]),
    "fast-16ep": ("fast", ["trainer.max_epochs=16"]),
    "fast-mixup": ("fast", ["optim.mixup_alpha=0.4"]),
    "fast-blur-noise": ("fast", ["data.augment.blur=1.0", "data.augment.noise=0.03"]),
    # fourth round (issue 16): width, per-image normalisation inside the network, levers combined
    "fast-w32": ("fast", ["model.kwargs.width=32"]),
    "fast-gn": ("fast", ["model.kwargs.norm=group"]),
    "fast-mixup-16ep": ("fast", ["optim.mixup_alpha=0.4", "trainer.max_epochs=16"]),
    # self-supervised pre-training on the training images (SimCLR), then the fast recipe from that encoder
    "fast-simclr": ("fast", []),
    "fast-simclr-lr1e-3": ("fast", ["optim.lr=1e-3"]),  # a gentler fine-tuning keeps more of the encoder
    "fast-simclr-lr3e-4": ("fast", ["optim.lr=3e-4"]),
    # fifth round (issue 16): the original width/height is a class signal in train and survives the squash
    "fast-aspect-0.3": ("fast", ["data.augment.aspect=0.3"]),
    "fast-aspect-0.5": ("fast", ["data.augment.aspect=0.5"]),
    "fast-aspect-0.3-balance": ("fast", ["data.augment.aspect=0.3", "data.augment.aspect_balance=true"]),
    "fast-aspect-0.5-balance": ("fast", ["data.augment.aspect=0.5", "data.augment.aspect_balance=true"]),
    "fast-aspect-0.5-16ep": ("fast", ["data.augment.aspect=0.5", "trainer.max_epochs=16"]),
    "fast-aspect-0.7": ("fast", ["data.augment.aspect=0.7"]),
    "fast-aspect-simclr": ("fast", ["data.augment.aspect=0.5", "optim.lr=1e-3"]),  # encoder views stretched too
    # sixth round (issue 16): shorter pre-training with stretched views
    "fast-aspect-simclr-10ep": ("fast", ["data.augment.aspect=0.5", "optim.lr=1e-3"]),
    "fast-aspect-simclr-16ep": ("fast", ["data.augment.aspect=0.5", "optim.lr=1e-3", "trainer.max_epochs=16"]),
    # round 7: a second view of each batch (now `fast`); a contrastive loss beside the cross-entropy on the two views
    # was measured at commit 2dc62ea (`optim.contrastive_weight=1.0`) and removed after it lost
    "fast-2views": ("fast", ["data.augment.views=2"]),
    "fast-2views-16ep": ("fast", ["data.augment.views=2", "trainer.max_epochs=16"]),  # 4x the one-view compute
    # 76 augmented passes over train: fast_pretrained's (30 SimCLR epochs of 2 views + 16 of fine-tuning), no SimCLR
    "fast-2views-38ep": ("fast_long", R8),  # the preset since (it keeps the best epoch); round 9 changed it
    "fast-48-2views": ("fast", ["data.image_size=48", "data.augment.views=2"]),
    "fast-48-2views-16ep": ("fast", ["data.image_size=48", "data.augment.views=2", "trainer.max_epochs=16"]),
    "fast-2views-strong": ("fast", ["data.augment.views=2", *STRONG]),
    "fast-16ep-strong": ("fast", ["data.augment.views=1", "trainer.max_epochs=16", *STRONG]),
    "fast-aspect-simclr-2views": ("fast", ["data.augment.aspect=0.5", "optim.lr=1e-3", "data.augment.views=2"]),
    # Round 8: a longer weight average (the EMA's horizon was set for time to accuracy: ~20 steps, a quarter epoch)
    "fast-ema-0.99": ("fast", [*R8, "trainer.ema_decay=0.99"]),
    # Keep the last epoch (trainer.select=last) instead of the best on a saturated validation split; `fast`
    # keeps it since (its rounds 1-7 and fast-ema-0.99 were measured with select=best: add "trainer.select=best").
    # Progressive resizing (fast-prog-last, fast-prog-12ep-last) was measured at commit 25e5841
    # (`data.augment.progressive=[32,0.75]`) and removed: stem_stride=2 saves more time for less.
    "fast-best": ("fast", [*R8, "trainer.select=best"]),  # `fast` until round 8 (--also-last scores its last epoch too)
    # the first convolution downsamples (the first block's full-size maps are ~2/3 of a CPU step): 1.76x the step rate,
    # spent on 14 epochs (fast's time) or saved (8 epochs)
    "fast-stem2-last": ("fast", [*R8, "model.kwargs.stem_stride=2"]),
    "fast-stem2-14ep-last": ("fast", [*R8, "model.kwargs.stem_stride=2", "trainer.max_epochs=14"]),
    # class-balanced sampling instead of loss weights: the normals (the class the test split errs on) are drawn ~3x
    # as often, so the model sees more augmented views of them
    "fast-sampler-last": ("fast", [*R8, "data.balance=sampler"]),
    # Round 9, against `fast` of the eighth round (R8: lr 3e-3, augmented at 64 px). How it spends its steps: the
    # peak learning rate, SGD with Nesterov momentum (the classic CNN optimiser), three views of each image over
    # fewer epochs (about the same compute), no dropout before the head.
    "fast-lr6e-3": ("fast", [*R8, "optim.lr=6e-3"]),
    "fast-lr1.5e-3": ("fast", [*R8, "optim.lr=1.5e-3"]),
    "fast-lr1e-3": ("fast", [*R8, "optim.lr=1e-3"]),
    "fast-sgd": ("fast", [*R8, "optim.optimizer=sgd", "optim.lr=0.1", "optim.weight_decay=5e-4"]),
    "fast-3views-6ep": ("fast", [*R8, "data.augment.views=3", "trainer.max_epochs=6"]),
    "fast-no-dropout": ("fast", [*R8, "model.dropout=0"]),
    # fast-residual (each block's second convolution learning a residual over the first's output, a ResNet-style
    # shortcut) was measured at commit 164a9fa (`model.kwargs.residual=true`) and removed: it lost.
    # The normals the test split calls pneumonia are framed tightly (the lungs fill the frame, no neck, little
    # margin): zoom in further than fast's 1.25x.
    "fast-zoom-1.5": ("fast", [*R8, "data.augment.scale=[0.9,1.5]"]),
    # Training images as sharp as the images a model is scored on: augmented from the 96 or 128 px cache, then
    # resized to 64 px with antialiasing (measured at commit 7cf3f46 as `data.augment.source_size=96|128`; the same
    # operations as data.augment.supersample=1.5|2). The last one is `fast` since.
    "fast-src96": ("fast", [*R8, "data.augment.supersample=1.5"]),
    "fast-src128": ("fast", [*R8, "data.augment.supersample=2"]),
    "fast-lr1.5e-3-src128": ("fast", []),
    "fast-stem2-now": ("fast", ["model.kwargs.stem_stride=2"]),  # the speed option on the ninth round's fast
    "fast_long-muon": ("fast_long", ["optim.optimizer=muon", "optim.lr=3e-3"]),  # round 27: fast's optimiser, 38 ep
    "fast_long-now": ("fast_long", []),  # fast_long inherits fast's ninth-round changes since
    # Round 10: the cheaper first block spends the time it saves on more epochs of the ninth round's fast.
    "fast-stem2-11ep": ("fast", ["model.kwargs.stem_stride=2", "trainer.max_epochs=11"]),
    "fast-stem2-12ep": ("fast", ["model.kwargs.stem_stride=2", "trainer.max_epochs=12"]),
    # A tone curve per training image (x ** g): the stored operating point moves with the grey scale's curve (a
    # gamma of 0.8 on the external images costs `fast` 0.03-0.04 specificity) while per-image normalisation is linear.
    "fast-gamma-0.3": ("fast", ["data.augment.gamma=0.3"]),
    "fast-gamma-0.5": ("fast", ["data.augment.gamma=0.5"]),
    # Invariance to every monotone tone curve: histogram equalisation (lost in round 2, before the stretch).
    "fast-equalize-now": ("fast", ["data.normalization=equalize"]),
    # Zoom to 1.5x lost in round 9 at 64 px (blurred); the false-positive normals are tightly framed. Now sharp:
    "fast-zoom-1.5-now": ("fast", ["data.augment.scale=[0.9,1.5]"]),
    "fast-9ep": ("fast", ["trainer.max_epochs=9"]),
    "fast-16ep-now": ("fast", ["trainer.max_epochs=16"]),  # what each minute buys, between fast and fast_long
    # A 5 deg rotation of the external images costs `fast` 0.07 specificity (pneumolab robustness): a wider range
    # swamps any difference in tilt between the classes of the training set, as the stretch did for width/height.
    "fast-rot15": ("fast", ["data.augment.rotation_deg=15"]),
    "fast-rot15-zoom-1.5": ("fast", ["data.augment.rotation_deg=15", "data.augment.scale=[0.9,1.5]"]),
    # More pixels paid for by the cheaper first block: 80 px (from 160 px copies) with stem_stride=2 costs ~0.85x
    # of fast's step (the first block at 40 px instead of 64, the rest at 1.56x the pixels).
    "fast-80-stem2": ("fast", ["data.image_size=80", "model.kwargs.stem_stride=2"]),
    # Round 11: smaller steps. The memory-bound first block runs faster per image on smaller batches (1,002 against
    # 884 images/s at 64 against 128 inputs a step, benchmarks/train_speed.py; the per-step overhead ate it in
    # training) and an epoch has twice the optimiser steps (what 16 epochs bought may be steps, not images).
    "fast-bs32": ("fast", ["data.batch_size=32"]),
    "fast-12ep": ("fast", ["trainer.max_epochs=12"]),  # the minute between 9 and 16 epochs
    # Measured, then removed with their options (lost; docs/BENCHMARKS.md, "Eleventh round"): at commit 7ea4a36
    # "fast-stemnorm0-10ep" (model.kwargs.stem_norm=false: the first block without BatchNorm, 1.36x the step rate,
    # 10 epochs) and "fast-linear" (optim.schedule=linear: a linear decay to zero instead of the cosine); at 3bf78aa
    # "fast-center-norm" (data.normalization=per_image_center: per-image statistics from the central quarter, which
    # a tight framing does not change); at 0e6f4dd "fast-focal-2" (optim.focal_gamma=2: the focal loss moves the
    # gradient to the hardest images, where specificity at 95% sensitivity is decided).
    # The model reads fine detail as "normal": a Gaussian blur of 0.5 px (64 px scale) on the external images takes
    # `fast` from 12-16 to 20-23 false-positive normals, and a sharp 1.08x / 1.15x magnification (from the 128 px
    # copies) to 21-24 / 32-35 (less detail per pixel, as in the tightly framed external normals). Blurring half
    # the training images by up to sigma px teaches it that a softer image is not an opacity.
    "fast-blur-0.5": ("fast", ["data.augment.blur=0.5"]),
    "fast-blur-1": ("fast", ["data.augment.blur=1.0"]),
    # Round 12, measured, then removed with their options (lost; docs/BENCHMARKS.md, "Twelfth round"): at 18000dd
    # "fast-normal-blur" (data.augment.normal_blur=0.48: half the NORMAL training images blurred, to the pneumonia
    # images' detail per pixel); at b38d99c "fast-zoom-balance-1.2" (data.augment.zoom_balance=1.2: normals zoomed
    # in by 1.095, pneumonia out by 1/1.095, the same match by magnification); at 826eda4 "fast-subtypes"
    # (data.subtypes=true optim.subtype_weight=1.0: a viral-vs-bacterial head beside the binary one); at bb8e4d1
    # "fast-gem" and "fast-maxpool" (model.kwargs.pool=gem|max in place of the global average); at 16ab1f3
    # "fast-jsd-12", "fast-jsd-1" and "fast-zoom-1.5-jsd-1" (optim.consistency_weight=W: AugMix's Jensen-Shannon
    # consistency between the two views of each image, the last with the zoom to 1.5x); at 0fd7a07
    # "fast-jsd-1-16ep" (weight 1, 16 epochs).
    # Round 13, measured, then removed with their options (lost; docs/BENCHMARKS.md, "Thirteenth round"): at
    # 78c9152 "fast-blurpool" (model.kwargs.blurpool=true: anti-aliased max pooling, Zhang 2019, in every block) and
    # "fast-erase-0.2" (data.augment.erase=0.2: random erasing of one rectangle on half the images); at 8c10d48
    # "fast-deep-wide" (model.kwargs.channels=[16,32,128,256]: wider deep blocks only); at 6888613
    # "fast-convs-1233" (model.kwargs.convs=[1,2,3,3]: one convolution at 64 px, three in each deep block); at
    # 8c74095 "fast-silu" (model.kwargs.act=silu: SiLU in place of ReLU).
    # Round 13, both lost (docs/BENCHMARKS.md, "Thirteenth round"): horizontal flips (pneumonia is often in one
    # lung, and either; the flip doubles the views of each image at no cost).
    "fast-hflip": ("fast", ["data.augment.hflip=true"]),
    # Sharper still (the ninth round's lever): augmented on the 160 px copies, so that even a 1.25x zoom keeps two
    # source pixels per output pixel before the antialiased resize to 64 px.
    "fast-src160": ("fast", ["data.augment.supersample=2.5"]),
    # fourteenth round (issue 16): each image's fine detail scaled to one RMS inside the network
    # (model.kwargs.detail_norm=true at 6526e9c, as fast-detail-norm): lost, removed; training on copies like the test
    # split's: benchmarks/simulate_copies.py, then --data on the copies' dataset with --recipes fast
    # Round 16, measured, then removed with its option (lost; docs/BENCHMARKS.md, "Sixteenth round"): at c7de761
    # "fast-patients" (data.balance=patients: each patient weighing the same within its class; Kermany's pneumonia
    # patients have 1-18 training images, the normals 1-4).
    # Round 17, measured, then removed with its option (lost; docs/BENCHMARKS.md, "Seventeenth round"): at 5c89a9e
    # "fast-sam-0.05" (data.augment.views=1 optim.sam_rho=0.05: sharpness-aware minimisation in place of the
    # second view, at about its cost).
    # Round 18, measured, then removed with its option (lost; docs/BENCHMARKS.md, "Eighteenth round"): at 17ec761
    # "fast-rank-1" and "fast-rank-3" (optim.rank_loss=W: a pairwise ranking loss, softplus of each normal's logit
    # margin over each pneumonia's in the batch, beside the cross-entropy).
    # Round 19, measured, then removed with its option (lost; docs/BENCHMARKS.md, "Nineteenth round"): at b9ed283
    # "fast-fill-reflection" and "fast-fill-border" (data.augment.fill=reflection|border: what the zoom, stretch and
    # shift fill in where they move the image off an edge, instead of black).
    # Leave one out of today's `fast` (2026-12-07, third session): what each adopted lever adds, by removing it
    # (with fast-no-aspect and fast-1view above).
    "fast-no-supersample": ("fast", ["data.augment.supersample=1"]),
    "fast-select-best": ("fast", ["trainer.select=best"]),
    "fast-no-ema": ("fast", ["trainer.ema_decay=null"]),
    "fast-clean-threshold": ("fast", ["calibration_views=0"]),
    "fast-no-intensity": ("fast", ["data.augment.brightness=0", "data.augment.contrast=0"]),
    # what a CPU without native bf16 pays (fp32 arithmetic on this one)
    "fast-fp32": ("fast", ["trainer.precision=32"]),
    "fast-1view-fp32": ("fast", ["data.augment.views=1", "trainer.precision=32"]),
}
# Recipes that start from an encoder of `pneumolab pretrain`: (encoder run name, preset, overrides), one per seed
# under OUT/pretrain/NAME-sSEED, shared by the recipes that name it.
# The pretrain/simclr preset stretches its views since the sixth round; SIMCLR is the encoder of rounds 4-5.
SIMCLR = ("fast-simclr", "pretrain/simclr", ["data.augment.aspect=0"])
PRETRAIN: dict[str, tuple[str, str, list[str]]] = {
    "fast-simclr": SIMCLR,
    "fast-simclr-lr1e-3": SIMCLR,
    "fast-simclr-lr3e-4": SIMCLR,
    "fast-aspect-simclr": ("fast-simclr-aspect", "pretrain/simclr", ["data.augment.aspect=0.5"]),
    "fast-aspect-simclr-16ep": ("fast-simclr-aspect", "pretrain/simclr", ["data.augment.aspect=0.5"]),  # fine-tuning
    "fast-aspect-simclr-2views": ("fast-simclr-aspect", "pretrain/simclr", ["data.augment.aspect=0.5"]),
    "fast-aspect-simclr-10ep": (
        "fast-simclr-aspect-10ep",
        "pretrain/simclr",
        ["data.augment.aspect=0.5", "trainer.max_epochs=10"],
    ),
}
KEYS = ("auroc", "sensitivity", "specificity", "accuracy", "balanced_accuracy", "ece")


def train_run(recipe: str, seed: int, data: Path, out: Path) -> tuple[Path, float | None]:
    """The run folder of (recipe, seed), trained now unless finished with the recipe as it is defined now; with its
    training wall time."""
    run_dir = out / "runs" / f"{recipe}-s{seed}"
    timing = run_dir / "wall_s.json"
    preset, extra = RECIPES[recipe]
    if recipe in PRETRAIN:
        extra = [*extra, f"model.init={pretrain_dir(recipe, seed, out) / 'encoder.pt'}"]
    overrides = [f"data.data_dir={data}", f"out_dir={out / 'runs'}", f"name={recipe}-s{seed}", f"seed={seed}", *extra]
    cfg = load_config(TrainConfig, preset, overrides)
    if (run_dir / "model.pt").is_file():
        if changed := stale_settings(run_dir, cfg):
            # recipes and presets change between rounds; a cached run of an older definition would be scored as
            # the new one
            raise RuntimeError(
                f"{run_dir} was trained with another {recipe!r} ({'; '.join(changed[:4])}): delete it to retrain, "
                "or give the recipe you changed a new name"
            )
        return run_dir, json.loads(timing.read_text())["train_wall_s"] if timing.is_file() else None
    timings = {}
    if recipe in PRETRAIN:
        _, timings["pretrain_wall_s"] = pretrain_run(recipe, seed, data, out)
    start = time.perf_counter()
    result = train(cfg, progress_bar=False)
    wall = time.perf_counter() - start
    if result.run_dir != run_dir:
        raise RuntimeError(f"{run_dir} exists without model.pt (an interrupted run?): delete it and re-run")
    # train_wall_s counts the pre-training too: it is part of what the recipe costs.
    timings = {"train_wall_s": round(wall + timings.get("pretrain_wall_s", 0.0), 1), **timings}
    timing.write_text(json.dumps(timings))
    return run_dir, timings["train_wall_s"]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) and v else {f"{prefix}{k}": v})
    return out


def stale_settings(run_dir: Path, cfg: TrainConfig) -> list[str]:
    """The settings whose value in the run's saved ``config.yaml`` differs from ``cfg`` ("key: saved -> now");
    settings only one side knows (options added or removed since) and where the run lies are left out."""
    import yaml

    saved = _flat(yaml.safe_load((run_dir / "config.yaml").read_text()))
    now = _flat(cfg.model_dump(mode="json"))
    saved["data.data_dir"], now["data.data_dir"] = (str(Path(c["data.data_dir"]).resolve()) for c in (saved, now))
    keys = sorted((saved.keys() & now.keys()) - {"out_dir", "name"})
    return [f"{k}: {saved[k]} -> {now[k]}" for k in keys if saved[k] != now[k]]


def pretrain_dir(recipe: str, seed: int, out: Path) -> Path:
    """Where (recipe, seed)'s encoder is pre-trained."""
    return out / "pretrain" / f"{PRETRAIN[recipe][0]}-s{seed}"


def pretrain_run(recipe: str, seed: int, data: Path, out: Path) -> tuple[Path, float]:
    """The encoder file of (recipe, seed) under ``out/pretrain``, pre-trained unless finished; with its wall time."""
    from pneumolab.config import PretrainConfig
    from pneumolab.training.pretrain import pretrain

    name, preset, extra = PRETRAIN[recipe]
    run_dir = pretrain_dir(recipe, seed, out)
    timing = run_dir / "wall_s.json"
    if (run_dir / "encoder.pt").is_file() and timing.is_file():
        return run_dir / "encoder.pt", json.loads(timing.read_text())["pretrain_wall_s"]
    cfg = load_config(
        PretrainConfig,
        preset,
        [f"data.data_dir={data}", f"out_dir={out / 'pretrain'}", f"name={name}-s{seed}", f"seed={seed}", *extra],
    )
    start = time.perf_counter()
    result = pretrain(cfg, progress_bar=False)
    wall = round(time.perf_counter() - start, 1)
    if result.run_dir != run_dir:
        raise RuntimeError(f"{run_dir} exists without encoder.pt (an interrupted run?): delete it and re-run")
    timing.write_text(json.dumps({"pretrain_wall_s": wall}))
    return run_dir / "encoder.pt", wall


def last_epoch_model(run_dir: Path) -> Path:
    """``run_dir/last-epoch/model.pt``: the run's final-epoch weights (``checkpoints/last.ckpt``) with an operating
    point fitted as training fits one (validation only): the model ``trainer.select=last`` keeps, from the same run."""
    from pneumolab.data.transforms import Preprocessing
    from pneumolab.models.checkpoint import load_model_file, save_model_file
    from pneumolab.training.classifier import ClassifierModule
    from pneumolab.training.trainer import _operating_point

    out = run_dir / "last-epoch" / "model.pt"
    if not out.is_file():
        last = ClassifierModule.load_from_checkpoint(
            run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True
        )
        _, meta = load_model_file(run_dir / "model.pt")
        cfg = TrainConfig.model_validate(meta["config"])
        net = last.net.eval()
        op, _ = _operating_point(net, Preprocessing.from_dict(dict(last.hparams.preprocessing)), cfg)
        out.parent.mkdir(exist_ok=True)
        last_epoch = int(read_history(run_dir / "history.csv")[-1]["epoch"])  # where it ended (early stopping too)
        save_model_file(out, net, {**meta, **op, "best_epoch": last_epoch})
    return out


def _point(m: dict[str, Any]) -> dict[str, float]:
    return {k: m[k]["value"] for k in KEYS}


def _ci(m: dict[str, Any]) -> dict[str, list[float]]:
    return {k: [round(m[k]["ci_low"], 4), round(m[k]["ci_high"], 4)] for k in KEYS}


def spread(values: list[float]) -> dict[str, float]:
    """Median, min and max over seeds."""
    return {"median": float(np.median(values)), "min": float(np.min(values)), "max": float(np.max(values))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="training dataset folder (pneumolab data prepare)")
    ap.add_argument("--external", type=Path, required=True, help="external set (Kaggle layout, CSV or dataset dir)")
    ap.add_argument("--out", type=Path, default=Path("runs/external"))
    ap.add_argument("--recipes", nargs="+", default=list(RECIPES)[:5], choices=sorted(RECIPES))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--no-robustness", action="store_true", help="skip the synthetic-shift benchmark")
    ap.add_argument("--no-site", action="store_true", help="skip the 2-fold site calibration/adaptation")
    ap.add_argument("--n-boot", type=int, default=2000)
    ap.add_argument(
        "--also-last",
        action="store_true",
        help="also score each run's last-epoch model (reported as RECIPE@last): trainer.select=last, same runs",
    )
    args = ap.parse_args()
    ext = args.out / "external_data"
    if not (ext / "manifest.csv").is_file():
        index_source(args.external, ext)
    ext_manifest = Manifest.load(ext)
    split = "test" if ext_manifest.indices("test") else "train"

    models: list[dict[str, Any]] = []
    recipes = [r for recipe in args.recipes for r in ([recipe, f"{recipe}@last"] if args.also_last else [recipe])]
    for recipe in recipes:
        for seed in args.seeds:
            run_dir, wall = train_run(recipe.removesuffix("@last"), seed, args.data, args.out)
            summary = json.loads((run_dir / "summary.json").read_text())
            val_auroc = summary["best_val"].get("val/auroc")
            if recipe.endswith("@last"):  # the same run's final epoch, in a folder of its own
                run_dir, val_auroc = (
                    last_epoch_model(run_dir).parent,
                    read_history(run_dir / "history.csv")[-1]["val/auroc"],
                )
            ev = evaluate(run_dir, ext, split=split, out=run_dir / "eval" / "external", n_boot=args.n_boot)
            row = {
                "recipe": recipe,
                "seed": seed,
                "run": str(run_dir),
                "train_wall_s": wall,
                "val_auroc": val_auroc,
                "threshold": ev["threshold"]["value"],
                "external": _point(ev["at_threshold"]),
                "external_ci": _ci(ev["at_threshold"]),
                # the ECE target read against noise: what a perfectly calibrated model shows on these probabilities
                "external_ece_if_calibrated": ev["at_threshold"]["ece_if_calibrated"],
            }
            if not args.no_site:
                from pneumolab.site_adaptation.folds import site_fold_metrics

                row["site"] = site_fold_metrics(run_dir, ext, split=split, n_boot=args.n_boot, seed=seed)
            models.append(row)
            print(json.dumps({k: row[k] for k in ("recipe", "seed", "val_auroc", "external")}), flush=True)

    if not args.no_robustness:
        pending = [m for m in models if not (Path(m["run"]) / "robustness" / "val.json").is_file()]
        for m, r in zip(pending, robustness_many([m["run"] for m in pending], args.data, split="val"), strict=True):
            keep = {k: r[k] for k in ("worst_specificity", "mean_balanced_accuracy", "mean_ece")}
            (Path(m["run"]) / "robustness").mkdir(exist_ok=True)
            (Path(m["run"]) / "robustness" / "val.json").write_text(json.dumps(keep))
        for m in models:
            m["robustness"] = json.loads((Path(m["run"]) / "robustness" / "val.json").read_text())

    result = {
        "external": str(args.external.resolve()),
        "external_split": split,
        "models": models,
        "recipes": summarise(models, recipes),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(result, indent=2))
    (args.out / "results.md").write_text(render(result))
    print(render(result))


def summarise(models: list[dict[str, Any]], recipes: list[str]) -> dict[str, Any]:
    """Per recipe: seed spread of every number; and the synthetic benchmark's rank agreement with external data."""
    out: dict[str, Any] = {}
    for recipe in recipes:
        rows = [m for m in models if m["recipe"] == recipe]
        s: dict[str, Any] = {"seeds": [m["seed"] for m in rows], "val_auroc": spread([m["val_auroc"] for m in rows])}
        s["external"] = {k: spread([m["external"][k] for m in rows]) for k in KEYS}
        walls = [m["train_wall_s"] for m in rows if m["train_wall_s"] is not None]
        s["train_wall_s"] = spread(walls) if walls else None
        if all("robustness" in m for m in rows):
            s["robustness"] = {k: spread([m["robustness"][k] for m in rows]) for k in rows[0]["robustness"]}
        if all("site" in m for m in rows):
            s["site"] = {
                how: {k: spread([m["site"][how]["pooled"][k] for m in rows]) for k in KEYS} for how in rows[0]["site"]
            }
        out[recipe] = s
    ranked = [m for m in models if "robustness" in m]
    if len({m["recipe"] for m in ranked}) >= 3:
        agree: dict[str, Any] = {}
        for proxy in ("worst_specificity", "mean_balanced_accuracy"):
            rho_all = spearmanr(
                [m["robustness"][proxy] for m in ranked], [m["external"]["specificity"] for m in ranked]
            )
            med = [
                (out[r]["robustness"][proxy]["median"], out[r]["external"]["specificity"]["median"]) for r in recipes
            ]
            rho_rec = spearmanr(*zip(*med, strict=True))
            agree[proxy] = {
                "spearman_models": round(float(rho_all.statistic), 3),
                "p_models": float(rho_all.pvalue),
                "n_models": len(ranked),
                "spearman_recipes": round(float(rho_rec.statistic), 3),
                "n_recipes": len(med),
            }
        out["_rank_agreement_with_external_specificity"] = agree
    return out


def render(result: dict[str, Any]) -> str:
    """A Markdown table per question: zero-shot external validity, the synthetic proxy, site features."""
    rec = {k: v for k, v in result["recipes"].items() if not k.startswith("_")}

    def f(s: dict[str, float], nd: int = 3) -> str:
        return f"{s['median']:.{nd}f} ({s['min']:.{nd}f}-{s['max']:.{nd}f})"

    lines = [
        f"External set: `{result['external']}` ({result['external_split']} split). Median (min-max) over seeds;",
        "threshold and temperature stored in the model (chosen on validation): zero-shot.",
        "",
        "| recipe | seeds | val AUROC | ext. AUROC | ext. sens. | ext. spec. | ext. acc. | ext. bal. acc. | "
        "ext. ECE | train s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, s in rec.items():
        e = s["external"]
        wall = f(s["train_wall_s"], 0) if s["train_wall_s"] else "-"
        lines.append(
            f"| {name} | {len(s['seeds'])} | {f(s['val_auroc'], 4)} | {f(e['auroc'])} | {f(e['sensitivity'])} "
            f"| {f(e['specificity'])} | {f(e['accuracy'])} | {f(e['balanced_accuracy'])} | {f(e['ece'])} "
            f"| {wall} |"
        )
    lines += [
        "",
        "Per model, external at the stored threshold with patient-bootstrap 95% CIs:",
        "",
        "| model | AUROC | sensitivity | specificity | accuracy | ECE (a calibrated model's; p) |",
        "|---|---|---|---|---|---|",
    ]
    for m in result["models"]:
        e, ci = m["external"], m["external_ci"]
        cells = [
            f"{e[k]:.3f} [{ci[k][0]:.3f}, {ci[k][1]:.3f}]" for k in ("auroc", "sensitivity", "specificity", "accuracy")
        ]
        cal = m.get("external_ece_if_calibrated")  # absent from results.json files of older rounds
        floor = f" ({cal['mean']:.3f} [{cal['low']:.3f}, {cal['high']:.3f}]; {cal['p_value']:.2f})" if cal else ""
        cells.append(f"{e['ece']:.3f}{floor}")
        lines.append(f"| {m['recipe']} s{m['seed']} | " + " | ".join(cells) + " |")
    if all("robustness" in s for s in rec.values()):
        lines += [
            "",
            "| recipe | synthetic worst spec. | synthetic mean bal. acc. | external spec. |",
            "|---|---|---|---|",
        ]
        for name, s in rec.items():
            r = s["robustness"]
            lines.append(
                f"| {name} | {f(r['worst_specificity'])} | {f(r['mean_balanced_accuracy'])} "
                f"| {f(s['external']['specificity'])} |"
            )
        for proxy, a in result["recipes"].get("_rank_agreement_with_external_specificity", {}).items():
            lines.append(
                f"\nSpearman's rho of {proxy} with external specificity: {a['spearman_models']:+.2f} over "
                f"{a['n_models']} models (p = {a['p_models']:.2f}), {a['spearman_recipes']:+.2f} over "
                f"{a['n_recipes']} recipes' medians."
            )
    if all("site" in s for s in rec.values()):
        lines += [
            "",
            "Site features, 2 patient-disjoint folds of the external set (fit on one, score the other; "
            "pooled). The external set is the site sample here.",
            "",
            "| recipe | how | AUROC | sensitivity | specificity | accuracy | ECE |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, s in rec.items():
            for how, e in s["site"].items():
                lines.append(
                    f"| {name} | {how} | {f(e['auroc'])} | {f(e['sensitivity'])} | {f(e['specificity'])} "
                    f"| {f(e['accuracy'])} | {f(e['ece'])} |"
                )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
