"""Training-step throughput (images/s) of a network on random inputs: what ``benchmarks/train_speed.py``
tabulates and what ``pneumolab study --dry-run`` turns into time estimates."""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["classifier_step_rate", "step_rate"]


def step_rate(
    net: nn.Module,
    x: torch.Tensor,
    loss_fn: Callable[[torch.Tensor], torch.Tensor],
    *,
    bf16: bool = False,
    seconds: float = 0.0,
    device: str = "cpu",
) -> float:
    """Images/s of forward + backward + AdamW steps on the batch ``x`` ``(B, C, H, W)`` on ``device``, timed
    after warm-up steps (allocator, oneDNN/cuDNN kernel choice), for at least ``seconds`` and 2 steps."""
    dev = torch.device(device)
    net, x = net.to(dev).train(), x.to(dev)
    if bf16:  # the presets' fast path: bf16 autocast + channels_last
        net, x = net.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-4)

    def step() -> None:
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(net(x).float())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def sync() -> None:  # CUDA runs asynchronously: wait for the queued steps before reading the clock
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)

    for _ in range(1 if dev.type == "cpu" else 3):
        step()
    sync()
    n, start = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - start < seconds:
        step()
        n += 1
        if n % 8 == 0:
            sync()
    sync()
    return n * x.shape[0] / (time.perf_counter() - start)


def classifier_step_rate(
    name: str, size: int, batch: int, *, bf16: bool = False, seconds: float = 0.0, device: str = "cpu"
) -> float:
    """:func:`step_rate` of the registered classifier ``name`` on ``(batch, 1, size, size)`` inputs."""
    from pneumolab.models import create_model

    torch.manual_seed(0)
    y = torch.randint(0, 2, (batch,), device=device)
    return step_rate(
        create_model(name),
        torch.randn(batch, 1, size, size),
        lambda out: F.cross_entropy(out, y),
        bf16=bf16,
        seconds=seconds,
        device=device,
    )
