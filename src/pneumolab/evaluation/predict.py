"""Batch predictions of a model over a cached dataset split, with the model's own preprocessing."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from pneumolab.data.cache import load_cache
from pneumolab.data.datamodule import CachedImages
from pneumolab.data.manifest import Manifest
from pneumolab.data.transforms import EvalPreset

__all__ = ["predict_logits"]


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    preprocessing: dict[str, Any],
    manifest: Manifest,
    indices: list[int],
    cache_dir: Any,
    *,
    batch_size: int = 128,
) -> np.ndarray:
    """Logits ``(len(indices), C)`` for the given manifest rows, preprocessed as the model was trained."""
    pre = preprocessing
    images = load_cache(manifest, pre["image_size"], cache_dir)
    tf = EvalPreset(mean=pre["mean"], std=pre["std"], normalization=pre["normalization"])
    ds = CachedImages(images, indices, [manifest.records[i].target for i in indices], tf)
    model.eval()
    out = [model(x).float() for x, _ in DataLoader(ds, batch_size=batch_size)]
    return torch.cat(out).numpy() if out else np.zeros((0, len(pre.get("classes", [0, 1]))), np.float32)
