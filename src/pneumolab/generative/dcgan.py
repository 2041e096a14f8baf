"""The study's DCGAN (Radford et al. 2016), one per class, and synthetic sets with provenance.

Generator: noise ``(B, 100, 1, 1)`` -> ``ConvTranspose2d`` stack (BatchNorm + ReLU on every layer but
the last) -> ``Tanh`` -> ``(B, 1, 64, 64)`` (or 128). Discriminator: ``(B, 1, 64, 64)`` -> ``Conv2d``
stack (LeakyReLU only on the first layer, BatchNorm + LeakyReLU on the middle ones, none on the last)
-> flatten -> ``Sigmoid`` probability. Weights start from N(0, 0.02) as DCGAN prescribes.
"""

from __future__ import annotations

import hashlib
import io
import itertools
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch import nn

from pneumolab import __version__
from pneumolab.errors import InputError
from pneumolab.io import atomic_path, atomic_write_json

__all__ = ["NZ", "Discriminator", "Generator", "init_weights", "load_generator", "sample_set", "save_generator"]

NZ = 100
FORMAT = "pneumolab.generator/1"


def _depth(size: int) -> int:
    if size not in (64, 128):
        raise InputError(f"DCGAN image size {size}: choose 64 (the study's) or 128")
    return 4 if size == 64 else 5  # stride-2 stages between 4x4 and the output


def init_weights(m: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), BatchNorm weights N(1, 0.02) and zero bias."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    elif isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """``(B, 100, 1, 1)`` -> ``(B, 1, size, size)`` in [-1, 1]."""

    def __init__(self, size: int = 64, nz: int = NZ, ngf: int = 64) -> None:
        super().__init__()
        d = _depth(size)
        widths = [ngf * 2 ** (d - 1 - i) for i in range(d)]  # 64 px: 512, 256, 128, 64
        layers: list[nn.Module] = [
            nn.ConvTranspose2d(nz, widths[0], 4, 1, 0, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(True),
        ]  # (B, 512, 4, 4)
        for a, b in itertools.pairwise(widths):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]  # doubles H, W
        layers += [nn.ConvTranspose2d(widths[-1], 1, 4, 2, 1, bias=False), nn.Tanh()]
        self.main = nn.Sequential(*layers)
        self.size, self.nz, self.width = size, nz, ngf
        self.apply(init_weights)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.main(z)


class Discriminator(nn.Module):
    """``(B, 1, size, size)`` -> ``(B,)`` probability that the image is real."""

    def __init__(self, size: int = 64, ndf: int = 64) -> None:
        super().__init__()
        d = _depth(size)
        widths = [ndf * 2**i for i in range(d)]  # 64 px: 64, 128, 256, 512
        layers: list[nn.Module] = [nn.Conv2d(1, widths[0], 4, 2, 1, bias=False), nn.LeakyReLU(0.2, True)]
        for a, b in itertools.pairwise(widths):
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True)]
        layers += [nn.Conv2d(widths[-1], 1, 4, 1, 0, bias=False), nn.Flatten(), nn.Sigmoid()]  # (B, 1)
        self.main = nn.Sequential(*layers)
        self.apply(init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.main(x).view(-1)


def save_generator(path: str | Path, g: Generator, meta: dict[str, Any]) -> None:
    state = {k: v.detach().cpu() for k, v in g.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(
            {
                "format": FORMAT,
                "version": __version__,
                "size": g.size,
                "nz": g.nz,
                "width": g.width,
                **meta,
                "state_dict": state,
            },
            tmp,
        )


def load_generator(path: str | Path) -> tuple[Generator, dict[str, Any], str]:
    """The generator (eval mode), its metadata and the file's sha256 (for provenance)."""
    path = Path(path)
    if path.is_dir():
        path = path / "generator.pt"
    if not path.is_file():
        raise InputError(f"{path}: no generator; give a run made by `pneumolab gan train`")
    raw = path.read_bytes()
    blob = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise InputError(f"{path}: not a pneumolab generator file")
    g = Generator(blob["size"], blob["nz"], blob["width"])
    g.load_state_dict(blob["state_dict"])
    return g.eval(), {k: v for k, v in blob.items() if k != "state_dict"}, hashlib.sha256(raw).hexdigest()


@torch.no_grad()
def sample_set(generator_run: str | Path, n: int, out: str | Path, *, seed: int = 0, batch_size: int = 128) -> Path:
    """Write ``n`` synthetic PNGs of the generator's class plus ``manifest.csv``/``manifest.json`` (source
    synthetic, split train) and ``provenance.json``; the folder can then be given to ``data.synthetic``."""
    from pneumolab.data.manifest import Manifest, Record

    g, meta, sha = load_generator(generator_run)
    out = Path(out)
    label = meta["label"]
    (out / label).mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    records = []
    for start in range(0, n, batch_size):
        z = torch.randn(min(batch_size, n - start), g.nz, 1, 1, generator=gen)
        imgs = ((g(z)[:, 0] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()  # (B, S, S)
        for i, arr in enumerate(imgs):
            rel = f"{label}/synthetic_{seed}_{start + i:05d}.png"
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="PNG")
            with atomic_path(out / rel, suffix=".png") as tmp:
                tmp.write_bytes(buf.getvalue())
            records.append(
                Record(
                    rel,
                    label,
                    "",
                    "train",
                    "synthetic",
                    hashlib.sha256(buf.getvalue()).hexdigest(),
                    arr.shape[1],
                    arr.shape[0],
                    "train",
                )
            )
    provenance = {
        "generator": str(Path(generator_run).resolve()),
        "generator_sha256": sha,
        "seed": seed,
        "n": n,
        "label": label,
        "source": "synthetic",
        "image_size": g.size,
        "pneumolab": __version__,
        "trained_on": meta.get("trained_on"),
    }
    Manifest(out.resolve(), records, {"source_kind": "synthetic", "notes": [], "provenance": provenance}).save(out)
    atomic_write_json(out / "provenance.json", provenance)
    return out
