"""``pneumolab robustness``: a model's metrics under graded acquisition shifts of one split.

Validation is nearly saturated on this dataset while the official test split shows a shift (DESIGN.md),
so a recipe is ranked by how it holds up when the images change the way scanners and post-processing
change them: contrast, gamma, brightness, blur, noise, down/up-sampling, JPEG quality, small rotations
and crops, the width/height of the original (images squashed to a square keep it in the anatomy's proportions),
and erased borders (where laterality markers and text sit). Each shift has three severities;
metrics are at the model's stored (validation-chosen) threshold, with calibration (ECE).

Shifts act on the image at a fixed reference resolution (256 px, as a detector would see it), which is
then resized to the model's input like every image: a 2 px blur means the same for a 64 px and a 224 px
model, so recipes at different resolutions are compared on the same shifted images.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from pneumolab.data.cache import load_cache
from pneumolab.data.manifest import Manifest
from pneumolab.data.transforms import Preprocessing
from pneumolab.errors import InputError
from pneumolab.evaluation.calibration import OperatingPoint
from pneumolab.evaluation.metrics import compute_metrics
from pneumolab.evaluation.plots import plot_robustness
from pneumolab.evaluation.predict import batched_logits
from pneumolab.io import atomic_write_json
from pneumolab.models.checkpoint import load_model_file, resolve_model_file

__all__ = ["REFERENCE_SIZE", "SHIFTS", "robustness", "robustness_many"]

REFERENCE_SIZE = 256  # px: where the shifts are applied, before the model's own resize

# (N, 1, S, S) uint8 tensor, severity, generator -> (N, 1, S, S) uint8: one call shifts the whole split.
Shift = Callable[[torch.Tensor, float, torch.Generator], torch.Tensor]


def _u8(x: torch.Tensor) -> torch.Tensor:
    """float pixels in 0..255 -> uint8, rounded and clipped (in place: these batches are large)."""
    return x.round_().clamp_(0, 255).to(torch.uint8)


def _contrast(x, s, g):  # towards (s < 1) each image's mean grey level
    f = x.float()
    mean = f.mean(dim=(-2, -1), keepdim=True)
    return _u8(f.sub_(mean).mul_(s).add_(mean))


def _gamma(x, s, g):
    return TF.adjust_gamma(x, s)


def _brightness(x, s, g):  # an offset of s x full scale (a different exposure), not a factor
    return _u8(x.float().add_(255 * s))


def _blur(x, s, g):  # Gaussian, sigma s px at the reference size
    return TF.gaussian_blur(x, kernel_size=2 * math.ceil(3 * s) + 1, sigma=s)


def _noise(x, s, g):
    return _u8(torch.randn(x.shape, generator=g).mul_(255 * s).add_(x))


def _resample(x, s, g):  # down to s x the side and back up: detail lost to a low-resolution acquisition
    side = x.shape[-1]
    small = TF.resize(x, [max(8, int(side * s))] * 2, antialias=True)
    return TF.resize(small, [side, side], antialias=True)


def _jpeg(x, s, g):  # per image through PIL: torchvision's JPEG codec is deprecated (torchvision 0.29)
    def one(a: np.ndarray) -> np.ndarray:
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, format="JPEG", quality=int(s))
        return np.asarray(Image.open(buf).convert("L"))

    return torch.from_numpy(np.stack([one(a) for a in x[:, 0].numpy()]))[:, None]


def _rotate(x, s, g):
    return TF.rotate(x, s, interpolation=TF.InterpolationMode.BILINEAR)


def _crop(x, s, g):  # zoom in: the central (1 - s) of the side, resized back
    side = x.shape[-1]
    m = int(side * s / 2)
    return TF.resized_crop(x, m, m, side - 2 * m, side - 2 * m, [side, side], antialias=True)


def _aspect(x, s, g):  # the content s x as wide (as if squashed from a 1/s x wider original), centred, zero fill
    side = x.shape[-1]
    return TF.center_crop(TF.resize(x, [side, max(1, round(side * s))], antialias=True), [side, side])


def _erase_border(x, s, g):
    out = x.clone()
    m = max(1, int(x.shape[-1] * s))
    out[..., :m, :] = out[..., -m:, :] = out[..., :, :m] = out[..., :, -m:] = 0
    return out


# name -> (function, three severities from mild to strong)
SHIFTS: dict[str, tuple[Shift, tuple[float, ...]]] = {
    "contrast": (_contrast, (0.8, 0.6, 0.4)),
    "gamma": (_gamma, (0.8, 1.25, 1.6)),
    "brightness": (_brightness, (0.05, 0.1, -0.1)),
    "blur": (_blur, (0.5, 1.0, 2.0)),
    "noise": (_noise, (0.02, 0.05, 0.1)),
    "resample": (_resample, (0.75, 0.5, 0.35)),
    "jpeg": (_jpeg, (50, 25, 10)),
    "rotation": (_rotate, (5, 10, 15)),
    "crop": (_crop, (0.05, 0.1, 0.2)),
    "aspect": (_aspect, (0.9, 0.8, 1.2)),
    "erase_border": (_erase_border, (0.04, 0.08, 0.12)),
}


def _scorer(model_target: str | Path, manifest: Manifest, rows: list[int], data: Path, y: np.ndarray):
    """``(result, score)``: the model's result so far (file, threshold, clean metrics) and its scoring function,
    ``score((N, 256, 256) uint8 images) -> metrics`` at the stored threshold and temperature."""
    model_file = resolve_model_file(model_target)
    model, meta = load_model_file(model_file)
    pre = Preprocessing.from_meta(meta)
    size = pre.image_size
    op = OperatingPoint.from_meta(meta)
    threshold = op.threshold

    def score(batch: np.ndarray) -> dict[str, float]:
        x = pre(batch)  # (N, 1, S, S), resized like every image
        logits = batched_logits(model, x.split(128))
        prob = op.probability(logits).double().numpy()
        m = compute_metrics(prob, y, threshold)
        return {k: m[k] for k in ("auroc", "sensitivity", "specificity", "balanced_accuracy", "ece")}

    clean = np.array(load_cache(manifest, size, data / "cache")[rows])  # (N, S, S) uint8: what `evaluate` scores
    result = {
        "model_file": str(model_file),
        "data": str(data.resolve()),
        "threshold": threshold,
        "reference_size": REFERENCE_SIZE,
        "clean": score(clean),
        "shifts": {},
    }
    return result, score


def _summarise(result: dict[str, Any]) -> None:
    """Add the worst specificity (and where), the mean balanced accuracy and the mean ECE over all shifted sets."""
    flat = [(name, r) for name, rs in result["shifts"].items() for r in rs]
    name, worst = min(flat, key=lambda nr: nr[1]["specificity"])
    result["worst_specificity"] = worst["specificity"]
    result["worst_shift"] = {"shift": name, "severity": worst["severity"]}
    result["mean_balanced_accuracy"] = float(np.mean([r["balanced_accuracy"] for _, r in flat]))
    result["mean_ece"] = float(np.mean([r["ece"] for _, r in flat]))


@torch.no_grad()
def robustness_many(
    model_targets: list[str | Path],
    data: str | Path,
    *,
    split: str = "val",
    outs: list[str | Path | None] | None = None,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """:func:`robustness` of several models on the same shifted images (each shifted set is made once).

    ``outs``: a folder per model for ``robustness.json`` and ``robustness.png`` (``None``: not written).
    """
    data = Path(data)
    manifest = Manifest.load(data)
    rows = manifest.indices(split)
    if not rows:
        raise InputError(f"{data} has no {split!r} images")
    outs = list(outs) if outs is not None else [None] * len(model_targets)
    if len(outs) != len(model_targets):
        raise ValueError("give one output folder (or None) per model")
    y = np.array([manifest.records[i].target for i in rows])
    scorers = [_scorer(t, manifest, rows, data, y) for t in model_targets]
    # Only the shifted split at the reference size (its own cache folder, so that it never replaces a full
    # 256 px cache): caching every split at 256 px decoded the whole dataset to shift its validation part.
    part = Manifest(manifest.root, [manifest.records[i] for i in rows], manifest.meta)
    images = np.array(load_cache(part, REFERENCE_SIZE, data / "cache" / "robustness"))  # (N, 256, 256) uint8
    batch = torch.from_numpy(images)[:, None]  # (N, 1, 256, 256) uint8
    g = torch.Generator().manual_seed(seed)
    for name, (fn, severities) in SHIFTS.items():
        for sev in severities:
            shifted = fn(batch, sev, g)[:, 0].numpy()  # (N, 256, 256) uint8
            for result, score in scorers:
                result["shifts"].setdefault(name, []).append({"severity": sev, **score(shifted)})
    results = [{"split": split, **result} for result, _ in scorers]
    for result, out in zip(results, outs, strict=True):
        _summarise(result)
        if out is not None:
            atomic_write_json(Path(out) / "robustness.json", result)
            title = f"{Path(result['model_file']).parent.name}: {split} split under shifts"
            plot_robustness(result, title, Path(out) / "robustness.png")
    return results


def robustness(
    model_target: str | Path, data: str | Path, *, split: str = "val", out: str | Path | None = None, seed: int = 0
) -> dict[str, Any]:
    """Metrics of one model on ``split`` of a dataset folder, clean and under every shift and severity.

    Returns ``{"clean": metrics, "shifts": {name: [metrics + severity, ...]}, "worst_specificity",
    "worst_shift", "mean_balanced_accuracy", "mean_ece", ...}``; with ``out``, also writes
    ``robustness.json`` and the plot ``robustness.png`` there.
    """
    return robustness_many([model_target], data, split=split, outs=[out], seed=seed)[0]
