"""InfoBatch (Qin et al., ICLR 2024): each epoch, skip a random part of the images the model already fits.

Every training image keeps its latest loss. An epoch leaves out each image whose loss is below the mean with
probability ``ratio`` and scales the loss of the well-fitted images it keeps by ``1 / (1 - ratio)``, so the
expected gradient is the full epoch's; the last epochs (from ``stop_epoch``) see every image again.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, Sampler

__all__ = ["Indexed", "InfoBatchSampler"]


class Indexed(Dataset):
    """``dataset``'s items with their index appended: ``(*item, i)`` (the sampler keys its losses by it)."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> tuple:
        return (*self.dataset[i], i)


class InfoBatchSampler(Sampler[int]):
    """Shuffled indices of ``n`` images, the well-fitted ones thinned by ``ratio`` before ``stop_epoch``."""

    def __init__(self, n: int, ratio: float, stop_epoch: int, seed: int) -> None:
        self.n, self.ratio, self.stop_epoch, self.seed = n, ratio, stop_epoch, seed
        self.scores = torch.ones(n)  # equal before the first epoch: nothing is below the mean
        self.start_epoch(0)

    def start_epoch(self, epoch: int) -> None:
        """Draw epoch ``epoch``'s images (before the loader is built: its length is the pruned epoch's)."""
        g = torch.Generator().manual_seed(self.seed * 1000 + epoch)
        keep = torch.ones(self.n, dtype=torch.bool)
        self.weights = torch.ones(self.n)
        if epoch < self.stop_epoch:
            easy = self.scores < self.scores.mean()
            keep = ~(easy & (torch.rand(self.n, generator=g) < self.ratio))
            self.weights[easy & keep] = 1.0 / (1.0 - self.ratio)
        order = torch.nonzero(keep).squeeze(1)
        self.order = order[torch.randperm(len(order), generator=g)].tolist()
        self.seen = 0

    def __iter__(self) -> Iterator[int]:
        return iter(self.order)

    def __len__(self) -> int:
        return len(self.order)

    def update(self, idx: torch.Tensor, loss: torch.Tensor) -> torch.Tensor:
        """Store the losses ``(B,)`` of images ``idx (B,)``; returns their loss weights ``(B,)``."""
        idx = idx.cpu()
        self.scores[idx] = loss.detach().float().cpu()
        self.seen += len(idx)
        return self.weights[idx]

    def fraction_done(self) -> float:
        """How much of this epoch's images have been trained on (for an LR schedule by progress)."""
        return min(1.0, self.seen / max(1, len(self.order)))
