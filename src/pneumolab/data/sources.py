"""Find the images a source holds: the Kaggle/Kermany folder layout, a MedMNIST ``.npz`` or a CSV list.

This only lists candidates (where, which label and split the source claims, which patient id the
source gives); :mod:`pneumolab.data.index` opens and checks each one.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path, PureWindowsPath

import numpy as np

from pneumolab.data.manifest import CLASSES, SPLITS, normalise_label
from pneumolab.data.patient import TEST_NAMESPACE, kermany_label_hint, kermany_patient_id
from pneumolab.data.readers import NPZ_SEP, age_in_years
from pneumolab.errors import InputError

__all__ = ["Candidate", "SourceListing", "csv_column", "has_layout", "image_files", "list_source", "read_csv_table"]

IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm", ".dicom"}


@dataclass(frozen=True)
class Candidate:
    """An image the source names. ``problem`` is set when the listing alone shows it is unusable."""

    path: str  # relative to the listing's root (or absolute for CSV rows outside it)
    label: str | None
    split: str
    patient_id: str | None  # from the source itself (file name or CSV column); DICOM ids come later
    problem: tuple[str, str] | None = None  # (kind, detail)
    age_years: float | None = None  # from a CSV's age column; a DICOM header gives it otherwise


@dataclass
class SourceListing:
    kind: str  # "kaggle" | "medmnist" | "csv"
    root: Path
    candidates: list[Candidate]
    ignored: list[str]  # "path: reason" for every file (or unlistable folder) that is not a candidate
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


# Files that operating systems and NAS boxes write beside images: thumbnails (of validation images, too: indexed
# they would leak into train), resource forks, folder settings. Never images of patients.
SYSTEM_DIRS = {"@eadir", ".thumbnails", "__macosx", ".appledouble", "$recycle.bin", ".trash", ".trashes"}
SYSTEM_FILES = {"thumbs.db", "ehthumbs.db", ".ds_store", "desktop.ini", ".directory"}
SPLIT_ALIASES = {"train": "train", "val": "val", "validation": "val", "valid": "val", "test": "test"}


def _child_dirs(folder: Path) -> dict[str, Path]:
    return {p.name.lower(): p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}


def _walk(root: Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Every file under ``root`` (symbolic links to files included, dangling ones too), and what could not be
    listed, as ``(relative path, reason)``: unreadable folders and links to folders (not followed: they could
    loop or leave the source)."""
    files: list[Path] = []
    unlisted: list[tuple[str, str]] = []

    def onerror(e: OSError) -> None:
        unlisted.append((f"{Path(e.filename).relative_to(root).as_posix()}/", f"cannot list the folder ({e.strerror})"))

    for dirpath, dirnames, filenames in os.walk(root, onerror=onerror):
        here = Path(dirpath)
        for name in dirnames:
            if (here / name).is_symlink():
                unlisted.append((f"{(here / name).relative_to(root).as_posix()}/", "a link to a folder (not followed)"))
        dirnames.sort()
        files.extend(here / name for name in sorted(filenames))
    return files, unlisted


def _utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _system_file(rel: Path) -> str | None:
    """Why ``rel`` is no X-ray in any layout (a system file, thumbnail, resource fork or hidden file), or ``None``."""
    parts = rel.parts
    if any(p.lower() in SYSTEM_DIRS for p in parts[:-1]) or parts[-1].lower() in SYSTEM_FILES:
        return "a thumbnail or system file, not an X-ray"
    if parts[-1].upper() == "DICOMDIR":
        return "a DICOM media index (DICOMDIR), not an X-ray"
    if parts[-1].startswith("._"):
        return "a macOS resource fork, not an X-ray"
    if any(p.startswith(".") for p in parts):
        return "a hidden file or folder"
    return None


def _is_dicom(path: Path) -> bool:
    """A DICOM Part 10 file by its content (a 128-byte preamble, then ``DICM``), whatever its name."""
    try:
        with path.open("rb") as f:
            return f.read(132)[128:] == b"DICM"
    except OSError:
        return False


def image_files(folder: str | Path) -> tuple[list[Path], list[tuple[str, str]]]:
    """Every file under ``folder`` (any layout) that may be an X-ray, and ``(relative path, reason)`` for the rest.

    A file may be an X-ray when it has an image extension or is a DICOM file by its content (exports from a
    PACS are often named ``IM0001`` or by their UID); whether it decodes is for the reader to say. System
    files, thumbnails, resource forks, hidden files, DICOMDIR indexes and other files are left out, each with
    its reason, so that every file is either used or reported.
    """
    folder = Path(folder)
    files, skipped = _walk(folder)
    found = []
    for f in files:
        rel = f.relative_to(folder)
        why = _system_file(rel)
        if why is None and rel.suffix.lower() not in IMAGE_SUFFIXES and not _is_dicom(f):
            why = f"not an image file by its extension ({', '.join(sorted(IMAGE_SUFFIXES))}) nor a DICOM file"
        if why:
            skipped.append((rel.as_posix(), why))
        else:
            found.append(f)
    return found, skipped


def _why_not(rel: Path, layout: str, dicom: bool = False) -> tuple[str | None, str | None, str | None]:
    """``(split, label, None)`` for a file where the Kaggle layout puts images, else ``(None, None, reason)``;
    ``dicom``: the file is DICOM by its content, whatever its name (a PACS export's ``IM0001`` or UID)."""
    reason = _system_file(rel)
    if reason:
        return None, None, reason
    parts = rel.parts
    # Before the folder check: a README or MANIFEST.csv beside the split folders is not an image to move.
    if rel.suffix.lower() not in IMAGE_SUFFIXES and not dicom:
        looked = ", ".join(sorted(IMAGE_SUFFIXES))
        return None, None, f"not an image by its extension (looked for {looked}) nor a DICOM file"
    if layout == "split":
        split = SPLIT_ALIASES.get(parts[0].lower())
        if split is None and len(parts) >= 4 and parts[1].lower() in SPLIT_ALIASES:
            # Kaggle's chest_xray.zip holds the dataset twice: chest_xray/{train,test,val} and chest_xray/chest_xray/...
            why = f"in a second train/val/test tree inside {parts[0]}/ (Kaggle's archive holds the dataset twice)"
            return None, None, f"{why}: only the top one is indexed"
        if split is None or len(parts) < 3:
            where = "beside" if normalise_label(parts[0]) else "outside"
            return None, None, f"{where} the train/val/test folders: move it into SPLIT/NORMAL or SPLIT/PNEUMONIA"
        label = normalise_label(parts[1])
    else:
        split, label = "train", normalise_label(parts[0]) if len(parts) >= 2 else None
    if label is None:
        return None, None, "not inside a NORMAL or PNEUMONIA folder"
    return split, label, None


def has_layout(folder: Path) -> bool:
    """Whether ``folder`` holds split (train/val/test) or class (NORMAL/PNEUMONIA) folders: a Kaggle-layout source."""
    return bool({*SPLIT_ALIASES, *(c.lower() for c in CLASSES)} & set(_child_dirs(folder)))


def _layout_below(root: Path, depth: int = 2) -> Path | None:
    """The nearest folder under ``root`` (``depth`` levels at most) with split or class folders: where an
    archive unpacked into a folder of its own (``archive/chest_xray/train/...``) keeps the dataset."""
    level = [root]
    for _ in range(depth):
        level = [d for f in level for name, d in sorted(_child_dirs(f).items()) if name not in SYSTEM_DIRS]
        for d in level:
            if has_layout(d):
                return d
    return None


def _list_kaggle(root: Path) -> SourceListing:
    children = _child_dirs(root)
    class_names = {c.lower() for c in CLASSES}
    if set(children) & set(SPLIT_ALIASES):
        layout = "split"
    elif set(children) & class_names:  # ROOT/{NORMAL,PNEUMONIA}: one unsplit collection, treated as train
        layout = "classes"
    else:
        found = _layout_below(root)
        if found:
            raise InputError(f"{root}: no train/val/test or NORMAL/PNEUMONIA folders here, but {found} has: give that")
        raise InputError(
            f"{root}: no train/val/test or NORMAL/PNEUMONIA folders found; expected ROOT/train/NORMAL/*.jpeg "
            "(the Kaggle chest_xray layout), a pneumoniamnist .npz or a CSV file"
        )
    files, unlisted = _walk(root)
    ignored = [f"{rel}: {why}" for rel, why in unlisted]
    candidates = []
    for f in files:
        rel = f.relative_to(root)
        if not _utf8(str(rel)):  # os.walk hands undecodable bytes back as surrogates: no manifest can hold them
            shown = str(rel).encode("utf-8", "backslashreplace").decode()
            ignored.append(f"{shown}: the file name is not valid UTF-8; rename it")
            continue
        split, label, reason = _why_not(rel, layout, rel.suffix.lower() not in IMAGE_SUFFIXES and _is_dicom(f))
        if reason:
            ignored.append(f"{rel.as_posix()}: {reason}")
            continue
        hint = kermany_label_hint(f.name)
        problem = None
        if f.is_symlink() and not f.exists():
            problem = ("unreadable", "a broken symbolic link (its target does not exist)")
        elif hint is not None and hint != label:
            problem = ("label_mismatch", f"file name says {hint} but it sits in the {label} folder")
        candidates.append(Candidate(rel.as_posix(), label, split, kermany_patient_id(f.name, split), problem))
    notes = []
    aliased = sorted({n for n in children if SPLIT_ALIASES.get(n, n) != n})
    if layout == "split" and aliased:
        notes.append(f"folder(s) {', '.join(aliased)} read as the val split")
    if not any(c.patient_id for c in candidates):
        notes.append("file names carry no Kermany patient ids")
    elif any(c.patient_id and c.split == "test" for c in candidates):
        notes.append(
            "patient ids come from Kermany file names, whose numbering restarts in the test folder: test ids "
            f"carry the namespace '{TEST_NAMESPACE}' (test person1 is not train person1); train and val share one"
        )
    return SourceListing("kaggle", root, candidates, ignored, notes)


def _npy_shape(z: np.lib.npyio.NpzFile, key: str) -> tuple[int, ...]:
    """The shape of array ``key`` from its ``.npy`` header, without decompressing the array (read later, once)."""
    with z.zip.open(f"{key}.npy") as f:
        major, _ = np.lib.format.read_magic(f)
        read = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(f)
    if dtype.hasobject:  # would need pickle to load, like numpy's own refusal below
        raise ValueError("Object arrays cannot be loaded without pickle")
    return shape


def _list_npz(path: Path) -> SourceListing:
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            splits = [s for s in SPLITS if f"{s}_images" in keys]
            labels = {s: z[f"{s}_labels"].reshape(-1) if f"{s}_labels" in keys else np.zeros(0) for s in splits}
            shapes = {s: _npy_shape(z, f"{s}_images") for s in splits}
    except (OSError, ValueError, KeyError) as e:
        # numpy's own message for object arrays advises allow_pickle=True: loading pickles runs code. Never.
        why = "it holds Python objects, not plain arrays" if "pickle" in str(e) else f"{type(e).__name__}: {e}"
        raise InputError(f"{path}: not a readable MedMNIST .npz ({why}); save plain uint8/float arrays") from None
    if not splits:
        raise InputError(f"{path}: no train_images/val_images/test_images arrays; is this a MedMNIST file?")
    candidates = []
    for split in splits:
        shape, ys = shapes[split], labels[split]
        if len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)):
            expected = "(N, H, W), (N, H, W, 1) or (N, H, W, 3)"
            raise InputError(f"{path}: {split}_images has shape {shape}; expected {expected}")
        for i in range(max(shape[0], len(ys))):  # more labels than images or the reverse: each extra is reported
            label, problem = None, None
            if i >= shape[0]:
                problem = ("no_image", f"{split}_labels[{i}] has no image")
            elif i >= len(ys):
                problem = ("no_label", f"{split}_images[{i}] has no label")
            elif int(ys[i]) in (0, 1):
                label = CLASSES[int(ys[i])]
            else:
                problem = ("unknown_label", f"label {int(ys[i])} is neither 0 (normal) nor 1 (pneumonia)")
            candidates.append(Candidate(f"{path.name}{NPZ_SEP}{split}/{i}", label, split, None, problem))
    note = "MedMNIST has no patient ids: splits cannot be grouped by patient"
    return SourceListing("medmnist", path.parent, candidates, [], [note])


def read_csv_table(path: Path) -> tuple[list[str], list[dict[str, str | None]]]:
    """Header and rows of a UTF-8 CSV (Excel's "CSV UTF-8" byte-order mark included).

    The delimiter is read off the header line: a comma, or the semicolon that Excel writes where the decimal
    separator is a comma (most of Europe), or a tab.
    """
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            header = f.readline()
            f.seek(0)  # restarts the decoder, which drops the byte-order mark again
            delimiter = max(",;\t", key=header.count) if header else ","
            reader = csv.DictReader(f, delimiter=delimiter)
            return list(reader.fieldnames or []), list(reader)
    except UnicodeDecodeError as e:
        raise InputError(
            f"{path}: not UTF-8 text (byte {e.start} is {e.object[e.start : e.start + 1]!r}; Latin-1 or another "
            "legacy encoding?): save it as UTF-8 (Excel: 'CSV UTF-8') and run again"
        ) from None
    except csv.Error as e:
        raise InputError(f"{path}: not a readable CSV ({e})") from None


def _posix(rel: str) -> str:
    """A path as a CSV written on Windows gives it (``imgs\\0001.jpg``), with forward slashes.

    A backslash inside a file name is legal on Linux but no X-ray archive uses one; a Windows list does.
    """
    return PureWindowsPath(rel).as_posix() if "\\" in rel else rel


def csv_column(path: Path, column: str) -> dict[str, str]:
    """``{image path as indexed: its cell in column}`` of a CSV source (e.g. a site's ``scanner`` or ``view``
    column, for metrics per subgroup); an empty cell is ``""``.

    Raises:
        InputError: the CSV has no such column (the message lists those it has).
    """
    fields, rows = read_csv_table(path)
    cols = {c.strip().lower(): c for c in fields if c is not None}
    if "path" not in cols or column.strip().lower() not in cols or column.strip().lower() in ("path", "label"):
        others = [c for c in fields if c and c.strip().lower() not in ("path", "label")]
        raise InputError(f"{path}: no column {column!r} to group by; it has {others or 'only path and label'}")
    key, name = cols["path"], cols[column.strip().lower()]
    return {_posix((row.get(key) or "").strip()): (row.get(name) or "").strip() for row in rows}


def _list_csv(path: Path) -> SourceListing:
    fields, rows = read_csv_table(path)
    cols = {c.strip().lower(): c for c in fields if c is not None}
    if "path" not in cols or "label" not in cols:
        raise InputError(f"{path}: needs the columns path,label[,patient_id][,split][,age]; found {fields}")

    def cell(row: dict[str, str | None], name: str) -> str:
        return (row.get(cols[name]) or "").strip() if name in cols else ""  # a short row has None cells

    candidates = []
    labels_of: dict[str, set[str]] = {}
    for row in rows:
        if (rel := _posix(cell(row, "path"))) and (label := normalise_label(cell(row, "label"))):
            labels_of.setdefault(rel, set()).add(label)
    seen: set[str] = set()
    for line, row in enumerate(rows, start=2):
        rel, raw_label = _posix(cell(row, "path")), cell(row, "label")
        label = normalise_label(raw_label)
        split = (cell(row, "split") or "train").lower()
        pid = cell(row, "patient_id")
        raw_age = cell(row, "age") or cell(row, "age_years")
        age = age_in_years(raw_age) if raw_age else None
        problem = None
        if not rel:
            problem = ("missing_cell", f"line {line}: no path")
        elif label is None:
            problem = ("unknown_label", f"line {line}: label {raw_label!r} is not NORMAL/PNEUMONIA (or 0/1)")
        elif split not in SPLITS:
            problem = ("unknown_split", f"line {line}: split {split!r} is not one of {SPLITS}")
        elif len(labels_of[rel]) > 1:  # which one is right is for the source's owner to say, not for us
            problem = ("conflicting_labels", f"line {line}: {rel} is listed as both NORMAL and PNEUMONIA")
        elif raw_age and age is None:
            problem = (
                "bad_age",
                f"line {line}: age {raw_age!r} is neither years (54, 1.5) nor a DICOM age (054Y, 018M)",
            )
        elif rel in seen:
            problem = ("listed_twice", f"line {line}: {rel} is listed again (the first row is used)")
        seen.add(rel)
        split = split if split in SPLITS else "train"
        candidates.append(Candidate(rel or f"<line {line}>", label, split, pid or None, problem, age))
    return SourceListing("csv", path.parent, candidates, [], [])
