"""``pneumolab train``, ``pretrain``, ``autoencoder``, ``gan`` and ``tune``: every command that trains something."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from pneumolab.cli.base import app, command, group
from pneumolab.errors import InputError


def _with_data(overrides: list[str] | None, data: Path | None) -> list[str]:
    """``--data X`` is shorthand for the override ``data.data_dir=X``."""
    return [*(overrides or []), *([f"data.data_dir={data}"] if data is not None else [])]


ae_app = group(
    "autoencoder",
    "The study's convolutional autoencoder: train it, encode a dataset, guard against non-X-ray inputs.",
    "pneumolab autoencoder train -c autoencoder/cpu --data runs/data/kermany",
    "pneumolab autoencoder encode runs/autoencoder/autoencoder --data runs/data/kermany",
    "pneumolab train -c cpu/latent_cnn --data runs/data/kermany --latent runs/autoencoder/autoencoder",
)


gan_app = group(
    "gan",
    "The study's DCGAN: one generator per class, trained on the training split; synthetic sets with provenance.",
    "pneumolab gan train --label PNEUMONIA --data runs/data/kermany",
    "pneumolab gan sample runs/gan/dcgan_PNEUMONIA --n 1280 --out runs/synthetic/pneumonia",
    "pneumolab train -c cpu/resnet34 --data runs/data/kermany data.synthetic=[runs/synthetic/pneumonia]",
)


@command(
    app,
    "train",
    [
        "pneumolab train -c cpu/resnet18 --data runs/demo/data",
        "pneumolab train -c cpu/resnet34_improved --data runs/data/kermany optim.lr=3e-4",
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
    out: Annotated[
        Path | None, typer.Option(help="Run folder instead of runs/train/NAME (NAME-2, -3... if it is taken).")
    ] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted run from its last checkpoint.")] = None,
    latent: Annotated[Path | None, typer.Option(help="Train on the codes of this autoencoder run.")] = None,
    devices: Annotated[int | None, typer.Option(help="Devices (GPUs or CPU processes) for DDP.")] = None,
    num_nodes: Annotated[int | None, typer.Option(help="Nodes for multi-node DDP (torchrun/SLURM).")] = None,
    accelerator: Annotated[str | None, typer.Option(help="cpu, gpu or auto.")] = None,
    print_config: Annotated[bool, typer.Option(help="Print the resolved config and exit.")] = False,
) -> None:
    """Train one classifier (any registered model) with validation-only early stopping and checkpointing."""
    import yaml

    from pneumolab.config import TrainConfig, resolve_config
    from pneumolab.evaluation.thresholds import thin_validation
    from pneumolab.training.trainer import train

    extra = _with_data(overrides, data)
    if out is not None and name is not None:
        raise InputError("give --out (a run folder) or --name (a run in runs/train), not both")
    for key, value in (
        ("name", out.name if out else name),
        ("out_dir", out.parent if out else None),
        ("latent", latent),
        ("trainer.devices", devices),
        ("trainer.num_nodes", num_nodes),
        ("trainer.accelerator", accelerator),
    ):
        if value is not None:
            extra.append(f"{key}={value}")
    cfg = resolve_config(TrainConfig, config, extra, resume)
    if print_config:
        typer.echo(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return
    result = train(cfg, resume=resume)
    s = result.summary
    if s:
        nan = float("nan")
        best, op = s["best_val"], s.get("operating_point", {})
        at = op.get("operating_point", {})
        where = f"val x {at['views']} augmented views" if at.get("views") else "val"
        epoch = "-" if s["best_epoch"] is None else s["best_epoch"] + 1  # history counts from 0, people from 1
        typer.echo(
            f"done: {s['model']} @ {s['image_size']}px, {s.get('select', 'best')} epoch {epoch} of {s['epochs_run']}: "
            f"val AUROC {best.get('val/auroc', nan):.4f}; at the stored threshold {op.get('threshold', nan):.3f} "
            f"({op.get('threshold_policy')}) {where} sensitivity {at.get('sensitivity', nan):.3f}, specificity "
            f"{at.get('specificity', nan):.3f}"
            + (
                f" (the images as they are: {clean['sensitivity']:.3f}, {clean['specificity']:.3f})"
                if (clean := at.get("images_as_they_are"))
                else ""
            )
            + f"; {s['wall_s']:.0f} s, {s['train_images_per_s']:.0f} img/s -> {result.run_dir}"
        )
        if warning := thin_validation(at.get("images"), op.get("threshold_policy")):
            typer.echo(f"warning: {warning}", err=True)


@command(
    app,
    "pretrain",
    [
        "pneumolab pretrain -c pretrain/simclr --data runs/data/kermany",
        "pneumolab train -c fast_pretrained --data runs/data/kermany  # from runs/pretrain/simclr/encoder.pt",
        "pneumolab pretrain --resume runs/pretrain/simclr",
    ],
)
def pretrain_cmd(
    overrides: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides, e.g. trainer.max_epochs=10.")
    ] = None,
    config: Annotated[str, typer.Option("--config", "-c", help="YAML file or preset.")] = "pretrain/simclr",
    data: Annotated[Path | None, typer.Option(help="Dataset folder (same as data.data_dir=...).")] = None,
    resume: Annotated[Path | None, typer.Option(help="Continue an interrupted run.")] = None,
) -> None:
    """Self-supervised pre-training (SimCLR) on the training images, labels unused; writes RUN/encoder.pt."""
    from pneumolab.config import PretrainConfig, resolve_config
    from pneumolab.training.pretrain import pretrain

    cfg = resolve_config(PretrainConfig, None if resume else config, _with_data(overrides, data), resume)
    s = pretrain(cfg, resume=resume).summary
    if s:
        typer.echo(
            f"done: {s['model']} encoder after {s['epochs']} epoch(s), contrastive loss {s['train_loss']:.3f}; "
            f"{s['wall_s']:.0f} s -> {s['encoder_file']}; next: pneumolab train -c fast_pretrained --data "
            f"{cfg.data.data_dir} model.init={s['encoder_file']}"
        )


@command(
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
    from pneumolab.config import AutoencoderConfig, resolve_config
    from pneumolab.training.autoencoder import train_autoencoder

    cfg = resolve_config(AutoencoderConfig, None if resume else config, _with_data(overrides, data), resume)
    s = train_autoencoder(cfg, resume=resume).summary
    if s:
        b = s["best_val"]
        typer.echo(
            f"done: codes {'x'.join(map(str, s['code_shape']))}, val MSE {b.get('val/loss', float('nan')):.4f}, "
            f"PSNR {b.get('val/psnr', float('nan')):.2f} dB, SSIM {b.get('val/ssim', float('nan')):.3f}, "
            f"OOD threshold {s['ood_threshold']:.4f}; {s['wall_s']:.0f} s -> {s['run_dir']}"
        )


@command(ae_app, "encode", ["pneumolab autoencoder encode runs/autoencoder/autoencoder --data runs/data/kermany"])
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


@command(
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
    from pneumolab.config import GanConfig, resolve_config
    from pneumolab.training.gan import gan_config, train_gan

    extra = _with_data(overrides, data)
    cfg = resolve_config(GanConfig, config, extra, resume) if resume else gan_config(label, extra, config)
    s = train_gan(cfg, resume=resume).summary
    if s:
        typer.echo(
            f"done: {s['label']} generator after {s['epochs']} epochs on {s['images']} training images; "
            f"{s['wall_s']:.0f} s -> {s['run_dir']} (samples.png, generator.pt)"
        )


@command(gan_app, "sample", ["pneumolab gan sample runs/gan/dcgan_PNEUMONIA --n 1280 --out runs/synthetic/pneumonia"])
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


@command(
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
    from pneumolab.generative.quality import score_synthetic_set

    q = score_synthetic_set(synthetic, data, classifier, n)
    typer.echo(
        f"{q['label']}: FID {q['fid']:.4g}, KID {q['kid_mean']:.4g} +- {q['kid_std']:.2g}, precision "
        f"{q['precision']:.3f}, recall {q['recall']:.3f} (features: {q['feature_extractor']})"
    )
    typer.echo(f"memorisation: {q['memorisation']} -> {synthetic / 'quality.json'}")


@command(
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
    from pneumolab.extras import require_extra

    require_extra("tune")
    from pneumolab.tuning.search import load_tune_config, run_study, write_best, write_report

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
