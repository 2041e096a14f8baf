"""Benchmark the data pipeline: index + validate, split, cache build, augmented loader throughput.

Usage::

    python benchmarks/data_pipeline.py --source ../shared/data/chest_xray --out /tmp/pneumolab-bench

Targets (issue 2): the cache builds in <= 60 s at 128 px, and the training loader delivers
>= 2,000 augmented images/s at 128 px on 2 cores. Also measures batched augmentation
(``data.augment.batched``) in the main process. Prints one JSON object; record it in
docs/BENCHMARKS.md with the machine and date.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

import torch

from pneumolab.config import DataConfig
from pneumolab.data import sample_root
from pneumolab.data.cache import build_cache
from pneumolab.data.datamodule import ChestXrayDataModule
from pneumolab.data.index import index_source
from pneumolab.data.splits import split_manifest


def loader_throughput(
    data_dir: Path, size: int, workers: int, batch: int, seconds: float, batched: bool = False
) -> float:
    """Augmented training images per second, measured over whole epochs for at least ``seconds``.

    ``batched``: the loader yields raw uint8 batches and ``augment_batch`` (counted here) augments each one,
    as the DataModule's hook does in training.
    """
    cfg = DataConfig(
        data_dir=data_dir, image_size=size, batch_size=batch, num_workers=workers, augment={"batched": batched}
    )
    dm = ChestXrayDataModule(cfg)
    dm.setup()
    loader = dm.train_dataloader()
    next(iter(loader))  # start workers before timing
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for x, _ in loader:
            if batched:
                x = dm.augment_batch(x)
            n += x.shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    default = Path("../shared/data/chest_xray")
    ap.add_argument("--source", type=Path, default=default if default.exists() else sample_root())
    ap.add_argument("--out", type=Path, default=Path("/tmp/pneumolab-bench"))
    ap.add_argument("--sizes", type=int, nargs="+", default=[128, 224])
    ap.add_argument("--loader-workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    shutil.rmtree(args.out, ignore_errors=True)
    res: dict = {
        "source": str(args.source),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
    }
    t = time.perf_counter()
    result = index_source(args.source, args.out)
    res["images"] = len(result.manifest)
    res["index_validate_s"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    split_manifest(result.manifest).save(args.out)
    res["split_s"] = round(time.perf_counter() - t, 2)
    for size in args.sizes:
        t = time.perf_counter()
        build_cache(result.manifest, size, args.out / "cache")
        res[f"cache_{size}px_s"] = round(time.perf_counter() - t, 2)
    for size in args.sizes:
        for w in args.loader_workers:
            ips = loader_throughput(args.out, size, w, args.batch_size, args.seconds)
            res[f"loader_{size}px_workers{w}_img_per_s"] = round(ips)
        ips = loader_throughput(args.out, size, 0, args.batch_size, args.seconds, batched=True)
        res[f"loader_{size}px_batched_workers0_img_per_s"] = round(ips)
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
