"""The layout of a run folder, in one place: what every stage writes where.

    RUN/config.yaml         resolved config (what ``--resume`` continues)
    RUN/checkpoints/        last.ckpt (resume), best.ckpt (slimmed, the best validation epoch)
    RUN/history.csv         one row per epoch;  RUN/tensorboard/  TensorBoard events
    RUN/model.pt            self-describing model file;  RUN/model.onnx  its ONNX export (``pneumolab export``)
    RUN/summary.json        the run's result
    RUN/val_logits.npz      the model's validation logits, written once (its operating point came from them)
    RUN/MODEL_CARD.md       intended use, data, metrics
    RUN/eval/DATA-SPLIT/    ``pneumolab evaluate``;  RUN/robustness/DATA-SPLIT/  ``pneumolab robustness``

``DATA`` is the dataset folder's name plus a short hash of its full path, so two datasets that are both
called ``data`` never share (and overwrite) an evaluation folder.
"""

from __future__ import annotations

import csv
import hashlib
from dataclasses import dataclass
from pathlib import Path

from pneumolab.errors import InputError

__all__ = ["RunDir", "data_key", "read_history"]


def data_key(data: str | Path) -> str:
    """``NAME-HASH6`` of a dataset path: readable, and distinct for different folders with the same name."""
    resolved = Path(data).resolve()
    return f"{resolved.name}-{hashlib.sha256(str(resolved).encode()).hexdigest()[:6]}"


@dataclass(frozen=True)
class RunDir:
    """A run folder (``path``); :meth:`of` also accepts a model file inside one."""

    path: Path

    @classmethod
    def of(cls, target: str | Path) -> RunDir:
        """The run folder of a run folder or of a model file in it."""
        target = Path(target)
        return cls(target if target.is_dir() else target.parent)

    @classmethod
    def new(cls, out_dir: str | Path, name: str) -> RunDir:
        """``out_dir/name``, or ``name-2``, ``name-3``... if taken (runs are never overwritten)."""
        for i in range(1, 10_000):
            path = Path(out_dir) / (name if i == 1 else f"{name}-{i}")
            if not path.exists():
                return cls(path)
        raise InputError(f"{out_dir}: too many runs named {name!r}")

    @property
    def config(self) -> Path:
        return self.path / "config.yaml"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def last_checkpoint(self) -> Path:
        return self.checkpoints / "last.ckpt"

    @property
    def history(self) -> Path:
        return self.path / "history.csv"

    @property
    def tensorboard(self) -> Path:
        return self.path / "tensorboard"

    @property
    def model(self) -> Path:
        return self.path / "model.pt"

    @property
    def onnx(self) -> Path:
        """Where ``pneumolab export`` writes by convention, and what ``--backend onnx`` loads from a run folder."""
        return self.path / "model.onnx"

    @property
    def summary(self) -> Path:
        return self.path / "summary.json"

    @property
    def val_logits(self) -> Path:
        return self.path / "val_logits.npz"

    def eval_dir(self, data: str | Path, split: str) -> Path:
        """Where ``pneumolab evaluate`` writes this run's result on ``split`` of ``data`` by default."""
        return self.path / "eval" / f"{data_key(data)}-{split}"

    def robustness_dir(self, data: str | Path, split: str) -> Path:
        """Where ``pneumolab robustness`` writes this run's result on ``split`` of ``data`` by default."""
        return self.path / "robustness" / f"{data_key(data)}-{split}"


def read_history(path: str | Path) -> list[dict[str, float]]:
    """Rows of a ``history.csv`` as floats (empty list if there is none)."""
    path = Path(path)
    if not path.is_file():
        return []
    with path.open(newline="") as f:
        return [{k: float(v) for k, v in row.items() if v not in ("", None)} for row in csv.DictReader(f)]
