"""Decoding worker processes that never outlive the command that started them.

``ProcessPoolExecutor`` workers of a killed parent (SIGKILL, an OOM kill, a closed terminal) would sit
waiting for work forever; on Linux each worker asks the kernel for SIGKILL when its parent dies.
"""

from __future__ import annotations

import ctypes
import signal
import sys
from concurrent.futures import ProcessPoolExecutor

__all__ = ["process_pool"]

_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _die_with_parent() -> None:
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A process pool whose workers die with this process."""
    return ProcessPoolExecutor(workers, initializer=_die_with_parent)
