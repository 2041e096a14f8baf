"""The Trainer factory and ``train()``: run directory, data, module, callbacks, loggers, fit, export.

Every command that trains a classifier goes through :func:`train`. A run writes to its own folder
``<out_dir>/<name>[-N]``: ``config.yaml`` (resolved), ``checkpoints/{best,last}.ckpt``,
``history.csv`` (one row per epoch: ours, kept across resumes; Lightning's CSVLogger rewrites its file on
every resume, so it is not used), ``tensorboard/`` events (every logged step), ``model.pt`` (the
self-describing best model) and ``summary.json``.
"""

from __future__ import annotations

import functools
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
import yaml
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
    WeightAveraging,
)
from lightning.pytorch.loggers import TensorBoardLogger
from torch.optim.swa_utils import get_ema_multi_avg_fn

from pneumolab import __version__
from pneumolab.config import TrainConfig
from pneumolab.data.datamodule import ChestXrayDataModule
from pneumolab.data.manifest import CLASSES, Manifest
from pneumolab.data.summary import training_data_record
from pneumolab.data.transforms import Preprocessing
from pneumolab.errors import InputError
from pneumolab.evaluation.calibration import apply_temperature, fit_temperature, score_reference
from pneumolab.evaluation.metrics import compute_metrics
from pneumolab.evaluation.model_card import write_model_card
from pneumolab.evaluation.predict import validation_logits, view_targets, write_val_logits
from pneumolab.evaluation.thresholds import choose_threshold, effective_images
from pneumolab.inference.guard import fit_model_guard
from pneumolab.io import atomic_path, atomic_write_json, atomic_write_text
from pneumolab.models.checkpoint import load_init_file, save_model_file, with_encoder
from pneumolab.models.registry import get_spec
from pneumolab.rundir import RunDir, read_history
from pneumolab.training.callbacks import (
    AtomicCheckpointIO,
    EpochHistory,
    EpochLog,
    TensorBoardExtras,
    Throughput,
)
from pneumolab.training.classifier import ClassifierModule
from pneumolab.training.console import quiet_frameworks, verbose

__all__ = [
    "TrainResult",
    "begin_run",
    "build_trainer",
    "effective_precision",
    "end_run",
    "fit",
    "on_gpu",
    "start_run",
    "train",
]

log = logging.getLogger(__name__)
_RUN_DIR_ENV = "PNEUMOLAB_RUN_DIR"  # lets DDP worker processes (re-launched commands) find rank 0's run folder


@dataclass
class TrainResult:
    run_dir: Path
    summary: dict[str, Any]


def build_trainer(
    cfg: TrainConfig, run_dir: Path, *, progress_bar: bool = True, extra_callbacks: list[L.Callback] | None = None
) -> tuple[L.Trainer, Throughput]:
    """A Lightning Trainer with pneumolab's callbacks and loggers (used by every training command)."""
    t, run = cfg.trainer, RunDir(run_dir)
    mode = "min" if t.monitor and t.monitor.endswith("loss") else "max"
    throughput = Throughput()
    callbacks: list[L.Callback] = [
        # Every epoch, for --resume. Lightning's save_last only saves when the best improved.
        ModelCheckpoint(dirpath=run.checkpoints, filename="last", enable_version_counter=False),
        LearningRateMonitor(logging_interval="epoch"),
        TensorBoardExtras(t.histogram_every_n_epochs, t.log_images),
        EpochHistory(run.history),
        throughput,
    ]
    # A bar redraws itself on a terminal only: to a file or a pipe it writes every refresh as a line, so there the
    # run logs one line per epoch instead (tqdm, as every other bar of pneumolab; Lightning picks Rich if installed).
    bar = progress_bar and sys.stderr.isatty()
    if bar:
        callbacks.append(TQDMProgressBar())
    elif progress_bar:
        callbacks.append(EpochLog())
    if t.monitor:  # the selected epoch (first: this is trainer.checkpoint_callback); no monitor keeps the latest
        best = ModelCheckpoint(
            dirpath=run.checkpoints,
            filename="best",
            monitor=t.monitor if t.select == "best" else None,
            mode=mode,
            enable_version_counter=False,
        )
        callbacks.insert(0, best)
    if t.ema_decay:  # swaps the average in for validation and into every checkpoint's state_dict
        # Updated after every step with the foreach EMA (one fused lerp per dtype), cheaper than
        # EMAWeightAveraging's tensor-by-tensor update (docs/BENCHMARKS.md, "Time to accuracy").
        callbacks.append(WeightAveraging(multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay)))
    if t.early_stopping_patience:
        callbacks.append(EarlyStopping(monitor=t.monitor, mode=mode, patience=t.early_stopping_patience))
    callbacks += extra_callbacks or []
    if t.accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise InputError(
            f"trainer.accelerator={t.accelerator} but PyTorch sees no CUDA GPU (torch.cuda.is_available() is False: "
            "no GPU, no driver, or a CPU-only torch build); use trainer.accelerator=auto or cpu"
        )
    n_proc = t.devices * t.num_nodes
    trainer = L.Trainer(
        default_root_dir=run_dir,
        max_epochs=t.max_epochs,
        max_steps=t.max_steps,
        max_time=None if t.max_time_min is None else {"minutes": t.max_time_min},
        precision=effective_precision(t.precision, t.accelerator),
        gradient_clip_val=t.gradient_clip,
        deterministic=deterministic_mode(t.deterministic, t.accelerator),
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy="ddp" if n_proc > 1 else "auto",
        callbacks=callbacks,
        logger=[
            TensorBoardLogger(run_dir, name="tensorboard", version="", log_graph=t.log_graph, default_hp_metric=False),
        ],
        plugins=[AtomicCheckpointIO()],
        log_every_n_steps=t.log_every_n_steps,
        enable_progress_bar=bar,
        enable_model_summary=progress_bar and verbose(),
        limit_train_batches=t.limit_train_batches,
        limit_val_batches=t.limit_val_batches,
    )
    return trainer, throughput


def begin_run(
    cfg: Any, resume: Path | None, datamodule: ChestXrayDataModule | None = None
) -> tuple[Path, Path | None, ChestXrayDataModule]:
    """What every training task (classifier, autoencoder, DCGAN) does first: the run folder and checkpoint
    to resume from (:func:`start_run`), the seed, and the data set up for fitting (``datamodule`` or the
    pixels of ``cfg.data``)."""
    run_dir, last = start_run(cfg, resume)
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    dm = datamodule or ChestXrayDataModule(cfg.data)
    dm.prepare_data()
    dm.setup("fit")
    return run_dir, last, dm


def end_run(run_dir: Path, summary: dict[str, Any]) -> TrainResult:
    """What every training task does last (on the main process): write ``summary.json``, the finished mark."""
    atomic_write_json(RunDir(run_dir).summary, summary)
    return TrainResult(run_dir, summary)


def start_run(cfg: Any, resume: Path | None) -> tuple[Path, Path | None]:
    """The run folder (new and auto-numbered, or the one to resume) and the checkpoint to resume from."""
    if resume is None:
        return Path(os.environ.get(_RUN_DIR_ENV) or RunDir.new(cfg.out_dir, cfg.name).path), None
    last = RunDir(resume).last_checkpoint
    if not last.is_file():
        raise InputError(
            f"{resume}: nothing to resume (no checkpoints/last.ckpt: it stopped before its first epoch ended); "
            "start the run again"
        )
    return Path(resume), last


def effective_precision(precision: str, accelerator: str) -> str:
    """``precision``, except bf16 on a CPU without native bfloat16 kernels (oneDNN's check: AVX-512 or AMX),
    where it is emulated and ~10x slower than fp32 (measured on an AVX2-only CPU, docs/BENCHMARKS.md)."""
    if precision.startswith("bf16") and not on_gpu(accelerator) and not _cpu_has_native_bf16():
        return "32"
    return precision


@functools.cache  # asked once per process, and said once (a study trains dozens of runs)
def _cpu_has_native_bf16() -> bool:
    native = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    if not native:
        log.info("this CPU has no native bfloat16 kernels: bf16-mixed runs train in fp32 here (faster)")
    return native


def on_gpu(accelerator: str) -> bool:
    """Whether a Trainer with this ``accelerator`` setting trains on a CUDA GPU."""
    return accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())


def deterministic_mode(deterministic: bool, accelerator: str) -> bool | str:
    """What ``L.Trainer(deterministic=...)`` gets: on a GPU, ``"warn"`` instead of ``True``.

    Some CUDA kernels have no deterministic version (the backward of ``AdaptiveAvgPool2d`` to 6x6/7x7 in
    AlexNet and VGG19); with ``True`` they raise, so those models could not train on a GPU. ``"warn"``
    keeps every deterministic kernel there is and warns about the rest. CPU runs stay bit-identical.
    """
    return "warn" if deterministic and on_gpu(accelerator) else deterministic


def fit(
    cfg: Any,
    module: L.LightningModule,
    dm: L.LightningDataModule,
    run_dir: Path,
    last: Path | None,
    progress_bar: bool,
    extra_callbacks: list[L.Callback] | None = None,
) -> tuple[L.Trainer, Throughput]:
    """Save the resolved config, then fit ``module`` on ``dm`` (any task: classifier, autoencoder, ...)."""
    with quiet_frameworks():  # the Trainer's constructor prints the GPU/TPU/AMP lines
        trainer, throughput = build_trainer(cfg, run_dir, progress_bar=progress_bar, extra_callbacks=extra_callbacks)
    if trainer.is_global_zero:  # also on resume: trainer limits may have changed
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(RunDir(run_dir).config, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    multi = trainer.world_size > 1 and _RUN_DIR_ENV not in os.environ
    if multi:
        os.environ[_RUN_DIR_ENV] = str(run_dir)  # inherited by the worker processes Lightning starts
    try:
        with quiet_frameworks():
            trainer.fit(module, datamodule=dm, ckpt_path=last, weights_only=True)
    finally:
        if multi:
            os.environ.pop(_RUN_DIR_ENV, None)
    return trainer, throughput


def train(
    cfg: TrainConfig,
    *,
    resume: Path | None = None,
    progress_bar: bool = True,
    extra_callbacks: list[L.Callback] | None = None,
) -> TrainResult:
    """Train (or, with ``resume``, continue) one classifier and export its best checkpoint.

    Args:
        cfg: the resolved config (for ``resume``, the run's own ``config.yaml``).
        resume: a run folder; training continues from its ``checkpoints/last.ckpt``.
        progress_bar: show Lightning's progress bar and model summary.
        extra_callbacks: more Lightning callbacks (e.g. Optuna's pruning callback).

    Raises:
        InputError: unknown model, bad weights file, unprepared data, nothing to resume.
    """
    get_spec(cfg.model.name)  # an unknown model fails before the data is read and summarised
    dm = None
    if cfg.latent is not None:
        from pneumolab.data.latent import LatentDataModule

        dm = LatentDataModule(cfg.data, cfg.latent)
    run_dir, last, dm = begin_run(cfg, resume, dm)
    pre = dm.preprocessing()
    model_kwargs = {"dropout": cfg.model.dropout, "in_chans": pre.input_shape[0], **cfg.model.kwargs}
    module = ClassifierModule(
        model_name=cfg.model.name,
        model_kwargs=model_kwargs,
        optim=cfg.optim.model_dump(mode="json"),
        class_weights=dm.class_weights().tolist(),
        preprocessing=pre.to_dict(),
        classes=list(pre.classes),
        config=cfg.model_dump(mode="json"),
        init_weights=None if (resume or cfg.model.weights is None) else str(cfg.model.weights),
        channels_last=cfg.trainer.channels_last,
        monitor=cfg.trainer.monitor,
    )
    init = None
    if cfg.model.init is not None:  # resumed: the checkpoint's weights replace these, the record is kept
        init = load_init_file(module.net, cfg.model.init, cfg.model.name, model_kwargs, pre)
        if last is None:
            what = "every weight but the head" if init["kind"] == "encoder" else "every weight: fine-tuning"
            log.info("starting from %s (%s)", init["file"], what)
    trainer, throughput = fit(cfg, module, dm, run_dir, last, progress_bar, extra_callbacks)
    if not trainer.is_global_zero:
        return TrainResult(run_dir, {})
    return end_run(run_dir, _finish(trainer, throughput, run_dir, cfg, init))


def _finish(
    trainer: L.Trainer, throughput: Throughput, run_dir: Path, cfg: TrainConfig, init: dict[str, Any] | None
) -> dict[str, Any]:
    """Export the best checkpoint as ``model.pt`` and write ``summary.json``; ``init``: what ``model.init``
    started from (:func:`load_init_file`), recorded in the model file."""
    ckpt_cb = trainer.checkpoint_callback
    best_path = Path(ckpt_cb.best_model_path) if ckpt_cb and ckpt_cb.best_model_path else None
    monitor = cfg.trainer.monitor
    epochs = [r for r in read_history(RunDir(run_dir).history) if monitor in r]
    best_row: dict[str, float] = {}
    if epochs and cfg.trainer.select == "last":
        best_row = epochs[-1]
    elif epochs:
        pick = min if monitor.endswith("loss") else max
        best_row = pick(epochs, key=lambda r: r.get(monitor, float("nan")))
    summary: dict[str, Any] = {
        "run_dir": str(run_dir),
        "model": cfg.model.name,
        "image_size": cfg.data.image_size,
        "epochs_run": trainer.current_epoch,
        "best_epoch": int(best_row["epoch"]) if best_row else None,
        "monitor": monitor,
        "select": cfg.trainer.select,
        "best_val": {k: round(v, 5) for k, v in best_row.items() if k.startswith("val/")},
        "stopped_early": bool(trainer.should_stop and trainer.current_epoch < cfg.trainer.max_epochs),
        **throughput.summary(),
        "version": __version__,
    }
    if best_path and best_path.is_file():
        best = ClassifierModule.load_from_checkpoint(best_path, map_location="cpu", weights_only=True)
        _slim_checkpoint(best_path)
        hp = best.hparams
        pre = Preprocessing.from_dict(dict(hp.preprocessing))
        net = with_encoder(best.net, pre)  # latent models see pixels through their autoencoder's encoder
        summary["operating_point"], val_logits, clean_logits = _operating_point(net, pre, cfg)
        guard = fit_model_guard(net, hp.model_name, pre, cfg.data.data_dir)
        manifest = Manifest.load(cfg.data.data_dir)
        meta = {
            "model_name": hp.model_name,
            "model_kwargs": dict(hp.model_kwargs),
            "preprocessing": dict(hp.preprocessing),
            "classes": list(hp.classes),
            "config": dict(hp.config),
            "metrics": {"split": "val", **summary["best_val"]},
            "best_epoch": summary["best_epoch"],
            **summary["operating_point"],
            "training_data": training_data_record(manifest),
            "ood_guard": guard,
            # the validation images' scores, for `monitor --model` to compare a site's answers with, without labels
            "reference_scores": score_reference(clean_logits, "val"),
            **({"init": init} if init else {}),
        }
        save_model_file(RunDir(run_dir).model, net, meta)  # a latent model with its encoder: self-contained
        summary["model_file"] = str(RunDir(run_dir).model)
        write_val_logits(RunDir(run_dir).val_logits, manifest, val_logits)
        write_model_card(run_dir, {**meta, "version": __version__}, [])
    return summary


# What only resuming needs; last.ckpt keeps it. The rest (weights, hyper-parameters, epoch) stays loadable.
_RESUME_ONLY = ("optimizer_states", "lr_schedulers", "callbacks", "current_model_state", "averaging_state", "loops")


def _slim_checkpoint(path: Path) -> None:
    """Rewrite the best checkpoint without optimiser, scheduler and callback state (atomically): runs resume from
    ``last.ckpt``, so in ``best.ckpt`` that state only took space (VGG19 with Adam: 1.7 GB -> 0.56 GB)."""
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    if any(k in ckpt for k in _RESUME_ONLY):
        with atomic_path(path, suffix=".ckpt") as tmp:
            torch.save({k: v for k, v in ckpt.items() if k not in _RESUME_ONLY}, tmp)


def _operating_point(
    net: torch.nn.Module, preprocessing: Preprocessing, cfg: TrainConfig
) -> tuple[dict[str, Any], np.ndarray, np.ndarray]:
    """Fit temperature scaling and choose the decision threshold, both on the validation split only (its images,
    or ``calibration_views`` augmented copies of each); ``net`` takes pixels. Also returns the validation logits
    ``(N, 2)`` or ``(views * N, 2)`` they came from, and those of the images as they are ``(N, 2)``."""
    manifest = Manifest.load(cfg.data.data_dir)
    val, views = manifest.indices("val"), cfg.calibration_views
    logits = validation_logits(
        net, preprocessing, manifest, val, cfg.data.data_dir / "cache", augment=cfg.data.augment, views=views
    )
    y = view_targets(manifest, val, len(logits))
    temperature = fit_temperature(torch.from_numpy(logits), torch.from_numpy(y))
    raw = torch.from_numpy(logits).softmax(1)[:, 1].numpy()
    calibrated = apply_temperature(torch.from_numpy(logits), temperature).numpy()
    op = choose_threshold(calibrated, y, cfg.threshold_policy)
    point = {
        "split": "val",
        "views": views,
        "sensitivity": op["sensitivity"],
        "specificity": op["specificity"],
        # images, not views (augmented copies are no new patients): what the policy's precision rests on
        "images": dict(zip(CLASSES, np.bincount(y[: len(val)].astype(int), minlength=2).tolist(), strict=True)),
        # ... and what the views add to them: the precision a site's outcomes are tested against (pneumolab monitor)
        "effective_images": effective_images(calibrated, y, op["threshold"], views),
    }
    clean = logits
    if views:
        # The same threshold on the validation images as they are. The views stand for a shifted site; on its own
        # clean images the model trades the other way (`fast`: sensitivity 0.887 and specificity 0.993 against the
        # views' 0.950 and 0.939), which is what a site as clean as the training data measures in use.
        clean = validation_logits(net, preprocessing, manifest, val, cfg.data.data_dir / "cache")
        prob = apply_temperature(torch.from_numpy(clean), temperature).numpy()
        m = compute_metrics(prob, y[: len(val)], op["threshold"])
        point["images_as_they_are"] = {"sensitivity": m["sensitivity"], "specificity": m["specificity"]}
    return (
        {
            "temperature": temperature,
            "threshold": op["threshold"],
            "threshold_policy": cfg.threshold_policy,
            "operating_point": point,
            # The prior `pneumolab adapt` shifts from: what the calibrated probabilities average to on validation.
            "class_prior": {
                "split": "val",
                "prevalence": float(y.mean()),
                "mean_probability": float(calibrated.mean()),
            },
            "calibration": {
                "split": "val",
                "views": views,
                "ece_before": compute_metrics(raw, y)["ece"],
                "ece_after": compute_metrics(calibrated, y)["ece"],
            },
        },
        logits,
        clean,
    )
