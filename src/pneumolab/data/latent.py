"""Autoencoder codes as training data: encode every image once (float16, atomic), serve codes by split.

The code cache is keyed by the autoencoder file's hash and the manifest content, so a retrained
autoencoder or a changed dataset never reuses stale codes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
from pathlib import Path

import numpy as np
import torch

from pneumolab.config import DataConfig
from pneumolab.data.cache import load_cache
from pneumolab.data.datamodule import ChestXrayDataModule
from pneumolab.data.dataset import CachedImages
from pneumolab.data.manifest import Manifest
from pneumolab.data.transforms import Preprocessing
from pneumolab.errors import InputError
from pneumolab.generative.autoencoder import load_autoencoder
from pneumolab.io import atomic_path, file_sha256

__all__ = ["LatentDataModule", "ToFloat", "autoencoder_file", "encode_manifest", "latent_path"]

log = logging.getLogger(__name__)


def autoencoder_file(run: str | Path) -> Path:
    """An autoencoder run folder (its ``autoencoder.pt``) or the file itself."""
    run = Path(run)
    path = run / "autoencoder.pt" if run.is_dir() else run
    if not path.is_file():
        raise InputError(f"{run}: no autoencoder.pt; give a run made by `pneumolab autoencoder train`")
    return path


def latent_path(manifest: Manifest, ae_file: Path, data_dir: Path) -> Path:
    key = hashlib.sha256(ae_file.read_bytes() + manifest.content_hash().encode()).hexdigest()[:16]
    return Path(data_dir) / "latents" / f"codes_{key}.npy"


@torch.no_grad()
def encode_manifest(data_dir: str | Path, ae_run: str | Path, *, batch_size: int = 64) -> Path:
    """Encode every image of a dataset folder with an autoencoder; returns the ``(N, C, h, w) float16`` file."""
    data_dir, ae_file = Path(data_dir), autoencoder_file(ae_run)
    manifest = Manifest.load(data_dir)
    path = latent_path(manifest, ae_file, data_dir)
    if path.exists():
        return path
    ae, meta = load_autoencoder(ae_file)
    pre = Preprocessing.from_meta(meta)
    images = load_cache(manifest, pre.image_size, data_dir / "cache")
    tf = pre.transform
    shape = ae.code_shape(pre.image_size)
    with atomic_path(path, suffix=".npy") as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(len(manifest), *shape))
        for start in range(0, len(manifest), batch_size):
            x = tf(torch.from_numpy(np.array(images[start : start + batch_size]))[:, None])  # (B, 1, S, S)
            out[start : start + batch_size] = ae.encoder(x).numpy().astype(np.float16)  # (B, C, h, w)
        out.flush()
        del out
    log.info("encoded %d images to %s codes in %s", len(manifest), "x".join(map(str, shape)), path)
    return path


class ToFloat:
    """float16 code -> float32 tensor (a picklable transform for loader workers)."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x.float()


class LatentDataModule(ChestXrayDataModule):
    """Like :class:`ChestXrayDataModule`, but items are autoencoder codes ``(C, h, w)`` (no augmentation:
    the codes are fixed once encoded). Synthetic sets are not supported here."""

    def __init__(self, config: DataConfig, ae_run: str | Path) -> None:
        super().__init__(config)
        self.ae_file = autoencoder_file(ae_run)
        _, self.ae_meta = load_autoencoder(self.ae_file)

    def prepare_data(self) -> None:
        encode_manifest(self.config.data_dir, self.ae_file)

    def setup(self, stage: str | None = None) -> None:
        if self.datasets:
            return
        if self.config.synthetic:
            raise InputError("latent training does not take synthetic sets; encode them into the dataset instead")
        manifest = Manifest.load(self.config.data_dir)
        if not manifest.indices("val"):
            raise InputError(f"{self.config.data_dir} has no validation split: run `pneumolab data split` first")
        codes = np.load(encode_manifest(self.config.data_dir, self.ae_file), mmap_mode="r")

        def subset(split: str, source: str | None = None) -> CachedImages:
            idx = manifest.indices(split, source)
            return CachedImages(codes, idx, [manifest.records[i].target for i in idx], ToFloat())

        self.datasets = {"train": subset("train", "real"), "val": subset("val")}
        if manifest.indices("test"):
            self.datasets["test"] = subset("test")
        self.code_shape = list(codes.shape[1:])

    def preprocessing(self) -> Preprocessing:
        pre = Preprocessing.from_meta(self.ae_meta)  # inference starts from pixels, as the autoencoder did
        sha = file_sha256(self.ae_file)
        latent = {
            "autoencoder": str(self.ae_file.resolve()),
            "sha256": sha,
            "shape": self.code_shape,
            "channels": list(self.ae_meta["channels"]),  # rebuilds the encoder from a model file alone
        }
        return dataclasses.replace(pre, input_shape=tuple(self.code_shape), latent=latent)
