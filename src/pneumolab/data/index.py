"""``pneumolab data index``: open every image a source lists, check it, and write the manifest.

Bad files are skipped and listed with the reason (or, with ``strict``, fail the run); the source
is only ever read. Outputs (``manifest.csv``, ``manifest.json``, ``index_report.json``,
``problems.csv``) are written atomically into the output folder.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import io
import logging
import os
import secrets
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pneumolab.data.manifest import AGE_CAP_YEARS, CLASSES, Manifest, Record
from pneumolab.data.patient import hash_patient_id
from pneumolab.data.pool import process_pool
from pneumolab.data.readers import image_problems, read_entry
from pneumolab.data.sources import Candidate, SourceListing, list_source
from pneumolab.errors import ImageReadError, InputError, LeakageError
from pneumolab.io import atomic_write_json, atomic_write_text, remove_orphans

__all__ = ["IndexResult", "Problem", "as_dataset", "index_source"]

log = logging.getLogger(__name__)
Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class Problem:
    path: str
    kind: str
    detail: str


@dataclass
class IndexResult:
    manifest: Manifest
    problems: list[Problem]
    report: dict[str, Any]


def _check(args: tuple[str, Candidate, str]) -> Record | Problem | tuple[Record, str]:
    """Worker: read, hash and fully decode one candidate (a truncated JPEG only shows when decoded).

    Returns the record, the problem, or ``(record, original_mode)`` when the image had to be converted.
    """
    root, cand, salt = args
    if cand.problem:
        return Problem(cand.path, *cand.problem)
    try:
        data, img = read_entry(Path(root), cand.path)
    except ImageReadError as e:
        return Problem(cand.path, e.kind, e.detail)
    # a photo or a blank frame: never trained or scored on as an X-ray
    if problems := image_problems(img, aspect=False):
        return Problem(cand.path, "not_a_chest_radiograph", "; ".join(problems))
    pid = cand.patient_id
    if pid is None and img.patient_key:  # raw DICOM PatientID: hashed here, so it never leaves this worker
        pid = hash_patient_id(img.patient_key, salt)
    h, w = img.pixels.shape
    age = cand.age_years if cand.age_years is not None else img.age_years  # the site's own list first
    age = None if age is None else round(min(age, AGE_CAP_YEARS), 2)
    rec = Record(
        cand.path, cand.label, pid or "", cand.split, "real", hashlib.sha256(data).hexdigest(), w, h, cand.split, age
    )
    return (rec, img.mode) if img.converted else rec


def _salt(out_dir: Path, salt: str | None) -> str:
    """The salt for DICOM patient-id hashes: given, from $PNEUMOLAB_PATIENT_SALT, or made once per output folder."""
    if salt or (salt := os.environ.get("PNEUMOLAB_PATIENT_SALT")):
        return salt
    path = out_dir / ".patient_salt"
    if not path.exists():
        atomic_write_text(path, secrets.token_hex(16))
    return path.read_text().strip()


def index_source(
    source: str | Path,
    out_dir: str | Path,
    *,
    strict: bool = False,
    salt: str | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    working_copy: bool = False,
) -> IndexResult:
    """Index and validate ``source`` into ``out_dir``.

    Args:
        source: Kaggle-layout folder, MedMNIST ``.npz`` or CSV (``path,label[,patient_id][,split][,age]``).
        out_dir: where the manifest and reports go (created; the source is never written).
        strict: fail if any file has a problem instead of skipping it.
        salt: salt for hashing DICOM PatientIDs (default: ``$PNEUMOLAB_PATIENT_SALT`` or one kept in ``out_dir``).
        workers: decoding processes (default: all cores).
        progress: called as ``progress(done, total)``.
        working_copy: the dataset is a command's own copy of a user's source (``evaluate``, ``calibrate``,
            ``adapt``), not one the user prepares: its folder is not named to them as theirs to act on.

    Raises:
        InputError: nothing usable, a single class, or (``strict``) any bad file.
        LeakageError: the same image or patient appears in two of the source's splits.
    """
    listing = list_source(source)
    out_dir = _check_out(Path(source), Path(out_dir))
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_orphans(out_dir)
    try:
        return _index(listing, source, out_dir, strict, salt, workers, progress, working_copy)
    except Exception:
        # A failed re-index must not leave the previous manifest standing as if it described the source now.
        for name in ("manifest.csv", "manifest.json"):
            (out_dir / name).unlink(missing_ok=True)
        raise


def _check_out(source: Path, out_dir: Path) -> Path:
    """The output folder, refused when it is a file or would write into the source (which is only ever read)."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(f"--out {out_dir} is a file: give a folder for the dataset (it is created if missing)")
    src, out = source.resolve(), out_dir.resolve()
    inside = out == src or (src.is_dir() and out.is_relative_to(src)) or (src.is_file() and src.parent == out)
    if inside and (src.is_dir() or src.name in ("manifest.csv", "problems.csv", "index_report.json")):
        raise InputError(
            f"--out {out_dir} is inside the source {source}: pneumolab never writes into a source; choose a folder "
            "outside it, e.g. runs/data/NAME"
        )
    return out_dir


def _index(
    listing: SourceListing,
    source: str | Path,
    out_dir: Path,
    strict: bool,
    salt: str | None,
    workers: int | None,
    progress: Progress | None,
    working_copy: bool,
) -> IndexResult:
    if not listing.candidates:
        raise InputError(
            f"{source}: no images found (looked for .jpeg/.jpg/.png/.dcm files and DICOM files by content under "
            "the class folders)"
        )
    salt = _salt(out_dir, salt)
    jobs = [(str(listing.root), c, salt) for c in listing.candidates]
    workers = workers or os.cpu_count() or 1
    records: list[Record] = []
    problems: list[Problem] = []
    converted: Counter[str] = Counter()
    with contextlib.ExitStack() as stack:
        if workers > 1 and len(jobs) >= 64:  # process start-up costs more than it saves on tiny sources
            results = stack.enter_context(process_pool(workers)).map(_check, jobs, chunksize=32)
        else:
            results = map(_check, jobs)
        for done, res in enumerate(results, start=1):
            if isinstance(res, Problem):
                problems.append(res)
            elif isinstance(res, tuple):
                records.append(res[0])
                converted[res[1]] += 1
            else:
                records.append(res)
            if progress:
                progress(done, len(jobs))

    dup_groups = defaultdict(list)
    for r in records:
        dup_groups[r.sha256].append(r)
    dups = [g for g in dup_groups.values() if len(g) > 1]
    report: dict[str, Any] = {
        "source": str(Path(source).resolve()),
        "source_kind": listing.kind,
        "images_listed": len(listing.candidates),
        "images_ok": len(records),
        "problems": dict(Counter(p.kind for p in problems)),
        "converted_to_8bit_grayscale": dict(converted),
        "duplicates_within_split": [[r.path for r in g] for g in dups if len({r.split for r in g}) == 1],
        "duplicates_across_splits": [[f"{r.split}:{r.path}" for r in g] for g in dups if len({r.split for r in g}) > 1],
        "ignored_files": listing.ignored,
        "notes": listing.notes,
    }
    atomic_write_json(out_dir / "index_report.json", report)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["path", "kind", "detail"], lineterminator="\n")
    w.writeheader()
    w.writerows(asdict(p) for p in problems)
    atomic_write_text(out_dir / "problems.csv", buf.getvalue())
    for p in problems:
        log.debug("skipped %s: %s", p.path, p.detail)

    if problems and strict:
        raise InputError(
            f"{len(problems)} bad file(s) in {source} (first: {problems[0].path}: {problems[0].detail}); "
            f"see {out_dir / 'problems.csv'}, or run without --strict to skip them"
        )
    if report["duplicates_across_splits"]:
        first = report["duplicates_across_splits"][0]
        raise LeakageError(
            f"{len(report['duplicates_across_splits'])} image(s) are byte-identical across splits "
            f"(e.g. {' = '.join(first)}): the same X-ray in two splits leaks; remove one copy from the source"
        )
    if not records:
        first = f" (first: {problems[0].path}: {problems[0].detail})" if problems else ""
        see = out_dir / "problems.csv"
        raise InputError(f"{source}: none of the {len(jobs)} images could be read{first}; see {see}")
    present = {r.label for r in records}
    if len(present) < len(CLASSES) and not working_copy:  # a site's normals alone can still be scored
        raise InputError(f"{source}: only {present.pop()} images found; a classifier needs both NORMAL and PNEUMONIA")
    records.sort(key=lambda r: (r.split, r.label, r.path))
    # The source as given (a CSV or npz file, where listing.root is its folder): the name a user knows it by.
    meta = {"source": str(Path(source).resolve()), "source_kind": listing.kind, "notes": listing.notes}
    if working_copy:
        meta["working_copy"] = True
    manifest = Manifest(listing.root.resolve(), records, meta)
    manifest.save(out_dir)
    return IndexResult(manifest, problems, report)


def as_dataset(data: str | Path, work_dir: str | Path, *, skipped: list[str] | None = None) -> tuple[Manifest, Path]:
    """A dataset folder as is, or any source (Kaggle folder, CSV, npz) indexed into ``work_dir``.

    The source's files that are left out (unreadable, not a chest radiograph...) are logged as a warning naming
    ``work_dir``'s problems.csv, or, given a ``skipped`` list (a temporary ``work_dir``), appended to it as
    ``"path: reason"`` for the caller to report.
    """
    data = Path(data)
    # A dataset's own manifest.csv is no CSV source (its paths are relative to the images' root, not to it):
    # Manifest.load refuses it and names the folder to give. A site's list that is merely called manifest.csv is read.
    own_manifest = data.name in ("manifest.csv", "manifest.json") and (data.parent / "manifest.json").is_file()
    if (data / "manifest.csv").is_file() or own_manifest:
        return Manifest.load(data), data
    result = index_source(data, work_dir, working_copy=True)
    ignored = result.report["ignored_files"]  # "path: reason" of files that are no image (Thumbs.db, a README)
    if skipped is not None:
        skipped += [f"{p.path}: {p.detail}" for p in result.problems] + ignored
        return Manifest.load(work_dir), Path(work_dir)
    if ignored:
        log.info("%d file(s) of %s are not images and were not read (e.g. %s)", len(ignored), data, ignored[0])
    if result.problems:  # every file listed is used or reported: a score over fewer images must say so
        first = result.problems[0]
        kinds = ", ".join(f"{n} {kind}" for kind, n in result.report["problems"].items())
        log.warning(
            "%d of the %d images of %s are left out (%s; first: %s: %s); the list: %s",
            len(result.problems),
            result.report["images_listed"],
            data,
            kinds,
            first.path,
            first.detail,
            Path(work_dir) / "problems.csv",
        )
    return Manifest.load(work_dir), Path(work_dir)
