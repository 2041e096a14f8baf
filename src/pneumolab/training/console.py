"""What a training shows on the console: our header, one progress bar (one line per epoch where the output is not
a terminal) and our result line.

Lightning's hardware lines ("GPU available: False ..."), its product tips, the AMP notice, dataloader and
logging-interval notices, the model summary table, and the frameworks' deprecation warnings (torch.jit,
Lightning, torchmetrics) say nothing a user of pneumolab can act on. ``pneumolab --verbose`` (or
``PNEUMOLAB_VERBOSE=1``) shows them again.
"""

from __future__ import annotations

import contextlib
import logging
import os
import warnings
from collections.abc import Iterator

__all__ = ["VERBOSE_ENV", "quiet_frameworks", "verbose"]

VERBOSE_ENV = "PNEUMOLAB_VERBOSE"
# Lightning configures these when it is imported (so setting them before that is undone): set them here,
# around the fit, and put them back afterwards.
_LOGGERS = ("lightning.pytorch", "lightning.fabric")
_FRAMEWORKS = r"(lightning|torch|torchmetrics|torchvision)(\.|$)"  # the module a warning is attributed to


def verbose() -> bool:
    """Whether the user asked for the frameworks' own messages."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


@contextlib.contextmanager
def quiet_frameworks() -> Iterator[None]:
    """Silence the frameworks' info lines and warnings inside the block, unless :func:`verbose`."""
    if verbose():
        yield
        return
    loggers = [logging.getLogger(name) for name in _LOGGERS]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", module=_FRAMEWORKS)
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
