"""Optional parts of pneumolab and the pip extra that installs each; the one place that knows both.

The core (data, training, evaluation, prediction) installs with ``pip install pneumolab``; the web service,
ONNX and hyper-parameter tuning bring large stacks a training machine or a notebook does not need.
"""

from __future__ import annotations

import importlib.util
import sys

from pneumolab.errors import InputError

__all__ = ["EXTRAS", "require_extra"]

# extra -> (what it enables, the modules it must make importable)
EXTRAS: dict[str, tuple[str, tuple[str, ...]]] = {
    "serve": ("the web service (`pneumolab serve`)", ("fastapi", "uvicorn")),
    "onnx": ("ONNX export and the ONNX Runtime backend", ("onnx", "onnxruntime", "onnxscript")),
    "tune": ("hyper-parameter tuning (`pneumolab tune`)", ("optuna", "optuna_integration")),
}


def _installed(module: str) -> bool:
    """Importable, without importing it (an imported lazy module such as optuna_integration has no spec)."""
    return module in sys.modules or importlib.util.find_spec(module) is not None


def require_extra(extra: str) -> None:
    """Raise one actionable sentence when an optional part is used without its extra installed."""
    what, modules = EXTRAS[extra]
    missing = [m for m in modules if not _installed(m)]
    if missing:
        raise InputError(f"{what} needs {', '.join(missing)}, which is not installed: pip install 'pneumolab[{extra}]'")
