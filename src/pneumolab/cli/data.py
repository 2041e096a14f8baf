"""``pneumolab data``: index, split, cache, summarise and prepare a dataset."""

from __future__ import annotations

import enum
import json
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from pneumolab.cli.base import DataDir, Size, Workers, command, group, progress

data_app = group(
    "data",
    "Index, validate, split and cache a chest X-ray dataset.",
    "pneumolab data index data/chest_xray --out runs/data/kermany",
    "pneumolab data split runs/data/kermany --val-fraction 0.1 --seed 0",
    "pneumolab data cache runs/data/kermany --size 128",
)


class SourceVal(str, enum.Enum):
    auto = "auto"
    merge = "merge"
    keep = "keep"


SplitSeed = Annotated[int, typer.Option(help="Random seed of the split.")]


def _echo_summary(summary: dict) -> None:
    from pneumolab.data.manifest import age_span
    from pneumolab.data.summary import SHAPE_SHORTCUT_MARGIN

    typer.echo(f"dataset: {summary['images']} images from {summary['source']} ({summary['source_kind']})")
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
    shape = summary["width_height_vs_label"]
    if shape is not None:
        typer.echo(f"  width/height vs label: AUROC {shape['auroc']:.3f} over {shape['images']} non-square images")
        if abs(shape["auroc"] - 0.5) >= SHAPE_SHORTCUT_MARGIN:
            typer.echo(
                "  warning: the images' proportions alone tell the classes apart, and a network reads them from "
                "a resized image too; train with a random stretch (data.augment.aspect; the fast recipe does)"
            )
    if ages := summary["ages_years"]:  # DICOM sources: the population a model trained here will state
        span = age_span(ages["youngest"], ages["oldest"])
        typer.echo(
            f"  patient ages (CSV or DICOM headers): {span}, known for {ages['known']} of {ages['of']} train/val images"
        )
    cached = summary["cached_sizes_px"]
    typer.echo(f"  cached sizes: {', '.join(f'{s} px' for s in cached) or 'none (pneumolab data cache DIR --size N)'}")
    if settings := summary["split_settings"]:
        how = [f"{settings['val_fraction']:.0%} of the images to validation", f"seed {settings['seed']}"]
        how += [f"{settings['test_fraction']:.0%} to test"] if settings.get("test_fraction") else []
        how += ["by image (no patient ids)"] if settings.get("by_image") else ["by patient"]
        how += [f"source val: {settings['source_val']}"] if settings.get("source_val") else []
        typer.echo(f"  split: {', '.join(how)}")
    for note in summary["notes"]:
        typer.echo(f"  note: {note}")


def _index(source: Path, out: Path, strict: bool, salt: str | None, workers: int | None) -> None:
    from pneumolab.data.index import index_source

    with progress("index") as on_progress:
        result = index_source(source, out, strict=strict, salt=salt, workers=workers, progress=on_progress)
    r = result.report
    typer.echo(f"indexed {r['images_ok']} of {r['images_listed']} images from {source} -> {out / 'manifest.csv'}")
    if result.problems:
        kinds = ", ".join(f"{n} {kind}" for kind, n in r["problems"].items())
        typer.echo(f"skipped {len(result.problems)} bad file(s) ({kinds}); details in {out / 'problems.csv'}:")
        for p in result.problems[:10]:
            typer.echo(f"  {p.path}: {p.detail}")
        if len(result.problems) > 10:
            typer.echo(f"  ... and {len(result.problems) - 10} more")
    if r["converted_to_8bit_grayscale"]:
        modes = ", ".join(f"{n} {mode}" for mode, n in r["converted_to_8bit_grayscale"].items())
        typer.echo(f"converted to 8-bit grayscale: {modes}")
    if r["duplicates_within_split"]:
        typer.echo(f"byte-identical duplicates within a split (kept): {len(r['duplicates_within_split'])} group(s)")
    if r["ignored_files"]:
        reasons = Counter(entry.partition(": ")[2] for entry in r["ignored_files"])
        typer.echo(f"not indexed: {len(r['ignored_files'])} file(s); details in {out / 'index_report.json'}:")
        for reason, n in reasons.most_common():
            first = next(e.partition(": ")[0] for e in r["ignored_files"] if e.endswith(reason))
            typer.echo(f"  {n} x {reason} (e.g. {first})")


@command(
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
        typer.Argument(help="Kaggle folder, pneumoniamnist .npz, or CSV (path,label[,patient_id][,split][,age])."),
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
    from pneumolab.data.manifest import CLASSES, SPLITS, Manifest
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
    counts = Counter((r.split, r.label) for r in manifest.records)
    parts = [
        f"{s} {sum(counts[s, c] for c in CLASSES)} ({', '.join(f'{counts[s, c]} {c}' for c in CLASSES)})"
        for s in SPLITS
        if any(counts[s, c] for c in CLASSES)
    ]
    typer.echo(f"split {data_dir}: {'; '.join(parts)}")


ValFraction = Annotated[float, typer.Option(help="Share of train images (whole patients) moved to validation.")]
SourceValOpt = Annotated[
    SourceVal, typer.Option(help="Source val split: merge into train and re-split, keep, or auto (keep if >= 5%).")
]
ByImage = Annotated[bool, typer.Option(help="Allow splitting by image when there are no patient ids (MedMNIST).")]
TestFraction = Annotated[
    float, typer.Option(help="Also carve an internal, patient-disjoint test split (for a source without one).")
]


@command(
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
    with progress(f"cache {size}px") as on_progress:
        path = build_cache(manifest, size, data_dir / "cache", workers=workers, progress=on_progress)
    how = "up to date" if existed else f"built in {time.perf_counter() - start:.1f} s"
    typer.echo(f"cache {size}x{size}: {len(manifest)} images, {path.stat().st_size / 1e6:.1f} MB, {how} ({path})")


@command(
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


@command(data_app, "summary", ["pneumolab data summary runs/data/kermany --json"])
def data_summary(
    data_dir: DataDir,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print counts per split and class, patients, image sizes and notes."""
    from pneumolab.data.manifest import Manifest
    from pneumolab.data.summary import summarize

    summary = summarize(Manifest.load(data_dir), data_dir / "cache")
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


@command(data_app, "prepare", ["pneumolab data prepare data/chest_xray --out runs/data/kermany --size 128"])
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
