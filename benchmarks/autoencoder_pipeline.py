"""Time every stage of the autoencoder pipeline against the same CNN on pixels, with validation AUROC/accuracy.

Usage (after ``pneumolab data prepare ../shared/data/chest_xray --out runs/data/kermany``)::

    python benchmarks/autoencoder_pipeline.py --data runs/data/kermany --out runs/bench-ae

For each bottleneck (the study's 256 channels, and two that really compress) it trains the
autoencoder, encodes the dataset and trains ``latent_cnn`` on the codes; then it trains the study's
improved CNN on pixels at the same size and at 224 px. Every second is counted (autoencoder training +
encoding + latent training = the pipeline's cost). Validation metrics come with 95% patient-bootstrap
CIs; the validation split also selected the checkpoints, so they are optimistic for all rows alike.
Prints one JSON object per row and a Markdown table at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from pneumolab.config import AutoencoderConfig, TrainConfig, load_config
from pneumolab.data.latent import encode_manifest
from pneumolab.evaluation.evaluate import evaluate
from pneumolab.training.autoencoder import train_autoencoder
from pneumolab.training.trainer import train


def _val(run_dir: Path, data: Path) -> dict:
    m = evaluate(run_dir, data, split="val", out=run_dir / "eval" / "bench-val", n_boot=1000)["at_threshold"]
    return {k: [round(m[k][f], 4) for f in ("value", "ci_low", "ci_high")] for k in ("auroc", "accuracy")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--out", type=Path, default=Path("runs/bench-ae"))
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--ae-epochs", type=int, default=10)
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument(
        "--bottlenecks", nargs="*", default=["autoencoder/cpu", "autoencoder/cpu_c16", "autoencoder/cpu_c64d5"]
    )
    ap.add_argument("--pixel-sizes", type=int, nargs="+", default=[128, 224])
    args = ap.parse_args()
    common = [f"data.data_dir={args.data}", f"data.image_size={args.size}"]
    rows = []
    for preset in args.bottlenecks:
        t0 = time.perf_counter()
        ae_cfg = load_config(
            AutoencoderConfig, preset, [*common, f"out_dir={args.out}/ae", f"trainer.max_epochs={args.ae_epochs}"]
        )
        ae = train_autoencoder(ae_cfg, progress_bar=False)
        t1 = time.perf_counter()
        encode_manifest(args.data, ae.run_dir)
        t2 = time.perf_counter()
        latent = [f"out_dir={args.out}/latent", f"latent={ae.run_dir}", f"name=latent_{ae.run_dir.name}"]
        cfg = load_config(TrainConfig, "cpu/latent_cnn", [*common, *latent, f"trainer.max_epochs={args.epochs}"])
        run = train(cfg, progress_bar=False)
        t3 = time.perf_counter()
        row = {
            "pipeline": f"AE {preset} -> latent_cnn",
            "code": "x".join(map(str, ae.summary["code_shape"])),
            "ae_train_s": round(t1 - t0, 1),
            "encode_s": round(t2 - t1, 1),
            "classifier_train_s": round(t3 - t2, 1),
            "total_s": round(t3 - t0, 1),
            "psnr_db": round(ae.summary["best_val"].get("val/psnr", float("nan")), 2),
            **_val(run.run_dir, args.data),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    for size in args.pixel_sizes:
        t0 = time.perf_counter()
        pixel = [f"data.data_dir={args.data}", f"data.image_size={size}", f"out_dir={args.out}/pixels"]
        cfg = load_config(
            TrainConfig, "cpu/cnn_improved", [*pixel, f"name=cnn_improved_{size}", f"trainer.max_epochs={args.epochs}"]
        )
        run = train(cfg, progress_bar=False)
        t1 = time.perf_counter()
        row = {
            "pipeline": f"cnn_improved on pixels {size} px",
            "code": f"1x{size}x{size}",
            "ae_train_s": 0,
            "encode_s": 0,
            "classifier_train_s": round(t1 - t0, 1),
            "total_s": round(t1 - t0, 1),
            "psnr_db": None,
            **_val(run.run_dir, args.data),
        }
        rows.append(row)
        print(json.dumps(row), flush=True)
    header = [
        "pipeline",
        "input to classifier",
        "AE train s",
        "encode s",
        "classifier train s",
        "total s",
        "val AUROC [95% CI]",
        "val accuracy [95% CI]",
    ]
    print("\n| " + " | ".join(header) + " |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        a, c = r["auroc"], r["accuracy"]
        cells = [
            r["pipeline"],
            r["code"],
            r["ae_train_s"],
            r["encode_s"],
            r["classifier_train_s"],
            r["total_s"],
            f"{a[0]:.4f} [{a[1]:.4f}, {a[2]:.4f}]",
            f"{c[0]:.4f} [{c[1]:.4f}, {c[2]:.4f}]",
        ]
        print("| " + " | ".join(map(str, cells)) + " |")


if __name__ == "__main__":
    main()
