"""Preprocessing and augmentation presets on ``(1, H, W) uint8`` tensors from the cache.

``EvalPreset`` is the deterministic preprocessing a checkpoint records and inference rebuilds;
``TrainPreset`` adds random augmentation in front of it and is used by the training loader only.
"""

from __future__ import annotations

from typing import Any

import torch
from torchvision.transforms import v2

from pneumolab.config import AugmentConfig

__all__ = ["EvalPreset", "PerImageStandardize", "RandomBorderErase", "TrainPreset"]


class PerImageStandardize(torch.nn.Module):
    """Zero mean, unit variance per image: removes exposure differences between machines."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., 1, H, W) float
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), keepdim=True)
        return (x - mean) / (std + 1e-6)


class RandomBorderErase(torch.nn.Module):
    """With probability ``p``, zero a border of ``U(0, max_fraction) x side`` pixels on all four edges.

    torchvision's ``RandomErasing`` erases a rectangle inside the image; collimation and cropping take away
    the edges (and the laterality marker and text there), which this imitates.
    """

    def __init__(self, max_fraction: float, p: float = 0.5) -> None:
        super().__init__()
        self.max_fraction, self.p = max_fraction, p

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., 1, H, W) uint8
        if torch.rand(()) >= self.p:
            return x
        m = int(torch.rand(()) * self.max_fraction * x.shape[-1])
        if m == 0:
            return x
        x = x.clone()
        x[..., :m, :] = x[..., -m:, :] = x[..., :, :m] = x[..., :, -m:] = 0
        return x


class EvalPreset:
    """uint8 -> float in [0, 1] -> normalised (dataset mean/std from train, or per image)."""

    def __init__(self, *, mean: float, std: float, normalization: str = "dataset") -> None:
        self.params = {"mean": float(mean), "std": float(std), "normalization": normalization}
        norm = PerImageStandardize() if normalization == "per_image" else v2.Normalize([mean], [std])
        self.transform = v2.Compose([v2.ToDtype(torch.float32, scale=True), norm])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x)

    def __repr__(self) -> str:
        return f"EvalPreset({self.params})"


class TrainPreset:
    """Random affine (small rotation/translation/scale), brightness/contrast, optional flip; then ``EvalPreset``."""

    def __init__(self, *, mean: float, std: float, normalization: str = "dataset", augment: AugmentConfig) -> None:
        steps: list[Any] = []
        if augment.enabled:
            # Geometry on uint8 before the float conversion: half the memory traffic.
            steps.append(
                v2.RandomAffine(
                    degrees=augment.rotation_deg, translate=(augment.translate, augment.translate), scale=augment.scale
                )
            )
            if augment.border_erase:
                steps.append(RandomBorderErase(augment.border_erase))
            if augment.brightness or augment.contrast:
                steps.append(v2.ColorJitter(brightness=augment.brightness, contrast=augment.contrast))
            if augment.hflip:
                steps.append(v2.RandomHorizontalFlip())
        self.eval = EvalPreset(mean=mean, std=std, normalization=normalization)
        self.transform = v2.Compose([*steps, self.eval.transform])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.transform(x)
