"""The study's convolutional autoencoder, its model file, and the reconstruction-error OOD guard.

Encoder (as printed in the study): ``Conv2d(1->32, k3, s2, p1) + BN + ReLU``, then 32->64, 64->128,
128->256, each ``k3 s2 p1`` + BN + ReLU: ``(B, 1, 224, 224) -> (B, 256, 14, 14)``. The decoder is the
mirror with ``ConvTranspose2d`` back to ``(B, 1, 224, 224)``. ``channels`` changes the widths (and the
depth), e.g. ``(32, 64, 128, 16)`` -> 16x14x14 or ``(32, 64, 128, 256, 64)`` -> 64x7x7, bottlenecks that
really compress: 256x14x14 = 50,176 values = 224x224, so the study's code is not smaller than the image.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumolab import __version__
from pneumolab.errors import InputError
from pneumolab.io import atomic_path

__all__ = [
    "STUDY_CHANNELS",
    "ConvAutoencoder",
    "code_statistics",
    "fit_ood_guard",
    "load_autoencoder",
    "ood_flags",
    "reconstruction_errors",
    "save_autoencoder",
]

STUDY_CHANNELS = (32, 64, 128, 256)
FORMAT = "pneumolab.autoencoder/1"


def _down(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride=2, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _up(cin: int, cout: int, last: bool) -> nn.Sequential:
    conv = nn.ConvTranspose2d(cin, cout, 3, stride=2, padding=1, output_padding=1)  # doubles H and W
    return nn.Sequential(conv) if last else nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ConvAutoencoder(nn.Module):
    """``encoder``: (B, 1, S, S) -> (B, C, S/2^d, S/2^d); ``decoder``: back to (B, 1, S, S) (linear output:
    it reconstructs the normalised image)."""

    def __init__(self, channels: tuple[int, ...] = STUDY_CHANNELS, in_chans: int = 1) -> None:
        super().__init__()
        self.channels = tuple(channels)
        widths = [in_chans, *channels]
        self.encoder = nn.Sequential(*[_down(a, b) for a, b in itertools.pairwise(widths)])
        rev = widths[::-1]
        self.decoder = nn.Sequential(
            *[_up(a, b, last=i == len(rev) - 2) for i, (a, b) in enumerate(itertools.pairwise(rev))]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))

    def code_shape(self, size: int) -> tuple[int, int, int]:
        """(C, h, w) of the code for a ``size x size`` input."""
        side = size
        for _ in self.channels:
            side = (side + 1) // 2  # k3 s2 p1
        return self.channels[-1], side, side


def save_autoencoder(path: str | Path, model: ConvAutoencoder, meta: dict[str, Any]) -> None:
    """Write weights + metadata (preprocessing, OOD threshold, ...) atomically; loads with ``weights_only``."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(
            {"format": FORMAT, "version": __version__, "channels": list(model.channels), **meta, "state_dict": state},
            tmp,
        )


def load_autoencoder(path: str | Path) -> tuple[ConvAutoencoder, dict[str, Any]]:
    """Rebuild an autoencoder (eval mode) and its metadata from :func:`save_autoencoder`'s file."""
    path = Path(path)
    if path.is_dir():
        path = path / "autoencoder.pt"
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: no autoencoder file; give a run made by `pneumolab autoencoder train`") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise InputError(f"{path}: not a pneumolab autoencoder file")
    model = ConvAutoencoder(tuple(blob["channels"]))
    model.load_state_dict(blob["state_dict"])
    return model.eval(), {k: v for k, v in blob.items() if k != "state_dict"}


@torch.no_grad()
def reconstruction_errors(model: ConvAutoencoder, x: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Per-image mean squared reconstruction error; ``x``: (N, 1, S, S) normalised as in training."""
    model.eval()
    errs = [((model(b) - b) ** 2).mean(dim=(1, 2, 3)) for b in x.split(batch_size)]
    return torch.cat(errs).numpy() if errs else np.zeros(0)


@torch.no_grad()
def code_statistics(model: ConvAutoencoder, x: torch.Tensor, batch_size: int = 64) -> np.ndarray:
    """Per-image mean and std of every code channel: (N, 2C), a summary of what the encoder saw."""
    model.eval()
    out = []
    for b in x.split(batch_size):
        c = model.encoder(b)  # (B, C, h, w)
        out.append(torch.cat([c.mean(dim=(2, 3)), c.flatten(2).std(dim=2)], dim=1))
    return torch.cat(out).double().numpy()


def _residual(stats: np.ndarray, g: dict[str, Any]) -> np.ndarray:
    z = (stats - g["mean"].numpy()) / g["std"].numpy()
    comps = g["components"].numpy()  # (k, 2C) orthonormal rows
    return ((z - (z @ comps.T) @ comps) ** 2).sum(1)


def fit_ood_guard(model: ConvAutoencoder, x_train: torch.Tensor, percentile: float = 99.5, k: int = 8) -> dict:
    """Two scores fitted on the training split, each with its ``percentile`` as threshold:

    - reconstruction error: inputs the decoder cannot rebuild (text, saturated or inverted images);
    - distance of the code statistics from their top-``k`` principal subspace on training X-rays:
      inputs the decoder *can* rebuild because they are simple (blank, noise, smooth photos) but whose
      codes look like no chest X-ray. An input is out of distribution if either score is too high.
    """
    errors = reconstruction_errors(model, x_train)
    stats = code_statistics(model, x_train)
    mean, std = stats.mean(0), stats.std(0) + 1e-6
    _, _, vt = np.linalg.svd((stats - mean) / std, full_matrices=False)
    feats = {
        "mean": torch.from_numpy(mean),
        "std": torch.from_numpy(std),
        "components": torch.from_numpy(vt[:k].copy()),
    }
    residuals = _residual(stats, feats)
    return {
        "split": "train",
        "percentile": percentile,
        "threshold": float(np.percentile(errors, percentile)),
        "error_quantiles": {str(q): float(np.percentile(errors, q)) for q in (50, 90, 99, 99.5, 100)},
        "features": {**feats, "threshold": float(np.percentile(residuals, percentile))},
    }


def ood_flags(model: ConvAutoencoder, meta: dict[str, Any], x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """``(reconstruction errors, is_ood)`` for ``x`` (N, 1, S, S) preprocessed like the training images."""
    guard = meta["ood"]
    errors = reconstruction_errors(model, x)
    residual = _residual(code_statistics(model, x), guard["features"])
    return errors, (errors > guard["threshold"]) | (residual > guard["features"]["threshold"])
