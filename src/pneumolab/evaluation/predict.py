"""Batch predictions of a model over a cached dataset split, with the model's own preprocessing."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pneumolab.config import AugmentConfig
from pneumolab.data.cache import load_cache
from pneumolab.data.dataset import CachedImages
from pneumolab.data.manifest import Manifest
from pneumolab.data.transforms import BatchTrainPreset, Preprocessing
from pneumolab.io import atomic_path

__all__ = [
    "batched_logits",
    "pixel_logits",
    "predict_logits",
    "read_val_logits",
    "validation_logits",
    "view_logits",
    "view_targets",
    "write_val_logits",
]


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    preprocessing: Preprocessing,
    manifest: Manifest,
    indices: list[int],
    cache_dir: Any,
    *,
    batch_size: int = 128,
) -> np.ndarray:
    """Logits ``(len(indices), C)`` for the given manifest rows, preprocessed as the model was trained."""
    images = load_cache(manifest, preprocessing.image_size, cache_dir)
    return pixel_logits(model, preprocessing, images, indices, batch_size=batch_size)


@torch.no_grad()
def pixel_logits(
    model: nn.Module,
    preprocessing: Preprocessing,
    images: np.ndarray,
    indices: list[int] | None = None,
    *,
    batch_size: int = 128,
) -> np.ndarray:
    """Logits ``(N, C)`` of rows ``indices`` (default: all) of ``(M, S, S) uint8`` images at the model's size."""
    indices = list(range(len(images))) if indices is None else indices
    if not indices:
        return np.zeros((0, len(preprocessing.classes)), np.float32)
    ds = CachedImages(images, indices, [0] * len(indices), preprocessing.transform)  # targets unused
    return batched_logits(model, (x for x, _ in DataLoader(ds, batch_size=batch_size))).numpy()


@torch.no_grad()
def view_logits(
    model: nn.Module,
    preprocessing: Preprocessing,
    images: np.ndarray,
    indices: list[int],
    augment: AugmentConfig,
    views: int,
    *,
    seed: int = 0,
    batch_size: int = 128,
) -> np.ndarray:
    """Logits ``(views * N, C)`` of ``views`` copies of rows ``indices`` of ``(M, S, S) uint8`` images (S: the
    model's size times the policy's ``supersample``), each copy drawn anew from ``augment`` (the training policy,
    without per-class offsets); row ``v * N + i`` is view ``v`` of image ``i``. Seeded, without touching the global
    random stream: the same numbers on every call."""
    pre = preprocessing
    aug = BatchTrainPreset(
        mean=pre.mean, std=pre.std, normalization=pre.normalization, augment=augment, out_size=pre.image_size
    )
    x = torch.from_numpy(np.array(images[indices]))[:, None]  # (N, 1, S, S) uint8, a writable copy
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return batched_logits(model, (aug(b) for _ in range(views) for b in x.split(batch_size))).numpy()


def validation_logits(
    model: nn.Module,
    preprocessing: Preprocessing,
    manifest: Manifest,
    indices: list[int],
    cache_dir: Any,
    *,
    augment: AugmentConfig | None = None,
    views: int = 0,
) -> np.ndarray:
    """The logits an operating point is fitted on: ``(N, C)`` of the images as they are (``views == 0``), or
    ``(views * N, C)`` of :func:`view_logits` under ``augment`` (``calibration_views`` of the training config)."""
    if not views:
        return predict_logits(model, preprocessing, manifest, indices, cache_dir)
    if augment is None:
        raise ValueError("views > 0 needs the augmentation policy they are drawn from")
    images = load_cache(manifest, augment.source_size(preprocessing.image_size), cache_dir)
    return view_logits(model, preprocessing, images, indices, augment, views)


def view_targets(manifest: Manifest, indices: list[int], n_logits: int) -> np.ndarray:
    """Targets ``(n_logits,)`` aligned with :func:`validation_logits` of rows ``indices``: once per view."""
    y = np.array([manifest.records[i].target for i in indices])
    return np.tile(y, n_logits // max(len(y), 1))


@torch.no_grad()
def batched_logits(model: nn.Module, batches: Iterable[torch.Tensor]) -> torch.Tensor:
    """fp32 logits ``(N, C)`` of ``model`` (put in eval mode) over preprocessed batches ``(B, 1, S, S)``.

    Runs in the NHWC memory format, oneDNN's faster layout on CPUs (docs/BENCHMARKS.md), with the same fp32
    arithmetic.
    """
    model = model.eval().to(memory_format=torch.channels_last)
    return torch.cat([model(x.contiguous(memory_format=torch.channels_last)).float() for x in batches])


def write_val_logits(path: Path, manifest: Manifest, logits: np.ndarray) -> None:
    """Keep a model's validation logits (``(N, 2)``, or ``(views * N, 2)``: :func:`validation_logits`) beside it
    with the manifest they belong to, so later stages (``evaluate --policy``) read them instead of predicting
    validation again."""
    with atomic_path(path, suffix=".npz") as tmp, tmp.open("wb") as f:
        np.savez(f, logits=logits.astype(np.float32), manifest=manifest.content_hash())


def read_val_logits(path: Path, manifest: Manifest) -> np.ndarray | None:
    """The logits :func:`write_val_logits` kept, or None when absent or written for another manifest."""
    if not path.is_file():
        return None
    with np.load(path) as f:
        return f["logits"] if str(f["manifest"]) == manifest.content_hash() else None
