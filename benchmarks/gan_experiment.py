"""The with/without-GAN experiment, done fairly: same real validation/test data, same number of
optimisation steps, several seeds, and a control that adds duplicated real images instead.

Usage (generators from ``pneumolab gan train --label NORMAL|PNEUMONIA``)::

    python benchmarks/gan_experiment.py --data runs/data/kermany \\
        --generators runs/gan/dcgan_NORMAL runs/gan/dcgan_PNEUMONIA --models resnet34 densenet121 \\
        --seeds 0 1 2 --per-class 1280 --epochs 10 --out runs/gan-experiment

For each model and seed it trains three arms -- plain, +synthetic (``--per-class`` images of each class,
sampled with provenance), +duplicated real images (the same count per class) -- each for exactly the
optimisation steps the plain arm takes in ``--epochs`` epochs, then ``compare`` writes the report whose
"GAN augmentation" section gives each effect with its paired-bootstrap CI and p-value.
"""

from __future__ import annotations

import argparse
import math
import shutil
from pathlib import Path

from pneumolab.config import TrainConfig, load_config
from pneumolab.data.manifest import Manifest
from pneumolab.evaluation.report import compare
from pneumolab.generative.dcgan import load_generator, sample_set
from pneumolab.training.trainer import load_run_config, train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--generators", type=Path, nargs="+", required=True)
    ap.add_argument("--models", nargs="+", default=["resnet34", "densenet121"])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--per-class", type=int, default=1280)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--split", default="val", help="split the report evaluates (val, or test if the data has one)")
    ap.add_argument("--out", type=Path, default=Path("runs/gan-experiment"))
    ap.add_argument("--extra", nargs="*", default=[], help="more key=value overrides for every run")
    args = ap.parse_args()

    synthetic = []
    for g in args.generators:
        label = load_generator(g)[1]["label"]
        synthetic.append(sample_set(g, args.per_class, args.out / "synthetic" / label, seed=0))
    labels = sorted(Manifest.load(s).records[0].label for s in synthetic)
    n_train = len(Manifest.load(args.data).indices("train", "real"))
    batch = load_config(TrainConfig, f"cpu/{args.models[0]}", [f"data.data_dir={args.data}"]).data.batch_size
    steps = args.epochs * math.ceil(n_train / batch)  # what the plain arm takes; every arm gets exactly this

    arms = {
        "plain": [],
        "gan": [f"data.synthetic=[{','.join(str(s) for s in synthetic)}]"],
        "dup": [f"data.duplicate_real={ {label: args.per_class for label in labels} }".replace(" ", "")],
    }
    runs = []
    for model in args.models:
        for seed in args.seeds:
            for arm, extra in arms.items():
                name = f"{model}-{arm}-s{seed}"
                run_dir = args.out / "runs" / name
                if (run_dir / "checkpoints" / "last.ckpt").is_file() and not (run_dir / "model.pt").is_file():
                    train(load_run_config(run_dir), resume=run_dir, progress_bar=False)  # interrupted: resume
                elif not (run_dir / "model.pt").is_file():  # finished runs are kept: re-running continues the matrix
                    shutil.rmtree(run_dir, ignore_errors=True)  # started but no epoch finished: nothing to keep
                    overrides = [
                        f"data.data_dir={args.data}", f"data.image_size={args.size}", f"out_dir={args.out / 'runs'}",
                        f"name={name}", f"seed={seed}", f"data.seed={seed}", f"trainer.max_steps={steps}",
                        f"trainer.max_epochs={10 * args.epochs}", "trainer.early_stopping_patience=null",
                        *extra, *args.extra,
                    ]  # fmt: skip
                    train(load_config(TrainConfig, f"cpu/{model}", overrides), progress_bar=False)
                runs.append(run_dir)
    report = compare(runs, args.data, args.out / "report", split=args.split)
    print(f"report: {report}")


if __name__ == "__main__":
    main()
