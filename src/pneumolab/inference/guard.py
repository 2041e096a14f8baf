"""Is this a chest X-ray? The checks an image must pass before it gets a label.

Cheapest first:

1. the reader refuses DICOMs that are not a single-frame chest radiograph (``data/readers.py``);
2. :func:`image_problems` (``data/readers.py``; indexing applies all but the aspect check, so no such image is
   trained or scored on): blank or nearly uniform images, colour images (photos, screenshots, colour maps),
   extreme aspect ratios (ECG strips, panoramas);
3. the model's own **feature guard**: the Mahalanobis distance (Lee et al., NeurIPS 2018) of the globally
   pooled last feature map (the Grad-CAM layer, ``(B, C)``) to the nearest class mean of the training X-rays,
   with one shared covariance (Ledoit-Wolf shrinkage: C is up to 1,024 for a few thousand images). Fitted
   when training ends, stored in ``model.pt`` (``meta["ood_guard"]``), so every model carries its guard.

The autoencoder's guard (``--ood``) can be added on top. An image flagged by any check is "not assessed":
no label, no probability, no heat map.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from pneumolab.data.readers import aspect_problem, image_problems

if TYPE_CHECKING:  # the service imports this module; keep its imports light
    from pneumolab.data.transforms import Preprocessing

__all__ = [
    "OOD_REASON",
    "FeatureTap",
    "feature_scores",
    "fit_feature_guard",
    "fit_model_guard",
    "guard_reasons",
    "image_problems",
]

OOD_REASON = "its features are unlike the training X-rays' (out of distribution)"


class FeatureTap:
    """Keeps the globally pooled output ``(B, C)`` of ``layer`` from every forward pass (a forward hook)."""

    def __init__(self, layer: nn.Module) -> None:
        self.batches: list[torch.Tensor] = []
        self.handle = layer.register_forward_hook(self._keep)

    def _keep(self, module: nn.Module, inputs: Any, output: torch.Tensor) -> None:
        self.batches.append(output.detach().float().mean(dim=(2, 3)))  # (B, C, h, w) -> (B, C)

    def take(self) -> torch.Tensor:
        """The features seen since the last call, ``(N, C)``."""
        out, self.batches = torch.cat(self.batches), []
        return out

    def close(self) -> None:
        self.handle.remove()

    def __enter__(self) -> FeatureTap:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _distances(feats: np.ndarray, means: np.ndarray, precision: np.ndarray) -> np.ndarray:
    """Squared Mahalanobis distance of each row of ``feats`` (N, C) to its nearest class mean (K, C): (N,)."""
    diff = feats[:, None, :] - means[None]  # (N, K, C)
    return ((diff @ precision) * diff).sum(axis=2).min(axis=1)  # a BLAS matmul: C is up to 1,024


def fit_feature_guard(
    train_feats: torch.Tensor, train_targets: np.ndarray, val_feats: torch.Tensor, percentile: float = 99.5
) -> dict[str, Any]:
    """Class means and shared precision on the training X-rays' features ``(N, C)``; the threshold is the
    ``percentile`` of the *validation* images' distances (images the network never trained on: the training
    images sit closer to their means than any new X-ray would)."""
    from sklearn.covariance import LedoitWolf

    x = train_feats.double().numpy()
    classes = np.unique(train_targets)
    means = np.stack([x[train_targets == k].mean(0) for k in classes])  # (K, C)
    centred = x - means[np.searchsorted(classes, train_targets)]
    precision = LedoitWolf(assume_centered=True).fit(centred).precision_
    val = _distances(val_feats.double().numpy(), means, precision)
    return {
        "kind": "mahalanobis",
        "fitted_on": "train",
        "threshold_split": "val",
        "percentile": percentile,
        "threshold": float(np.percentile(val, percentile)),
        "means": torch.from_numpy(means),
        "precision": torch.from_numpy(precision),
    }


def feature_scores(guard: dict[str, Any], feats: torch.Tensor) -> np.ndarray:
    """Squared Mahalanobis distances ``(N,)`` of features ``(N, C)``; above ``guard["threshold"]`` = flagged."""
    return _distances(feats.double().numpy(), guard["means"].double().numpy(), guard["precision"].double().numpy())


def guard_reasons(sizes: list[tuple[int, int]], guard: dict[str, Any] | None, feats: torch.Tensor | None) -> list[str]:
    """Why ``predict``/``serve`` would not assess each image, from its original ``(width, height)`` and its pooled
    features ``(N, C)`` (``""``: it would), for images that passed indexing (which refuses blank and colour ones)."""
    far = feature_scores(guard, feats) > guard["threshold"] if guard is not None else np.zeros(len(sizes), bool)
    return [
        "; ".join(filter(None, [aspect_problem(w, h), OOD_REASON if f else None]))
        for (w, h), f in zip(sizes, far, strict=True)
    ]


def fit_model_guard(net: nn.Module, model_name: str, preprocessing: Preprocessing, data_dir: Path) -> dict[str, Any]:
    """The feature guard of a trained ``net`` (taking pixels): fitted on the training split of ``data_dir`` as
    the model sees it at inference (no augmentation), thresholded on its validation split."""
    # Imported here: the service imports this module, and these pull in the training stack (Lightning).
    from pneumolab.data.cache import load_cache
    from pneumolab.data.manifest import Manifest
    from pneumolab.evaluation.predict import pixel_logits
    from pneumolab.inference.predictor import gradcam_layer

    manifest = Manifest.load(data_dir)
    train_rows, val_rows = manifest.indices("train"), manifest.indices("val")
    images = load_cache(manifest, preprocessing.image_size, data_dir / "cache")  # (N, S, S) uint8
    with FeatureTap(gradcam_layer(net, model_name)) as tap:
        pixel_logits(net, preprocessing, images, train_rows)
        train_feats = tap.take()
        pixel_logits(net, preprocessing, images, val_rows)
        val_feats = tap.take()
    targets = np.array([manifest.records[i].target for i in train_rows])
    return fit_feature_guard(train_feats, targets, val_feats)
