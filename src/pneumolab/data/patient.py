"""Patient identifiers: the one place that knows how to get them from file names and DICOM headers."""

from __future__ import annotations

import hashlib
import re

__all__ = ["TEST_NAMESPACE", "hash_patient_id", "kermany_label_hint", "kermany_patient_id"]

# person123_bacteria_456.jpeg -> 123 ; IM-0115-0001.jpeg -> IM-0115 ; NORMAL2-IM-0427-0001.jpeg -> NORMAL2-IM-0427
_PERSON = re.compile(r"^person(\d+)_(?:bacteria|virus)_\d+", re.IGNORECASE)
_IM_BLOCK = re.compile(r"^((?:NORMAL2-)?IM-\d+)-", re.IGNORECASE)


# Kermany's numbering restarts in the official test split (train's person1 is person1_bacteria_*, test's is
# person1_virus_*; the paper states test patients are independent of training patients; Kaggle's 16-image val/
# was taken from train). So ids live in one namespace per source split: train and val share the bare id, test
# ids are prefixed. Bare train ids keep manifests (and so splits) made before this rule unchanged.
TEST_NAMESPACE = "test:"


def kermany_patient_id(filename: str, source_split: str = "train") -> str | None:
    """Patient id encoded in a Kermany/Kaggle file name, or ``None`` if the name follows no known pattern.

    Args:
        filename: the file name (a path is fine: only its last part is read).
        source_split: the split folder of the source the file sits in; ids of the ``test`` folder carry the
            ``test:`` namespace, since Kermany numbered its test patients afresh.

    Example:
        >>> kermany_patient_id("person123_bacteria_456.jpeg")
        '123'
        >>> kermany_patient_id("NORMAL2-IM-0427-0001.jpeg")
        'NORMAL2-IM-0427'
        >>> kermany_patient_id("person1_virus_11.jpeg", "test")
        'test:1'
    """
    name = filename.rsplit("/", 1)[-1]
    if m := _PERSON.match(name):
        pid = str(int(m.group(1)))
    elif m := _IM_BLOCK.match(name):
        pid = m.group(1).upper()
    else:
        return None
    return TEST_NAMESPACE + pid if source_split == "test" else pid


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
