"""``pneumolab evaluate``, ``compare`` and ``robustness``: metrics with CIs, the report, acquisition shifts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pneumolab.cli.base import app, command
from pneumolab.errors import InputError


def _echo_metrics(r: dict) -> None:
    """The key numbers of an evaluation (``metrics.json``), each with its 95% CI."""
    m = r["at_threshold"]
    typer.echo(
        f"{r['model']} on the {r['split']} split of {r['data']}: {m['n_images']} images, {m['n_patients']} patients"
    )
    if unknown := r.get("images_without_patient_id"):
        typer.echo(
            f"  {unknown} image(s) have no patient id: each counts as its own patient in the CIs, which are too "
            "narrow if a patient has several (a CSV source takes a patient_id column)"
        )
    if g := r.get("guard"):
        checks = "proportions and features" if g["feature_guard"] else "proportions (no feature guard in this file)"
        if g["not_assessed"]:
            typer.echo(
                f"  guard: {g['not_assessed']} of {g['images']} images would be NOT_ASSESSED by predict/serve (by "
                f"their {checks}); all are scored here, marked assessed=no in predictions.csv"
            )
        else:
            typer.echo(f"  guard: all {g['images']} images would be assessed by predict/serve ({checks} checked)")
    if (ages := r.get("ages")) and ages["outside"]:
        from pneumolab.data.manifest import age_span

        typer.echo(
            f"  ages: {ages['outside']} of {ages['images_with_age']} images with an age (CSV or DICOM headers) are of "
            f"patients outside the {age_span(*ages['training_ages_years'])} the model learnt from (predict/serve "
            "add a caution to them): these numbers measure it on them"
        )
    typer.echo(f"threshold {r['threshold']['value']:.4f} ({r['threshold']['origin']})")
    typer.echo(f"model: {r['site'] or 'as trained (not site-calibrated or adapted)'}")
    promise = r.get("promise") or {}
    for key in ("auroc", "sensitivity", "specificity", "precision", "f1", "balanced_accuracy", "accuracy", "ece"):
        v = m[key]
        shown = "-" if v["value"] is None else f"{v['value']:.4f}  [{v['ci_low']:.4f}, {v['ci_high']:.4f}]"
        if key == "ece" and (cal := m.get("ece_if_calibrated")):
            # binned ECE is biased upward: its interval is reflected about it, and the noise floor says what it means
            shown = (
                f"{v['value']:.4f}  (a perfectly calibrated model scores {cal['mean']:.4f} [{cal['low']:.4f}, "
                f"{cal['high']:.4f}] on these images; bias-corrected CI [{v['ci_low']:.4f}, {v['ci_high']:.4f}])"
            )
        if pr := promise.get(key):
            ci = f" [{pr['ci'][0]:.4f}, {pr['ci'][1]:.4f}]" if pr["ci"] else ""
            below = f": below it, p = {pr['p_value']:.3f}" if pr["below"] else ""
            shown += f"  (promised {pr['value']:.4f}{ci}{below})"
        typer.echo(f"  {key:<18} {shown}")
    nb, nb_all = m["net_benefit"], m["net_benefit_treat_all"]
    typer.echo(
        f"  {'net_benefit':<18} {nb['value']:.4f}  [{nb['ci_low']:.4f}, {nb['ci_high']:.4f}]  (flagging every image: "
        f"{nb_all['value']:.4f}{'; decision_curve.png' if 'decision_curve' in r['plots'] else ''})"
    )
    if missing := [c for c, n in r["counts"].items() if n == 0]:
        typer.echo(f"  ('-': undefined with no {missing[0]} images; the other class's rate is what this set can say)")
    c = r["calibration"]
    typer.echo(
        f"  (ece is after the stored temperature {c['temperature']:.3f}; without it {c['ece_uncalibrated']:.4f})"
    )
    if "warning" in r:
        typer.echo(f"warning: {r['warning']}")
    for key, pr in promise.items():
        if pr["below"]:
            test = "binomial test, the model file stores no sample size"
            if pr["images"]:
                test = f"Fisher's exact test against the {pr['images']} images' worth it was measured on"
            typer.echo(
                f"warning: {key} {pr['here']['value']:.3f} ({pr['here']['k']} of {pr['here']['n']}) is below the "
                f"{pr['value']:.3f} the operating point promised (one-sided {test}; p = {pr['p_value']:.3f}): its "
                "threshold does not hold on these images; re-choose it on a labeled sample of them (pneumolab "
                "calibrate) and evaluate that on others"
            )
    if "alternative_threshold" in r:
        a = r["alternative_threshold"]
        am = a["metrics"]
        typer.echo(
            f"policy {a['policy']}: threshold {a['value']:.4f} ({a['origin']}): sensitivity "
            f"{am['sensitivity']['value']:.4f}, specificity {am['specificity']['value']:.4f}"
        )


def _echo_subgroups(sub: dict) -> None:
    """One line per value of the grouping column: counts and the key metrics with their 95% CIs."""
    from pneumolab.evaluation.evaluate import SUBGROUP_METRICS  # here: the CLI imports the heavy modules lazily

    def ci(v: dict) -> str:
        return "-" if v["value"] is None else f"{v['value']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"

    width = max(len(sub["column"]), *(len(g) for g in sub["groups"]))
    typer.echo(f"by {sub['column']} (at the stored threshold; '-': the group lacks a class):")
    header = f"  {sub['column']:<{width}} {'images':>6} {'NORMAL':>6} {'PNEUM.':>6}"
    typer.echo((header + "".join(f"  {k.replace('_accuracy', ' acc.'):<22}" for k in SUBGROUP_METRICS)).rstrip())
    for name, g in sub["groups"].items():
        thin = " (< 10 of a class: rough)" if min(g["NORMAL"], g["PNEUMONIA"]) < 10 else ""
        counts = f"  {name:<{width}} {g['n_images']:>6} {g['NORMAL']:>6} {g['PNEUMONIA']:>6}"
        typer.echo((counts + "".join(f"  {ci(g[k]):<22}" for k in SUBGROUP_METRICS)).rstrip() + thin)


@command(
    app,
    "evaluate",
    [
        "pneumolab evaluate runs/train/resnet18 --data runs/data/kermany --split val",
        "pneumolab evaluate runs/train/resnet18 --data path/to/chest_xray --split test",
        "pneumolab evaluate runs/train/resnet18/model.pt --data hospital.csv --split all --policy 'sensitivity>=0.95'",
        "pneumolab evaluate runs/train/fast --data hospital.csv --split all --by scanner",
    ],
)
def evaluate_cmd(
    model: Annotated[Path, typer.Argument(help="Run folder or model.pt.")],
    data: Annotated[Path, typer.Option(help="Dataset folder, Kaggle-layout folder, CSV or npz.")],
    split: Annotated[
        str | None, typer.Option(help="test, val, train or all (default: test; all for a source without splits).")
    ] = None,
    out: Annotated[Path | None, typer.Option(help="Output folder (default RUN/eval/<data>-<split>).")] = None,
    policy: Annotated[
        str | None,
        typer.Option(help="Also report the threshold this policy picks on validation, e.g. sensitivity>=0.95."),
    ] = None,
    by: Annotated[
        str | None,
        typer.Option(
            help="Also score each group of: a column of the images' CSV (scanner, view, sex, site...), a DICOM "
            "attribute (dicom:Manufacturer, dicom:ManufacturerModelName, dicom:PatientSex, dicom:ViewPosition...), "
            "or age (inside or outside the ages the model learnt from)."
        ),
    ] = None,
    errors: Annotated[
        int,
        typer.Option(
            min=0,
            help="errors.html shows this many of the most confident false positives (with Grad-CAM) and of the "
            "false negatives; 0: none.",
        ),
    ] = 12,
    n_boot: Annotated[int, typer.Option(help="Patient-level bootstrap resamples.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Predictions, metrics with patient-level 95% CIs, and plots on one split; the stored threshold is kept."""
    from pneumolab.evaluation.evaluate import evaluate

    if split not in (None, "test", "val", "train", "all"):
        raise InputError(f"--split {split!r}: choose test, val, train or all")
    r = evaluate(model, data, split=split, out=out, policy=policy, n_boot=n_boot, seed=seed, by=by, errors=errors)
    _echo_metrics(r)
    if "subgroups" in r:
        _echo_subgroups(r["subgroups"])
    if "errors" in r:
        fp, fn = (r["errors"][k] for k in ("false_positives", "false_negatives"))
        typer.echo(
            f"errors.html: {len(fp['shown'])} of {fp['total']} false positives (most confident first, with Grad-CAM) "
            f"and {len(fn['shown'])} of {fn['total']} false negatives, to look at"
        )
    typer.echo(f"wrote {Path(r['plots']['confusion']).parent}")


@command(
    app,
    "compare",
    [
        "pneumolab compare runs/train/cnn_base runs/train/resnet18 --data runs/data/kermany --split val --out runs/rep",
        "pneumolab compare runs/train/* --data path/to/chest_xray --split test --out runs/report-test",
        "pneumolab compare runs/train/fast runs/site/fast-calibrated --data site.csv --split all --by scanner --out r",
    ],
)
def compare_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (or model files) to compare.")],
    data: Annotated[Path, typer.Option(help="Dataset folder, Kaggle-layout folder, CSV or npz.")],
    out: Annotated[Path, typer.Option(help="Folder for report.md, report.html and figures.")],
    split: Annotated[str, typer.Option(help="test, val, train or all.")] = "test",
    n_boot: Annotated[int, typer.Option(help="Patient-level bootstrap resamples.")] = 2000,
    by: Annotated[
        str | None,
        typer.Option(
            help="Also compare the runs on each group: a --data CSV column, dicom:KEYWORD or age (as evaluate)."
        ),
    ] = None,
) -> None:
    """Comparison report (the study's table, CIs, paired AUROC tests, GAN section) over runs on one split."""
    from pneumolab.evaluation.report import compare

    path = compare(runs, data, out, split=split, n_boot=n_boot, by=by)
    typer.echo(f"wrote {path} and {path.with_suffix('.md')}")


@command(
    app,
    "robustness",
    [
        "pneumolab robustness runs/train/resnet18 --data runs/data/kermany --split val",
        "pneumolab robustness runs/train/fast runs/train/resnet18 --data runs/data/kermany",
    ],
)
def robustness_cmd(
    models: Annotated[list[Path], typer.Argument(help="Run folders or model.pt files (shifted images are shared).")],
    data: Annotated[Path, typer.Option(help="Dataset folder made by `pneumolab data index`.")],
    split: Annotated[str, typer.Option(help="Split to shift (val by default; never select on test).")] = "val",
    out: Annotated[
        Path | None, typer.Option(help="Folder for robustness.json/.png (one model only; default: beside each model).")
    ] = None,
) -> None:
    """AUROC, sensitivity, specificity and ECE under graded acquisition shifts (contrast, blur, noise, ...)."""
    from pneumolab.evaluation.robustness import robustness_many
    from pneumolab.rundir import RunDir

    if out is not None and len(models) > 1:
        raise InputError("--out takes one model; with several, each result is written beside its model")
    outs = [out or RunDir.of(m).robustness_dir(data, split) for m in models]
    results = robustness_many(models, data, split=split, outs=outs)
    if len(models) == 1:
        r = results[0]
        typer.echo(f"{'shift':<14} {'severity':>8} {'AUROC':>7} {'sens.':>7} {'spec.':>7} {'ECE':>6}")
        for name, rows in [("clean", [{"severity": "-", **r["clean"]}]), *r["shifts"].items()]:
            for m in rows:
                typer.echo(
                    f"{name:<14} {m['severity']!s:>8} {m['auroc']:>7.3f} {m['sensitivity']:>7.3f} "
                    f"{m['specificity']:>7.3f} {m['ece']:>6.3f}"
                )
    for r, target in zip(results, outs, strict=True):
        w = r["worst_shift"]
        typer.echo(
            f"{r['model_file']}: clean spec. {r['clean']['specificity']:.3f}, worst spec. {r['worst_specificity']:.3f}"
            f" ({w['shift']} {w['severity']:g}), mean balanced acc. {r['mean_balanced_accuracy']:.3f} at the stored "
            f"threshold -> {target / 'robustness.json'}, robustness.png"
        )
