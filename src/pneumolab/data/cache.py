"""``pneumolab data cache``: decode and resize every image once into a memory-mapped uint8 array.

Decoding JPEGs every epoch starves a 2-core machine (~7 ms per large image), so each image is
decoded once, resized to a fixed square (as the original study did) and stored in
``cache/images_<size>_<key>.npy`` with shape ``(N, size, size)`` in manifest row order. The key
hashes the manifest's image hashes and the size, so a changed manifest gets a new cache while a new
split (same images) reuses the old one.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

from pneumolab.data.manifest import Manifest
from pneumolab.data.pool import process_pool
from pneumolab.data.readers import read_entry
from pneumolab.errors import InputError
from pneumolab.io import atomic_path, remove_orphans

__all__ = [
    "CACHE_VERSION",
    "build_cache",
    "cache_path",
    "load_cache",
    "prepared_sizes",
    "resize_square",
]

log = logging.getLogger(__name__)
# Bump when the decode/resize recipe changes, so old caches are not reused. 2: JPEGs decoded at full size, as
# `predict` and the service decode them (version 1 let libjpeg decode at 1/2-1/8 scale: the validation images a
# threshold was fitted on then differed from the served ones by up to 0.13 in probability).
CACHE_VERSION = 2


def resize_square(pixels: np.ndarray, size: int) -> np.ndarray:
    """``(H, W) uint8`` -> ``(size, size) uint8``, aspect ratio not kept (like the study), antialiased bilinear."""
    if pixels.shape == (size, size):
        return pixels
    return np.asarray(Image.fromarray(pixels).resize((size, size), Image.BILINEAR))


def cache_path(manifest: Manifest, size: int, cache_dir: str | Path) -> Path:
    """Where the cache for ``(manifest content, size)`` lives."""
    key = hashlib.sha256(f"v{CACHE_VERSION}|{size}|{manifest.content_hash()}".encode()).hexdigest()[:16]
    return Path(cache_dir) / f"images_{size}_{key}.npy"


def _decode(args: tuple[str, str, str, int]) -> np.ndarray:
    root, rel, sha256, size = args
    data, img = read_entry(Path(root), rel)
    if hashlib.sha256(data).hexdigest() != sha256:  # replaced or edited since `data index` checked it
        raise InputError(
            f"{Path(root) / rel}: the file changed after indexing (its SHA-256 differs from the manifest's); "
            "re-run `pneumolab data index` (or `data prepare`) on the source"
        )
    return resize_square(img.pixels, size)


def build_cache(
    manifest: Manifest,
    size: int,
    cache_dir: str | Path,
    *,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Build the cache (if it is not there yet) and return its path.

    Stale caches of the same size in ``cache_dir`` are removed once the new one is complete.
    """
    path = cache_path(manifest, size, cache_dir)
    if path.exists():
        return path
    n = len(manifest)
    jobs = [(str(manifest.root), r.path, r.sha256, size) for r in manifest.records]
    remove_orphans(Path(cache_dir))  # what a killed build left behind
    workers = workers or os.cpu_count() or 1
    with atomic_path(path, suffix=".npy") as tmp, contextlib.ExitStack() as stack:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(n, size, size))
        if workers > 1 and n >= 64:
            results = stack.enter_context(process_pool(workers)).map(_decode, jobs, chunksize=32)
        else:
            results = map(_decode, jobs)
        for i, img in enumerate(results):
            out[i] = img
            if progress:
                progress(i + 1, n)
        out.flush()
        del out
    for old in Path(cache_dir).glob(f"images_{size}_*.npy"):
        if old != path:
            old.unlink(missing_ok=True)
    return path


def load_cache(manifest: Manifest, size: int, cache_dir: str | Path, *, build: bool = True) -> np.ndarray:
    """The ``(N, size, size) uint8`` array for ``manifest``, memory-mapped read-only (built first if needed)."""
    path = cache_path(manifest, size, cache_dir)
    if not path.exists():
        if not build:
            raise FileNotFoundError(path)
        _build_announced(manifest, size, Path(cache_dir))
    arr = np.load(path, mmap_mode="r")
    if arr.shape != (len(manifest), size, size):  # pragma: no cover - only if someone edits the file by hand
        raise ValueError(f"{path} holds {arr.shape}, expected {(len(manifest), size, size)}; delete it to rebuild")
    return arr


def prepared_sizes(manifest: Manifest, cache_dir: str | Path) -> list[int]:
    """The image sizes with an up-to-date cache for ``manifest`` (what ``data prepare/cache --size`` built)."""
    sizes = (int(p.name.split("_")[1]) for p in Path(cache_dir).glob("images_*_*.npy"))
    return sorted(s for s in set(sizes) if cache_path(manifest, s, cache_dir).exists())


def _build_announced(manifest: Manifest, size: int, cache_dir: Path) -> None:
    """Build a cache a stage needs but nobody prepared, saying so and showing progress (a 5,000-image
    dataset takes minutes to decode)."""
    from tqdm import tqdm

    working_copy = manifest.meta.get("working_copy")
    if working_copy:  # a command's own copy of the user's images (evaluate, calibrate): name theirs, not ours
        log.info("decoding the %d images of %s once at %d px", len(manifest), manifest.meta["source"], size)
    else:
        have = prepared_sizes(manifest, cache_dir)
        log.info(
            "%s has no %d px cache (prepared: %s): decoding its %d images once; ahead of time: "
            "pneumolab data cache %s --size %d",
            cache_dir.parent,
            size,
            ", ".join(f"{s} px" for s in have) or "none",
            len(manifest),
            cache_dir.parent,
            size,
        )
    with tqdm(total=len(manifest), desc=f"cache {size}px", unit="img", disable=not sys.stderr.isatty()) as bar:
        path = build_cache(manifest, size, cache_dir, progress=lambda done, total: bar.update(done - bar.n))
    if not working_copy:
        log.info("cached %d images at %dx%d in %s", len(manifest), size, size, path)
