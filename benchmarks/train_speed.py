"""Training-step throughput of every registered model (images/s), fp32 and bf16 + channels_last.

Usage::

    python benchmarks/train_speed.py --sizes 64 128 224 --batch-size 32 --seconds 6 > train_speed.json
    python benchmarks/train_speed.py --device cuda --batch-size 64 --seconds 2   # the GPU preset

Each cell is one forward + backward + AdamW step on random ``(B, 1, S, S)`` inputs, timed after a
warm-up step, for at least ``--seconds`` (and at least 2 steps). Data loading is excluded: the loader
benchmark (``data_pipeline.py``) shows it is several times faster than any model here.
"""

from __future__ import annotations

import argparse
import json

import torch

from pneumolab.models import list_models
from pneumolab.training.speed import classifier_step_rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list_models())
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=6.0)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    args = ap.parse_args()
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
    results = []
    for name in args.models:
        for size in args.sizes:
            row = {"model": name, "size": size, "device": args.device, "threads": torch.get_num_threads()}
            for label, bf16 in (("fp32", False), ("bf16_cl", True)):
                rate = classifier_step_rate(
                    name, size, args.batch_size, bf16=bf16, seconds=args.seconds, device=args.device
                )
                row[label] = round(rate, 1)
            results.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
