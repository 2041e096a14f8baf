"""A Grad-CAM heat map blended over the X-ray it explains, as PNG (the page, the API and ``predict --gradcam``)."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

__all__ = ["overlay_png"]


def overlay_png(image: np.ndarray, heat: np.ndarray | None, alpha: float = 0.45, max_side: int = 768) -> bytes:
    """The X-ray ``(H, W) uint8`` at its own aspect ratio (at most ``max_side`` px) with the Grad-CAM map
    (red-yellow) blended on top, as PNG. The model saw the image squashed to a square, so its ``(S, S)`` map
    is stretched back over the whole image: each heat pixel lands on the part of the X-ray it came from."""
    h, w = image.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    shown = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR), dtype=np.float32) / 255.0
    gray = np.repeat(shown[..., None], 3, axis=2)  # (h', w', 3)
    if heat is not None:
        stretched = Image.fromarray(heat.astype(np.float32)).resize(size, Image.BILINEAR)
        a = np.clip(np.asarray(stretched), 0, 1)[..., None]  # (h', w', 1)
        colour = np.concatenate([np.ones_like(a), a, np.zeros_like(a)], axis=2)  # red -> yellow as heat rises
        gray = (1 - alpha * a) * gray + alpha * a * colour
    buf = io.BytesIO()
    Image.fromarray((gray * 255).round().astype(np.uint8)).save(buf, format="PNG", compress_level=1)  # speed, not size
    return buf.getvalue()
