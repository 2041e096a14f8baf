"""The ``pneumolab`` command. Commands only parse, call the library and print; no logic lives here."""

from __future__ import annotations

import enum
import functools
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from pneumolab import __version__
from pneumolab.errors import InputError

__all__ = ["app", "main"]


def _examples(*lines: str) -> str:
    return "Examples:\n\n" + "\n\n".join(f"  {line}" for line in lines)


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


def _group(name: str, text: str, *examples: str) -> typer.Typer:
    """A sub-command group of ``pneumolab`` with examples in its --help."""
    group = typer.Typer(help=text, epilog=_examples(*examples), no_args_is_help=True, rich_markup_mode=None)
    app.add_typer(group, name=name)
    return group


data_app = _group(
    "data",
    "Index, validate, split and cache a chest X-ray dataset.",
    "pneumolab data index data/chest_xray --out runs/data/kermany",
    "pneumolab data split runs/data/kermany --val-fraction 0.1 --seed 0",
    "pneumolab data cache runs/data/kermany --size 128",
)
ae_app = _group(
    "autoencoder",
    "The study's convolutional autoencoder: train it, encode a dataset, guard against non-X-ray inputs.",
    "pneumolab autoencoder train -c autoencoder/cpu --data runs/data/kermany",
    "pneumolab autoencoder encode runs/autoencoder/autoencoder --data runs/data/kermany",
    "pneumolab train -c cpu/latent_cnn --data runs/data/kermany --latent runs/autoencoder/autoencoder",
)
gan_app = _group(
    "gan",
    "The study's DCGAN: one generator per class, trained on the training split; synthetic sets with provenance.",
    "pneumolab gan train --label PNEUMONIA --data runs/data/kermany",
    "pneumolab gan sample runs/gan/dcgan_PNEUMONIA --n 1280 --out runs/synthetic/pneumonia",
    "pneumolab train -c cpu/resnet34 --data runs/data/kermany data.synthetic=[runs/synthetic/pneumonia]",
)


def _command(group: typer.Typer, name: str, examples: list[str]) -> Callable:
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


class SourceVal(str, enum.Enum):
    auto = "auto"
    merge = "merge"
    keep = "keep"


Workers = Annotated[int | None, typer.Option(help="Decoding processes (default: all cores).")]
DataDir = Annotated[Path, typer.Argument(help="Dataset folder made by `pneumolab data index`.")]
SplitSeed = Annotated[int, typer.Option(help="Random seed of the split.")]


@contextmanager
def _progress(desc: str):
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


def _echo_summary(summary: dict) -> None:
    typer.echo(f"dataset: {summary['images']} images from {summary['root']} ({summary['source_kind']})")
    typer.echo(f"  {'split':<6} {'images':>7} {'NORMAL':>7} {'PNEUM.':>7} {'%pneu':>6} {'patients':>9} {'max/pt':>7}")
    for split, s in summary["splits"].items():
        patients = "unknown" if s["patients"] is None else s["patients"]
        per = "-" if s["images_per_patient_max"] is None else s["images_per_patient_max"]
        typer.echo(
            f"  {split:<6} {s['images']:>7} {s['NORMAL']:>7} {s['PNEUMONIA']:>7} "
            f"{100 * s['pneumonia_share']:>5.1f}% {patients:>9} {per:>7}"
        )
    sides = summary["shorter_side_px"]
    typer.echo(
        f"  shorter side: min {sides['min']} / median {sides['median']:g} / max {sides['max']} px; "
        f"{summary['square_224']} are 224x224"
    )
    if summary["split_settings"]:
        typer.echo(f"  validation split: {summary['split_settings']}")
    for note in summary["notes"]:
        typer.echo(f"  note: {note}")


def _index(source: Path, out: Path, strict: bool, salt: str | None, workers: int | None) -> None:
    from pneumolab.data.index import index_source

    with _progress("index") as progress:
        result = index_source(source, out, strict=strict, salt=salt, workers=workers, progress=progress)
    r = result.report
    typer.echo(f"indexed {r['images_ok']} of {r['images_listed']} images from {source} -> {out / 'manifest.csv'}")
    if result.problems:
        typer.echo(f"skipped {len(result.problems)} bad file(s) {r['problems']}; details in {out / 'problems.csv'}:")
        for p in result.problems[:10]:
            typer.echo(f"  {p.path}: {p.detail}")
    if r["converted_to_8bit_grayscale"]:
        typer.echo(f"converted to 8-bit grayscale: {r['converted_to_8bit_grayscale']}")
    if r["duplicates_within_split"]:
        typer.echo(f"byte-identical duplicates within a split (kept): {len(r['duplicates_within_split'])} group(s)")
    if r["ignored_files"]:
        reasons = Counter(entry.partition(": ")[2] for entry in r["ignored_files"])
        typer.echo(f"not indexed: {len(r['ignored_files'])} file(s); details in {out / 'index_report.json'}:")
        for reason, n in reasons.most_common():
            first = next(e.partition(": ")[0] for e in r["ignored_files"] if e.endswith(reason))
            typer.echo(f"  {n} x {reason} (e.g. {first})")


@_command(
    data_app,
    "index",
    [
        "pneumolab data index data/chest_xray --out runs/data/kermany",
        "pneumolab data index hospital.csv --out runs/data/hospital --strict",
    ],
)
def data_index(
    source: Annotated[
        Path,
        typer.Argument(help="Kaggle-layout folder, pneumoniamnist .npz, or CSV (path,label[,patient_id][,split])."),
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output dataset folder.")],
    strict: Annotated[bool, typer.Option(help="Fail on any bad file instead of skipping it.")] = False,
    salt: Annotated[
        str | None,
        typer.Option(help="Salt for hashing DICOM PatientIDs (default: $PNEUMOLAB_PATIENT_SALT or one kept in OUT)."),
    ] = None,
    workers: Workers = None,
) -> None:
    """Read every image of SOURCE, validate it and write manifest.csv, index_report.json and problems.csv to OUT."""
    _index(source, out, strict, salt, workers)


def _split(
    data_dir: Path, val_fraction: float, seed: int, by_image: bool, source_val: SourceVal, test_fraction: float = 0.0
) -> None:
    from pneumolab.data.manifest import Manifest
    from pneumolab.data.splits import split_manifest

    manifest = split_manifest(
        Manifest.load(data_dir),
        val_fraction=val_fraction,
        seed=seed,
        by_image=by_image,
        source_val=SourceVal(source_val).value,
        test_fraction=test_fraction,
    )
    manifest.save(data_dir)
    typer.echo(f"split {data_dir}: {manifest!r}")


ValFraction = Annotated[float, typer.Option(help="Share of train images (whole patients) moved to validation.")]
SourceValOpt = Annotated[
    SourceVal, typer.Option(help="Source val split: merge into train and re-split, keep, or auto (keep if >= 5%).")
]
ByImage = Annotated[bool, typer.Option(help="Allow splitting by image when there are no patient ids (MedMNIST).")]
TestFraction = Annotated[
    float, typer.Option(help="Also carve an internal, patient-disjoint test split (for a source without one).")
]


@_command(
    data_app,
    "split",
    ["pneumolab data split runs/data/kermany", "pneumolab data split runs/data/medmnist --by-image --source-val merge"],
)
def data_split(
    data_dir: DataDir,
    val_fraction: ValFraction = 0.1,
    seed: SplitSeed = 0,
    by_image: ByImage = False,
    source_val: SourceValOpt = SourceVal.auto,
    test_fraction: TestFraction = 0.0,
) -> None:
    """Carve a patient-disjoint, stratified, seeded validation split from train; test stays untouched."""
    _split(data_dir, val_fraction, seed, by_image, source_val, test_fraction)


def _cache(data_dir: Path, size: int, workers: int | None) -> None:
    import time

    from pneumolab.data.cache import build_cache, cache_path
    from pneumolab.data.manifest import Manifest

    manifest = Manifest.load(data_dir)
    existed = cache_path(manifest, size, data_dir / "cache").exists()
    start = time.perf_counter()
    with _progress(f"cache {size}px") as progress:
        path = build_cache(manifest, size, data_dir / "cache", workers=workers, progress=progress)
    how = "up to date" if existed else f"built in {time.perf_counter() - start:.1f} s"
    typer.echo(f"cache {size}x{size}: {len(manifest)} images, {path.stat().st_size / 1e6:.1f} MB, {how} ({path})")


Size = Annotated[int, typer.Option(help="Square image side in pixels.", min=16, max=1024)]


@_command(
    data_app,
    "cache",
    ["pneumolab data cache runs/data/kermany --size 128", "pneumolab data cache runs/data/kermany --size 224"],
)
def data_cache(
    data_dir: DataDir,
    size: Size = 128,
    workers: Workers = None,
) -> None:
    """Decode and resize every image once into a memory-mapped uint8 array (rebuilt when the manifest changes)."""
    _cache(data_dir, size, workers)


@_command(data_app, "summary", ["pneumolab data summary runs/data/kermany --json"])
def data_summary(
    data_dir: DataDir,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print counts per split and class, patients, image sizes and notes."""
    from pneumolab.data.manifest import Manifest
    from pneumolab.data.summary import summarize

    summary = summarize(Manifest.load(data_dir))
    typer.echo(json.dumps(summary, indent=2)) if as_json else _echo_summary(summary)


def _prepare(
    source: Path,
    out: Path,
    size: int,
    val_fraction: float,
    seed: int,
    strict: bool,
    by_image: bool,
    source_val: SourceVal,
    workers: int | None,
    test_fraction: float = 0.0,
) -> None:
    _index(source, out, strict, None, workers)
    _split(out, val_fraction, seed, by_image, source_val, test_fraction)
    _cache(out, size, workers)
    data_summary(out, as_json=False)


@_command(data_app, "prepare", ["pneumolab data prepare data/chest_xray --out runs/data/kermany --size 128"])
def data_prepare(
    source: Annotated[Path, typer.Argument(help="Kaggle-layout folder, pneumoniamnist .npz, or CSV.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Output dataset folder.")],
    size: Size = 128,
    val_fraction: ValFraction = 0.1,
    seed: SplitSeed = 0,
    strict: Annotated[bool, typer.Option(help="Fail on any bad file.")] = False,
    by_image: ByImage = False,
    source_val: SourceValOpt = SourceVal.auto,
    workers: Workers = None,
    test_fraction: TestFraction = 0.0,
) -> None:
    """index + split + cache + summary in one step."""
    _prepare(source, out, size, val_fraction, seed, strict, by_image, source_val, workers, test_fraction)


@_command(app, "demo", ["pneumolab demo", "pneumolab demo --out /tmp/pneumolab-demo data.image_size=32"])
def demo(
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides of study/demo.")] = None,
    out: Annotated[Path, typer.Option("--out", "-o", help="Where the demo writes its outputs.")] = Path("runs/study"),
) -> None:
    """The main job on the bundled sample: the whole study (preset study/demo) in a few minutes, then its report."""
    from pneumolab.data import sample_root

    typer.echo(f"pneumolab {__version__} demo on the bundled Kermany sample (CC BY 4.0, see {sample_root()}/SAMPLE.md)")
    study_cmd("demo", [f"out_dir={out}", *(overrides or [])], data=None, dry_run=False)


@_command(
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

    from pneumolab.study import load_study_config, plan_study, run_study

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
    bar = tqdm(total=len(plan_study(cfg)), desc=f"study {cfg.name}", unit="run", file=sys.stderr)

    def on_step(step, status: str, seconds: float) -> None:
        bar.update(1)
        tqdm.write(f"{status:>8} {step.kind:<12} {step.name} ({seconds:.0f} s)", file=sys.stderr)

    try:
        state = run_study(cfg, progress=sys.stderr.isatty(), on_step=on_step)
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


def _echo_metrics(r: dict) -> None:
    """The key numbers of an evaluation (``metrics.json``), each with its 95% CI."""
    m = r["at_threshold"]
    typer.echo(
        f"{r['model']} on the {r['split']} split of {r['data']}: {m['n_images']} images, {m['n_patients']} patients"
    )
    typer.echo(f"threshold {r['threshold']['value']:.4f} ({r['threshold']['origin']})")
    typer.echo(f"model: {r['site'] or 'as trained (not site-calibrated or adapted)'}")
    for key in ("auroc", "sensitivity", "specificity", "precision", "f1", "balanced_accuracy", "accuracy", "ece"):
        v = m[key]
        typer.echo(f"  {key:<18} {v['value']:.4f}  [{v['ci_low']:.4f}, {v['ci_high']:.4f}]")
    c = r["calibration"]
    typer.echo(f"  ECE {c['ece_uncalibrated']:.4f} -> {c['ece_calibrated']:.4f} (temperature {c['temperature']:.3f})")
    if "warning" in r:
        typer.echo(f"warning: {r['warning']}")
    if "alternative_threshold" in r:
        a = r["alternative_threshold"]
        am = a["metrics"]
        typer.echo(
            f"policy {a['policy']}: threshold {a['value']:.4f} ({a['origin']}): sensitivity "
            f"{am['sensitivity']['value']:.4f}, specificity {am['specificity']['value']:.4f}"
        )


def _train(cfg, resume: Path | None, progress_bar: bool = True) -> Path:
    from pneumolab.training.trainer import train

    result = train(cfg, resume=resume, progress_bar=progress_bar)
    s = result.summary
    if s:
        best = s["best_val"]
        typer.echo(
            f"done: {s['model']} @ {s['image_size']}px, best epoch {s['best_epoch']} of {s['epochs_run']}: "
            f"val AUROC {best.get('val/auroc', float('nan')):.4f}, val acc {best.get('val/acc', float('nan')):.4f}; "
            f"{s['wall_s']:.0f} s, {s['train_images_per_s']:.0f} img/s -> {result.run_dir}"
        )
    return result.run_dir


@_command(
    app,
    "train",
    [
        "pneumolab train -c cpu/resnet18 --data runs/demo/data",
        "pneumolab train -c configs/cpu/resnet34_improved.yaml --data runs/data/kermany optim.lr=3e-4",
        "pneumolab train -c seed/densenet121 --data runs/data/kermany --devices 4 --accelerator gpu",
        "pneumolab train --resume runs/train/resnet18",
        "pneumolab train --resume runs/train/resnet18 trainer.max_epochs=20",
    ],
)
def train_cmd(
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. optim.lr=3e-4.")] = None,
    config: Annotated[
        str | None, typer.Option("--config", "-c", help="YAML file or preset (cpu/NAME, seed/NAME).")
    ] = None,
    data: Annotated[Path | None, typer.Option(help="Dataset folder (same as data.data_dir=...).")] = None,
    name: Annotated[str | None, typer.Option(help="Run name: runs/train/NAME (auto-numbered if taken).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted run from its last checkpoint.")] = None,
    latent: Annotated[Path | None, typer.Option(help="Train on the codes of this autoencoder run.")] = None,
    devices: Annotated[int | None, typer.Option(help="Devices (GPUs or CPU processes) for DDP.")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Nodes for multi-node DDP (torchrun/SLURM).")] = None,
    accelerator: Annotated[str | None, typer.Option(help="cpu, gpu or auto.")] = None,
    print_config: Annotated[bool, typer.Option(help="Print the resolved config and exit.")] = False,
) -> None:
    """Train one classifier (any registered model) with validation-only early stopping and checkpointing."""
    import yaml

    from pneumolab.config import TrainConfig

    extra = list(overrides or [])
    for key, value in (
        ("name", name),
        ("latent", latent),
        ("trainer.devices", devices),
        ("trainer.num_nodes", num_nodes),
        ("trainer.accelerator", accelerator),
    ):
        if value is not None:
            extra.append(f"{key}={value}")
    cfg = _resolve(TrainConfig, config, extra, data, resume)
    if print_config:
        typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return
    _train(cfg, resume)


def _resolve(schema, config, overrides, data, resume):
    """A config from a preset/file + overrides, or a run's saved config (+ trainer.* overrides) for --resume."""
    from pneumolab.config import load_config
    from pneumolab.training.trainer import load_run_config

    extra = list(overrides or []) + ([f"data.data_dir={data}"] if data is not None else [])
    if resume is None:
        return load_config(schema, config, extra)
    if config or any(not e.startswith("trainer.") for e in extra):
        raise InputError("--resume continues a run with its saved config; only trainer.* overrides are allowed")
    return load_config(schema, None, extra, **load_run_config(resume, schema).model_dump(mode="json"))


@_command(
    ae_app,
    "train",
    [
        "pneumolab autoencoder train -c autoencoder/cpu --data runs/data/kermany",
        "pneumolab autoencoder train -c autoencoder/cpu_c16 --data runs/data/kermany trainer.max_epochs=5",
        "pneumolab autoencoder train --resume runs/autoencoder/autoencoder",
    ],
)
def ae_train_cmd(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides, e.g. channels=[32,64,128,16].")
    ] = None,
    config: Annotated[str, typer.Option("--config", "-c", help="YAML file or preset (autoencoder/cpu, ...).")] = (
        "autoencoder/cpu"
    ),
    data: Annotated[Path | None, typer.Option(help="Dataset folder (same as data.data_dir=...).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted run.")] = None,
) -> None:
    """Train the autoencoder on the training split; stores the OOD threshold from training reconstruction errors."""
    from pneumolab.config import AutoencoderConfig
    from pneumolab.training.autoencoder import train_autoencoder

    cfg = _resolve(AutoencoderConfig, None if resume else config, overrides, data, resume)
    s = train_autoencoder(cfg, resume=resume).summary
    if s:
        b = s["best_val"]
        typer.echo(
            f"done: codes {'x'.join(map(str, s['code_shape']))}, val MSE {b.get('val/loss', float('nan')):.4f}, "
            f"PSNR {b.get('val/psnr', float('nan')):.2f} dB, SSIM {b.get('val/ssim', float('nan')):.3f}, "
            f"OOD threshold {s['ood_threshold']:.4f}; {s['wall_s']:.0f} s -> {s['run_dir']}"
        )


@_command(
    gan_app,
    "train",
    [
        "pneumolab gan train --label PNEUMONIA --data runs/data/kermany",
        "pneumolab gan train --label NORMAL --data runs/data/kermany data.image_size=128 trainer.max_epochs=40",
        "pneumolab gan train --resume runs/gan/dcgan_NORMAL",
    ],
)
def gan_train_cmd(
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides, e.g. lr=1e-4.")] = None,
    label: Annotated[str, typer.Option(help="NORMAL or PNEUMONIA: the class this generator learns.")] = "PNEUMONIA",
    data: Annotated[Path | None, typer.Option(help="Dataset folder (same as data.data_dir=...).")] = None,
    config: Annotated[str | None, typer.Option("--config", "-c", help="YAML file (optional).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted run.")] = None,
) -> None:
    """Train the study's DCGAN (64 px, Adam 2e-4, beta1 0.5, 20 epochs) on one class of the training split."""
    from pneumolab.config import GanConfig
    from pneumolab.training.gan import gan_config, train_gan

    extra = list(overrides or []) + ([f"data.data_dir={data}"] if data is not None else [])
    cfg = _resolve(GanConfig, config, extra, None, resume) if resume else gan_config(label, extra, config)
    s = train_gan(cfg, resume=resume).summary
    if s:
        typer.echo(
            f"done: {s['label']} generator after {s['epochs']} epochs on {s['images']} training images; "
            f"{s['wall_s']:.0f} s -> {s['run_dir']} (samples.png, generator.pt)"
        )


@_command(gan_app, "sample", ["pneumolab gan sample runs/gan/dcgan_PNEUMONIA --n 1280 --out runs/synthetic/pneumonia"])
def gan_sample_cmd(
    run: Annotated[Path, typer.Argument(help="GAN run folder (or generator.pt).")],
    n: Annotated[int, typer.Option(help="Number of images.")] = 1280,
    out: Annotated[Path, typer.Option(help="Output folder (images, manifest, provenance.json).")] = Path(
        "runs/synthetic/set"
    ),
    seed: Annotated[int, typer.Option(help="Noise seed: the same seed gives the same images.")] = 0,
) -> None:
    """Write a synthetic training set with its provenance; add it with data.synthetic=[OUT] (train only)."""
    from pneumolab.generative.dcgan import sample_set

    path = sample_set(run, n, out, seed=seed)
    typer.echo(f"wrote {n} synthetic images with manifest.csv and provenance.json -> {path}")


@_command(
    gan_app,
    "quality",
    ["pneumolab gan quality runs/synthetic/pneumonia --data runs/data/kermany --classifier runs/train/resnet18"],
)
def gan_quality_cmd(
    synthetic: Annotated[Path, typer.Argument(help="Synthetic set made by `pneumolab gan sample`.")],
    data: Annotated[
        Path, typer.Option(help="Dataset folder: its training images of the same class are the reference.")
    ],
    classifier: Annotated[Path, typer.Option(help="Run or model.pt of a classifier trained on real X-rays.")],
    n: Annotated[int, typer.Option(help="At most this many images of each side.")] = 1000,
) -> None:
    """FID/KID in a real-X-ray classifier's feature space, precision/recall, memorisation; writes quality.json."""
    import numpy as np
    import torch

    from pneumolab.data.cache import load_cache
    from pneumolab.data.manifest import Manifest
    from pneumolab.generative.quality import ClassifierFeatures, synthetic_quality
    from pneumolab.io import atomic_write_json

    syn, real = Manifest.load(synthetic), Manifest.load(data)
    label = syn.records[0].label
    size = syn.records[0].width
    fake = np.array(load_cache(syn, size, synthetic / "cache")[:n])
    idx = [i for i in real.indices("train", "real") if real.records[i].label == label][:n]
    ref = np.array(load_cache(real, size, data / "cache")[idx])
    extractor = ClassifierFeatures(classifier)
    q = synthetic_quality(torch.from_numpy(ref)[:, None], torch.from_numpy(fake)[:, None], extractor)
    q.update({"label": label, "reference": f"{len(idx)} real {label} training images of {data}"})
    atomic_write_json(synthetic / "quality.json", q)
    typer.echo(
        f"{label}: FID {q['fid']:.4g}, KID {q['kid_mean']:.4g} +- {q['kid_std']:.2g}, precision "
        f"{q['precision']:.3f}, recall {q['recall']:.3f} (features: {q['feature_extractor']})"
    )
    typer.echo(f"memorisation: {q['memorisation']} -> {synthetic / 'quality.json'}")


@_command(ae_app, "encode", ["pneumolab autoencoder encode runs/autoencoder/autoencoder --data runs/data/kermany"])
def ae_encode_cmd(
    run: Annotated[Path, typer.Argument(help="Autoencoder run folder (or autoencoder.pt).")],
    data: Annotated[Path, typer.Option(help="Dataset folder made by `pneumolab data index`.")],
) -> None:
    """Encode every image of a dataset once (float16, cached per autoencoder and manifest)."""
    import time

    import numpy as np

    from pneumolab.data.latent import encode_manifest

    start = time.perf_counter()
    path = encode_manifest(data, run)
    codes = np.load(path, mmap_mode="r")
    typer.echo(
        f"codes {tuple(codes.shape)} float16 ({path.stat().st_size / 1e6:.1f} MB) in "
        f"{time.perf_counter() - start:.1f} s -> {path}"
    )


@_command(
    app,
    "evaluate",
    [
        "pneumolab evaluate runs/train/resnet18 --data runs/data/kermany --split val",
        "pneumolab evaluate runs/train/resnet18 --data path/to/chest_xray --split test",
        "pneumolab evaluate runs/train/resnet18/model.pt --data hospital.csv --split all --policy 'sensitivity>=0.95'",
    ],
)
def evaluate_cmd(
    model: Annotated[Path, typer.Argument(help="Run folder or model.pt.")],
    data: Annotated[Path, typer.Option(help="Dataset folder, Kaggle-layout folder, CSV or npz.")],
    split: Annotated[str, typer.Option(help="test, val, train or all.")] = "test",
    out: Annotated[Path | None, typer.Option(help="Output folder (default RUN/eval/<data>-<split>).")] = None,
    policy: Annotated[
        str | None,
        typer.Option(help="Also report the threshold this policy picks on validation, e.g. sensitivity>=0.95."),
    ] = None,
    n_boot: Annotated[int, typer.Option(help="Patient-level bootstrap resamples.")] = 2000,
    seed: Annotated[int, typer.Option(help="Bootstrap seed.")] = 0,
) -> None:
    """Predictions, metrics with patient-level 95% CIs, and plots on one split; the stored threshold is kept."""
    from pneumolab.evaluation.evaluate import evaluate

    if split not in ("test", "val", "train", "all"):
        raise InputError(f"--split {split!r}: choose test, val, train or all")
    r = evaluate(model, data, split=split, out=out, policy=policy, n_boot=n_boot, seed=seed)
    _echo_metrics(r)
    typer.echo(f"wrote {Path(r['plots']['roc']).parent}")


@_command(
    app,
    "compare",
    [
        "pneumolab compare runs/train/cnn_base runs/train/resnet18 --data runs/data/kermany --split val --out runs/rep",
        "pneumolab compare runs/train/* --data path/to/chest_xray --split test --out runs/report-test",
    ],
)
def compare_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run folders (or model files) to compare.")],
    data: Annotated[Path, typer.Option(help="Dataset folder, Kaggle-layout folder, CSV or npz.")],
    out: Annotated[Path, typer.Option(help="Folder for report.md, report.html and figures.")],
    split: Annotated[str, typer.Option(help="test, val, train or all.")] = "test",
    n_boot: Annotated[int, typer.Option(help="Patient-level bootstrap resamples.")] = 2000,
) -> None:
    """Comparison report (the study's table, CIs, paired AUROC tests, GAN section) over runs on one split."""
    from pneumolab.evaluation.report import compare

    path = compare(runs, data, out, split=split, n_boot=n_boot)
    typer.echo(f"wrote {path} and {path.with_suffix('.md')}")


NoGuard = Annotated[
    bool,
    typer.Option(
        "--no-guard", help="Label every image, even one the out-of-distribution guard would refuse (not advised)."
    ),
]


@_command(
    app,
    "predict",
    [
        "pneumolab predict runs/train/resnet18 xray1.png xray2.dcm",
        "pneumolab predict runs/train/resnet18/model.onnx scans/*.jpeg --json",
        "pneumolab predict runs/train/resnet18 xray.png --gradcam out/ --ood runs/autoencoder/autoencoder",
    ],
)
def predict_cmd(
    model: Annotated[Path, typer.Argument(help="Run folder, model.pt or model.onnx.")],
    images: Annotated[list[Path], typer.Argument(help="PNG, JPEG or DICOM files.")],
    gradcam: Annotated[Path | None, typer.Option(help="Write Grad-CAM overlays (PNG) into this folder.")] = None,
    ood: Annotated[Path | None, typer.Option(help="Also use this autoencoder run's guard.")] = None,
    no_guard: NoGuard = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Probability, label at the stored operating point and timing per image; bad files fail alone (exit 2).

    Images the guard flags (not a chest X-ray as far as it can tell) are NOT_ASSESSED: no label, no probability.
    """
    from pneumolab.errors import ImageReadError
    from pneumolab.inference.predictor import Predictor
    from pneumolab.io import atomic_path
    from pneumolab.serve.app import overlay_png

    predictor = Predictor.load(model, ood=ood, guard=not no_guard)
    failed = 0
    if not as_json:
        typer.echo(f"model {model}: {predictor.site or 'as trained (not site-calibrated or adapted)'}")
        if no_guard:
            typer.echo("warning: --no-guard: every image gets a label, even one that is not a chest X-ray")
        typer.echo(f"{'image':<40} {'P(pneumonia)':>12}  {'label':<12} ms   (threshold {predictor.threshold:.3f})")
    for path in images:
        try:
            r = predictor.predict(path.read_bytes(), name=str(path), gradcam=gradcam is not None)
        except (ImageReadError, OSError) as e:
            failed += 1
            msg = e.detail if isinstance(e, ImageReadError) else e.strerror
            typer.echo(json.dumps({"image": str(path), "error": msg}) if as_json else f"{path!s:<40} error: {msg}")
            continue
        if gradcam is not None and r.assessed:
            with atomic_path(gradcam / f"{path.stem}_gradcam.png", suffix=".png") as tmp:
                tmp.write_bytes(overlay_png(r.original, r.heatmap))
        if as_json:
            typer.echo(json.dumps({"image": str(path), **r.to_dict(), "site": predictor.site}))
        else:
            p_text = "-" if r.probability is None else f"{r.probability:.4f}"
            why = f"  ({'; '.join(r.reasons)})" if r.reasons else ""
            typer.echo(f"{path!s:<40} {p_text:>12}  {r.label:<12} {r.timings_ms['total']:.0f}{why}")
    if failed:
        raise typer.Exit(2)


SiteData = Annotated[Path, typer.Option(help="The site's images: dataset folder, Kaggle-layout folder, CSV or npz.")]
NewRun = Annotated[Path, typer.Option("--out", "-o", help="New run folder (the original run is never changed).")]
SiteSplit = Annotated[str, typer.Option(help="Which rows of --data form the site sample: all, train, val or test.")]


@_command(
    app,
    "calibrate",
    [
        "pneumolab calibrate runs/train/fast --data site/labeled_sample --out runs/site/fast-calibrated",
        "pneumolab calibrate runs/train/fast --data site.csv --out runs/site/fast-cal --policy 'sensitivity>=0.9'",
    ],
)
def calibrate_cmd(
    model: Annotated[Path, typer.Argument(help="Run folder or model.pt.")],
    data: SiteData,
    out: NewRun,
    policy: Annotated[
        str | None, typer.Option(help="Threshold policy on the site's images (default: the model's own).")
    ] = None,
    split: SiteSplit = "all",
) -> None:
    """Refit temperature and intercept and re-choose the threshold on a LABELED site sample; writes a new run."""
    from pneumolab.site_adaptation.calibrate import calibrate

    r = calibrate(model, data, out, policy=policy, split=split)
    fit = r["on_site_sample"]
    typer.echo(f"calibrated on {r['images']} labeled images of {r['data']} ({r['classes']}), policy {r['policy']}")
    typer.echo(
        f"  threshold {r['threshold']['before']:.4f} -> {r['threshold']['after']:.4f}, temperature "
        f"{r['temperature']['before']:.3f} -> {r['temperature']['after']:.3f}, "
        f"intercept {r['prior_shift']['after']:+.3f}"
    )
    typer.echo(
        f"  on the site sample itself (optimistic: fitted there): sensitivity {fit['sensitivity']:.3f}, "
        f"specificity {fit['specificity']:.3f}, ECE {fit['ece_before']:.3f} -> {fit['ece_after']:.3f}"
    )
    typer.echo(f"wrote {r['model_file']}; score it on other site images: pneumolab evaluate {out} --data OTHER")


@_command(
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
    for line in r.get("skipped_files", [])[:10]:
        typer.echo(f"  skipped {line}")
    if len(r.get("skipped_files", [])) > 10:
        typer.echo(f"  ... {len(r['skipped_files'])} files skipped in all (listed in the model's meta['site'])")
    if r["batchnorm"]:
        typer.echo(f"  BatchNorm statistics of {r['batchnorm']['layers']} layers re-estimated")
    if r["prior"]:
        p = r["prior"]
        typer.echo(
            f"  pneumonia prevalence: source {p['source']:.3f}, site estimate {p['site_estimate']:.3f} "
            f"(log-odds shift {p['prior_shift']:+.3f})"
        )
    typer.echo(f"wrote {r['model_file']}; check it on labeled site images: pneumolab evaluate {out} --data LABELED")


@_command(app, "export", ["pneumolab export runs/train/resnet18 --onnx runs/train/resnet18/model.onnx"])
def export_cmd(
    model: Annotated[Path, typer.Argument(help="Run folder or model.pt.")],
    onnx: Annotated[Path, typer.Option(help="Output .onnx file (a .onnx.json with the metadata goes beside it).")],
    tolerance: Annotated[float, typer.Option(help="Largest accepted |ONNX - PyTorch| on the sample images.")] = 1e-4,
) -> None:
    """Export to ONNX and verify ONNX Runtime against PyTorch on real sample images."""
    from pneumolab.inference.export import export_onnx

    r = export_onnx(model, onnx, tolerance=tolerance)
    typer.echo(f"wrote {r['path']}: max |ONNX - PyTorch| = {r['max_abs_diff']:.2e} on {r['images']} images")


@_command(
    app,
    "serve",
    [
        "pneumolab serve runs/train/resnet18",
        "PNEUMOLAB_TOKEN=secret pneumolab serve runs/train/resnet18 --backend onnx --ood runs/autoencoder/autoencoder",
    ],
)
def serve_cmd(
    model: Annotated[Path, typer.Argument(help="Run folder, model.pt or model.onnx.")],
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    token: Annotated[str | None, typer.Option(envvar="PNEUMOLAB_TOKEN", help="Require this bearer token.")] = None,
    backend: Annotated[str, typer.Option(help="torch or onnx.")] = "torch",
    ood: Annotated[Path | None, typer.Option(help="Also use this autoencoder run's guard.")] = None,
    no_guard: NoGuard = False,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload.")] = 20.0,
    workers: Annotated[
        int, typer.Option(help="Server processes (the cores, e.g. 2, for many concurrent clients).", min=1)
    ] = 1,
) -> None:
    """The web page and JSON API (OpenAPI docs at /docs) for one model."""
    import json
    import os

    import uvicorn

    from pneumolab.inference.predictor import Predictor
    from pneumolab.serve.app import ENV_SETTINGS, NoDelayHTTPProtocol

    if backend not in ("torch", "onnx"):
        raise InputError(f"--backend {backend!r}: choose torch or onnx")
    Predictor.load(model, backend=backend, ood=ood, guard=not no_guard)  # fail here, not in every worker
    threads = max(1, len(os.sched_getaffinity(0)) // workers)
    settings = {
        "model": str(model),
        "backend": backend,
        "ood": str(ood) if ood else None,
        "guard": not no_guard,
        "token": token,
        "max_upload_mb": max_upload_mb,
        "threads": threads,
    }
    if no_guard:
        typer.echo("warning: --no-guard: every upload gets a label, even one that is not a chest X-ray")
    os.environ[ENV_SETTINGS] = json.dumps(settings)
    typer.echo(
        f"serving {model} on http://{host}:{port} (backend {backend}, {workers} process(es) x {threads} "
        f"thread(s), token {'on' if token else 'off'})"
    )
    # A worker loads torch and the model before it answers uvicorn's health check: on 2 busy cores that takes
    # longer than uvicorn's 5 s default, and the supervisor would kill and restart it for ever.
    uvicorn.run(
        "pneumolab.serve.app:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        http=NoDelayHTTPProtocol,
        log_level="warning",
        timeout_worker_healthcheck=120,
    )


@_command(
    app,
    "tune",
    [
        "pneumolab tune -c tune/cpu_resnet18 --data runs/data/kermany",
        "pneumolab tune -c configs/tune/cpu_resnet18.yaml --data runs/data/kermany --workers 2 --trials 40",
        "pneumolab tune -c tune/cpu_resnet18 --data runs/data/kermany --storage postgresql+psycopg://user@db-host/optuna",
    ],
)
def tune_cmd(
    config: Annotated[str, typer.Option("--config", "-c", help="Tuning YAML or preset (tune/NAME).")],
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides of the tuning YAML.")] = None,
    data: Annotated[
        Path | None, typer.Option(help="Dataset folder (same as data.data_dir=... for every trial).")
    ] = None,
    trials: Annotated[
        int | None, typer.Option(help="Finished trials the study should hold (default: the YAML's).")
    ] = None,
    storage: Annotated[str | None, typer.Option(help="SQLAlchemy URL (default: SQLite in runs/tune/NAME).")] = None,
    workers: Annotated[int, typer.Option(help="Local worker processes sharing the study.")] = 1,
    out_config: Annotated[
        Path | None, typer.Option(help="Where the best config goes (default configs/tuned/NAME.yaml).")
    ] = None,
    worker: Annotated[bool, typer.Option("--worker", hidden=True)] = False,
) -> None:
    """Optuna study on validation data: each trial is a training run; pruning, budgets, resume, shared storage."""
    from pneumolab.tuning.study import load_tune_config, run_study, write_best, write_report

    cfg = load_tune_config(config, data, overrides)
    study = run_study(
        cfg, data=data, storage=storage, trials=trials, workers=workers, config_path=config, overrides=overrides
    )
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    typer.echo(f"study {cfg.name}: {len(finished)} finished trials ({len(study.trials)} in all)")
    if any(t.state.name == "COMPLETE" for t in study.trials) and not worker:  # a --workers child: the parent writes
        best = write_best(study, cfg, out_config or Path("configs/tuned") / f"{cfg.name}.yaml", data)
        typer.echo(f"best trial {study.best_trial.number}: {cfg.objective} {study.best_value:.5f} -> {best}")
        typer.echo(f"report: {write_report(study, cfg)}")


@_command(
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
    from pneumolab.evaluation.robustness import result_dir, robustness_many

    if out is not None and len(models) > 1:
        raise InputError("--out takes one model; with several, each result is written beside its model")
    outs = [out or result_dir(m, data, split) for m in models]
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


@_command(app, "models", ["pneumolab models", "pneumolab models --size 224"])
def models_cmd(size: Size = 128) -> None:
    """List every registered model with its parameters and GFLOPs at SIZE x SIZE (1 channel)."""
    from pneumolab.models import count_flops, create_model, get_spec, list_models

    typer.echo(f"{'model':<20} {'params':>12} {'GFLOPs@' + str(size):>11}  description")
    for name in list_models():
        model = create_model(name)
        params = sum(p.numel() for p in model.parameters())
        try:
            gflops = f"{count_flops(model, size) / 1e9:.3f}"
        except RuntimeError:  # input too small for this architecture
            gflops = "too small"
        typer.echo(f"{name:<20} {params:>12,} {gflops:>11}  {get_spec(name).description}")
    typer.echo("GFLOPs count a multiply and an add as two operations.")


@_command(
    app, "tensorboard", ["pneumolab tensorboard runs/train/resnet18 runs/train/cnn_base", "tensorboard --logdir runs/"]
)
def tensorboard_cmd(
    runs: Annotated[list[Path], typer.Argument(help="Run folders to compare.")],
    port: Annotated[int, typer.Option(help="Port (binds 127.0.0.1).")] = 6006,
) -> None:
    """Open TensorBoard on one or more runs (scalars, input grids, histograms, graph)."""
    import subprocess

    missing = [str(r) for r in runs if not (r / "tensorboard").is_dir()]
    if missing:
        raise InputError(f"no TensorBoard logs in {', '.join(missing)}: give folders made by `pneumolab train`")
    spec = ",".join(f"{r.name}:{r / 'tensorboard'}" for r in runs)
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


@_command(app, "version", ["pneumolab version"])
def version() -> None:
    """Print the installed version."""
    typer.echo(__version__)


def main(argv: list[str] | None = None) -> int:
    """Entry point; returns the exit code (0 ok, 2 bad input or usage)."""
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    lib = logging.getLogger("pneumolab")
    if not lib.handlers:  # main() may run many times in one process (tests)
        lib.addHandler(handler)
        lib.setLevel(logging.INFO)
        lib.propagate = False
    try:
        app(args=argv, prog_name="pneumolab")
    except SystemExit as e:  # typer/click end every run with SystemExit(code)
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0
