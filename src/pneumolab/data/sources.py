"""Find the images a source holds: the Kaggle/Kermany folder layout, a MedMNIST ``.npz`` or a CSV list.

This only lists candidates (where, which label and split the source claims, which patient id the
source gives); :mod:`pneumolab.data.index` opens and checks each one.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pneumolab.data.manifest import CLASSES, SPLITS, normalise_label
from pneumolab.data.patient import TEST_NAMESPACE, kermany_label_hint, kermany_patient_id
from pneumolab.data.readers import NPZ_SEP
from pneumolab.errors import InputError

__all__ = ["Candidate", "SourceListing", "list_source"]

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm", ".dicom"}


@dataclass(frozen=True)
class Candidate:
    """An image the source names. ``problem`` is set when the listing alone shows it is unusable."""

    path: str  # relative to the listing's root (or absolute for CSV rows outside it)
    label: str | None
    split: str
    patient_id: str | None  # from the source itself (file name or CSV column); DICOM ids come later
    problem: tuple[str, str] | None = None  # (kind, detail)


@dataclass
class SourceListing:
    kind: str  # "kaggle" | "medmnist" | "csv"
    root: Path
    candidates: list[Candidate]
    ignored: list[str]  # files skipped because they are not images by extension (e.g. .DS_Store, notes)
    notes: list[str]


def list_source(source: str | Path) -> SourceListing:
    """List the images of ``source`` (a folder in the Kaggle layout, a ``.npz`` or a ``.csv``).

    Raises:
        InputError: the source does not exist or is none of the supported kinds.
    """
    source = Path(source)
    if not source.exists():
        raise InputError(f"{source} does not exist: give a dataset folder, a pneumoniamnist .npz or a CSV file")
    if source.is_file() and source.suffix.lower() == ".csv":
        return _list_csv(source)
    if source.is_file() and source.suffix.lower() == ".npz":
        return _list_npz(source)
    if source.is_dir():
        npz = sorted(source.glob("pneumoniamnist*.npz"))
        if _child_dirs(source) or not npz:
            return _list_kaggle(source)
        return _list_npz(npz[0])
    raise InputError(f"{source}: unsupported source; give a folder (ROOT/train/NORMAL/...), a .npz or a .csv")


def _child_dirs(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}


def _list_kaggle(root: Path) -> SourceListing:
    children = _child_dirs(root)
    class_names = {c.lower() for c in CLASSES}
    if set(children) & set(SPLITS):
        split_dirs = {s: children[s] for s in SPLITS if s in children}
    elif set(children) & class_names:  # ROOT/{NORMAL,PNEUMONIA}: one unsplit collection, treated as train
        split_dirs = {"train": root}
    else:
        raise InputError(
            f"{root}: no train/val/test or NORMAL/PNEUMONIA folders found; expected ROOT/train/NORMAL/*.jpeg "
            "(the Kaggle chest_xray layout), a pneumoniamnist .npz or a CSV file"
        )
    candidates, ignored = [], []
    for split, split_dir in split_dirs.items():
        for name, class_dir in sorted(_child_dirs(split_dir).items()):
            label = normalise_label(name)
            if label is None:
                ignored.append(f"{class_dir.relative_to(root)}/ (not a class folder: expected NORMAL or PNEUMONIA)")
                continue
            for f in sorted(class_dir.rglob("*")):
                if not f.is_file() or f.name.startswith("."):
                    continue
                rel = f.relative_to(root).as_posix()
                if f.suffix.lower() not in IMAGE_SUFFIXES:
                    ignored.append(rel)
                    continue
                hint = kermany_label_hint(f.name)
                problem = None
                if hint is not None and hint != label:
                    problem = ("label_mismatch", f"file name says {hint} but it sits in the {label} folder")
                candidates.append(Candidate(rel, label, split, kermany_patient_id(f.name, split), problem))
    notes = []
    if not any(c.patient_id for c in candidates):
        notes.append("file names carry no Kermany patient ids")
    elif any(c.patient_id and c.split == "test" for c in candidates):
        notes.append(
            "patient ids come from Kermany file names, whose numbering restarts in the test folder: test ids "
            f"carry the namespace '{TEST_NAMESPACE}' (test person1 is not train person1); train and val share one"
        )
    return SourceListing("kaggle", root, candidates, ignored, notes)


def _list_npz(path: Path) -> SourceListing:
    try:
        with np.load(path) as z:
            keys = set(z.files)
            labels = {s: z[f"{s}_labels"].reshape(-1) for s in SPLITS if f"{s}_images" in keys}
    except (OSError, ValueError, KeyError) as e:
        raise InputError(f"{path}: not a readable MedMNIST .npz ({e})") from None
    if not labels:
        raise InputError(f"{path}: no train_images/val_images/test_images arrays; is this a MedMNIST file?")
    candidates = []
    for split, ys in labels.items():
        for i, y in enumerate(ys):
            label = CLASSES[int(y)] if int(y) in (0, 1) else None
            problem = None if label else ("unknown_label", f"label {int(y)} is neither 0 (normal) nor 1 (pneumonia)")
            candidates.append(Candidate(f"{path.name}{NPZ_SEP}{split}/{i}", label, split, None, problem))
    note = "MedMNIST has no patient ids: splits cannot be grouped by patient"
    return SourceListing("medmnist", path.parent, candidates, [], [note])


def _list_csv(path: Path) -> SourceListing:
    root = path.parent
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        cols = {c.strip().lower(): c for c in reader.fieldnames or []}
        if "path" not in cols or "label" not in cols:
            raise InputError(f"{path}: needs the columns path,label[,patient_id][,split]; found {reader.fieldnames}")
        rows = list(reader)
    candidates = []
    for line, row in enumerate(rows, start=2):
        rel = row[cols["path"]].strip()
        label = normalise_label(row[cols["label"]])
        split = row[cols["split"]].strip().lower() if "split" in cols else "train"
        pid = row[cols["patient_id"]].strip() if "patient_id" in cols else ""
        problem = None
        if label is None:
            problem = ("unknown_label", f"line {line}: label {row[cols['label']]!r} is not NORMAL/PNEUMONIA (or 0/1)")
        elif split not in SPLITS:
            problem = ("unknown_split", f"line {line}: split {split!r} is not one of {SPLITS}")
        candidates.append(Candidate(rel, label, split if split in SPLITS else "train", pid or None, problem))
    return SourceListing("csv", root, candidates, [], [])
