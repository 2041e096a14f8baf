"""The splits' images as a torch ``Dataset``: rows of the uint8 cache through a transform.

Its own module, not the DataModule's: evaluation, calibration and the guard read cached images too, and the
DataModule imports Lightning (~1.7 s on a 2-core CPU, torchvision with it) which they never use.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from pneumolab.data.manifest import CLASSES

__all__ = ["CachedImages"]


class CachedImages(Dataset):
    """Rows ``indices`` of a ``(N, S, S) uint8`` cache; items are ``(transform(image), target)``."""

    def __init__(self, images: np.ndarray, indices: list[int], targets: list[int], transform: Any) -> None:
        self.images, self.indices, self.targets, self.transform = images, list(indices), list(targets), transform

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = torch.from_numpy(np.array(self.images[self.indices[i]]))  # copied out of the mmap
        if x.ndim == 2:
            x = x[None]  # (S, S) image -> (1, S, S); latent codes are already (C, h, w)
        return self.transform(x), self.targets[i]

    def __repr__(self) -> str:
        counts = Counter(self.targets)
        return f"CachedImages({len(self)}: " + ", ".join(f"{c}={counts[i]}" for i, c in enumerate(CLASSES)) + ")"
