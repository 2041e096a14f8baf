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
from pathlib import Path

from pneumolab.data.manifest import Manifest
from pneumolab.evaluation.report import compare
from pneumolab.generative.dcgan import load_generator
from pneumolab.pipeline import gan_arms


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

    n_train = len(Manifest.load(args.data).indices("train", "real"))
    generators = {load_generator(g)[1]["label"]: g for g in args.generators}
    samples, arms = gan_arms(
        data=args.data,
        n_train=n_train,
        generators=generators,
        models=args.models,
        seeds=args.seeds,
        per_class=args.per_class,
        epochs=args.epochs,
        size=args.size,
        out=args.out,
        extra=args.extra,
    )
    for step in samples + arms:
        if not step.done():  # finished runs are kept: re-running continues the matrix
            print(f"{step.name} ...", flush=True)
            step.run()
    runs = [arm.folder for arm in arms]
    report = compare(runs, args.data, args.out / "report", split=args.split)
    print(f"report: {report}")


if __name__ == "__main__":
    main()
