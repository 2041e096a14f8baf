"""The service's audit log: one JSON line per image it answered, for traceability and ``pneumolab monitor``.

``DIR/predictions-YYYY-MM-DD.jsonl`` (UTC day). A line holds when, which model file (SHA-256), the version, and
what was answered: label, probability, threshold, whether the image was assessed and why not, the guard's score;
or, for an image the service refused, the kind of problem and the HTTP status. Never the image, its file name,
DICOM header data or the client's address: the log may be kept and shared where patient data may not.

Each line is one ``write`` to a file opened with ``O_APPEND``, so the worker processes of ``serve --workers N`` can
share one file without interleaving lines (POSIX appends are atomic with respect to the file offset).
"""

from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pneumolab import __version__
from pneumolab.errors import InputError

__all__ = ["AuditLog", "now_utc"]


def now_utc() -> str:
    """The current time, ISO 8601 in UTC to the millisecond (``2026-12-06T21:30:00.123+00:00``)."""
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class AuditLog:
    """Appends records to ``folder/predictions-<UTC day>.jsonl``; the folder must be writable at start."""

    def __init__(self, folder: str | Path, model_sha256: str | None) -> None:
        self.folder = Path(folder)
        self.model_sha256 = model_sha256
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            why = f"cannot write there ({e.strerror})"
            raise InputError(f"--audit {self.folder}: {why}; give a folder this user can write") from None

    def record(self, **fields: Any) -> None:
        """Append one line: the time, the model and the version first, then ``fields``. Raises ``OSError``."""
        time = now_utc()
        line = json.dumps({"time": time, "model_sha256": self.model_sha256, "pneumolab": __version__, **fields})
        fd = os.open(self.folder / f"predictions-{time[:10]}.jsonl", os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
