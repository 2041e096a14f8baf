"""Shared fixtures: tiny images laid out like the real sources (Kaggle folders, MedMNIST npz, CSV+DICOM)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image


def write_image(
    path: Path, seed: int, size: tuple[int, int] = (48, 40), mode: str = "L", fmt: str | None = None
) -> Path:
    """A distinct random grayscale-ish image (the seed makes it unique), saved as JPEG or PNG by suffix."""
    rng = np.random.default_rng(seed)
    w, h = size
    base = rng.integers(0, 256, (h, w), dtype=np.uint8)
    img = Image.fromarray(base, "L")
    if mode != "L":
        img = img.convert(mode)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, format=fmt or ("PNG" if path.suffix.lower() == ".png" else "JPEG"))
    return path


def tree_digest(root: Path) -> str:
    """Hash of every file's path and bytes under ``root``: proves a source was not modified."""
    h = hashlib.sha256()
    for p in sorted(root.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(root).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def make_kaggle(root: Path, n_pneu: int = 14, n_norm: int = 12, per_patient: int = 3, test: bool = True) -> Path:
    """ROOT/{train,val,test}/{NORMAL,PNEUMONIA} with Kermany file names and several images per patient."""
    seed = 0
    for p in range(n_pneu):
        for k in range(per_patient):
            kind = "bacteria" if p % 2 else "virus"
            write_image(root / "train" / "PNEUMONIA" / f"person{100 + p}_{kind}_{k}.jpeg", seed := seed + 1)
    for p in range(n_norm):
        for k in range(per_patient - 1):
            write_image(root / "train" / "NORMAL" / f"IM-{p:04d}-{k + 1:04d}.jpeg", seed := seed + 1)
    write_image(root / "val" / "NORMAL" / "NORMAL2-IM-1427-0001.jpeg", seed := seed + 1)
    write_image(root / "val" / "PNEUMONIA" / "person1946_bacteria_4874.jpeg", seed := seed + 1)
    if test:
        for p in range(3):
            write_image(root / "test" / "PNEUMONIA" / f"person{900 + p}_virus_1.jpeg", seed := seed + 1)
            write_image(root / "test" / "NORMAL" / f"NORMAL2-IM-{900 + p:04d}-0001.jpeg", seed := seed + 1)
    return root


@pytest.fixture
def kaggle_dir(tmp_path: Path) -> Path:
    return make_kaggle(tmp_path / "chest_xray")


@pytest.fixture
def prepared_dir(kaggle_dir: Path, tmp_path: Path) -> Path:
    """An indexed and split dataset folder built from ``kaggle_dir``."""
    from pneumolab.data.index import index_source
    from pneumolab.data.manifest import Manifest
    from pneumolab.data.splits import split_manifest

    out = tmp_path / "ds"
    index_source(kaggle_dir, out, workers=1)
    split_manifest(Manifest.load(out), val_fraction=0.2, seed=0).save(out)
    return out


def make_npz(path: Path, n: dict[str, int] | None = None, size: int = 28) -> Path:
    """A MedMNIST-like pneumoniamnist npz: ``{split}_images`` (N, H, W) uint8, ``{split}_labels`` (N, 1)."""
    n = n or {"train": 40, "val": 10, "test": 10}
    rng = np.random.default_rng(0)
    arrays = {}
    for split, count in n.items():
        arrays[f"{split}_images"] = rng.integers(0, 256, (count, size, size), dtype=np.uint8)
        arrays[f"{split}_labels"] = (np.arange(count) % 2).reshape(-1, 1).astype(np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)
    return path


def write_dicom(
    path: Path,
    pixels: np.ndarray,
    *,
    photometric: str = "MONOCHROME2",
    patient_id: str = "MRN-0042",
    patient_name: str = "Doe^Jane",
    window: tuple[float, float] | None = None,
    with_pixels: bool = True,
    transfer_syntax: str | None = None,
    **tags,
) -> Path:
    """Write a minimal valid DICOM (CR, explicit VR little endian) with pydicom; ``tags`` set or override
    attributes (``Modality="CT"``, ``PixelData=...``); ``transfer_syntax``: compress (RLE, JPEG 2000) or deflate."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # Computed Radiography
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.PatientID, ds.PatientName, ds.Modality = patient_id, patient_name, "CR"
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    if with_pixels:
        bits = 16 if pixels.dtype == np.uint16 else 8
        ds.Rows, ds.Columns = pixels.shape
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = bits, bits, bits - 1, 0
        if window:
            ds.WindowCenter, ds.WindowWidth = window
        ds.PixelData = pixels.tobytes()
    for k, v in tags.items():
        setattr(ds, k, v)
    if transfer_syntax == DeflatedExplicitVRLittleEndian:
        meta.TransferSyntaxUID = transfer_syntax
    elif transfer_syntax:
        ds.compress(transfer_syntax)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture(scope="session")
def sample_data(tmp_path_factory) -> Path:
    """The bundled real sample, indexed and split once per test session."""
    from pneumolab.data import sample_root
    from pneumolab.data.index import index_source
    from pneumolab.data.manifest import Manifest
    from pneumolab.data.splits import split_manifest

    out = tmp_path_factory.mktemp("sample") / "data"
    index_source(sample_root(), out, workers=1)
    split_manifest(Manifest.load(out)).save(out)
    return out


def tiny_train_args(data: Path, out: Path, *extra: str) -> list[str]:
    """CLI arguments for a seconds-long training of the small CNN at 32 px."""
    return [
        "train",
        "-c",
        "cpu/cnn_base",
        "--data",
        str(data),
        f"out_dir={out}",
        "data.image_size=32",
        "data.num_workers=0",
        "trainer.max_epochs=2",
        "trainer.precision=32",
        "trainer.channels_last=false",
        "trainer.log_every_n_steps=1",
        *extra,
    ]


@pytest.fixture(scope="session")
def ae_run(sample_data, tmp_path_factory) -> Path:
    """The study's autoencoder trained briefly on the bundled sample at 64 px (shared by several tests)."""
    from pneumolab.cli import main

    out = tmp_path_factory.mktemp("ae")
    args = [
        "autoencoder",
        "train",
        "--data",
        str(sample_data),
        f"out_dir={out}",
        "data.image_size=64",
        "data.num_workers=0",
        "trainer.max_epochs=8",
        "trainer.precision=32",
    ]
    assert main(args) == 0
    return out / "autoencoder"
