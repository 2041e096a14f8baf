"""What every command shares: the ``pneumolab`` app, sub-command groups, the decorator that turns bad input
into one sentence and exit code 2, a progress bar, common options, and the entry point."""

from __future__ import annotations

import functools
import logging
import os
import sys
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from pneumolab.errors import InputError

__all__ = ["DataDir", "NoGuard", "Size", "Workers", "app", "command", "group", "main", "progress"]


def _examples(*lines: str) -> str:
    """An --help epilog; click's ``\\b`` marker keeps each command on one line (never wrapped mid-command)."""
    return "Examples:\n\n\b\n" + "\n".join(f"  {line}" for line in lines)


app = typer.Typer(
    name="pneumolab",
    help="Pneumonia detection on chest X-rays: patient-disjoint data, the study's models, honest metrics.",
    epilog=_examples("pneumolab demo", "pneumolab data prepare data/chest_xray --out runs/data/kermany --size 128"),
    no_args_is_help=True,
    add_completion=False,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root(
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Also show the frameworks' own messages (Lightning, torch warnings).")
    ] = False,
) -> None:
    if verbose:
        from pneumolab.training.console import VERBOSE_ENV

        os.environ[VERBOSE_ENV] = "1"


def group(name: str, text: str, *examples: str) -> typer.Typer:
    """A sub-command group of ``pneumolab`` with examples in its --help."""
    group = typer.Typer(help=text, epilog=_examples(*examples), no_args_is_help=True, rich_markup_mode=None)
    app.add_typer(group, name=name)
    return group


def command(group: typer.Typer, name: str, examples: list[str]) -> Callable:
    """Register a command with examples in its --help; bad input becomes one sentence and exit code 2."""

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def run(*args, **kwargs):
            try:
                return fn(*args, **kwargs)
            except InputError as e:
                typer.echo(f"error: {e}", err=True)
                raise typer.Exit(2) from None

        return group.command(name, epilog=_examples(*examples))(run)

    return wrap


Workers = Annotated[int | None, typer.Option(help="Decoding processes (default: all cores).")]
DataDir = Annotated[Path, typer.Argument(help="Dataset folder made by `pneumolab data index`.")]
Size = Annotated[int, typer.Option(help="Square image side in pixels.", min=16, max=1024)]
NoGuard = Annotated[
    bool,
    typer.Option(
        "--no-guard", help="Label every image, even one the out-of-distribution guard would refuse (not advised)."
    ),
]


@contextmanager
def progress(desc: str):
    """A tqdm bar driven by the library's ``progress(done, total)`` callback."""
    from tqdm import tqdm

    bar = None

    def update(done: int, total: int) -> None:
        nonlocal bar
        if bar is None:
            bar = tqdm(total=total, desc=desc, unit="img", file=sys.stderr, disable=not sys.stderr.isatty())
        bar.n = done
        bar.refresh() if done == total or done % 64 == 0 else None

    try:
        yield update
    finally:
        if bar is not None:
            bar.close()


class _ConsoleFormatter(logging.Formatter):
    """Our log lines as the commands' own lines read: information as it is, ``warning:`` / ``error:`` before the
    rest. The level and module name (``INFO pneumolab.data.cache:``) tell a developer where a line came from, not a
    user what to do: ``--verbose`` shows them."""

    def format(self, record: logging.LogRecord) -> str:
        from pneumolab.training.console import verbose

        text = super().format(record)
        if verbose():
            return f"{record.levelname} {record.name}: {text}"
        return text if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {text}"


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a line is logged, not as it was when ``main`` first ran: callers that
    run ``main`` many times in one process (tests, notebooks) swap and close the stream in between."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; there is nothing to keep
        pass


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input or usage)."""
    handler = _StderrHandler()
    handler.setFormatter(_ConsoleFormatter())
    lib = logging.getLogger("pneumolab")
    if not lib.handlers:  # main() may run many times in one process (tests, a notebook)
        lib.addHandler(handler)
        lib.propagate = False
    lib.setLevel(logging.INFO)  # every command starts at INFO: `study` quiets it to WARNING for its dozens of runs
    try:
        app(args=argv, prog_name="pneumolab")
    except SystemExit as e:  # typer/click end every run with SystemExit(code)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0
