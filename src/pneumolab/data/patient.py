"""Patient identifiers: the one place that knows how to get them from file names and DICOM headers."""

from __future__ import annotations

import hashlib
import re

__all__ = ["hash_patient_id", "kermany_label_hint", "kermany_patient_id"]

# person123_bacteria_456.jpeg -> 123 ; IM-0115-0001.jpeg -> IM-0115 ; NORMAL2-IM-0427-0001.jpeg -> NORMAL2-IM-0427
_PERSON = re.compile(r"^person(\d+)_(?:bacteria|virus)_\d+", re.IGNORECASE)
_IM_BLOCK = re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE)


def kermany_patient_id(filename: str) -> str | None:
    """Patient id encoded in a Kermany/Kaggle file name, or ``None`` if the name follows no known pattern.

    Example:
        >>> kermany_patient_id("person123_bacteria_456.jpeg")
        '123'
        >>> kermany_patient_id("NORMAL2-IM-0427-0001.jpeg")
        'NORMAL2-IM-0427'
    """
    name = filename.rsplit("/", 1)[-1]
    if m := _PERSON.match(name):
        return str(int(m.group(1)))
    if m := _IM_BLOCK.match(name):
        return m.group(1).upper()
    return None


def kermany_label_hint(filename: str) -> str | None:
    """The class a Kermany file name implies (``person*_bacteria/virus`` -> PNEUMONIA, ``IM-*`` -> NORMAL)."""
    name = filename.rsplit("/", 1)[-1]
    if _PERSON.match(name):
        return "PNEUMONIA"
    if _IM_BLOCK.match(name):
        return "NORMAL"
    return None


def hash_patient_id(raw: str, salt: str) -> str:
    """Salted SHA-256 of a raw patient identifier (e.g. DICOM PatientID), 16 hex digits.

    The raw value never leaves this function; the same (raw, salt) always gives the same id, so
    images of one patient stay grouped while the identifier itself is not stored anywhere.
    """
    return hashlib.sha256(f"{salt}\x00{raw.strip()}".encode()).hexdigest()[:16]
