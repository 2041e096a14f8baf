"""Lightning DataModule serving the splits from the uint8 cache.

Train gets random augmentation; val and test get only the deterministic ``EvalPreset``. With
``augment.batched`` the training loader yields raw ``(B, 1, S, S) uint8`` batches and
``on_after_batch_transfer`` augments and normalises each one where it landed (CPU or GPU).
Normalisation statistics and class weights come from the training split only. Synthetic sets
join the training loader and nothing else.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset, WeightedRandomSampler

from pneumolab.config import DataConfig
from pneumolab.data.cache import load_cache
from pneumolab.data.dataset import CachedImages
from pneumolab.data.manifest import CLASSES, Manifest
from pneumolab.data.summary import MIN_SHAPED_PER_CLASS, log_proportions
from pneumolab.data.transforms import BatchTrainPreset, EvalPreset, Preprocessing, TrainPreset
from pneumolab.errors import InputError, LeakageError

__all__ = ["ChestXrayDataModule", "aspect_offsets", "train_statistics"]

log = logging.getLogger(__name__)


def _counts(ds: Dataset) -> str:
    """``72 images (36 NORMAL, 36 PNEUMONIA)`` of a split's dataset, a concatenation (real + synthetic) included."""
    parts = ds.datasets if isinstance(ds, ConcatDataset) else [ds]
    counts = Counter(t for part in parts for t in part.targets)
    each = ", ".join(f"{counts[i]} {c}" for i, c in enumerate(CLASSES))
    extra = f" in {len(parts)} parts (real, synthetic or duplicated)" if len(parts) > 1 else ""
    return f"{sum(counts.values())} images ({each}){extra}"


def aspect_offsets(manifest: Manifest, indices: list[int]) -> tuple[float, ...] | None:
    """Per target index, the log(width/height) stretch that moves the class's median proportions of the non-square
    images among ``indices`` to the middle of the classes' medians (``augment.aspect_balance``); None, with a
    warning, when a class has too few of them to measure (the random stretch then works alone).

    An image squashed from a wider original shows narrower anatomy; widening that class by half the gap and
    narrowing the other by the other half leaves the proportions without a label on average.
    """
    by_class = log_proportions(manifest.records[i] for i in indices)
    counts = {CLASSES[t]: len(v) for t, v in by_class.items()}
    if min(counts.values()) < MIN_SHAPED_PER_CLASS:
        log.warning(
            "aspect balance off: it needs >= %d non-square training images per class to measure their proportions, "
            "found %s; the images are stretched at random only (data.augment.aspect)",
            MIN_SHAPED_PER_CLASS,
            counts,
        )
        return None
    medians = [float(np.median(v)) for v in by_class.values()]
    middle = sum(medians) / len(medians)
    offsets = tuple(m - middle for m in medians)
    log.info(
        "aspect balance: median width/height %s in train; stretched by %s",
        ", ".join(f"{c} {math.exp(m):.2f}" for c, m in zip(CLASSES, medians, strict=True)),
        ", ".join(f"{c} x{math.exp(o):.2f}" for c, o in zip(CLASSES, offsets, strict=True)),
    )
    return offsets


def train_statistics(images: np.ndarray, indices: list[int], chunk: int = 512) -> tuple[float, float]:
    """Pixel mean and std (in [0, 1]) over the given rows, streamed in chunks to bound memory."""
    total, total_sq, count = 0.0, 0.0, 0
    for start in range(0, len(indices), chunk):
        x = images[np.asarray(indices[start : start + chunk])].astype(np.float64) / 255.0
        total += x.sum()
        total_sq += np.square(x).sum()
        count += x.size
    mean = total / count
    return float(mean), float(np.sqrt(max(total_sq / count - mean**2, 1e-12)))


def _pooled_statistics(parts: list[CachedImages]) -> tuple[float, float]:
    """Mean and std over several cached sets together (each part's moments, weighted by its pixel count)."""
    moments = [(len(p), *train_statistics(p.images, p.indices)) for p in parts]  # (n, mean, std)
    n = sum(k for k, _, _ in moments)
    mean = sum(k * m for k, m, _ in moments) / n
    var = sum(k * (sd**2 + m**2) for k, m, sd in moments) / n - mean**2
    return float(mean), float(np.sqrt(max(var, 1e-12)))


class ChestXrayDataModule(L.LightningDataModule):
    """Serves train/val/test from a dataset folder made by ``pneumolab data index`` and ``data split``.

    Example:
        >>> dm = ChestXrayDataModule(DataConfig(data_dir="runs/data/sample"))   # doctest: +SKIP
        >>> dm.setup(); x, y = next(iter(dm.train_dataloader()))  # x: (B, 1, 128, 128) float
    """

    def __init__(self, config: DataConfig) -> None:
        super().__init__()
        self.config = config
        self.mean: float | None = None
        self.std: float | None = None
        self.datasets: dict[str, Dataset] = {}
        self.batch_augment: torch.nn.Module | None = None  # set by setup() when augment.batched

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        cfg = self.config
        manifest = Manifest.load(cfg.data_dir)
        if not manifest.indices("val"):
            raise InputError(f"{cfg.data_dir} has no validation split: run `pneumolab data split {cfg.data_dir}` first")
        images = load_cache(manifest, cfg.image_size, cfg.data_dir / "cache")
        # (N, S, S) uint8 the training loader slices: S = augment.supersample x image_size, resized after augmenting
        train_images = load_cache(manifest, cfg.augment.source_size(cfg.image_size), cfg.data_dir / "cache")
        train_idx = manifest.indices("train", source="real")

        def subset(split: str, source: str | None = None) -> CachedImages:
            idx = manifest.indices(split, source)
            pixels = train_images if split == "train" else images
            return CachedImages(pixels, idx, [manifest.records[i].target for i in idx], None)

        syn_parts = [self._synthetic(manifest, syn_dir) for syn_dir in cfg.synthetic]
        if cfg.real_train:
            # Statistics from the real training images only: val/test (and synthetic images) must not shape inputs.
            self.mean, self.std = train_statistics(images, train_idx)
            train_parts = [subset("train"), *syn_parts]
        else:  # train on synthetic, test on real (TSTR): the synthetic images are the training split
            if not syn_parts:
                raise InputError("data.real_train=false needs synthetic sets (data.synthetic=[...]) to train on")
            self.mean, self.std = _pooled_statistics(syn_parts)
            train_parts = syn_parts
        if cfg.duplicate_real:
            rng = np.random.default_rng(cfg.seed)
            extra = [
                int(i)
                for label, n in sorted(cfg.duplicate_real.items())
                for i in rng.choice([i for i in train_idx if manifest.records[i].label == label], n)
            ]
            train_parts.append(CachedImages(train_images, extra, [manifest.records[i].target for i in extra], None))
        norm = {"mean": self.mean, "std": self.std, "normalization": cfg.normalization}
        if cfg.augment.aspect_balance and not cfg.augment.batched:
            raise InputError("data.augment.aspect_balance needs data.augment.batched=true: it reads the labels")
        if cfg.augment.batched:  # raw uint8 out of the loader; augment_batch() does the rest
            offsets = aspect_offsets(manifest, train_idx) if cfg.augment.aspect_balance else None
            self.batch_augment = BatchTrainPreset(
                **norm, augment=cfg.augment, aspect_offsets=offsets, out_size=cfg.image_size
            )
            train_tf: Any = torch.nn.Identity()
        else:
            train_tf = TrainPreset(**norm, augment=cfg.augment)
        eval_tf = EvalPreset(**norm)
        for part in train_parts:
            part.transform = train_tf
        val, test = subset("val"), subset("test")
        val.transform = test.transform = eval_tf
        self.datasets = {"train": ConcatDataset(train_parts) if len(train_parts) > 1 else train_parts[0]}
        self.datasets["val"] = val
        if len(test):
            self.datasets["test"] = test
        log.info("data: %s", "; ".join(f"{k} {_counts(v)}" for k, v in self.datasets.items()))

    def _synthetic(self, manifest: Manifest, syn_dir: Any) -> CachedImages:
        """Load a synthetic set for the training loader; refuse anything that could reach val/test."""
        syn = Manifest.load(syn_dir)
        not_train = [r.path for r in syn.records if r.split != "train" or r.source != "synthetic"]
        if not_train:
            raise LeakageError(
                f"{syn_dir}: {len(not_train)} row(s) are not synthetic training images (e.g. {not_train[0]}); "
                "only source=synthetic, split=train rows may be added to training"
            )
        held_out = {r.sha256 for r in manifest.records if r.split != "train"}
        if any(r.sha256 in held_out for r in syn.records):
            raise LeakageError(f"{syn_dir}: contains an image identical to a validation/test image")
        images = load_cache(syn, self.config.augment.source_size(self.config.image_size), Path(syn_dir) / "cache")
        return CachedImages(images, list(range(len(syn))), [r.target for r in syn.records], None)

    def augment_batch(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Augment and normalise a raw training batch ``(B, 1, S, S) uint8`` (``augment.batched`` only);
        ``y`` (B,): its targets, for ``augment.aspect_balance`` (None: no per-class offset)."""
        if self.batch_augment is None:
            raise RuntimeError("augment_batch() needs data.augment.batched=true and setup() first")
        return self.batch_augment(x, y)

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        # Only the batched training loader yields uint8 images (val/test come normalised, latents are float).
        x, *rest = batch
        if self.batch_augment is not None and x.dtype == torch.uint8:
            y = rest[0] if rest else None
            views = self.config.augment.views
            if views == 1:
                return [self.augment_batch(x, y), *rest]
            # (V*B, 1, S, S): view v of image i at row v*B + i; targets (and any other field) repeated alike
            return [torch.cat([self.augment_batch(x, y) for _ in range(views)]), *(r.repeat(views) for r in rest)]
        return batch

    @property
    def train_targets(self) -> list[int]:
        ds = self.datasets["train"]
        parts = ds.datasets if isinstance(ds, ConcatDataset) else [ds]
        return [t for p in parts for t in p.targets]

    def class_weights(self) -> torch.Tensor:
        """``N / (K * N_c)`` per class from the training loader's labels (1.0 each if ``balance != "weights"``)."""
        if self.config.balance != "weights":
            return torch.ones(len(CLASSES))
        counts = np.bincount(self.train_targets, minlength=len(CLASSES)).astype(np.float64)
        return torch.tensor(counts.sum() / (len(CLASSES) * np.maximum(counts, 1)), dtype=torch.float32)

    def keep_one_class(self, label: str) -> int:
        """Train on the real training images of one class only (a DCGAN per class); returns how many."""
        train = self.datasets["train"]
        if not isinstance(train, CachedImages):  # synthetic sets joined: a GAN learns from real images only
            raise InputError("a per-class generator trains on real images only: drop data.synthetic")
        keep = [i for i, t in enumerate(train.targets) if t == CLASSES.index(label)]
        self.datasets["train"] = CachedImages(
            train.images, [train.indices[i] for i in keep], [train.targets[i] for i in keep], train.transform
        )
        return len(keep)

    def preprocessing(self) -> Preprocessing:
        """The input of a model trained here (its model file stores ``.to_dict()``)."""
        return Preprocessing(self.config.image_size, self.mean, self.std, self.config.normalization)

    def _loader(self, split: str, train: bool) -> DataLoader:
        cfg = self.config
        sampler = None
        if train and cfg.balance == "sampler":
            targets = np.asarray(self.train_targets)
            w = 1.0 / np.bincount(targets, minlength=len(CLASSES))[targets]
            g = torch.Generator().manual_seed(cfg.seed)
            sampler = WeightedRandomSampler(torch.as_tensor(w, dtype=torch.double), len(targets), generator=g)
        return DataLoader(
            self.datasets[split],
            batch_size=cfg.batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and len(self.datasets[split]) > cfg.batch_size,  # a batch of 1 breaks BatchNorm
            num_workers=cfg.num_workers,
            persistent_workers=cfg.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", train=False)

    def eval_loader(self, split: str, batch_size: int = 128) -> DataLoader:
        """A split through the deterministic eval transform, in order (for train: without augmentation)."""
        if split == "train" and self.config.augment.supersample > 1:
            raise InputError(
                f"the training images come at data.augment.supersample={self.config.augment.supersample:g} x "
                f"{self.config.image_size} px, not at the model's size: train this stage with supersample=1"
            )
        ds = self.datasets[split]
        plain = CachedImages(ds.images, ds.indices, ds.targets, self.datasets["val"].transform)
        return DataLoader(plain, batch_size=batch_size)

    def test_dataloader(self) -> DataLoader:
        if "test" not in self.datasets:
            raise InputError(f"{self.config.data_dir} has no test split")
        return self._loader("test", train=False)
