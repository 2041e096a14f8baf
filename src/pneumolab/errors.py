"""Exceptions that carry a user-facing message.

The CLI turns :class:`InputError` (and subclasses) into one clear sentence on stderr and exit
code 2; the service will turn them into 4xx responses. Anything else is a bug.
"""

from __future__ import annotations

__all__ = ["ImageReadError", "InputError", "LeakageError"]


class InputError(Exception):
    """Unusable input: say which file or option, what is wrong and what to do."""


class LeakageError(InputError):
    """Data would leak between splits (patient overlap, cross-split duplicate, synthetic outside train)."""


class ImageReadError(InputError):
    """One image could not be used.

    Args:
        path: the file (or array entry) that failed.
        kind: a short machine-readable problem code, e.g. ``"truncated"``.
        detail: what is wrong, in words.
    """

    def __init__(self, path: str, kind: str, detail: str) -> None:
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.kind = kind
        self.detail = detail

    def __reduce__(self) -> tuple:
        # Raised inside decoding worker processes: must survive the trip back through pickle.
        return (ImageReadError, (self.path, self.kind, self.detail))
