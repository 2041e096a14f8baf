"""Where one training step of a preset goes: its batched augmentation and the model's step, on real batches.

Usage::

    python benchmarks/recipe_step.py --data runs/data/kermany                 # the fast preset
    python benchmarks/recipe_step.py --data runs/data/kermany --preset fast_long --seconds 20

Times, per optimiser step (one loader batch, all its augmented views), the augmentation as training runs it
(``on_after_batch_transfer``: the views of the preset's ``data.augment``, at its supersampled size) and the model's
forward + backward + AdamW step on the augmented inputs at the preset's precision, each for at least ``--seconds``.
Also the affine grid alone, torch's ``F.affine_grid`` against the broadcast one the augmentation uses. Prints one
JSON object; record it in docs/BENCHMARKS.md with the machine.
"""

from __future__ import annotations

import argparse
import itertools
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from pneumolab.config import TrainConfig, load_config
from pneumolab.data.datamodule import ChestXrayDataModule
from pneumolab.data.transforms import _affine_grid
from pneumolab.models import create_model
from pneumolab.training.speed import step_rate


def ms_per_call(fn: Callable[[], object], seconds: float) -> float:
    """Mean milliseconds per call of ``fn`` after one warm-up call, over at least ``seconds`` and 3 calls."""
    fn()
    n, start = 0, time.perf_counter()
    while n < 3 or time.perf_counter() - start < seconds:
        fn()
        n += 1
    return 1000 * (time.perf_counter() - start) / n


def cpu_name() -> str:
    """The CPU's model name (Linux), else what ``platform`` knows."""
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, required=True, help="a prepared dataset folder (pneumolab data prepare)")
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--seconds", type=float, default=10.0)
    args = ap.parse_args()
    cfg = load_config(TrainConfig, args.preset, [f"data.data_dir={args.data}"])
    if not cfg.data.augment.batched:
        raise SystemExit(f"{args.preset}: data.augment.batched is false; this benchmark times the batched path")
    torch.manual_seed(0)
    dm = ChestXrayDataModule(cfg.data)
    dm.setup()
    batches = list(itertools.islice(dm.train_dataloader(), 8))  # [x (B, 1, S, S) uint8, y] each
    cycle = itertools.cycle(batches)

    def augment() -> torch.Tensor:
        return dm.on_after_batch_transfer(next(cycle), 0)[0]

    aug_ms = ms_per_call(augment, args.seconds)
    x = augment()  # (V*B, 1, image_size, image_size): what one optimiser step trains on
    y = torch.randint(0, 2, (x.shape[0],))
    bf16 = cfg.trainer.precision == "bf16-mixed"
    model = create_model(cfg.model.name, **cfg.model.kwargs)
    rate = step_rate(model, x, lambda out: F.cross_entropy(out, y), bf16=bf16, seconds=args.seconds)
    step_ms = 1000 * x.shape[0] / rate
    b, side = batches[0][0].shape[0], batches[0][0].shape[-1]
    theta = torch.eye(2, 3) + 0.05 * torch.randn(b, 2, 3)  # (B, 2, 3): near-identity maps, one per image
    torch_grid_ms = ms_per_call(lambda: F.affine_grid(theta, [len(theta), 1, side, side], align_corners=False), 2)
    print(
        json.dumps(
            {
                "preset": args.preset,
                "machine": f"{cpu_name()}, torch {torch.__version__}, {torch.get_num_threads()} threads",
                "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                "inputs_per_step": list(x.shape),
                "augmented_from": side,
                "augment_ms_per_step": round(aug_ms, 1),
                "model_step_ms": round(step_ms, 1),
                "precision": cfg.trainer.precision,
                "augment_share": round(aug_ms / (aug_ms + step_ms), 3),
                "inputs_per_s": round(x.shape[0] / (aug_ms + step_ms) * 1000),
                "affine_grid_ms_per_view": {
                    "torch": round(torch_grid_ms, 2),
                    "broadcast": round(ms_per_call(lambda: _affine_grid(theta, side, side), 2), 2),
                },
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
