"""Data: sources -> validated manifest -> patient-disjoint splits -> uint8 cache -> DataModule."""

from importlib import resources
from pathlib import Path

__all__ = ["sample_root"]


def sample_root() -> Path:
    """The small real Kermany sample shipped with the package (Kaggle layout; see its SAMPLE.md)."""
    return Path(str(resources.files("pneumolab") / "sample" / "chest_xray"))
