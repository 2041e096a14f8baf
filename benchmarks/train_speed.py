"""Training-step throughput of every registered model (images/s), fp32 and bf16 + channels_last.

Usage::

    python benchmarks/train_speed.py --sizes 64 128 224 --batch-size 32 --seconds 6 > train_speed.json

Each cell is one forward + backward + AdamW step on random ``(B, 1, S, S)`` inputs, timed after a
warm-up step, for at least ``--seconds`` (and at least 2 steps). Data loading is excluded: the loader
benchmark (``data_pipeline.py``) shows it is several times faster than any model here.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
import torch.nn.functional as F

from pneumolab.models import create_model, list_models


def step_rate(name: str, size: int, batch: int, bf16: bool, seconds: float) -> float:
    torch.manual_seed(0)
    model = create_model(name).train()
    if bf16:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch, 1, size, size)
    if bf16:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 2, (batch,))

    def step() -> None:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up: allocator, oneDNN kernel selection
    n, start = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - start < seconds:
        step()
        n += 1
    return n * batch / (time.perf_counter() - start)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list_models())
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128, 224])
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args()
    results = []
    for name in args.models:
        for size in args.sizes:
            row = {"model": name, "size": size, "threads": torch.get_num_threads()}
            for label, bf16 in (("fp32", False), ("bf16_cl", True)):
                row[label] = round(step_rate(name, size, args.batch_size, bf16, args.seconds), 1)
            results.append(row)
            print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
