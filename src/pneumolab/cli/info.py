"""``pneumolab models``, ``tensorboard`` and ``version``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pneumolab import __version__
from pneumolab.cli.base import Size, app, command
from pneumolab.errors import InputError
from pneumolab.rundir import RunDir


@command(app, "models", ["pneumolab models", "pneumolab models --size 224"])
def models_cmd(size: Size = 128) -> None:
    """List every registered model with its parameters and GFLOPs at SIZE x SIZE (1 channel)."""
    from pneumolab.models import model_table

    typer.echo(f"{'model':<20} {'params':>12} {'GFLOPs@' + str(size):>11}  description")
    for r in model_table(size):
        gflops = "too small" if r["gflops"] is None else f"{r['gflops']:.3f}"
        typer.echo(f"{r['name']:<20} {r['params']:>12,} {gflops:>11}  {r['description']}")
    typer.echo("GFLOPs count a multiply and an add as two operations.")


@command(
    app, "tensorboard", ["pneumolab tensorboard runs/train/resnet18 runs/train/cnn_base", "tensorboard --logdir runs/"]
)
def tensorboard_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to compare.")],
    port: Annotated[int, typer.Option(help="Port (binds 127.0.0.1).")] = 6006,
) -> None:
    """Open TensorBoard on one or more runs (scalars, input grids, histograms, graph)."""
    import subprocess

    missing = [str(r) for r in runs if not RunDir(r).tensorboard.is_dir()]
    if missing:
        raise InputError(f"no TensorBoard logs in {', '.join(missing)}: give folders made by `pneumolab train`")
    spec = ",".join(f"{r.name}:{RunDir(r).tensorboard}" for r in runs)
    raise typer.Exit(
        subprocess.call(
            [
                sys.executable,
                "-m",
                "tensorboard.main",
                "--logdir_spec",
                spec,
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
            ]
        )
    )


@command(app, "version", ["pneumolab version"])
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)
