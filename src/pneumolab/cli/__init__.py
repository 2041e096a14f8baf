"""The ``pneumolab`` command: one thin module per command group. Commands parse, call the library and
print; logic lives in the library modules they call."""

from pneumolab.cli import data, deploy, evaluate, info, pipeline, site, train  # noqa: F401  (register commands)
from pneumolab.cli.base import app, main

__all__ = ["app", "main"]
