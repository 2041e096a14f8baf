"""Preprocessing and augmentation presets on ``(1, H, W) uint8`` tensors from the cache.

:class:`Preprocessing` is what a model file records about its input and the one owner of how an X-ray becomes
a network input (resize, then ``EvalPreset``): training, evaluation, the guard, GAN quality, ONNX export
and the service all go through it. ``EvalPreset`` is that deterministic normalisation;
``TrainPreset`` adds random augmentation in front of it and is used by the training loader only.
``BatchTrainPreset`` does the same augmentation to a whole ``(B, 1, H, W)`` batch at once, with random
parameters per sample, where the batch already is (the CPU main process, or the GPU).

torchvision is imported only for histogram equalisation: importing it costs ~1.5 s on a 2-core CPU (its ops pull
in torch._dynamo), which every `pneumolab predict` would otherwise pay for a division.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from pneumolab.config import AugmentConfig
from pneumolab.data.cache import resize_square
from pneumolab.data.manifest import CLASSES

__all__ = ["BatchTrainPreset", "EvalPreset", "PerImageStandardize", "Preprocessing", "Standardize", "TrainPreset"]


class PerImageStandardize(torch.nn.Module):
    """Zero mean, unit variance per image: removes exposure differences between machines."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., 1, H, W) float
        mean = x.mean(dim=(-2, -1), keepdim=True)
        std = x.std(dim=(-2, -1), keepdim=True)
        return (x - mean) / (std + 1e-6)


class Standardize(torch.nn.Module):
    """``(x - mean) / std`` with the training set's grey-level statistics (torchvision's ``Normalize`` for one
    channel)."""

    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (..., 1, H, W) float
        return (x - self.mean) / self.std


def equalize(x: torch.Tensor) -> torch.Tensor:
    """torchvision's histogram equalisation of ``(..., 1, H, W) uint8`` images, each on its own histogram."""
    from torchvision.transforms.v2.functional import equalize

    return equalize(x)


class EvalPreset:
    """uint8 -> float in [0, 1] -> normalised (dataset mean/std from train, or per image).

    ``equalize``: histogram equalisation of the uint8 image first (every image then spans the same grey-level
    distribution, whatever the exposure and post-processing), then per-image standardisation.
    """

    def __init__(self, *, mean: float, std: float, normalization: str = "dataset") -> None:
        self.params = {"mean": float(mean), "std": float(std), "normalization": normalization}
        self.equalize = normalization == "equalize"
        per_image = normalization in ("per_image", "equalize")
        self.normalize = PerImageStandardize() if per_image else Standardize(float(mean), float(std))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:  # (..., 1, H, W) uint8 -> float
        if self.equalize:
            x = equalize(x)
        return self.normalize(x.to(torch.float32).mul_(1 / 255))  # as torchvision's ToDtype(float32, scale=True)

    def __repr__(self) -> str:
        return f"EvalPreset({self.params})"


@dataclass(frozen=True)
class Preprocessing:
    """A model's input, as its model file records it (``meta["preprocessing"]``), plays the role of
    torchvision's ``weights.transforms()``: ``(H, W) uint8`` X-ray -> squashed to ``image_size`` square
    (antialiased bilinear, the cache's resize) -> ``EvalPreset`` -> ``(N, 1, S, S) float32``.

    ``input_shape`` is what the trained network itself takes (the code shape for a model on autoencoder
    codes, whose ``latent`` entry says which encoder); every consumer still feeds pixels.
    """

    image_size: int
    mean: float
    std: float
    normalization: str = "dataset"
    classes: tuple[str, ...] = tuple(CLASSES)
    input_shape: tuple[int, ...] = ()
    latent: dict[str, Any] | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if not self.input_shape:
            object.__setattr__(self, "input_shape", (1, self.image_size, self.image_size))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessing:
        """From the plain dict a model file stores (``channels`` is implied: 1)."""
        return cls(
            image_size=int(d["image_size"]),
            mean=float(d["mean"]),
            std=float(d["std"]),
            normalization=d.get("normalization", "dataset"),
            classes=tuple(d.get("classes", CLASSES)),
            input_shape=tuple(d.get("input_shape", ())),
            latent=d.get("latent"),
        )

    @classmethod
    def from_meta(cls, meta: dict[str, Any]) -> Preprocessing:
        """A model file's (or autoencoder file's) preprocessing."""
        return cls.from_dict(meta["preprocessing"])

    def to_dict(self) -> dict[str, Any]:
        """The plain dict a model file stores (round-trips through :meth:`from_dict`)."""
        d = {
            "image_size": self.image_size,
            "mean": self.mean,
            "std": self.std,
            "normalization": self.normalization,
            "channels": 1,
            "input_shape": list(self.input_shape),
            "classes": list(self.classes),
        }
        return d if self.latent is None else {**d, "latent": self.latent}

    @cached_property
    def transform(self) -> EvalPreset:
        """The normalisation, on ``(..., 1, S, S) uint8`` tensors already at ``image_size``."""
        return EvalPreset(mean=self.mean, std=self.std, normalization=self.normalization)

    def resize(self, pixels: np.ndarray) -> np.ndarray:
        """``(H, W) uint8`` -> ``(S, S) uint8``: the resize the cache applied to every training image."""
        return resize_square(pixels, self.image_size)

    def __call__(self, images: np.ndarray | torch.Tensor) -> torch.Tensor:
        """``(H, W)`` or ``(N, H, W)`` uint8 X-rays of any size -> network input ``(N, 1, S, S) float32``."""
        arr = images.numpy() if isinstance(images, torch.Tensor) else np.asarray(images)
        arr = arr[None] if arr.ndim == 2 else arr
        small = np.stack([self.resize(a) for a in arr]) if arr.shape[1:] != (self.image_size,) * 2 else arr
        return self.transform(torch.from_numpy(np.array(small))[:, None])  # a writable copy (caches are read-only)


class BatchTrainPreset(torch.nn.Module):
    """The training augmentation, the one implementation of the policy: ``(B, 1, H, W) uint8 -> float``,
    normalised, random per sample -- random affine (rotation, translation, zoom, aspect stretch), border erase (zero a
    border of ``U(0, border_erase) x side`` pixels on every edge of half the images: collimation and cropping
    take away the edges, marker and text), blur, noise, tone curve (gamma), brightness, contrast, optional flip.

    Vectorised: one affine grid and one ``grid_sample`` call for the geometry (bilinear, zero fill) and broadcast
    arithmetic for the rest, so a 64-image batch costs about one image's worth of Python. Where the batch is
    (``augment.batched``: the main process or the GPU) it runs on the whole batch; otherwise
    :class:`TrainPreset` runs it in the loader on a batch of one.
    """

    def __init__(
        self,
        *,
        mean: float,
        std: float,
        normalization: str = "dataset",
        augment: AugmentConfig,
        aspect_offsets: tuple[float, ...] | None = None,
        out_size: int | None = None,
    ) -> None:
        super().__init__()
        self.augment = augment
        self.out_size = out_size  # larger inputs are resized to it after the augmentation (augment.supersample)
        self.eval = EvalPreset(mean=mean, std=std, normalization=normalization)
        # log(width/height) added to the stretch of each class (by target index): ``augment.aspect_balance``
        self.aspect_offsets = None if aspect_offsets is None else torch.tensor(aspect_offsets)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """``x`` (B, 1, H, W) uint8 -> (B, 1, S, S) float (S: ``out_size``, else H = W); ``y`` (B,) targets, read
        only for the aspect offsets."""
        if self.eval.equalize:
            x = equalize(x)
        x = x.float().div_(255)
        if self.augment.enabled:
            x = self._augment(x, y)
        if self.out_size is not None and x.shape[-1] != self.out_size:
            # Antialiased (a triangle filter over the input pixels each output pixel covers), as a cache is made.
            # Sampling the output grid straight from the larger input costs 1/3 as much but aliases: its operating
            # point, fitted on such validation views, called 16-22% of the external normals pneumonia (ninth round).
            x = F.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear", antialias=True)
        return self.eval.normalize(x)

    def _augment(self, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        a, (b, _, _, side) = self.augment, x.shape

        def uniform(lo: float, hi: float) -> torch.Tensor:  # (B,) on x's device
            return torch.empty(b, device=x.device).uniform_(lo, hi)

        # Geometry. affine_grid wants, per sample, the map from output to input coordinates in [-1, 1]
        # (the side spans 2 units): the inverse of "scale s, rotate by angle, then shift by t".
        angle = uniform(-a.rotation_deg, a.rotation_deg) * (math.pi / 180)
        scale = uniform(*a.scale)
        shift = torch.stack([uniform(-a.translate, a.translate), uniform(-a.translate, a.translate)], 1) * 2  # (B, 2)
        # The stretch acts along the image axes (where the squash to a square did), before the rotation; drawn
        # only when asked, so that recipes without it keep their random stream.
        log_stretch = uniform(-a.aspect, a.aspect) if a.aspect else torch.zeros_like(scale)  # (B,) log(x/y)
        if self.aspect_offsets is not None and y is not None:
            log_stretch = log_stretch + self.aspect_offsets.to(x.device)[y]
        stretch = (log_stretch / 2).exp()  # x scaled by it, y by its inverse: the area is kept
        sx, sy = scale * stretch, scale / stretch
        cos, sin = torch.cos(angle), torch.sin(angle)
        inv = torch.stack([torch.stack([cos / sx, sin / sx], 1), torch.stack([-sin / sy, cos / sy], 1)], 1)  # (R S)^-1
        theta = torch.cat([inv, -(inv @ shift[:, :, None])], 2)  # (B, 2, 3)
        grid = _affine_grid(theta, *x.shape[-2:])
        x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
        if a.border_erase:  # half the images lose a border of U(0, border_erase) x side pixels on every edge
            m = (uniform(0, a.border_erase) * side).long() * (torch.rand(b, device=x.device) < 0.5)  # (B,)
            idx = torch.arange(side, device=x.device)
            keep = (idx >= m[:, None]) & (idx < side - m[:, None])  # (B, side)
            x = x * (keep[:, None, :, None] & keep[:, None, None, :])
        if a.blur:
            x = _gaussian_blur(x, uniform(0, a.blur * side / 64) * (torch.rand(b, device=x.device) < 0.5))
        if a.noise:
            x = (x + torch.randn_like(x) * uniform(0, a.noise)[:, None, None, None]).clamp_(0, 1)
        if a.gamma:
            x = x.pow(uniform(-a.gamma, a.gamma).exp()[:, None, None, None])
        if a.brightness:  # torchvision's factor: multiply by U(1 - b, 1 + b)
            x = (x * uniform(max(0.0, 1 - a.brightness), 1 + a.brightness)[:, None, None, None]).clamp_(0, 1)
        if a.contrast:  # blend with the image's mean grey level by U(1 - c, 1 + c)
            c = uniform(max(0.0, 1 - a.contrast), 1 + a.contrast)[:, None, None, None]
            x = (c * x + (1 - c) * x.mean(dim=(-2, -1), keepdim=True)).clamp_(0, 1)
        if a.hflip:
            x = torch.where((torch.rand(b, device=x.device) < 0.5)[:, None, None, None], x.flip(-1), x)
        return x


def _affine_grid(theta: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """``F.affine_grid(theta, (B, 1, height, width), align_corners=False)`` as one broadcast multiply-add: (B, 2, 3)
    -> (B, height, width, 2). The grid is affine in the pixel centres' coordinates, so it needs no (H * W, 3) matrix
    product per image; on a CPU this is ~4x faster than ``affine_grid`` (the augmentation's largest cost, issue 16)."""

    def centres(n: int) -> torch.Tensor:  # (n,) pixel centres in [-1, 1]
        return (torch.arange(n, device=theta.device, dtype=theta.dtype) * 2 + 1) / n - 1

    # grid[b, i, j, k] = theta[b, k, 0] * x[j] + theta[b, k, 1] * y[i] + theta[b, k, 2]  (j: column, i: row)
    t = theta.transpose(1, 2)[:, :, None, None, :]  # (B, 3, 1, 1, 2)
    return t[:, 0] * centres(width)[None, None, :, None] + (t[:, 1] * centres(height)[None, :, None, None] + t[:, 2])


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Blur each image of ``x`` (B, 1, H, W) by its own ``sigma`` (B,) in pixels (0: unchanged), reflect padding.

    Separable and vectorised: the batch becomes the channels of one image, blurred by a grouped convolution
    with one normalised kernel per image (B, 1, k) along each axis.
    """
    b, _, h, w = x.shape
    radius = max(1, math.ceil(3 * float(sigma.max())))
    t = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)  # (k,)
    kernel = torch.exp(-0.5 * (t / sigma.clamp_min(1e-3)[:, None]) ** 2)  # (B, k); sigma 0 -> a delta
    kernel = (kernel / kernel.sum(1, keepdim=True))[:, None]  # (B, 1, k)
    y = F.pad(x.reshape(1, b, h, w), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel[:, :, None, :], groups=b)  # along W: (1, B, H + 2r, W)
    y = F.conv2d(y, kernel[:, :, :, None], groups=b)  # along H: (1, B, H, W)
    return y.reshape(b, 1, h, w)


class TrainPreset:
    """:class:`BatchTrainPreset` per image, for loader workers: ``(1, H, W) uint8 -> (1, H, W) float``."""

    def __init__(self, *, mean: float, std: float, normalization: str = "dataset", augment: AugmentConfig) -> None:
        self.batch = BatchTrainPreset(mean=mean, std=std, normalization=normalization, augment=augment)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.batch(x[None])[0]
