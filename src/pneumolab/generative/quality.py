"""How good are the synthetic X-rays? FID/KID in the feature space of a classifier trained on real
X-rays (not ImageNet Inception: the extractor is named in every report), precision/recall of the
generator (Kynkäänniemi et al. 2019, k-NN manifolds), nearest-real-neighbour distances (memorisation)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumolab.data.transforms import Preprocessing
from pneumolab.models import get_spec
from pneumolab.models.checkpoint import load_model_file

__all__ = [
    "ClassifierFeatures",
    "knn_precision_recall",
    "nearest_real_distances",
    "score_synthetic_set",
    "synthetic_quality",
]


class ClassifierFeatures(nn.Module):
    """Penultimate features of a trained pneumolab classifier: ``(N, C, H, W)`` uint8 or [0, 1] float,
    1 or 3 channels, any size -> ``(N, d)``. Accepts what torchmetrics' FID/KID feed a custom extractor."""

    def __init__(self, model_file: str | Path) -> None:
        super().__init__()
        model, meta = load_model_file(model_file)
        net = model.head if isinstance(model, nn.Sequential) and hasattr(model, "head") else model
        path = get_spec(meta["model_name"]).classifier
        parent, _, leaf = path.rpartition(".")
        setattr(net.get_submodule(parent) if parent else net, leaf, nn.Identity())  # drop the head: features
        self.model, self.pre = model.eval(), Preprocessing.from_meta(meta)
        self.name = f"{meta['model_name']} trained on real X-rays ({Path(model_file).resolve()})"

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.uint8:  # [0, 1] floats -> the uint8 pixels training saw
            x = (x.float().clamp(0, 1) * 255).round().to(torch.uint8)
        if x.shape[1] == 3:
            x = x.float().mean(dim=1, keepdim=True).round().to(torch.uint8)
        return self.model(self.pre(x[:, 0])).flatten(1).double()  # resized and normalised as in training


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.maximum(((a**2).sum(1)[:, None] + (b**2).sum(1)[None] - 2 * a @ b.T), 0))


def knn_precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    """Precision: share of fakes inside the real k-NN manifold; recall: share of reals inside the fake one."""

    def radii(x: np.ndarray) -> np.ndarray:
        d = _dist(x, x)
        return np.sort(d, axis=1)[:, min(k, len(x) - 1)]  # column 0 is the point itself

    d_fr = _dist(fake, real)
    precision = float((d_fr <= radii(real)[None]).any(1).mean())
    recall = float((radii(fake)[None] >= d_fr.T).any(1).mean())
    return precision, recall


def nearest_real_distances(real: np.ndarray, fake: np.ndarray) -> dict[str, float]:
    """Distance of each fake to its nearest real image (in feature space), against the typical real-to-real
    nearest distance: fakes much closer than that are likely memorised copies."""
    d_fr = _dist(fake, real).min(1)
    d_rr = _dist(real, real)
    np.fill_diagonal(d_rr, np.inf)
    rr = d_rr.min(1)
    return {
        "fake_to_real_median": float(np.median(d_fr)),
        "real_to_real_median": float(np.median(rr)),
        "share_closer_than_real_5th_percentile": float((d_fr < np.percentile(rr, 5)).mean()),
    }


def synthetic_quality(real: torch.Tensor, fake: torch.Tensor, extractor: ClassifierFeatures) -> dict[str, Any]:
    """FID, KID, precision/recall and memorisation of ``fake`` against ``real``; both ``(N, 1, H, W)`` uint8."""
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    fid = FrechetInceptionDistance(feature=extractor, normalize=False)
    subset = min(len(real), len(fake), 100)
    with warnings.catch_warnings():  # its note that it keeps every feature vector: our sets are a few hundred images
        warnings.filterwarnings("ignore", message="Metric `Kernel Inception Distance` will save all extracted")
        kid = KernelInceptionDistance(feature=extractor, subset_size=subset, normalize=False)
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    kid_mean, kid_std = kid.compute()
    fr, ff = extractor(real).numpy(), extractor(fake).numpy()
    precision, recall = knn_precision_recall(fr, ff)
    return {
        "feature_extractor": extractor.name,
        "fid": float(fid.compute()),
        "kid_mean": float(kid_mean),
        "kid_std": float(kid_std),
        "precision": precision,
        "recall": recall,
        "memorisation": nearest_real_distances(fr, ff),
        "n_real": len(real),
        "n_fake": len(fake),
    }


def score_synthetic_set(synthetic: Path, data: Path, classifier: Path, n: int = 1000) -> dict[str, Any]:
    """:func:`synthetic_quality` of a set made by ``pneumolab gan sample`` against the real training images of
    its class in ``data`` (at most ``n`` of each, at the set's own size); writes ``quality.json`` into it."""
    from pneumolab.data.cache import load_cache
    from pneumolab.data.manifest import Manifest
    from pneumolab.io import atomic_write_json

    syn, real = Manifest.load(synthetic), Manifest.load(data)
    label, size = syn.records[0].label, syn.records[0].width
    fake = np.array(load_cache(syn, size, synthetic / "cache")[:n])  # (N, S, S) uint8
    # Only training images: the generator learned from them, and validation/test stay unseen by every stage.
    idx = [i for i in real.indices("train", "real") if real.records[i].label == label][:n]
    ref = np.array(load_cache(real, size, data / "cache")[idx])
    q = synthetic_quality(
        torch.from_numpy(ref)[:, None], torch.from_numpy(fake)[:, None], ClassifierFeatures(classifier)
    )
    q.update({"label": label, "reference": f"{len(idx)} real {label} training images of {data}"})
    atomic_write_json(synthetic / "quality.json", q)
    return q
