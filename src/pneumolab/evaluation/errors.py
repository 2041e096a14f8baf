"""The errors of one evaluation, to look at: the most confident false positives and false negatives at the stored
threshold, each X-ray as the source holds it with its probability, and for a false positive the Grad-CAM map of
what raised its score (``errors.html`` beside ``metrics.json``: one self-contained page).

Numbers say how often a model is wrong at a site; the images say how (a kind of X-ray, a marker, a framing), which
is what decides between calibrating, adapting, fine-tuning and not using the model there.
"""

from __future__ import annotations

import base64
import html
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from pneumolab.data.manifest import Manifest
from pneumolab.data.readers import read_entry
from pneumolab.errors import ImageReadError
from pneumolab.inference.overlay import overlay_png
from pneumolab.io import atomic_write_text

__all__ = ["pick_errors", "write_error_gallery"]

THUMB_SIDE = 320  # px, the longer side of each image on the page


def pick_errors(prob: np.ndarray, y: np.ndarray, threshold: float) -> dict[str, list[int]]:
    """Positions (into ``prob``/``y``) of every false positive, highest probability first, and every false negative,
    lowest first, at ``threshold`` (a probability at it is a positive answer, as everywhere)."""
    fp = [int(j) for j in np.argsort(-prob, kind="stable") if y[j] == 0 and prob[j] >= threshold]
    fn = [int(j) for j in np.argsort(prob, kind="stable") if y[j] == 1 and prob[j] < threshold]
    return {"false_positives": fp, "false_negatives": fn}


def write_error_gallery(
    path: Path,
    model: nn.Module,
    meta: dict[str, Any],
    manifest: Manifest,
    rows: list[int],
    prob: np.ndarray,
    y: np.ndarray,
    assessed: np.ndarray,
    k: int,
    title: str,
) -> dict[str, dict[str, Any]]:
    """Write the page with the ``k`` most confident errors of each kind (:func:`pick_errors`) among ``rows`` of
    ``manifest`` (``prob``, ``y``, ``assessed``: per row); returns each kind's total and the paths shown."""
    from pneumolab.inference.predictor import Predictor

    predictor = Predictor(model, meta, guard=False)  # for its preprocessing and Grad-CAM only
    threshold = predictor.threshold
    sections, shown = [], {}
    for (key, errors), (heading, order, heat) in zip(
        pick_errors(prob, y, threshold).items(),
        [
            ("NORMAL called PNEUMONIA (false positives)", "most confident", True),
            ("PNEUMONIA called NORMAL (false negatives)", "least probable", False),
        ],
        strict=True,
    ):
        picked = errors[:k]
        shown[key] = {"total": len(errors), "shown": [manifest.records[rows[j]].path for j in picked]}
        pixels, problems = {}, {}  # position -> (H, W) uint8, or why it cannot be shown
        for j in picked:
            try:
                pixels[j] = read_entry(manifest.root, manifest.records[rows[j]].path)[1].pixels
            except ImageReadError as e:  # moved or deleted since it was scored
                problems[j] = e.detail
        # Grad-CAM of a negative answer points at whatever raised the score most: shown for positives only.
        heats = dict(zip(pixels, predictor.heatmaps(list(pixels.values())), strict=True)) if heat and pixels else {}
        figures = []
        for j in picked:
            caption = f"P(pneumonia) = {prob[j]:.3f}" + ("" if assessed[j] else "; the service would not assess it")
            png = overlay_png(pixels[j], heats.get(j), max_side=THUMB_SIDE) if j in pixels else None
            figures.append(
                _figure(png, manifest.records[rows[j]].path, f"{problems[j]}; {caption}" if png is None else caption)
            )
        which = f"all {len(errors)}, {order} first" if len(errors) <= k else f"the {k} {order} of {len(errors)}"
        sections.append(f"<h2>{heading}: {which if errors else 'none'}</h2><div class='grid'>{''.join(figures)}</div>")
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>Errors: "
        f"{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:1.5em}}"
        f".grid{{display:flex;flex-wrap:wrap;gap:12px}}figure{{margin:0;width:{THUMB_SIDE}px}}"
        "figcaption{font-size:12px;word-break:break-all}</style></head><body>"
        f"<h1>Errors at the stored threshold {threshold:.4f}: {html.escape(title)}</h1>"
        "<p>The X-rays as the source holds them (the model saw each squashed to a square). On a false positive the "
        "red-yellow map is Grad-CAM: where the network found most of what raised its pneumonia score. It shows "
        f"where the network looked, not why; look for what the errors share.</p>{''.join(sections)}</body></html>"
    )
    atomic_write_text(path, page)
    return shown


def _figure(png: bytes | None, name: str, caption: str) -> str:
    image = f"<img alt='' src='data:image/png;base64,{base64.b64encode(png).decode()}'>" if png else ""
    return f"<figure>{image}<figcaption>{html.escape(name)}<br>{html.escape(caption)}</figcaption></figure>"
