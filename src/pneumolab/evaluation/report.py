"""``pneumolab compare``: the study's comparison table and more, from runs evaluated on the same data.

Writes ``report.md`` and ``report.html`` from one source (the HTML is the same Markdown rendered by
Python-Markdown, figures embedded). It opens with what a reader wants first -- which run is best here and
whether the lead is real, the ROC figure, every run's operating point with 95% patient-bootstrap CIs --
then pairwise AUROC differences from a *paired* patient bootstrap (a matrix figure; all pairs in
``pairwise.csv``), the study's table, size and cost, sections for GAN-augmented vs plain runs and for
autoencoder codes when present, robustness to acquisition shifts where ``pneumolab robustness`` scored a
run on this data, and last, the method and the paths.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import logging
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np

from pneumolab.data.index import as_dataset
from pneumolab.errors import InputError
from pneumolab.evaluation.evaluate import evaluate
from pneumolab.evaluation.metrics import bootstrap_weights, rank_metrics
from pneumolab.evaluation.plots import decision_curves, fig_to_png, roc_band
from pneumolab.io import atomic_path, atomic_write_text, is_fresh
from pneumolab.models import count_flops
from pneumolab.models.checkpoint import load_model_file, resolve_model_file
from pneumolab.rundir import RunDir, data_key

__all__ = ["RunResult", "compare", "paired_auroc_test"]

log = logging.getLogger(__name__)


@dataclass
class RunResult:
    name: str
    run_dir: Path
    meta: dict[str, Any]
    summary: dict[str, Any]
    metrics: dict[str, Any]
    predictions: dict[str, tuple[float, int, str]]  # path -> (probability, label, patient group)
    params: int
    gflops: float

    @property
    def arm(self) -> str:
        """``gan`` (synthetic images added), ``duplicate`` (real images repeated: the control) or ``plain``."""
        data = self.meta["config"]["data"]
        return "gan" if data.get("synthetic") else "duplicate" if data.get("duplicate_real") else "plain"

    @property
    def seed(self) -> int:
        return int(self.meta["config"].get("seed", 0))


def _fresh_metrics(folder: Path, model_file: Path, data: Path, by: str | None = None) -> dict[str, Any] | None:
    """The evaluation in ``folder`` if it scored this model file (not an older one) on ``data`` (and, with ``by``,
    by that column)."""
    metrics_file = folder / "metrics.json"
    if not is_fresh(metrics_file, model_file):
        return None
    metrics = json.loads(metrics_file.read_text())
    if by is not None and (metrics.get("subgroups") or {}).get("column") != by:
        return None
    return metrics if Path(metrics["data"]) == data.resolve() else None


def _load_run(run: Path, data: Path, split: str, n_boot: int, evaluations: Path, by: str | None = None) -> RunResult:
    """A run's result on ``split`` of ``data``: its own ``pneumolab evaluate`` output when fresh (read, never
    written), else an evaluation made now inside the report's ``evaluations`` folder."""
    model_file = resolve_model_file(run)
    run_dir = RunDir.of(model_file)
    out = run_dir.eval_dir(data, split)
    metrics = _fresh_metrics(out, model_file, data, by)
    if metrics is None:
        out = evaluations / data_key(run_dir.path)
        metrics = _fresh_metrics(out, model_file, data, by) or evaluate(
            model_file, data, split=split, out=out, n_boot=n_boot, model_card=False, by=by
        )
    model, meta = load_model_file(model_file)
    with (out / "predictions.csv").open() as f:
        preds = {
            r["path"]: (float(r["probability"]), int(r["label"] == "PNEUMONIA"), r["patient_id"] or r["path"])
            for r in csv.DictReader(f)
        }
    summary_file = run_dir.summary
    summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
    size = meta["preprocessing"]["image_size"]
    return RunResult(
        name=meta["config"].get("name", model_file.parent.name) if model_file.parent.name != "." else run.name,
        run_dir=model_file.parent,
        meta=meta,
        summary=summary,
        metrics=metrics,
        predictions=preds,
        params=sum(p.numel() for p in model.parameters()),
        gflops=count_flops(model, size) / 1e9,
    )


def paired_auroc_test(a: RunResult, b: RunResult, n_boot: int = 2000, seed: int = 0) -> dict[str, float]:
    """AUROC(a) - AUROC(b) on the images both predicted, with a paired patient-level bootstrap.

    Both models are scored on the *same* resampled patients in every resample, so the CI and the
    two-sided p-value (2 x the smaller tail share of differences at or beyond 0) reflect the
    correlation between them.
    """
    common = sorted(set(a.predictions) & set(b.predictions))
    if not common:
        raise InputError(f"runs {a.name} and {b.name} share no evaluated images; evaluate them on the same data")
    pa = np.array([a.predictions[k][0] for k in common])
    pb = np.array([b.predictions[k][0] for k in common])
    y = np.array([a.predictions[k][1] for k in common])
    groups = np.array([a.predictions[k][2] for k in common])
    w = np.vstack([np.ones(len(common)), bootstrap_weights(groups, n_boot, seed)])  # row 0: the point estimate
    diff = rank_metrics(pa, y, w)["auroc"] - rank_metrics(pb, y, w)["auroc"]
    boot = diff[1:][np.isfinite(diff[1:])]
    p = min(1.0, 2 * min((boot <= 0).mean(), (boot >= 0).mean()))
    lo, hi = np.quantile(boot, [0.025, 0.975])
    return {"diff": float(diff[0]), "ci_low": float(lo), "ci_high": float(hi), "p_value": float(p), "n": len(common)}


def _epoch(best_epoch: int | None) -> str:
    return "?" if best_epoch is None else str(best_epoch + 1)  # history counts from 0, people from 1


def _ci(m: dict[str, float]) -> str:
    return f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def _ci_or_dash(m: dict[str, Any]) -> str:
    return "-" if m["value"] is None else _ci(m)


def _subgroup_section(runs: list[RunResult]) -> dict[str, Any]:
    """``--by COLUMN``: every run's AUROC, sensitivity and specificity in each group, at its stored threshold."""
    column = runs[0].metrics["subgroups"]["column"]
    rows = []
    for name, first in runs[0].metrics["subgroups"]["groups"].items():
        rough = " (< 10 of a class: rough)" if min(first["NORMAL"], first["PNEUMONIA"]) < 10 else ""
        for i, r in enumerate(runs):
            g = r.metrics["subgroups"]["groups"][name]
            where = [name, f"{g['n_images']} ({g['NORMAL']} / {g['PNEUMONIA']}){rough}"] if i == 0 else ["", ""]
            rows.append([*where, r.name, *(_ci_or_dash(g[k]) for k in ("auroc", "sensitivity", "specificity"))])
    return _table([column, "images (NORMAL / PNEUMONIA)", "run", "AUROC", "sensitivity", "specificity"], rows)


def _table(header: list[str], rows: list[list[str]]) -> dict[str, Any]:
    return {"header": header, "rows": rows}


def _main_tables(runs: list[RunResult]) -> list[tuple[str, dict[str, Any]]]:
    def values(r: RunResult, at: str, keys: tuple[str, ...]) -> list[str]:
        return [f"{r.metrics[at][k]['value']:.4f}" for k in keys]

    study = _table(
        ["run", "accuracy", "precision", "recall", "F1", "accuracy @0.5", "F1 @0.5"],
        [
            [
                r.name,
                *values(r, "at_threshold", ("accuracy", "precision", "sensitivity", "f1")),
                *values(r, "at_0.5", ("accuracy", "f1")),
            ]
            for r in runs
        ],
    )
    full = _table(
        [
            "run",
            "AUROC [95% CI]",
            "sensitivity",
            "specificity",
            "balanced acc.",
            "ECE",
            "threshold (policy)",
            "not assessed*",
        ],
        [
            [
                r.name,
                _ci(r.metrics["at_threshold"]["auroc"]),
                _ci(r.metrics["at_threshold"]["sensitivity"]),
                _ci(r.metrics["at_threshold"]["specificity"]),
                _ci(r.metrics["at_threshold"]["balanced_accuracy"]),
                f"{r.metrics['calibration']['ece_calibrated']:.3f}",
                f"{r.metrics['threshold']['value']:.3f} ({r.meta.get('threshold_policy', '-')})",
                str(r.metrics["guard"]["not_assessed"]) if "guard" in r.metrics else "-",  # older evaluations: -
            ]
            for r in runs
        ],
    )
    cost = _table(
        ["run", "model", "params", "GFLOPs", "image px", "epochs (best)", "train wall s", "train img/s", "trained on"],
        [
            [
                r.name,
                r.meta["model_name"],
                f"{r.params:,}",
                f"{r.gflops:.2f}",
                str(r.meta["preprocessing"]["image_size"]),
                f"{r.summary.get('epochs_run', '?')} ({_epoch(r.summary.get('best_epoch'))})",
                str(r.summary.get("wall_s", "?")),
                str(r.summary.get("train_images_per_s", "?")),
                {"gan": "real + GAN", "duplicate": "real + duplicates", "plain": "real"}[r.arm],
            ]
            for r in runs
        ],
    )
    return [
        ("The study's table (at each model's validation-chosen threshold; recall = sensitivity)", study),
        ("Operating points: discrimination, and each run at its stored threshold (95% patient-bootstrap CIs)", full),
        ("Size and cost", cost),
    ]


def _pairwise(runs: list[RunResult], n_boot: int) -> dict[tuple[int, int], dict[str, float]]:
    """The paired AUROC test of every pair of runs, keyed by their indices ``(i, j)``, ``i < j``."""
    return {(i, j): paired_auroc_test(runs[i], runs[j], n_boot) for i, j in combinations(range(len(runs)), 2)}


def _pairwise_csv(runs: list[RunResult], tests: dict[tuple[int, int], dict[str, float]]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["a", "b", "auroc_a_minus_b", "ci_low", "ci_high", "p_value", "n_images"])
    for (i, j), t in tests.items():
        values = (f"{t[k]:.5f}" for k in ("diff", "ci_low", "ci_high"))
        w.writerow([runs[i].name, runs[j].name, *values, f"{t['p_value']:.4f}", t["n"]])
    return buf.getvalue()


def _pairwise_figure(runs: list[RunResult], tests: dict[tuple[int, int], dict[str, float]]) -> bytes:
    """Matrix of AUROC(row) - AUROC(column); a star marks a paired-bootstrap p < 0.05."""
    n = len(runs)
    diff = np.zeros((n, n))
    for (i, j), t in tests.items():
        diff[i, j], diff[j, i] = t["diff"], -t["diff"]
    lim = max(float(np.abs(diff).max()), 1e-3)
    fig, ax = plt.subplots(figsize=(1.2 + 0.75 * n, 0.9 + 0.6 * n))
    im = ax.imshow(diff, cmap="RdBu", vmin=-lim, vmax=lim)
    for (i, j), t in tests.items():
        star = "*" if t["p_value"] < 0.05 else ""
        for r, c, v in ((i, j, t["diff"]), (j, i, -t["diff"])):
            colour = "white" if abs(v) > 0.6 * lim else "black"  # legible on the dark ends of the scale
            ax.text(c, r, f"{v:+.3f}{star}", ha="center", va="center", fontsize=7, color=colour)
    names = [r.name for r in runs]
    ax.set_xticks(range(n), names, rotation=40, ha="right", fontsize=7)
    ax.set_yticks(range(n), names, fontsize=7)
    ax.set_title("AUROC of row minus column (* p < 0.05, paired patient bootstrap)", fontsize=8)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return fig_to_png(fig)


def _headline(runs: list[RunResult], tests: dict[tuple[int, int], dict[str, float]], where: str) -> str:
    """The sentence a reader wants first: which run discriminates best here, and whether that is a real lead."""
    aurocs = np.array([r.metrics["at_threshold"]["auroc"]["value"] for r in runs])
    order = np.argsort(-aurocs, kind="stable")  # ties: the first listed run leads
    best = int(order[0])
    text = f"**Best AUROC on the {where}: {runs[best].name}, {_ci(runs[best].metrics['at_threshold']['auroc'])}.**"
    if len(runs) > 1:
        second = int(order[1])
        t = tests[(min(best, second), max(best, second))]
        verdict = "significantly" if t["p_value"] < 0.05 else "not significantly"
        p = "< 0.001" if t["p_value"] < 0.001 else f"= {t['p_value']:.3f}"  # the bootstrap's resolution
        text += f" It is {verdict} ahead of the next, {runs[second].name} (paired p {p})."
    m = runs[best].metrics["at_threshold"]
    unknown = runs[best].metrics.get("images_without_patient_id", 0)
    patients = f"{m['n_patients']} patients" + (f", {unknown} images without a patient id" if unknown else "")
    return text + (
        f" At its stored threshold it finds {m['sensitivity']['value']:.1%} of pneumonia cases and clears "
        f"{m['specificity']['value']:.1%} of normal X-rays ({m['n_images']} images, {patients})."
    )


def _gan_section(runs: list[RunResult], n_boot: int) -> dict[str, Any] | None:
    """Each GAN-augmented (and duplicate-control) run against the plain run of the same model and seed."""
    plain = {(r.meta["model_name"], r.seed): r for r in runs if r.arm == "plain"}
    rows, effects = [], {}
    for r in sorted((r for r in runs if r.arm != "plain"), key=lambda r: (r.meta["model_name"], r.arm, r.seed)):
        base = plain.get((r.meta["model_name"], r.seed))
        if base is None:
            continue
        t = paired_auroc_test(r, base, n_boot)
        spec = r.metrics["at_threshold"]["specificity"]["value"] - base.metrics["at_threshold"]["specificity"]["value"]
        diff = f"{t['diff']:+.4f} [{t['ci_low']:+.4f}, {t['ci_high']:+.4f}]"
        arm = "GAN images" if r.arm == "gan" else "duplicated real (control)"
        rows.append(
            [r.meta["model_name"], str(r.seed), arm, r.name, base.name, diff, f"{t['p_value']:.3f}", f"{spec:+.4f}"]
        )
        effects.setdefault((r.meta["model_name"], arm), []).append((t["diff"], t["p_value"] < 0.05))
    if not rows:
        return None
    for (model, arm), vals in sorted(effects.items()):
        mean = float(np.mean([v for v, _ in vals]))
        sig = sum(s for _, s in vals)
        rows.append(
            [model, "all", arm, f"{len(vals)} seed(s)", "", f"mean {mean:+.4f}", f"{sig} of {len(vals)} p<0.05", ""]
        )
    header = [
        "model",
        "seed",
        "added to training",
        "run",
        "plain run",
        "AUROC difference [95% CI]",
        "p",
        "specificity diff.",
    ]
    return _table(header, rows)


def _latent_section(runs: list[RunResult]) -> dict[str, Any] | None:
    """Runs trained on autoencoder codes next to runs on pixels, with the whole pipeline's training time."""
    latent = [r for r in runs if r.meta["preprocessing"].get("latent")]
    if not latent:
        return None
    rows = []
    for r in runs:
        lat = r.meta["preprocessing"].get("latent")
        ae_s = 0.0
        if lat:
            ae_summary = RunDir.of(lat["autoencoder"]).summary
            ae_s = float(json.loads(ae_summary.read_text()).get("wall_s", 0)) if ae_summary.is_file() else float("nan")
        clf_s = float(r.summary.get("wall_s", float("nan")))
        size = r.meta["preprocessing"]["image_size"]
        rows.append(
            [
                r.name,
                "x".join(map(str, lat["shape"])) + " code" if lat else f"{size}x{size} pixels",
                f"{ae_s:.0f}" if lat else "-",
                f"{clf_s:.0f}",
                f"{ae_s + clf_s:.0f}",
                _ci(r.metrics["at_threshold"]["auroc"]),
                _ci(r.metrics["at_threshold"]["accuracy"]),
            ]
        )
    header = ["run", "classifier input", "autoencoder train s", "classifier train s", "total s", "AUROC", "accuracy"]
    return _table(header, rows)


def _robustness_results(runs: list[RunResult], data: Path) -> list[tuple[RunResult, dict[str, Any]]]:
    """Each run's ``pneumolab robustness`` result on ``data`` (the validation split's if there are several),
    when one exists and is newer than the run's model."""
    found = []
    for r in runs:
        results = [
            json.loads(f.read_text())
            for f in sorted(r.run_dir.glob("robustness/**/robustness.json"))
            if is_fresh(f, RunDir(r.run_dir).model)
        ]
        results = [x for x in results if x.get("data") == str(data.resolve())]
        if results:
            found.append((r, next((x for x in results if x["split"] == "val"), results[0])))
    return found


def _robustness_section(found: list[tuple[RunResult, dict[str, Any]]]) -> dict[str, Any]:
    first = found[0][1]["shifts"]
    shifts = list(first)
    rows = []
    for r, x in found:
        w = x["worst_shift"]
        strongest = [f"{x['shifts'][s][-1]['specificity']:.2f}" if s in x["shifts"] else "-" for s in shifts]
        rows.append(
            [
                r.name,
                x["split"],
                f"{x['clean']['auroc']:.4f}",
                f"{x['clean']['specificity']:.3f}",
                f"{x['worst_specificity']:.3f} ({w['shift']} {w['severity']:g})",
                f"{x['mean_balanced_accuracy']:.3f}",
                f"{x['mean_ece']:.3f}",
                *strongest,
            ]
        )
    header = [
        "run",
        "shifted split",
        "clean AUROC",
        "clean spec.",
        "worst spec. (shift, severity)",
        "mean bal. acc. under shifts",
        "mean ECE under shifts",
        *(f"spec. {s} {first[s][-1]['severity']:g}" for s in shifts),
    ]
    return _table(header, rows)


def _robustness_figure(found: list[tuple[RunResult, dict[str, Any]]]) -> bytes:
    """Specificity at each shift's strongest severity, one line per run (higher and flatter is better)."""
    shifts = list(found[0][1]["shifts"])
    fig, ax = plt.subplots(figsize=(9, 3.8))
    for r, x in found:
        spec = [
            x["clean"]["specificity"],
            *(x["shifts"][s][-1]["specificity"] if s in x["shifts"] else np.nan for s in shifts),
        ]
        ax.plot(range(len(spec)), spec, "o-", ms=4, label=f"{r.name} ({x['split']})")
    ax.set_xticks(range(len(shifts) + 1), ["clean", *shifts], rotation=30, ha="right")
    ax.set(
        ylabel="specificity at the stored threshold",
        ylim=(-0.02, 1.02),
        title="Specificity under each shift at its strongest severity",
    )
    ax.legend(fontsize=7, loc="lower left")
    return fig_to_png(fig)


def _sample_grids(runs: list[RunResult]) -> list[tuple[str, bytes]]:
    """The fixed-noise sample grid of every generator behind the synthetic sets the runs trained with."""
    grids, seen = [], set()
    for r in runs:
        for syn in r.meta["config"]["data"].get("synthetic", []):
            prov = Path(syn) / "provenance.json"
            if not prov.is_file():
                continue
            p = json.loads(prov.read_text())
            samples = Path(p["generator"]) / "samples.png"
            if samples.is_file() and samples not in seen:
                seen.add(samples)
                grids.append(
                    (
                        f"DCGAN samples, {p['label']} (generator {Path(p['generator']).name}, "
                        f"sha256 {p['generator_sha256'][:12]})",
                        samples.read_bytes(),
                    )
                )
    return grids


def _roc_figure(runs: list[RunResult], title: str) -> bytes:
    fig, ax = plt.subplots(figsize=(5.2, 5))
    for r in runs:
        vals = list(r.predictions.values())
        p, y, g = (np.array([v[i] for v in vals]) for i in range(3))
        grid, curve, lo, hi = roc_band(p, y, g)
        line = ax.plot(grid, curve, label=f"{r.name} ({r.metrics['at_threshold']['auroc']['value']:.3f})")[0]
        ax.fill_between(grid, lo, hi, alpha=0.12, color=line.get_color())
    ax.plot([0, 1], [0, 1], ":", color="grey")
    ax.set(xlabel="1 - specificity", ylabel="sensitivity", title=title, xlim=(0, 1), ylim=(0, 1.01))
    ax.legend(loc="lower right", fontsize=7)
    return fig_to_png(fig)


def _decision_figure(runs: list[RunResult], title: str) -> bytes:
    """Every run's decision curve; the runs scored the same images (aligned here by path)."""
    paths = list(runs[0].predictions)
    y = np.array([runs[0].predictions[p][1] for p in paths])
    probs = {r.name: np.array([r.predictions[p][0] for p in paths]) for r in runs}
    return fig_to_png(decision_curves(probs, y, title))


def _md_table(t: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(t["header"]) + " |", "|" + " --- |" * len(t["header"])]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in t["rows"]])


def _render(blocks: list[tuple], embed: bool) -> str:
    """The report as Markdown, from ``("h1"|"h2"|"h3"|"p", text)``, ``("table", title, table)`` and
    ``("figure", title, file name, png)`` blocks; ``embed`` puts figures inline (for the HTML page)."""
    parts = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3"):
            parts.append(f"{'#' * int(kind[1])} {rest[0]}")
        elif kind == "p":
            parts.append(rest[0])
        elif kind == "table":
            parts += [f"## {rest[0]}", _md_table(rest[1])]
        else:  # figure
            title, name, png = rest
            src = f"data:image/png;base64,{base64.b64encode(png).decode()}" if embed else name
            parts += [f"## {title}", f"![{title}]({src})"]
    return "\n\n".join(parts) + "\n"


_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}"
    "table{border-collapse:collapse;margin:1em 0;font-size:14px}td,th{border:1px solid #ccc;padding:4px 8px}"
    "th{background:#f2f2f2}img{max-width:100%}"
)


def _html_page(markdown_text: str) -> str:
    """The same Markdown as report.md, rendered by Python-Markdown into one self-contained page."""
    import markdown

    body = markdown.markdown(markdown_text, extensions=["tables"], output_format="html")
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>pneumolab comparison</title>"
        f"<style>{_STYLE}</style></head><body>{body}</body></html>"
    )


def compare(
    runs: list[Path],
    data: str | Path,
    out: str | Path,
    *,
    split: str = "test",
    n_boot: int = 2000,
    by: str | None = None,
    extra_sections: list[tuple[str, dict[str, Any]]] | None = None,
) -> Path:
    """Evaluate (or reuse the evaluations of) ``runs`` on one split of ``data`` and write the report to ``out``.

    ``by``: also score every run on each value of this column of the CSV the images were listed in (a table).
    ``extra_sections``: more ``(title, {"header", "rows"})`` tables, appended as given (the study's protocol table).

    Returns:
        The path of ``report.html``.
    """
    if not runs:
        raise InputError("give at least one run folder to compare")
    data, out = Path(data), Path(out)
    manifest, data_dir = as_dataset(data, out / "data")  # a raw folder is indexed and cached once, for every run
    rows = range(len(manifest)) if split == "all" else manifest.indices(split)
    if len({manifest.records[i].label for i in rows}) == 1:  # before any run is scored: fail fast
        raise InputError(
            f"the {split} split of {data} holds one class only: the report ranks runs by AUROC, which needs both; "
            "score each run with pneumolab evaluate (its specificity or sensitivity is defined)"
        )
    results = [_load_run(Path(r), data_dir, split, n_boot, out / "evaluations", by) for r in runs]
    where = f"{split} split of {data.resolve().name}"
    tests = _pairwise(results, n_boot) if len(results) > 1 else {}
    study, full, cost = _main_tables(results)
    blocks: list[tuple] = [
        ("h1", "pneumolab comparison report"),
        ("p", _headline(results, tests, where)),
        ("figure", "ROC curves (95% patient-bootstrap bands)", "roc.png", _roc_figure(results, f"ROC, {where}")),
        (
            "figure",
            "Decision curves (net benefit of flagging at each threshold probability, at this set's prevalence; "
            "meaningful for calibrated probabilities)",
            "decision_curve.png",
            _decision_figure(results, f"Decision curves, {where}"),
        ),
        ("table", *full),
    ]
    if tests:
        blocks.append(("figure", "Pairwise AUROC differences", "pairwise.png", _pairwise_figure(results, tests)))
    blocks += [("table", *study), ("table", *cost)]
    if by is not None:
        blocks.append(
            (
                "table",
                f"By `{by}` (at each run's stored threshold; '-': the group lacks a class)",
                _subgroup_section(results),
            )
        )
    if (gan := _gan_section(results, n_boot)) is not None:
        title = "GAN augmentation (vs the same model and seed without; duplicated real images as control)"
        blocks.append(("table", title, gan))
    if (latent := _latent_section(results)) is not None:
        title = "Autoencoder codes vs pixels (every training second counted; encoding takes seconds)"
        blocks.append(("table", title, latent))
    if robust := _robustness_results(results, data_dir):
        title = "Robustness to acquisition shifts (`pneumolab robustness`; metrics at the stored threshold)"
        blocks.append(("table", title, _robustness_section(robust)))
        blocks.append(("figure", "Robustness to acquisition shifts", "robustness.png", _robustness_figure(robust)))
    blocks += [("table", title, table) for title, table in extra_sections or []]
    blocks += [("figure", caption, f"samples-{i}.png", png) for i, (caption, png) in enumerate(_sample_grids(results))]
    cards = ", ".join(f"`{RunDir(r.run_dir).path / 'MODEL_CARD.md'}`" for r in results)
    galleries = [f"`{r.metrics['plots']['errors']}`" for r in results if "errors" in r.metrics.get("plots", {})]
    errors = (
        f" Each run's errors to look at (its most confident false positives with Grad-CAM, and its false "
        f"negatives): {', '.join(galleries)}."
        if galleries
        else ""
    )
    blocks += [
        ("h2", "About this report"),
        (
            "p",
            f"Data: the {split} split of `{data.resolve()}`. Thresholds were chosen on each run's validation split "
            f"when training ended and are not changed here. Intervals are 95% percentile CIs from a bootstrap that "
            f"resamples patients ({n_boot} resamples; an image without a patient id is resampled as its own patient, "
            "which narrows the intervals if a patient has several; the ECE's is reflected about the estimate, as the "
            "ECE is biased upward on a few hundred images: `pneumolab evaluate` gives its noise floor); a difference "
            "is only called significant when its paired-bootstrap p-value is below 0.05 (all pairs: `pairwise.csv`). "
            "*Not assessed: the images of this split that `predict` and the service would not label with that model "
            "(its feature guard, a chest radiograph's proportions); they are scored in every number above. Model "
            f"cards: {cards}.{errors}",
        ),
    ]
    out.mkdir(parents=True, exist_ok=True)
    for kind, *rest in blocks:
        if kind == "figure":
            with atomic_path(out / rest[1], suffix=".png") as tmp:
                tmp.write_bytes(rest[2])
    if tests:
        atomic_write_text(out / "pairwise.csv", _pairwise_csv(results, tests))
    atomic_write_text(out / "report.md", _render(blocks, embed=False))
    atomic_write_text(out / "report.html", _html_page(_render(blocks, embed=True)))
    return out / "report.html"
