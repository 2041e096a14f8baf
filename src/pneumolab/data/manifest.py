"""The manifest: one row per image (path, label, patient_id, split, source, sha256, width, height).

A dataset directory made by ``pneumolab data index`` holds ``manifest.csv`` (the rows) and
``manifest.json`` (where the paths are rooted, what kind of source it was, notes such as "no
patient ids"). Everything downstream (splits, cache, DataModule) reads only this.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import logging
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from pneumolab.errors import InputError, LeakageError
from pneumolab.io import atomic_write_json, atomic_write_text

__all__ = ["CLASSES", "LEAKY_PROTOCOL", "SPLITS", "Manifest", "Record", "check_no_leakage", "normalise_label"]

log = logging.getLogger(__name__)

# manifest.json "protocol" of the one kind of dataset allowed to leak: the original study's image-level
# re-split with synthetic images inside (pneumolab.data.seed_protocol), kept only to measure its inflation.
LEAKY_PROTOCOL = "seed-leaky"

CLASSES = ("NORMAL", "PNEUMONIA")  # index = target; 1 = pneumonia is the positive class
SPLITS = ("train", "val", "test")
SOURCES = ("real", "synthetic")
# Ages are stored capped: over 89 an age identifies (HIPAA's Safe Harbor keeps "90 or older"), and the manifest
# and the model file may be shared where patient data may not (as the hashed patient ids are).
AGE_CAP_YEARS = 90
_LABEL_ALIASES = {"normal": "NORMAL", "0": "NORMAL", "pneumonia": "PNEUMONIA", "1": "PNEUMONIA"}


def age_span(youngest: int, oldest: int) -> str:
    """``"1-5 years"``; ``"18-90+ years"`` where the oldest reached the cap."""
    return f"{youngest}-{oldest}{'+' if oldest >= AGE_CAP_YEARS else ''} years"


def normalise_label(value: str) -> str | None:
    """``"normal"``/``"0"`` -> ``"NORMAL"``, ``"Pneumonia"``/``"1"`` -> ``"PNEUMONIA"``; anything else -> ``None``."""
    return _LABEL_ALIASES.get(str(value).strip().lower())


@dataclass(frozen=True)
class Record:
    """One image. ``path`` is relative to the manifest root; ``patient_id`` is ``""`` when unknown."""

    path: str
    label: str
    patient_id: str
    split: str
    source: str
    sha256: str
    width: int
    height: int
    source_split: str  # the split the source put it in, before ``pneumolab data split``
    age_years: float | None = None  # from the CSV or the DICOM header, capped at AGE_CAP_YEARS; None: unknown

    @property
    def target(self) -> int:
        return CLASSES.index(self.label)

    @property
    def group(self) -> str:
        """What must stay within one split: the patient, or the image itself when the patient is unknown."""
        return f"patient:{self.patient_id}" if self.patient_id else f"image:{self.sha256}"


_COLUMNS = [f.name for f in fields(Record)]


def _not_a_dataset(path: Path) -> str:
    """Why ``path`` cannot be loaded, and the command that makes a dataset folder (never one that writes into a
    source: sources are only read)."""
    from pneumolab.data.sources import has_layout  # sources imports this module

    prepare = "pneumolab data prepare SOURCE --out runs/data/NAME"
    if not path.exists():
        return f"{path} does not exist: give a dataset folder made by `{prepare}`"
    if path.name in ("manifest.csv", "manifest.json") and (path.parent / "manifest.json").is_file():
        return f"{path} is a dataset's manifest: give its folder, {path.parent}"
    looks_like_source = path.suffix.lower() in (".csv", ".npz") or (path.is_dir() and has_layout(path))
    if looks_like_source:
        return (
            f"{path} holds images but is not a prepared dataset: run `pneumolab data prepare {path} --out "
            f"runs/data/{path.stem}` once, then give runs/data/{path.stem}"
        )
    return f"{path} is not a pneumolab dataset folder (no manifest.csv/manifest.json): make one with `{prepare}`"


@dataclass
class Manifest:
    """Rows plus metadata; ``root`` is the folder the rows' paths are relative to."""

    root: Path
    records: list[Record]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.records)

    def __repr__(self) -> str:
        counts = Counter((r.split, r.label) for r in self.records)
        parts = ", ".join(f"{s}/{c}={counts[(s, c)]}" for s in SPLITS for c in CLASSES if counts[(s, c)])
        return f"Manifest({len(self)} images: {parts}; root={self.root})"

    def indices(self, split: str, source: str | None = None) -> list[int]:
        """Row indices of one split (optionally one source), in manifest order."""
        return [i for i, r in enumerate(self.records) if r.split == split and (source is None or r.source == source)]

    def content_hash(self) -> str:
        """SHA-256 over the ordered image hashes: changes iff the pixels the cache holds would change."""
        h = hashlib.sha256()
        for r in self.records:
            h.update(r.sha256.encode())
        return h.hexdigest()

    def with_splits(self, splits: list[str], **meta: Any) -> Manifest:
        """A copy with new split assignments (one per row) and extra metadata."""
        records = [replace(r, split=s) for r, s in zip(self.records, splits, strict=True)]
        return Manifest(self.root, records, {**self.meta, **meta})

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=_COLUMNS, lineterminator="\n")
        w.writeheader()
        for r in self.records:
            w.writerow(asdict(r))
        return buf.getvalue()

    def save(self, out_dir: str | Path) -> None:
        """Write ``manifest.csv`` and ``manifest.json`` into ``out_dir`` atomically, after checking for leakage."""
        out_dir = Path(out_dir)
        # A leaky dataset is announced where its numbers are made (on load), under the name it ends up with, not
        # here, under the temporary folder a pipeline step writes it to first.
        if self.meta.get("protocol") != LEAKY_PROTOCOL:
            check_no_leakage(self.records)
        atomic_write_text(out_dir / "manifest.csv", self.to_csv())
        atomic_write_json(out_dir / "manifest.json", {"root": str(self.root), **self.meta})

    @classmethod
    def load(cls, data_dir: str | Path) -> Manifest:
        """Read a dataset directory written by :meth:`save` (or ``pneumolab data index``)."""
        data_dir = Path(data_dir)
        csv_path, meta_path = data_dir / "manifest.csv", data_dir / "manifest.json"
        if not csv_path.is_file() or not meta_path.is_file():
            raise InputError(_not_a_dataset(data_dir))
        meta = json.loads(meta_path.read_text())
        root = Path(meta.pop("root"))
        with csv_path.open(newline="") as f:
            reader = csv.DictReader(f)
            missing = set(_COLUMNS) - {"age_years"} - set(reader.fieldnames or [])  # a manifest before ages
            if missing:
                raise InputError(f"{csv_path}: missing columns {sorted(missing)}; expected {_COLUMNS}")
            records = []
            for line, row in enumerate(reader, start=2):
                try:
                    records.append(_parse_row(row))
                except (ValueError, KeyError) as e:
                    raise InputError(f"{csv_path}, line {line}: {e}") from None
        _check(records, meta, where=str(data_dir))
        return cls(root, records, meta)


def _parse_row(row: dict[str, str]) -> Record:
    if row["label"] not in CLASSES:
        raise ValueError(f"label {row['label']!r} is not one of {CLASSES}")
    if row["split"] not in SPLITS or row["source"] not in SOURCES:
        raise ValueError(f"split {row['split']!r} / source {row['source']!r} not in {SPLITS} / {SOURCES}")
    age = row.get("age_years") or None
    return Record(**{**row, "width": int(row["width"]), "height": int(row["height"]), "age_years": age and float(age)})


_WARNED_LEAKY: set[str] = set()  # each leaky dataset is announced once per process, not on every load


def _check(records: list[Record], meta: dict[str, Any], where: str = "this dataset") -> None:
    if meta.get("protocol") == LEAKY_PROTOCOL:
        if where in _WARNED_LEAKY:
            return
        _WARNED_LEAKY.add(where)
        log.warning(
            "%s uses the original study's LEAKY image-level split (%s): its numbers are inflated by "
            "design and must not be reported as results",
            where,
            LEAKY_PROTOCOL,
        )
        return
    check_no_leakage(records)


def check_no_leakage(records: list[Record]) -> None:
    """Raise :class:`LeakageError` if a patient or an identical image sits in two splits, or a synthetic
    image sits outside train."""
    synthetic_out = [r.path for r in records if r.source == "synthetic" and r.split != "train"]
    if synthetic_out:
        raise LeakageError(
            f"{len(synthetic_out)} synthetic image(s) are outside the training split (e.g. {synthetic_out[0]}): "
            "synthetic images may only be added to train"
        )
    for key, what in ((lambda r: r.patient_id, "patient"), (lambda r: r.sha256, "identical image")):
        where: dict[str, set[str]] = {}
        for r in records:
            if k := key(r):
                where.setdefault(k, set()).add(r.split)
        shared = sorted(k for k, s in where.items() if len(s) > 1)
        if shared:
            involved = [r for r in records if key(r) == shared[0]]
            raise LeakageError(
                f"{len(shared)} {what}(s) appear in more than one split (e.g. {involved[0].path} in "
                f"{sorted(where[shared[0]])}): splits must be disjoint; {_leakage_advice(involved, what)}"
            )


def _leakage_advice(involved: list[Record], what: str) -> str:
    """What the user can do about one shared patient or image, depending on who put it in two splits."""
    if all(r.split == r.source_split for r in involved):  # the source's own folders or split column
        if what == "identical image":
            return "the source holds the same file in two splits: remove one copy from the source"
        return (
            "the source itself puts this patient in two splits: move the patient's images into one split folder "
            "(for a CSV, correct its split or patient_id column), then index again"
        )
    # After `data split`, which groups whole patients: the manifest was edited, or the source's val was kept.
    return "re-split from the source's splits with `pneumolab data split DIR --source-val merge`"
