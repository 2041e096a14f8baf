"""``pneumolab adapt``: adapt a model to a site from unlabeled images (any labels are ignored).

1. **BatchNorm statistics** (AdaBN, Li et al. 2016): every BatchNorm layer's running mean and variance are
   re-estimated on the site's images, so features are normalised with the site's statistics (exposure,
   contrast, framing) instead of the training source's. Weights are unchanged.
2. **Class prior** (Saerens et al. 2002): EM on the calibrated probabilities estimates the site's pneumonia
   prevalence; the model then adds ``logit(site prior) - logit(source prior)`` to its log-odds, so a site
   with fewer pneumonia cases needs more evidence for a positive call. The threshold is unchanged.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumolab.data.manifest import Manifest
from pneumolab.data.transforms import Preprocessing
from pneumolab.errors import InputError
from pneumolab.evaluation.calibration import OperatingPoint, estimate_prior_em, score_reference
from pneumolab.evaluation.predict import pixel_logits, predict_logits
from pneumolab.models.checkpoint import load_model_file, resolve_model_file
from pneumolab.site_adaptation.provenance import (
    SiteSample,
    assessable,
    check_out,
    load_site_sample,
    site_entry,
    write_site_run,
)

__all__ = ["adapt", "adapt_model", "reestimate_batchnorm", "source_prior"]

MIN_IMAGES = 32  # fewer give BatchNorm statistics (and a prevalence) that are mostly noise
_BN = nn.modules.batchnorm._BatchNorm


@torch.no_grad()
def reestimate_batchnorm(model: nn.Module, batches: Any) -> int:
    """Replace every BatchNorm layer's running statistics by their average over ``batches`` ((B, 1, S, S) tensors).

    Returns the number of layers re-estimated. Only the statistics change; the model ends in eval mode.
    """
    layers = [m for m in model.modules() if isinstance(m, _BN)]
    momenta = [m.momentum for m in layers]
    model.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch counts equally
        m.train()  # only the BatchNorm layers: dropout and the rest stay in eval mode
    for x in batches:
        model(x)
    for m, momentum in zip(layers, momenta, strict=True):
        m.momentum = momentum
    return len(layers)


def source_prior(model: nn.Module, meta: dict[str, Any]) -> float:
    """The pneumonia prior the model's calibrated probabilities reflect on its own validation split.

    The mean calibrated validation probability, not the label share: EM run on the validation split itself
    then returns exactly this value, so a site like the source gets no shift. Older model files do not store
    it; it is then recomputed from the run's dataset when that is still where the config says.
    """
    stored = meta.get("class_prior", {}).get("mean_probability")
    if stored is not None:
        return float(stored)
    data_dir = Path(meta["config"]["data"]["data_dir"])
    if not (data_dir / "manifest.csv").is_file():
        raise InputError(
            f"this model file does not store its source class prior and its training data {data_dir} is not here; "
            "retrain it with this version of pneumolab, or pass --no-prior"
        )
    manifest = Manifest.load(data_dir)
    val = manifest.indices("val")
    logits = torch.from_numpy(predict_logits(model, Preprocessing.from_meta(meta), manifest, val, data_dir / "cache"))
    return float(OperatingPoint.from_meta({**meta, "prior_shift": 0.0}).probability(logits).mean())


def adapt_model(
    model: nn.Module,
    meta: dict[str, Any],
    sample: SiteSample,
    *,
    batchnorm: bool = True,
    prior: bool = True,
    batch_size: int = 64,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Adapt ``model`` in place to the unlabeled ``sample``; returns the new metadata and what changed."""
    if not (batchnorm or prior):
        raise InputError("nothing to adapt: --no-bn and --no-prior together leave the model as it is")
    if len(sample) < MIN_IMAGES:
        raise InputError(f"{sample.data}: {len(sample.rows)} site image(s); adaptation needs at least {MIN_IMAGES}")
    pre = Preprocessing.from_meta(meta)
    if batchnorm and pre.latent:
        raise InputError(
            "this model sits behind an autoencoder whose encoder lives in another file: its "
            "BatchNorm statistics cannot be adapted here; pass --no-bn to adapt the class prior"
        )
    if batchnorm and not any(isinstance(m, _BN) for m in model.modules()):
        raise InputError(
            f"{meta['model_name']} has no BatchNorm layers, so there are no statistics to "
            "re-estimate; pass --no-bn to adapt only the class prior"
        )
    details: dict[str, Any] = {"batchnorm": None, "prior": None}
    src_prior = source_prior(model, meta) if prior else None  # before BatchNorm changes the model
    pixels = sample.pixels(pre.image_size)  # (N, S, S) uint8; labels unused
    if batchnorm:
        n = reestimate_batchnorm(model, (pre.transform(x) for x in torch.from_numpy(pixels)[:, None].split(batch_size)))
        details["batchnorm"] = {"layers": n, "images": len(sample.rows)}
    new = dict(meta)
    logits = torch.from_numpy(pixel_logits(model, pre, pixels))  # (N, 2), after the new statistics
    if batchnorm:  # the training site's scores came from other statistics: the site's images are the reference now
        new["reference_scores"] = score_reference(logits, "site")
    if prior:
        prob = OperatingPoint.from_meta({**meta, "prior_shift": 0.0}).probability(logits).double().numpy()
        site = estimate_prior_em(prob, src_prior)
        new["prior_shift"] = OperatingPoint.prior_shift_for(site, src_prior)
        new["class_prior"] = {**meta.get("class_prior", {}), "mean_probability": src_prior}
        details["prior"] = {
            "source": src_prior,
            "site_estimate": site,
            "prior_shift": new["prior_shift"],
            "mean_probability_on_site": float(np.mean(prob)),
        }
    return new, details


def adapt(
    model_target: str | Path,
    data: str | Path,
    out: str | Path,
    *,
    batchnorm: bool = True,
    prior: bool = True,
    split: str = "all",
) -> dict[str, Any]:
    """Adapt a model to unlabeled site images and write it as a new run folder ``out``.

    Args:
        model_target: run folder or ``model.pt`` (never modified).
        data: the site's images: dataset folder, Kaggle-layout folder, CSV or npz (labels, if any, are ignored).
        out: the new run folder (must not hold a model already).
        batchnorm: re-estimate BatchNorm statistics on the site images.
        prior: estimate the site's pneumonia prevalence and shift the model's log-odds to it.
        split: which rows of ``data`` to use (``all`` by default).

    Returns:
        The provenance record written into the new model file (``meta["site"][-1]``), with ``model_file``.
    """
    model_file, out = resolve_model_file(model_target), Path(out)
    check_out(out, model_file)
    model, meta = load_model_file(model_file)
    with tempfile.TemporaryDirectory(prefix="pneumolab-site-") as tmp:  # no copy of the site's pixels is kept
        sample = assessable(load_site_sample(data, Path(tmp), split, labels=False), model, meta)
        new, details = adapt_model(model, meta, sample, batchnorm=batchnorm, prior=prior)
        entry = site_entry("adapt", sample, model_file, **details)
    new["site"] = [*meta.get("site", []), entry]
    return {**entry, "model_file": str(write_site_run(out, model_file, model, new))}
