"""``pneumolab calibrate`` and ``adapt``: fit a model to a hospital's own images (always a new run folder);
``monitor``: what it answered there, period by period."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from pneumolab.cli.base import app, command

SiteData = Annotated[Path, typer.Option(help="The site's images: dataset folder, Kaggle-layout folder, CSV or npz.")]
NewRun = Annotated[Path, typer.Option("--out", "-o", help="New run folder (the original run is never changed).")]
SiteSplit = Annotated[str, typer.Option(help="Which rows of --data form the site sample: all, train, val or test.")]


def _echo_skipped(r: dict) -> None:
    """The files of the site sample left out, with the reason (the first 10; all in the model's meta['site'])."""
    skipped = r.get("skipped_files", [])
    for line in skipped[:10]:
        typer.echo(f"  skipped {line}")
    if len(skipped) > 10:
        typer.echo(f"  ... {len(skipped)} files skipped in all (listed in the model's meta['site'])")


@command(
    app,
    "calibrate",
    [
        "pneumolab calibrate runs/train/fast --data site/labeled_sample --out runs/site/fast-calibrated",
        "pneumolab calibrate runs/train/fast --data site.csv --out runs/site/fast-cal --policy 'sensitivity>=0.9'",
        "pneumolab calibrate runs/train/fast --outcomes confirmed.csv --logs audit/ --out runs/site/fast-oc",
    ],
)
def calibrate_cmd(
    model: Annotated[Path, typer.Argument(help="Run folder or model.pt.")],
    out: NewRun,
    data: Annotated[
        Path | None,
        typer.Option(help="The site's labeled images: dataset folder, Kaggle-layout folder, CSV or npz."),
    ] = None,
    outcomes: Annotated[
        Path | None,
        typer.Option(
            help="Instead of images: a CSV of confirmed outcomes of the model's logged answers, request_id,label or "
            "image,label (as for monitor); needs --logs."
        ),
    ] = None,
    logs: Annotated[
        list[Path] | None,
        typer.Option(
            metavar="<path>",
            help="With --outcomes: the audit log folder (`serve --audit DIR`) or a `predict --json` file (repeatable).",
        ),
    ] = None,
    policy: Annotated[
        str | None, typer.Option(help="Threshold policy on the site's images (default: the model's own).")
    ] = None,
    split: SiteSplit = "all",
) -> None:
    """Refit temperature and intercept and re-choose the threshold on a LABELED site sample (--data), or on the
    answers the model gave at the site whose outcomes were confirmed (--outcomes, --logs); writes a new run."""
    from pneumolab.errors import InputError
    from pneumolab.site_adaptation.calibrate import calibrate, calibrate_from_outcomes

    if (data is None) == (outcomes is None):
        raise InputError("give the site sample as --data (labeled images) or --outcomes with --logs, one of the two")
    if outcomes is not None and not logs:
        raise InputError("--outcomes needs --logs: the audit log or predict --json files that hold those answers")
    if data is not None and logs:
        raise InputError("--logs goes with --outcomes (answers with confirmed outcomes), not with --data")
    if outcomes is not None:
        if split != "all":
            raise InputError("--split selects rows of --data; the answers of --logs have no splits")
        r = calibrate_from_outcomes(model, logs, outcomes, out, policy=policy)
        a = r["answers"]
        classes = ", ".join(f"{n} {c}" for c, n in r["classes"].items())
        typer.echo(f"calibrated on {r['images']} answers with confirmed outcomes ({classes}), policy {r['policy']}")
        left = {
            "repeated": "answers given again to the same image (the latest kept)",
            "not_assessed": "outcomes of images the model did not assess",
            "other_models": "outcomes of answers of other model files",
            "outcomes_unmatched": "outcomes of no answer in these logs",
        }
        for k, what in left.items():
            if a[k]:
                typer.echo(f"  left out: {a[k]} {what}")
        for w in r["warnings"]:
            typer.echo(f"warning: {w}")
    else:
        r = calibrate(model, data, out, policy=policy, split=split)
        classes = ", ".join(f"{n} {c}" for c, n in r["classes"].items())
        typer.echo(f"calibrated on {r['images']} labeled images of {r['data']} ({classes}), policy {r['policy']}")
        _echo_skipped(r)
    fit = r["on_site_sample"]
    typer.echo(
        f"  threshold {r['threshold']['before']:.4f} -> {r['threshold']['after']:.4f}, temperature "
        f"{r['temperature']['before']:.3f} -> {r['temperature']['after']:.3f}, "
        f"intercept {r['prior_shift']['after']:+.3f}"
    )
    typer.echo(
        f"  on the site sample itself (optimistic: fitted there): sensitivity {fit['sensitivity']:.3f}, "
        f"specificity {fit['specificity']:.3f}, ECE {fit['ece_before']:.3f} -> {fit['ece_after']:.3f} (a perfectly "
        f"calibrated model: {fit['ece_if_calibrated']['mean']:.3f} [{fit['ece_if_calibrated']['low']:.3f}, "
        f"{fit['ece_if_calibrated']['high']:.3f}] on this many images)"
    )
    typer.echo(f"wrote {r['model_file']}; score it on other site images: pneumolab evaluate {out} --data OTHER")


@command(
    app,
    "adapt",
    [
        "pneumolab adapt runs/train/fast --data site/unlabeled --out runs/site/fast-adapted",
        "pneumolab adapt runs/train/fast --data site.csv --out runs/site/fast-bn-only --no-prior",
    ],
)
def adapt_cmd(
    model: Annotated[Path, typer.Argument(help="Run folder or model.pt.")],
    data: SiteData,
    out: NewRun,
    bn: Annotated[bool, typer.Option("--bn/--no-bn", help="Re-estimate BatchNorm statistics (AdaBN).")] = True,
    prior: Annotated[bool, typer.Option("--prior/--no-prior", help="Estimate the site's prevalence (EM).")] = True,
    split: SiteSplit = "all",
) -> None:
    """Adapt to UNLABELED site images (labels ignored): BatchNorm statistics and class prior; writes a new run."""
    from pneumolab.site_adaptation.adapt import adapt

    r = adapt(model, data, out, batchnorm=bn, prior=prior, split=split)
    typer.echo(f"adapted on {r['images']} unlabeled images of {r['data']} (labels, if any, were not read)")
    _echo_skipped(r)
    if r["batchnorm"]:
        typer.echo(f"  BatchNorm statistics of {r['batchnorm']['layers']} layers re-estimated")
    if r["prior"]:
        p = r["prior"]
        typer.echo(
            f"  pneumonia prevalence: source {p['source']:.3f}, site estimate {p['site_estimate']:.3f} "
            f"(log-odds shift {p['prior_shift']:+.3f})"
        )
    typer.echo(f"wrote {r['model_file']}; check it on labeled site images: pneumolab evaluate {out} --data LABELED")


@command(
    app,
    "monitor",
    [
        "pneumolab monitor /var/log/pneumolab                      # the folder of `serve --audit`",
        "pneumolab monitor results-*.jsonl --every week --out runs/monitor   # `predict --json` output",
        "pneumolab monitor /var/log/pneumolab --against past --fail-on-warning   # a daily job: exit 1 on a warning",
        "pneumolab monitor /var/log/pneumolab --model runs/train/fast   # its NORMAL answers against its validation",
    ],
)
def monitor_cmd(
    logs: Annotated[
        list[Path], typer.Argument(help="Audit log folders (`serve --audit DIR`) or `predict --json` output files.")
    ],
    every: Annotated[str, typer.Option(help="Period: day, week (ISO) or month, in UTC.")] = "day",
    out: Annotated[Path | None, typer.Option(help="Also write monitor.json and monitor.png into this folder.")] = None,
    against: Annotated[
        str,
        typer.Option(
            help="Compare each period with the model's other periods (all: a review of the whole log) or only "
            "its earlier ones (past: what a daily job asks; a verdict never changes later)."
        ),
    ] = "all",
    fail_on_warning: Annotated[
        bool, typer.Option("--fail-on-warning", help="Exit with code 1 when there is a warning (for a scheduled job).")
    ] = False,
    outcomes: Annotated[
        Path | None,
        typer.Option(
            help="A CSV of confirmed outcomes, request_id,label (the service's answers) or image,label (predict "
            "--json's): adds sensitivity and specificity per period."
        ),
    ] = None,
    model: Annotated[
        list[Path] | None,
        typer.Option(
            "--model",
            metavar="<path>",
            help="A run folder, model.pt or model.onnx of these answers (repeatable): warn where its NORMAL answers "
            "are less certain than on its validation images (no labels needed); with --outcomes, also where the "
            "site's sensitivity or specificity is below what its operating point promised.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the result as JSON.")] = False,
) -> None:
    """Per period and model: images, refused, not assessed and flagged PNEUMONIA with 95% intervals, and warnings.

    Without labels this cannot say whether the answers were right; it shows when they change (more images the guard
    will not assess, another share flagged) and, with --model, when the NORMAL answers are less certain than on the
    model's validation images, which is when to check a labeled sample with `pneumolab evaluate`.
    With --outcomes (the confirmed diagnoses of some answered images) it says how often they were right.
    """
    from pneumolab.errors import InputError
    from pneumolab.io import atomic_write_json
    from pneumolab.site_adaptation.monitor import monitor, plot_monitor

    if every not in ("day", "week", "month"):
        raise InputError(f"--every {every!r}: choose day, week or month")
    if against not in ("all", "past"):
        raise InputError(f"--against {against!r}: choose all or past")
    r = monitor(logs, every=every, against=against, outcomes=outcomes, models=model)  # type: ignore[arg-type]
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out / "monitor.json", r)
        plot_monitor(r, out / "monitor.png")
    if as_json:
        typer.echo(json.dumps(r, indent=2))
    else:
        _print_monitor(r, out)
    if fail_on_warning and r["warnings"]:
        raise typer.Exit(1)


def _print_monitor(r: dict, out: Path | None) -> None:
    models = {row["model_sha256"] for row in r["periods"]}
    rates = ("sensitivity", "specificity") if "outcomes" in r else ()
    head = f"{'period':<11} {'model':<13}" if len(models) > 1 else f"{'period':<11}"
    typer.echo(
        f"{head} {'images':>6} {'refused':>7} {'not assessed':>26} {'flagged PNEUMONIA':>26} {'mean P':>6}"
        + "".join(f" {name:>26}" for name in rates)
    )
    for row in r["periods"]:
        cells = [f"{row['period']:<11}"] + ([f"{(row['model_sha256'] or '?')[:12]:<13}"] if len(models) > 1 else [])
        na, fl = row["not_assessed_rate"], row["flagged_rate"]
        mean_p = "-" if row["mean_probability"] is None else f"{row['mean_probability']:.3f}"
        typer.echo(
            f"{' '.join(cells)} {row['images']:>6} {row['refused']:>7} {_share(row['not_assessed'], na):>26} "
            f"{_share(row['flagged'], fl):>26} {mean_p:>6}" + "".join(f" {_of(row[name]):>26}" for name in rates)
        )
    for m in r.get("normal_calls", []):
        where = "validation" if m["reference_split"] == "val" else "site sample"
        site, ref = ("-" if v is None else f"{v:.3f}" for v in (m["median"], m["reference_median"]))
        typer.echo(
            f"model {(m['model_sha256'] or '?')[:12]}: {m['answers']} NORMAL answers, median P(pneumonia) {site}; "
            f"on its {where} images called NORMAL {ref} ({m['reference']} images), one-sided p = {m['p_value']:.2g}"
        )
    if "outcomes" in r:
        o = r["outcomes"]
        typer.echo(
            f"outcomes: {o['outcomes'] - o['unmatched']} of {o['outcomes']} in {o['file']} matched an answer by "
            f"{o['key']}" + (f" ({o['unmatched']} answered in no log given)" if o["unmatched"] else "")
        )
        for m in o["models"]:
            promised, said = m["promised"], ""
            if promised and promised.get("specificity") is not None:
                ci = promised.get("ci95") or {}
                said = "; promised " + " / ".join(
                    f"{100 * promised[k]:.1f}%" + (f" [{100 * ci[k][0]:.1f}, {100 * ci[k][1]:.1f}]" if k in ci else "")
                    for k in ("sensitivity", "specificity")
                )
            skipped = f"; {m['not_assessed']} not assessed (no label to check)" if m["not_assessed"] else ""
            typer.echo(
                f"  model {(m['model_sha256'] or '?')[:12]}: sensitivity {_of(m['sensitivity'])}, "
                f"specificity {_of(m['specificity'])}{said}{skipped}"
            )
    for w in r["warnings"]:
        typer.echo(f"warning: {w}")
    for note in r["notes"]:
        typer.echo(f"note: {note}")
    if out is not None:
        typer.echo(f"wrote {out / 'monitor.json'} and {out / 'monitor.png'}")


def _of(rate: dict | None) -> str:
    """``41/45 = 91.1% [79.3, 96.5]``, or ``-`` without outcomes to count."""
    return "-" if rate is None else _share(round(rate["value"] * rate["n"]), rate).replace(" = ", f"/{rate['n']} = ")


def _share(k: int, rate: dict | None) -> str:
    """``12 = 8.6% [5.0, 14.4]``, or ``-`` without images to count."""
    if rate is None:
        return "-"
    return f"{k} = {100 * rate['value']:.1f}% [{100 * rate['ci'][0]:.1f}, {100 * rate['ci'][1]:.1f}]"
