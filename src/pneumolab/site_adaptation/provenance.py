"""Site samples and the record of what a site step changed: the one place that reads and writes ``meta["site"]``."""

from __future__ import annotations

import hashlib
import shutil
from collections import Counter
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from pneumolab import __version__
from pneumolab.data.cache import load_cache, resize_square
from pneumolab.data.index import as_dataset
from pneumolab.data.manifest import CLASSES, Manifest
from pneumolab.data.readers import image_problems, read_entry
from pneumolab.data.sources import image_files
from pneumolab.errors import ImageReadError, InputError
from pneumolab.evaluation.model_card import write_model_card
from pneumolab.io import file_sha256
from pneumolab.models.checkpoint import save_model_file
from pneumolab.rundir import RunDir

__all__ = [
    "SiteSample",
    "assessable",
    "check_out",
    "describe_site",
    "digest_of",
    "load_site_sample",
    "provenance_entry",
    "rows_digest",
    "site_entry",
    "threshold_origin",
    "write_site_run",
]

# Files of the original run that describe the model itself and stay true for the new one.
_COPIED = ("config.yaml", "history.csv", "summary.json")


@dataclass
class SiteSample:
    """The site's images: rows ``rows`` of a dataset folder (labeled), or a folder of unlabeled images.

    ``images`` is ``None`` for a dataset (pixels come from its cache at any size) and holds the decoded
    ``(H, W) uint8`` images of an unlabeled folder (resized on demand).
    """

    data: str  # what the user gave (resolved)
    manifest: Manifest | None
    data_dir: Path | None  # the dataset folder (the given one, or where the source was indexed)
    rows: list[int]
    images: list[np.ndarray] | None = None
    hashes: list[str] | None = None  # sha256 of each unlabeled file
    names: list[str] | None = None  # each unlabeled file's path under the folder
    skipped: list[str] = field(default_factory=list)  # "path: reason" of each file left out (unreadable, no X-ray...)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def y(self) -> np.ndarray:
        if self.manifest is None:
            raise InputError(
                f"{self.data}: these images have no labels; calibration needs labeled images (a Kaggle "
                "folder with NORMAL/ and PNEUMONIA/ subfolders, or a CSV path,label)"
            )
        return np.array([self.manifest.records[i].target for i in self.rows])

    def counts(self) -> dict[str, int]:
        c = Counter(CLASSES[t] for t in self.y)
        return {k: c[k] for k in CLASSES}

    def pixels(self, size: int) -> np.ndarray:
        """``(N, size, size) uint8``, resized like every image of the pipeline."""
        if self.manifest is not None:
            return np.asarray(load_cache(self.manifest, size, self.data_dir / "cache")[self.rows])
        return np.stack([resize_square(self.images[i], size) for i in self.rows])

    def digest(self) -> str:
        """SHA-256 over the sorted file hashes: the same images give the same digest in any order."""
        if self.manifest is not None:
            return rows_digest(self.manifest, self.rows)
        return digest_of([self.hashes[i] for i in self.rows])

    def subset(self, rows: list[int]) -> SiteSample:
        return replace(self, rows=rows)

    def name(self, row: int) -> str:
        return self.manifest.records[row].path if self.manifest is not None else self.names[row]

    def size(self, row: int) -> tuple[int, int]:
        """The original ``(width, height)`` of a row's image."""
        if self.manifest is not None:
            return self.manifest.records[row].width, self.manifest.records[row].height
        h, w = self.images[row].shape
        return w, h


def assessable(sample: SiteSample, model: nn.Module, meta: dict[str, Any]) -> SiteSample:
    """``sample`` without the images ``predict``/``serve`` would not assess with this model (their proportions, its
    feature guard), each added to ``skipped`` with the reason: a site's threshold, temperature, BatchNorm statistics
    and prior are fitted on the kind of image the model will label, not on lateral views or foreign images."""
    from pneumolab.data.transforms import Preprocessing
    from pneumolab.evaluation.predict import pixel_logits
    from pneumolab.inference.guard import FeatureTap, guard_reasons
    from pneumolab.inference.predictor import gradcam_layer

    pre = Preprocessing.from_meta(meta)
    with FeatureTap(gradcam_layer(model, meta["model_name"])) as tap:
        pixel_logits(model, pre, sample.pixels(pre.image_size))
        feats = tap.take()  # (N, C), one row per sample row
    reasons = guard_reasons([sample.size(i) for i in sample.rows], meta.get("ood_guard"), feats)
    why = dict(zip(sample.rows, reasons, strict=True))
    left_out = [f"{sample.name(i)}: not assessed by the model ({why[i]})" for i in sample.rows if why[i]]
    if len(left_out) == len(sample.rows):
        raise InputError(
            f"{sample.data}: none of its {len(sample.rows)} images would be assessed by this model (first: "
            f"{left_out[0]}); are they frontal chest X-rays?"
        )
    return replace(sample.subset([i for i in sample.rows if not why[i]]), skipped=sample.skipped + left_out)


def digest_of(hashes: list[str]) -> str:
    h = hashlib.sha256()
    for sha in sorted(hashes):
        h.update(sha.encode())
    return h.hexdigest()


def rows_digest(manifest: Manifest, rows: list[int]) -> str:
    """:meth:`SiteSample.digest` of rows of a dataset (what ``evaluate`` compares with a model's site records)."""
    return digest_of([manifest.records[i].sha256 for i in rows])


def _unlabeled_folder(folder: Path) -> SiteSample:
    """Every image file under ``folder`` (any layout), decoded; unreadable files are skipped and named."""
    files, left_out = image_files(folder)
    images, hashes, names, skipped = [], [], [], [f"{rel}: {why}" for rel, why in left_out]
    for f in files:
        rel = f.relative_to(folder).as_posix()
        try:
            data, img = read_entry(folder, rel)
        except ImageReadError as e:
            skipped.append(f"{rel}: {e.detail}")
            continue
        # as indexing does: a photo or a blank frame would skew the statistics
        if problems := image_problems(img, aspect=False):
            skipped.append(f"{rel}: not a chest X-ray ({'; '.join(problems)})")
            continue
        images.append(img.pixels)
        hashes.append(hashlib.sha256(data).hexdigest())
        names.append(rel)
    if not images:
        raise InputError(f"{folder}: no readable images (JPEG, PNG or DICOM) found")
    return SiteSample(str(folder.resolve()), None, None, list(range(len(images))), images, hashes, names, skipped)


def load_site_sample(data: str | Path, work_dir: Path, split: str = "all", *, labels: bool = True) -> SiteSample:
    """The site's images: a dataset folder, or a Kaggle folder / CSV / npz indexed into ``work_dir``.

    With ``labels=False`` a folder (not a dataset folder) is read as it is: every image under it, in any layout
    (class folders, if any, are not read as labels; a site's export of a single class is fine).
    """
    data = Path(data)
    if not labels and data.is_dir() and not (data / "manifest.csv").is_file():
        if split != "all":
            raise InputError(f"--split {split}: {data} is a folder of unlabeled images with no splits; use all")
        return _unlabeled_folder(data)
    skipped: list[str] = []  # work_dir is temporary: the files left out travel with the sample, to be reported
    manifest, data_dir = as_dataset(data, work_dir, skipped=skipped)
    rows = list(range(len(manifest))) if split == "all" else manifest.indices(split)
    if not rows:
        present = sorted({r.split for r in manifest.records})
        raise InputError(f"{data} has no {split!r} images (it has {present}); choose --split from those or 'all'")
    return SiteSample(str(data.resolve()), manifest, data_dir, rows, skipped=skipped)


def site_entry(step: str, sample: SiteSample, model_file: Path, **details: Any) -> dict[str, Any]:
    """One provenance record: which step, on which images (a digest, count, classes), when, from which model."""
    source = {
        "data": sample.data,
        "data_sha256": sample.digest(),
        "images": len(sample.rows),
        **({"classes": sample.counts()} if step == "calibrate" else {}),
        **({"skipped_files": sample.skipped} if sample.skipped else {}),
    }
    return provenance_entry(step, source, model_file, **details)


def provenance_entry(step: str, source: dict[str, Any], model_file: Path, **details: Any) -> dict[str, Any]:
    """:func:`site_entry` for any ``source`` (``data``, ``data_sha256``, ``images``, ...): the step, when, from
    which model."""
    return {
        "step": step,
        **source,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "from_model": str(model_file.resolve()),
        "from_model_sha256": file_sha256(model_file),
        "pneumolab": __version__,
        **details,
    }


def describe_site(meta: dict[str, Any]) -> str | None:
    """One line for people: ``None`` for a model as trained, else what was done at which site."""
    steps = meta.get("site") or []
    if not steps:
        return None
    words = {"calibrate": "site-calibrated", "adapt": "site-adapted"}
    parts = []
    for s in steps:
        what = "labeled" if s["step"] == "calibrate" else "unlabeled"
        sample = f"{s['images']} {what} images of {s['data']}"
        if s.get("source") == "outcomes":
            sample = f"{s['images']} answers with confirmed outcomes ({s['data']})"
        parts.append(f"{words[s['step']]} on {sample} ({s['date'][:10]})")
    return "; ".join(parts)


def threshold_origin(meta: dict[str, Any]) -> str:
    """Where a model file's threshold was chosen, in words (for reports, cards and the service)."""
    if "threshold" not in meta:
        return "default 0.5 (the model file stores no threshold)"
    policy = meta.get("threshold_policy", "none")
    calibrated = [s for s in meta.get("site") or [] if s["step"] == "calibrate"]
    if calibrated:
        s = calibrated[-1]
        if s.get("source") == "outcomes":
            return (
                f"chosen on the site's answers with confirmed outcomes by `pneumolab calibrate --outcomes`, policy "
                f"{policy}: {s['images']} answers ({s['data']}, {s['date'][:10]})"
            )
        return (
            f"chosen on a labeled site sample by `pneumolab calibrate`, policy {policy}: {s['images']} images "
            f"of {s['data']} ({s['date'][:10]})"
        )
    views = (meta.get("operating_point") or {}).get("views")
    where = f"{views} augmented views of each validation image" if views else "the validation split"
    return f"chosen on {where} at training time, policy {policy}"


def check_out(out: Path, model_file: Path) -> None:
    if out.resolve() in (model_file.parent.resolve(), model_file.resolve()):
        raise InputError(f"--out {out} is the original run: give a new folder (the original is never overwritten)")
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} is a file: give a new folder")
    if RunDir(out).model.exists():
        raise InputError(f"--out {out} already holds a model.pt: give a new folder or delete that one")


def write_site_run(out: Path, model_file: Path, model: nn.Module, meta: dict[str, Any]) -> Path:
    """A new run folder: ``model.pt`` (weights + updated metadata), the original's description files and a card.

    ``model`` is the model as :func:`~pneumolab.models.checkpoint.load_model_file` built it; a model behind an
    autoencoder's encoder is saved without the encoder, which its metadata names.
    """
    net = model.head if meta["preprocessing"].get("latent") else model
    check_out(out, model_file)
    out.mkdir(parents=True, exist_ok=True)
    for name in _COPIED:
        if (model_file.parent / name).is_file():
            shutil.copy2(model_file.parent / name, out / name)
    save_model_file(RunDir(out).model, net, meta)
    write_model_card(out, meta, [])
    return RunDir(out).model
