"""Atomic file writes (a reader never sees a half-written output, an interrupted write leaves none), a file's
SHA-256, and the freshness test for outputs derived from a model file.

Hand-written because the standard library has no atomic replace-with-temp-file helper, and the rules here
(temp file beside the target, same permissions as a normal write, orphans of a killed process cleaned up)
are few lines that every writer of pneumolab shares.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = ["atomic_path", "atomic_write_json", "atomic_write_text", "file_sha256", "is_fresh", "remove_orphans"]


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` only if the block succeeds.

    Example:
        >>> with atomic_path("out/manifest.csv") as tmp:   # doctest: +SKIP
        ...     tmp.write_text("...")
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    # The writer's pid is in the name, so a later run can tell a killed writer's leftovers from a live one's.
    prefix = f".{target.name}.pid{os.getpid()}."
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix + ".tmp", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        if tmp.exists():  # mkstemp makes 0600 files: give the output the mode any new file gets (the umask's)
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def remove_orphans(folder: Path) -> list[Path]:
    """Delete the temporary files of writers in ``folder`` that were killed (their process is gone)."""
    removed = []
    for tmp in folder.glob(".*.pid*.tmp") if folder.is_dir() else []:
        pid = tmp.name.rpartition(".pid")[2].partition(".")[0]
        if pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)  # the only portable way to read it is to set it; set it straight back
    os.umask(mask)
    return mask


def atomic_write_text(target: str | os.PathLike, text: str) -> None:
    """Write ``text`` to ``target`` atomically."""
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def atomic_write_json(target: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON to ``target`` atomically."""
    atomic_write_text(target, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks: a model file's identity in provenance and logs."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def is_fresh(output: str | os.PathLike, source: str | os.PathLike) -> bool:
    """Whether ``output`` exists and is not older than ``source`` (e.g. an evaluation of a re-trained model.pt)."""
    output, source = Path(output), Path(source)
    return output.is_file() and (not source.is_file() or output.stat().st_mtime >= source.stat().st_mtime)
