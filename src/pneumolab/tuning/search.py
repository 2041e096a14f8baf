"""``pneumolab tune``: an Optuna study over a YAML search space, on validation data only.

Each trial is an ordinary training run (own folder, checkpoint, logs) built from the base config plus
the sampled values; per-epoch validation metrics feed a pruner. The study lives in any SQLAlchemy
storage (a SQLite file by default; PostgreSQL for several machines), so re-running the command
continues it, several processes share it, and a heartbeat marks the trial of a crashed worker failed.
"""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import Field, model_validator

from pneumolab.config import StrictModel, TrainConfig, load_config
from pneumolab.errors import InputError
from pneumolab.io import atomic_write_text

__all__ = ["SearchParam", "TuneConfig", "load_tune_config", "run_study", "write_best", "write_report"]

log = logging.getLogger(__name__)


class SearchParam(StrictModel):
    """One dimension: ``float``/``int`` between ``low`` and ``high`` (``log`` scale optional) or ``categorical``."""

    type: Literal["float", "int", "categorical"]
    low: float | None = None
    high: float | None = None
    log: bool = False
    choices: list[Any] | None = None

    @model_validator(mode="after")
    def _consistent(self) -> SearchParam:
        if self.type == "categorical":
            if not self.choices:
                raise ValueError("categorical needs a non-empty `choices` list")
        elif self.low is None or self.high is None or not self.low < self.high:
            raise ValueError(f"{self.type} needs low < high (got low={self.low}, high={self.high})")
        elif self.log and self.low <= 0:
            raise ValueError("a log-scale range needs low > 0")
        return self


class TuneConfig(StrictModel):
    name: str
    train_config: str  # the training preset or config file each trial starts from, e.g. cpu/resnet18
    overrides: list[str] = Field(default_factory=list)  # applied to every trial, e.g. trainer.max_epochs=5
    space: dict[str, SearchParam]
    # Validation only, never test. The robustness objectives score the trained model on the validation split
    # under the acquisition shifts of `pneumolab robustness` (at its validation-chosen threshold): the mean
    # balanced accuracy over all shifts and severities, or the worst specificity. They have no per-epoch
    # value, so their trials are not pruned.
    objective: Literal[
        "val/auroc", "val/acc", "val/loss", "robustness/mean_balanced_accuracy", "robustness/worst_specificity"
    ] = "val/auroc"
    trials: int = Field(20, ge=1)
    pruner: Literal["median", "hyperband", "none"] = "median"
    trial_max_time_min: float | None = Field(None, gt=0)
    study_max_time_min: float | None = Field(None, gt=0)
    out_dir: Path = Path("runs/tune")
    seed: int = 0  # of the TPE sampler

    @property
    def direction(self) -> str:
        return "minimize" if self.objective.endswith("loss") else "maximize"

    @property
    def monitor(self) -> str:
        """The per-epoch validation metric that picks each trial's checkpoint (robustness has none per epoch)."""
        return "val/auroc" if self.objective.startswith("robustness/") else self.objective


def _extreme_values(p: SearchParam) -> list[Any]:
    """Every value a trial may be given that the training config can refuse: each choice, or both bounds."""
    if p.type == "categorical":
        return list(p.choices)
    return [p.low, p.high] if p.type == "float" else [int(p.low), int(p.high)]


def load_tune_config(path: str | Path, data: Path | None = None, overrides: list[str] | None = None) -> TuneConfig:
    """Read and check a tuning YAML: every search key must be a valid training-config key and value."""
    from pneumolab.config import resolve_config_path

    cfg = load_config(TuneConfig, resolve_config_path(path), overrides)
    extra = [f"data.data_dir={data}"] if data else []
    base = {} if data else {"data": {"data_dir": "."}}
    for key, param in cfg.space.items():
        for value in _extreme_values(param):  # the upper bound too: a trial may draw it hours later
            try:
                load_config(TrainConfig, cfg.train_config, [*cfg.overrides, *extra, f"{key}={value!r}"], **base)
            except InputError as e:
                raise InputError(f"search space key {key!r} = {value!r} in {path}: {e}") from None
    return cfg


def _storage(cfg: TuneConfig, url: str | None):
    import optuna

    if url is None:
        folder = cfg.out_dir / cfg.name
        folder.mkdir(parents=True, exist_ok=True)
        url = f"sqlite:///{(folder / 'study.db').resolve()}"
    # A heartbeat lets other workers mark the running trial of a killed worker as failed. Optuna calls the argument
    # experimental and says so on every run: nothing a user can act on.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RDBStorage(url, heartbeat_interval=30, grace_period=90)


def _pruner(cfg: TuneConfig):
    import optuna

    if cfg.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
    if cfg.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner()
    return optuna.pruners.NopPruner()


def _objective(cfg: TuneConfig, data: Path | None):
    import optuna
    from optuna_integration import PyTorchLightningPruningCallback

    from pneumolab.training.trainer import train

    def objective(trial: optuna.Trial) -> float:
        sampled = []
        for key, p in cfg.space.items():
            if p.type == "categorical":
                v = trial.suggest_categorical(key, p.choices)
            elif p.type == "int":
                v = trial.suggest_int(key, int(p.low), int(p.high), log=p.log)
            else:
                v = trial.suggest_float(key, p.low, p.high, log=p.log)
            sampled.append(f"{key}={v!r}")
        budget = [f"trainer.max_time_min={cfg.trial_max_time_min}"] if cfg.trial_max_time_min else []
        robust = cfg.objective.startswith("robustness/")
        overrides = [
            *cfg.overrides,
            *budget,
            *sampled,
            f"trainer.monitor={cfg.monitor}",
            f"out_dir={cfg.out_dir / cfg.name / 'trials'}",
            f"name=trial-{trial.number:04d}",
            *([f"data.data_dir={data}"] if data else []),
        ]
        run_cfg = load_config(TrainConfig, cfg.train_config, overrides)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        pruning = [] if robust else [PyTorchLightningPruningCallback(trial, monitor=cfg.objective)]
        result = train(run_cfg, progress_bar=False, extra_callbacks=pruning)
        trial.set_user_attr("run_dir", str(result.run_dir))
        if robust:
            return _robustness_score(result.run_dir, run_cfg.data.data_dir, cfg.objective)
        value = result.summary["best_val"].get(cfg.objective)
        if value is None:
            raise optuna.TrialPruned("no validation value recorded")
        return float(value)

    return objective


def _robustness_score(run_dir: Path, data: Path, objective: str) -> float:
    """``robustness/...`` objectives from the validation split under every shift (written beside the run)."""
    from pneumolab.evaluation.robustness import robustness

    r = robustness(run_dir, data, split="val", out=run_dir / "robustness")
    return float(r[objective.removeprefix("robustness/")])  # worst_specificity or mean_balanced_accuracy


def run_study(
    cfg: TuneConfig,
    *,
    data: Path | None = None,
    storage: str | None = None,
    trials: int | None = None,
    workers: int = 1,
    config_path: str | Path | None = None,
    overrides: list[str] | None = None,
) -> Any:
    """Run (or continue) the study until it holds ``trials`` finished trials (complete or pruned).

    With ``workers > 1`` it starts that many ``pneumolab tune`` processes on the same storage and waits.
    """
    import optuna
    from optuna.study import MaxTrialsCallback
    from optuna.trial import TrialState

    total = trials or cfg.trials
    store = _storage(cfg, storage)
    study = optuna.create_study(
        study_name=cfg.name, storage=store, direction=cfg.direction, pruner=_pruner(cfg), load_if_exists=True
    )
    # Seeded for a local study, offset by the trials it already holds (a resumed study with the same seed
    # would re-draw its first trials); unseeded on a shared storage, where equal seeds make workers sample alike.
    study.sampler = optuna.samplers.TPESampler(seed=None if storage else cfg.seed + len(study.trials))
    if workers > 1:
        url = store.url if hasattr(store, "url") else str(storage)
        cmd = [
            sys.executable,
            "-m",
            "pneumolab",
            "tune",
            "-c",
            str(config_path),
            "--storage",
            url,
            "--trials",
            str(total),
            "--workers",
            "1",
            "--worker",
            *(["--data", str(data)] if data else []),
            *(overrides or []),
        ]
        procs = [subprocess.Popen(cmd, env={**os.environ}) for _ in range(workers)]
        codes = [p.wait() for p in procs]
        if any(codes):
            log.warning("worker exit codes: %s", codes)
        return optuna.load_study(study_name=cfg.name, storage=store)
    done = (TrialState.COMPLETE, TrialState.PRUNED)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if len(study.get_trials(deepcopy=False, states=done)) >= total:
        return study  # already complete: optimize() would start one more trial before its callback stops it
    study.optimize(
        _objective(cfg, data),
        n_trials=total,  # an upper bound for this process; the callback stops at `total` finished trials overall
        timeout=cfg.study_max_time_min * 60 if cfg.study_max_time_min else None,
        callbacks=[MaxTrialsCallback(total, states=done)],
        catch=(InputError,),  # a bad sampled combination fails its trial, not the study
    )
    return study


def write_best(study: Any, cfg: TuneConfig, out: str | Path, data: Path | None = None) -> Path:
    """The best trial's resolved training config, ready for ``pneumolab train -c OUT``."""
    best = study.best_trial
    overrides = [
        *cfg.overrides,
        *(f"{k}={v!r}" for k, v in best.params.items()),
        f"name={cfg.name}-tuned",
        f"trainer.monitor={cfg.monitor}",
        *([f"data.data_dir={data}"] if data else []),
    ]
    resolved = load_config(TrainConfig, cfg.train_config, overrides, **({} if data else {"data": {"data_dir": "."}}))
    body = resolved.model_dump(mode="json")
    header = (
        f"# Tuned by `pneumolab tune` (study {cfg.name}, trial {best.number}: {cfg.objective} = {best.value:.5f} "
        f"on validation). Params: {best.params}\n"
    )
    atomic_write_text(out, header + yaml.safe_dump(body, sort_keys=False))
    return Path(out)


def write_report(study: Any, cfg: TuneConfig) -> Path:
    """``report.md`` with the best trials and the Optuna plots (history, importances, parallel coordinates)."""

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import optuna.visualization.matplotlib as vis
    from optuna.exceptions import ExperimentalWarning
    from optuna.trial import TrialState

    warnings.filterwarnings("ignore", category=ExperimentalWarning)  # Optuna marks its matplotlib plots experimental
    folder = cfg.out_dir / cfg.name
    plots = {
        "history": vis.plot_optimization_history,
        "importances": vis.plot_param_importances,
        "parallel": vis.plot_parallel_coordinate,
    }
    if len({t.value for t in study.trials if t.state == TrialState.COMPLETE}) < 2:
        # every trial scored the same: the parallel coordinates have no objective axis to draw (matplotlib warns)
        log.info("no parallel plot: every complete trial has the same %s", cfg.objective)
        del plots["parallel"]
    made = []
    for name, fn in plots.items():
        try:
            ax = fn(study)
            fig = ax.figure if hasattr(ax, "figure") else ax.flat[0].figure
            fig.savefig(folder / f"{name}.png", dpi=100, bbox_inches="tight")
            plt.close(fig)
            made.append(name)
        except (ValueError, RuntimeError) as e:  # e.g. importances need 2+ complete trials
            log.info("no %s plot: %s", name, e)
    trials = sorted(
        (t for t in study.trials if t.state == TrialState.COMPLETE),
        key=lambda t: t.value,
        reverse=cfg.direction == "maximize",
    )
    counts = {s.name.lower(): sum(t.state == s for t in study.trials) for s in TrialState}
    lines = [
        f"# Tuning study `{cfg.name}`",
        "",
        f"Objective: **{cfg.objective}** on the validation split ({cfg.direction}). Trials: {counts}.",
        "",
        "| trial | value | params | run |",
        "| --- | --- | --- | --- |",
    ]
    lines += [f"| {t.number} | {t.value:.5f} | {t.params} | {t.user_attrs.get('run_dir', '')} |" for t in trials[:10]]
    lines += ["", *[f"![{n}]({n}.png)" for n in made], ""]
    atomic_write_text(folder / "report.md", "\n".join(lines))
    return folder / "report.md"
