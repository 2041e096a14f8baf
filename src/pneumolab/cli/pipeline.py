"""``pneumolab demo`` and ``pneumolab study``: the whole study pipeline, one line per finished run."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from pneumolab import __version__
from pneumolab.cli.base import app, command


@command(app, "demo", ["pneumolab demo", "pneumolab demo --out /tmp/pneumolab-demo data.image_size=32"])
def demo(
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides of study/demo.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the demo writes its outputs.")] = Path("runs/study"),
) -> None:
    """The main job on the bundled sample: the whole study (preset study/demo) in a few minutes, then its report."""
    from pneumolab.data import sample_root

    typer.echo(f"pneumolab {__version__} demo on the bundled Kermany sample (CC BY 4.0, see {sample_root()}/SAMPLE.md)")
    study_cmd("demo", [f"out_dir={out}", *(overrides or [])], data=None, dry_run=False)


@command(
    app,
    "study",
    [
        "pneumolab study demo",
        "pneumolab study cpu --data ../shared/data/chest_xray --dry-run",
        "pneumolab study cpu --data ../shared/data/chest_xray budget_min=5",
        "pneumolab study my_study.yaml",
    ],
)
def study_cmd(
    config: Annotated[str, typer.Argument(help="Study YAML or preset: demo, cpu, seed.")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. budget_min=5.")] = None,
    data: Annotated[Path | None, typer.Option(help="Source dataset (same as data.source=...).")] = None,
    dry_run: Annotated[bool, typer.Option(help="Print the plan with estimated times; run nothing.")] = False,
) -> None:
    """Every classifier of the study, the autoencoder pipeline, the GAN comparison and our recipe, then one report.

    Resumable: run it again and finished runs are skipped, interrupted ones resume; a failed run is recorded
    in study.json and the others go on.
    """
    import logging

    from tqdm import tqdm

    from pneumolab.pipeline import load_study_config, plan_study, run_study

    # Dozens of runs: one line per run here, details in each run's folder (logs, history.csv, summary.json).
    for name in ("pneumolab", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)

    cfg = load_study_config(config, [*(overrides or []), *([f"data.source={data}"] if data else [])])
    if dry_run:
        typer.echo(f"study {cfg.name} -> {cfg.out_dir / cfg.name} (times measured on this machine; estimates)")
        steps = plan_study(cfg, estimate=True)
        for s in steps:
            est = (
                "done"
                if s.done() and s.kind != "report"
                else ("?" if s.estimate_s is None else f"~{s.estimate_s / 60:.1f} min")
            )
            typer.echo(f"  {s.kind:<12} {s.name:<32} {est:>10}  {s.folder}")
        known = [s.estimate_s for s in steps if s.estimate_s is not None and not s.done()]
        typer.echo(f"estimated: {sum(known) / 60:.0f} min for the {len(known)} runs with an estimate")
        return
    # One bar, the study's (on a terminal; elsewhere just a line per run): runs train without their own.
    bar = tqdm(desc=f"study {cfg.name}", unit="run", file=sys.stderr, disable=not sys.stderr.isatty())

    def on_plan(steps) -> None:
        bar.total = len(steps)
        bar.refresh()

    def on_step(step, status: str, seconds: float) -> None:
        bar.update(1)
        tqdm.write(f"{status:>8} {step.kind:<12} {step.name} ({seconds:.0f} s)", file=sys.stderr)

    try:
        state = run_study(cfg, on_plan=on_plan, on_step=on_step)
    finally:
        bar.close()
    steps = state["steps"]
    bad = {n: s for n, s in steps.items() if s["status"] in ("failed", "blocked")}
    for name, s in bad.items():
        typer.echo(f"{s['status']}: {name}: {s.get('error')}")
    typer.echo(
        f"study {cfg.name}: {len(steps) - len(bad)} of {len(steps)} steps ok -> {cfg.out_dir / cfg.name}/study.json"
    )
    if steps.get("report", {}).get("status") == "done":
        typer.echo(f"report: {cfg.out_dir / cfg.name / 'report' / 'report.html'}")
    if bad:
        raise typer.Exit(1)
