"""The study pipeline behind ``pneumolab study CONFIG``: from one YAML, the data, every classifier, the
autoencoder pipeline, the with/without-GAN comparison and our recipe, then the chosen runs under acquisition
shifts (``robustness``) and one comparison report.

Resumable: a finished run (it has ``summary.json``) is skipped, an interrupted one (``last.ckpt``, no
summary) resumes, a run that never finished an epoch starts again. A failed run is recorded in
``study.json`` and the rest go on; runs that need it (e.g. the GAN arms without generators) are skipped.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import Field, model_validator

from pneumolab.config import (
    AutoencoderConfig,
    PretrainConfig,
    StrictModel,
    TrainConfig,
    load_config,
    load_run_config,
)
from pneumolab.errors import InputError
from pneumolab.io import atomic_write_json, atomic_write_text, is_fresh
from pneumolab.rundir import RunDir

__all__ = ["Step", "StudyConfig", "gan_arms", "load_study_config", "plan_study", "run_study"]

log = logging.getLogger(__name__)


class StudyData(StrictModel):
    """Where the images come from and how they are split (patient-disjoint, seeded)."""

    source: Path | None = None  # Kaggle folder, MedMNIST .npz or CSV; None: the bundled sample
    image_size: int = Field(128, ge=16, le=1024)
    val_fraction: float = 0.1
    test_fraction: float = 0.0  # > 0: carve an internal test split (for a source without one, e.g. ../shared)


class StudyAutoencoder(StrictModel):
    """The study's pipeline: an autoencoder, then a CNN on its codes (every second counted)."""

    config: str = "autoencoder/cpu"
    classifier: str = "cpu/latent_cnn"
    overrides: tuple[str, ...] = ()  # for the autoencoder run


class StudyPretrain(StrictModel):
    """Self-supervised pre-training (``pneumolab pretrain``) on the study's training images, labels unused; the
    recipe (e.g. ``fast_pretrained``) starts from its encoder."""

    config: str = "pretrain/simclr"
    overrides: tuple[str, ...] = ()  # for the pretrain run


class StudyGan(StrictModel):
    """Plain / +synthetic / +duplicated-real arms per model and seed, at equal optimisation steps."""

    models: tuple[str, ...] = ("resnet34",)  # train presets cpu/<model> (or any preset path)
    seeds: tuple[int, ...] = (0,)
    per_class: int = Field(1280, ge=1)  # synthetic (and duplicated) images added per class
    epochs: int = Field(5, ge=1)  # of the plain arm; every arm takes exactly its optimiser steps
    image_size: int | None = None  # classifier size for the arms (default: the study's)
    gan_overrides: tuple[str, ...] = ()  # for both generators, e.g. trainer.max_epochs=20
    # Also train the first model under the original study's leaky protocol (real + synthetic images split
    # image by image, pneumolab.data.seed_protocol) to show in the report how much it inflates the numbers.
    seed_protocol: bool = False


class StudyConfig(StrictModel):
    """One experiment matrix. Presets: ``study/demo``, ``study/cpu``, ``study/seed``."""

    name: str
    out_dir: Path = Path("runs/study")
    data: StudyData = StudyData()
    classifiers: tuple[str, ...] = ()  # train presets, e.g. cpu/resnet34 (the study's models)
    recipe: str | None = None  # our recommended recipe (a train preset, at its own image size), also reported
    budget_min: float | None = Field(None, gt=0)  # wall clock per classifier: equal budgets, fair on a CPU
    overrides: tuple[str, ...] = ()  # for every classifier run, e.g. trainer.max_epochs=3
    recipe_overrides: tuple[str, ...] = ()  # for the recipe only, after ``overrides``
    pretrain: StudyPretrain | None = None  # an encoder for the recipe (model.init), pre-trained first
    autoencoder: StudyAutoencoder | None = None
    gan: StudyGan | None = None
    report_split: str = "test"  # the split the report evaluates; it never selects anything
    # Reported runs (by name, e.g. cnn_improved, recipe-fast; "all": every one) that `pneumolab robustness`
    # scores on the validation split under acquisition shifts before the report, which then shows them.
    robustness: tuple[str, ...] = ()

    @model_validator(mode="after")
    def _pretrain_needs_a_recipe(self) -> StudyConfig:
        if self.pretrain is not None and not self.recipe:
            raise ValueError("pretrain makes an encoder for the recipe: set recipe (e.g. fast_pretrained) too")
        return self


def load_study_config(name: str | Path, overrides: list[str] | None = None) -> StudyConfig:
    """A study YAML or preset (``demo`` = ``study/demo``), plus ``key=value`` overrides."""
    preset = str(name) if Path(name).is_file() or "/" in str(name) else f"study/{name}"
    return load_config(StudyConfig, preset, overrides)


# The file whose presence means a step of this kind finished (written last, atomically); runs: summary.json.
_DONE_MARKER = {
    "data": "manifest.csv",
    "synthetic": "manifest.csv",
    "leaky-data": "manifest.csv",
    "report": "report.html",
}


@dataclass
class Step:
    """One run of the plan: ``run()`` makes ``folder``; ``needs`` are steps that must have succeeded first."""

    name: str
    kind: str  # data | classifier | pretrain | autoencoder | gan | synthetic | leaky-data | robustness | report
    folder: Path
    run: Callable[[], Any]
    estimate_s: float | None = None
    needs: list[str] = field(default_factory=list)
    config: Any = None  # the resolved config of a training run
    report: bool = False  # a classifier that goes into the comparison report

    def done(self) -> bool:
        return (self.folder / _DONE_MARKER.get(self.kind, "summary.json")).is_file()


def _train_step(name: str, kind: str, cfg: Any, trainer_fn: Callable[..., Any], progress: bool, **kw: Any) -> Step:
    """A step that runs (or resumes, or restarts) one training run in ``cfg.out_dir / cfg.name``."""

    def run() -> Any:
        folder = Path(cfg.out_dir) / cfg.name
        if RunDir(folder).last_checkpoint.is_file():
            return trainer_fn(load_run_config(folder, type(cfg)), resume=folder, progress_bar=progress)
        shutil.rmtree(folder, ignore_errors=True)  # started, but no epoch finished: nothing worth keeping
        return trainer_fn(cfg, progress_bar=progress)

    return Step(name, kind, Path(cfg.out_dir) / cfg.name, run, config=cfg, **kw)


def _count_train(data_dir: Path, source: Path | None, val: float, test: float) -> int | None:
    """Training images: from the prepared manifest, else roughly from the source folder's image files."""
    from pneumolab.data import sample_root
    from pneumolab.data.manifest import Manifest

    if (data_dir / "manifest.csv").is_file():
        return len(Manifest.load(data_dir).indices("train", "real"))
    source = source or sample_root()
    if source.is_dir():
        n = sum(1 for p in source.rglob("*") if p.suffix.lower() in (".jpeg", ".jpg", ".png", ".dcm"))
        return int(n * (1 - val - test))
    return None


def _estimate(
    cfg: TrainConfig, n_train: int | None, rates: dict[tuple, float], budget_min: float | None
) -> float | None:
    """Seconds for a classifier run from a measured step rate (train + ~1/3 for validation), capped by the budget."""
    if n_train is None or cfg.latent is not None:
        return budget_min * 60 if budget_min else None
    from pneumolab.training.speed import classifier_step_rate
    from pneumolab.training.trainer import effective_precision, on_gpu

    # Measured where the run will train: on a GPU at its own batch size (small batches are launch-bound
    # there), on a CPU at <= 16 (the rate per image barely depends on the batch, and it is quicker to time).
    t = cfg.trainer
    device = "cuda" if on_gpu(t.accelerator) else "cpu"
    bf16 = effective_precision(t.precision, t.accelerator).startswith("bf16")
    batch = cfg.data.batch_size if device == "cuda" else min(cfg.data.batch_size, 16)
    key = (cfg.model.name, cfg.data.image_size, bf16, batch, device)
    if key not in rates:
        rates[key] = classifier_step_rate(cfg.model.name, cfg.data.image_size, batch, bf16=bf16, device=device)
    epochs = cfg.trainer.max_epochs
    if cfg.trainer.max_steps > 0:
        epochs = min(epochs, cfg.trainer.max_steps * cfg.data.batch_size / max(n_train, 1))
    images = epochs * n_train * cfg.data.augment.views  # each view is a forward and backward pass
    seconds = 10 + 1.35 * images / rates[key]  # + start-up, operating point, model card
    return min(seconds, budget_min * 60) if budget_min else seconds


def _estimate_generative(kind: str, cfg: Any, n_train: int | None, budget_min: float | None) -> float | None:
    """Seconds for an autoencoder or DCGAN run from a measured step rate (a DCGAN step ~ 2 passes of G+D)."""
    if n_train is None:
        return None
    import torch
    import torch.nn.functional as F

    from pneumolab.training.speed import step_rate

    size, batch = cfg.data.image_size, min(cfg.data.batch_size, 16)
    if kind == "autoencoder":
        from pneumolab.generative.autoencoder import ConvAutoencoder

        x = torch.randn(batch, 1, size, size)
        rate = step_rate(ConvAutoencoder(tuple(cfg.channels)), x, lambda out: F.mse_loss(out, x))
        n = n_train  # every training image, each epoch
    else:
        from pneumolab.generative.dcgan import Discriminator, Generator

        both = torch.nn.Sequential(Generator(size, cfg.nz, cfg.width), Discriminator(size, cfg.width))
        rate = step_rate(both, torch.randn(batch, cfg.nz, 1, 1), lambda out: out.mean()) / 2
        n = n_train * (0.75 if cfg.label == "PNEUMONIA" else 0.25)  # one class's images (Kermany: ~74% pneumonia)
    seconds = 10 + cfg.trainer.max_epochs * n / rate  # + start-up
    return min(seconds, budget_min * 60) if budget_min else seconds


def gan_arms(
    *,
    data: Path,
    n_train: int,
    generators: dict[str, Path],
    models: list[str],
    seeds: list[int],
    per_class: int,
    epochs: int,
    size: int,
    out: Path,
    extra: list[str] | None = None,
    progress: bool = False,
) -> tuple[list[Step], list[Step]]:
    """The GAN comparison as steps: sample each generator's set, then plain / +GAN / +duplicated-real arms per
    model and seed, each stopped after the plain arm's optimiser steps in ``epochs`` epochs of ``n_train``
    real training images."""
    from pneumolab.generative.dcgan import sample_set
    from pneumolab.training.trainer import train

    labels = sorted(generators)
    sample_steps = []
    for label, g in sorted(generators.items()):
        folder = out / "synthetic" / label
        run = lambda g=g, folder=folder: sample_set(g, per_class, folder, seed=0)  # noqa: E731
        sample_steps.append(Step(f"synthetic-{label}", "synthetic", folder, run, needs=[f"gan-{label}"]))
    arms: dict[str, dict[str, Any]] = {
        "plain": {},
        "gan": {"data.synthetic": [s.folder for s in sample_steps]},
        "dup": {"data.duplicate_real": {label: per_class for label in labels}},
    }
    runs = []
    for model in models:
        preset = model if "/" in model else f"cpu/{model}"
        for seed in seeds:
            for arm, arm_values in arms.items():
                values = {
                    "data.data_dir": data,
                    "data.image_size": size,
                    "out_dir": out / "runs",
                    "name": f"{Path(preset).stem}-{arm}-s{seed}",
                    "seed": seed,
                    "data.seed": seed,
                    "trainer.early_stopping_patience": None,  # every arm trains the same number of steps
                    **arm_values,
                }
                batch = load_config(TrainConfig, preset, extra, set_values=values).data.batch_size
                steps = epochs * math.ceil(n_train / batch)  # what the plain arm takes; every arm gets exactly this
                values |= {"trainer.max_steps": steps, "trainer.max_epochs": 10 * epochs}
                cfg = load_config(TrainConfig, preset, extra, set_values=values)
                needs = [s.name for s in sample_steps] if arm == "gan" else []
                runs.append(_train_step(cfg.name, "classifier", cfg, train, progress, needs=needs, report=True))
    return sample_steps, runs


def plan_study(cfg: StudyConfig, *, progress: bool = False, estimate: bool = False) -> list[Step]:
    """Every step of the study, in order. ``estimate``: measure step rates to estimate each run's seconds."""
    from pneumolab.training.autoencoder import train_autoencoder
    from pneumolab.training.gan import gan_config, train_gan
    from pneumolab.training.pretrain import pretrain
    from pneumolab.training.trainer import train

    root = cfg.out_dir / cfg.name
    data_dir = root / "data"
    d = cfg.data
    n_train = _count_train(data_dir, d.source, d.val_fraction, d.test_fraction)
    rates: dict[tuple, float] = {}
    budget = {"trainer.max_time_min": cfg.budget_min} if cfg.budget_min else {}
    steps = [Step("data", "data", data_dir, lambda: _prepare(cfg, data_dir))]
    protocol: tuple[Path, Path, Path] | None = None  # seed protocol: (reference run, leaky run, leaky data)

    def classifier(
        preset: str,
        extra: list[str] | tuple[str, ...] = (),
        name: str | None = None,
        needs: list[str] | None = None,
        own_size: bool = False,
        **values: Any,
    ) -> Step:
        """A classifier run of the study: ``preset`` + the study's and ``extra`` overrides, then the values the
        study fixes (its data, size, folder, budget, name)."""
        fixed = {
            "data.data_dir": data_dir,
            **({} if own_size else {"data.image_size": d.image_size}),
            "out_dir": root / "runs",
            **budget,
            **({"name": name} if name else {}),
            **values,
        }
        c = load_config(TrainConfig, preset, [*cfg.overrides, *extra], set_values=fixed)
        est = _estimate(c, n_train, rates, cfg.budget_min) if estimate else None
        return _train_step(
            c.name, "classifier", c, train, progress, estimate_s=est, needs=["data", *(needs or [])], report=True
        )

    for preset in cfg.classifiers:
        steps.append(classifier(preset))
    if cfg.recipe:
        # At its own input size: a recipe's resolution is part of the recipe (fast: 64 px).
        name = f"recipe-{Path(cfg.recipe).stem}"
        init: dict[str, Any] = {}
        if (p := cfg.pretrain) is not None:  # no wall-clock budget: the encoder is made once, like a GAN
            pc = load_config(
                PretrainConfig,
                p.config,
                list(p.overrides),
                set_values={"data.data_dir": data_dir, "out_dir": root / "pretrain"},
            )
            steps.append(_train_step("pretrain", "pretrain", pc, pretrain, progress, needs=["data"]))
            init = {"model.init": steps[-1].folder / "encoder.pt"}
        needs = ["pretrain"] if init else []
        steps.append(classifier(cfg.recipe, cfg.recipe_overrides, name=name, needs=needs, own_size=True, **init))
    if (ae := cfg.autoencoder) is not None:
        ae_values = {"data.data_dir": data_dir, "data.image_size": d.image_size, "out_dir": root / "autoencoder"}
        ae_cfg = load_config(AutoencoderConfig, ae.config, list(ae.overrides), set_values={**ae_values, **budget})
        est = _estimate_generative("autoencoder", ae_cfg, n_train, cfg.budget_min) if estimate else None
        ae_step = _train_step(
            "autoencoder", "autoencoder", ae_cfg, train_autoencoder, progress, needs=["data"], estimate_s=est
        )
        steps += [ae_step, classifier(ae.classifier, needs=["autoencoder"], latent=ae_step.folder)]
    if (g := cfg.gan) is not None:
        generators = {}
        gan_values = {"data.data_dir": data_dir, "out_dir": root / "gan"}
        for label in ("NORMAL", "PNEUMONIA"):
            gc = gan_config(label, list(g.gan_overrides), set_values=gan_values)
            est = _estimate_generative("gan", gc, n_train, None) if estimate else None
            steps.append(_train_step(f"gan-{label}", "gan", gc, train_gan, progress, needs=["data"], estimate_s=est))
            generators[label] = steps[-1].folder
        # Equal steps, not equal time, decide this comparison: no wall-clock budget on the arms.
        samples, arms = gan_arms(
            data=data_dir,
            n_train=n_train or 1,
            generators=generators,
            models=g.models,
            seeds=g.seeds,
            per_class=g.per_class,
            epochs=g.epochs,
            size=g.image_size or d.image_size,
            out=root / "gan-experiment",
            extra=cfg.overrides,
            progress=progress,
        )
        for arm in arms:
            arm.needs.append("data")
            arm.estimate_s = _estimate(arm.config, n_train, rates, None) if estimate else None
        steps += samples + arms
        if g.seed_protocol:  # compared with the same model's +GAN arm of the first seed
            leaky_data, leaky = _seed_protocol_steps(cfg, data_dir, samples, progress)
            reference = next(a for a in arms if a.name == leaky.name.replace("-seed-protocol", f"-gan-s{g.seeds[0]}"))
            steps += [leaky_data, leaky]
            protocol = (reference.folder, leaky.folder, leaky_data.folder)
    reported = [s for s in steps if s.report]
    if cfg.robustness:
        names = [s.name for s in reported]
        if unknown := sorted(set(cfg.robustness) - {"all", *names}):
            raise InputError(
                f"robustness: no reported run named {', '.join(unknown)}; choose from all, {', '.join(names)}"
            )
        shifted = reported if "all" in cfg.robustness else [s for s in reported if s.name in cfg.robustness]
        steps.append(
            Step(
                "robustness",
                "robustness",
                root / "robustness",
                lambda: _robustness(data_dir, shifted, root / "robustness"),
                needs=["data"],
            )
        )
    steps.append(
        Step(
            "report",
            "report",
            root / "report",
            lambda: _report(cfg, data_dir, reported, root / "report", protocol),
            needs=["data"],
        )
    )
    return steps


def _seed_protocol_steps(cfg: StudyConfig, data_dir: Path, samples: list[Step], progress: bool) -> tuple[Step, Step]:
    """The study's leaky protocol: pool the real and synthetic images, split them by image, and train the first
    GAN model (same preset, size and epochs as its arms) on it, for the report's protocol table."""
    from pneumolab.training.trainer import train

    g, leaky_dir = cfg.gan, cfg.out_dir / cfg.name / "seed-protocol" / "data"
    assert g is not None
    preset = g.models[0] if "/" in g.models[0] else f"cpu/{g.models[0]}"
    size = g.image_size or cfg.data.image_size

    def prepare() -> Path:
        from pneumolab.data.manifest import Manifest
        from pneumolab.data.seed_protocol import seed_protocol_manifest

        return _write_dataset(
            leaky_dir,
            size,
            lambda _: seed_protocol_manifest(Manifest.load(data_dir), [s.folder for s in samples], seed=g.seeds[0]),
        )

    values = {
        "data.data_dir": leaky_dir,
        "data.image_size": size,
        "out_dir": leaky_dir.parent / "runs",
        "name": f"{Path(preset).stem}-seed-protocol",
        "seed": g.seeds[0],
        "data.seed": g.seeds[0],
        "trainer.early_stopping_patience": None,
        "trainer.max_epochs": g.epochs,
    }
    c = load_config(TrainConfig, preset, list(cfg.overrides), set_values=values)
    return (
        Step("seed-protocol-data", "leaky-data", leaky_dir, prepare, needs=[s.name for s in samples]),
        _train_step(c.name, "classifier", c, train, progress, needs=["seed-protocol-data"]),
    )


def _write_dataset(dest: Path, size: int, make: Callable[[Path], Any]) -> Path:
    """Build a dataset folder in ``dest.partial`` (``make(tmp)`` returns its manifest), save and cache it there,
    then move it to ``dest``: the manifest, a step's done marker, appears only when everything is in place."""
    from pneumolab.data.cache import build_cache

    tmp = dest.with_name(dest.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    manifest = make(tmp)
    manifest.save(tmp)
    build_cache(manifest, size, tmp / "cache")
    shutil.rmtree(dest, ignore_errors=True)
    return tmp.rename(dest)


def _prepare(cfg: StudyConfig, data_dir: Path) -> Path:
    """Index, split (patient-disjoint) and cache the study's data, once."""
    from pneumolab.data import sample_root
    from pneumolab.data.index import index_source
    from pneumolab.data.splits import split_manifest

    d = cfg.data
    return _write_dataset(
        data_dir,
        d.image_size,
        lambda tmp: split_manifest(
            index_source(d.source or sample_root(), tmp).manifest,
            val_fraction=d.val_fraction,
            test_fraction=d.test_fraction,
        ),
    )


def _robustness(data_dir: Path, classifiers: list[Step], out: Path) -> Path:
    """Every finished run of ``classifiers`` under the shifts on the validation split (shifted images made once);
    each result goes beside its run, where the report finds it, and a summary to ``out``."""
    from pneumolab.evaluation.robustness import robustness_many

    runs = [s.folder for s in classifiers if RunDir(s.folder).model.is_file()]
    if not runs:
        raise InputError("no classifier finished: nothing to shift")
    files = {run: RunDir(run).robustness_dir(data_dir, "val") / "robustness.json" for run in runs}
    # Like the report, this step runs on every invocation, but only models without a fresh result are shifted.
    todo = [run for run, f in files.items() if not is_fresh(f, RunDir(run).model)]
    if todo:
        robustness_many(todo, data_dir, split="val", outs=[files[run].parent for run in todo])
    keys = ("worst_specificity", "worst_shift", "mean_balanced_accuracy", "mean_ece")
    results = {run.name: json.loads(f.read_text()) for run, f in files.items()}
    atomic_write_json(out / "summary.json", {name: {k: r[k] for k in keys} for name, r in results.items()})
    return out


def _report(
    cfg: StudyConfig, data_dir: Path, classifiers: list[Step], out: Path, protocol: tuple[Path, Path, Path] | None
) -> Path:
    from pneumolab.data.manifest import Manifest
    from pneumolab.evaluation.protocol import protocol_section
    from pneumolab.evaluation.report import compare

    runs = [s.folder for s in classifiers if RunDir(s.folder).model.is_file()]
    if not runs:
        raise InputError("no classifier finished: nothing to report")
    split = cfg.report_split
    if not Manifest.load(data_dir).indices(split, "real"):
        raise InputError(f"the study's data has no {split!r} split; set data.test_fraction or report_split")
    extra = []
    if protocol and all(RunDir(run).model.is_file() for run in protocol[:2]):
        reference, leaky, leaky_data = protocol
        extra.append(
            (
                "The original study's protocol vs ours: how much an image-level split with synthetic images "
                "inside inflates the numbers (same model and recipe)",
                protocol_section(reference, data_dir, split, leaky, leaky_data),
            )
        )
    return compare(runs, data_dir, out, split=split, extra_sections=extra)


def run_study(
    cfg: StudyConfig,
    *,
    progress: bool = False,
    on_plan: Callable[[list[Step]], None] | None = None,
    on_step: Callable[[Step, str, float], None] | None = None,
) -> dict[str, Any]:
    """Run every step not yet done, record each outcome in ``study.json``, and return that record.

    ``progress``: each run's own progress bar. ``on_plan(steps)`` is called once the plan is final (after the
    data step, which fixes the training-set size), ``on_step(step, status, seconds)`` after each step
    (status: done, skipped, failed, blocked).
    """
    root = cfg.out_dir / cfg.name
    root.mkdir(parents=True, exist_ok=True)
    data_step, start = plan_study(cfg)[0], time.perf_counter()
    prepared = not data_step.done()
    if prepared:  # first, so that the plan below knows the exact training-set size
        data_step.run()
    data_s = time.perf_counter() - start
    steps = plan_study(cfg, progress=progress)
    if on_plan is not None:
        on_plan(steps)
    state: dict[str, Any] = {"name": cfg.name, "config": cfg.model_dump(mode="json"), "steps": {}}
    ok: set[str] = set()
    for step in steps:
        start = time.perf_counter()
        missing = [n for n in step.needs if n not in ok]
        if step.kind == "data":
            status, error = "done" if prepared else "skipped", None
        elif missing:
            status, error = "blocked", f"needs {', '.join(missing)}"
        elif step.done() and step.kind not in ("report", "robustness"):
            status, error = "skipped", None  # finished in an earlier invocation
        else:
            try:
                step.run()
                status, error = "done", None
            except Exception as e:  # one failed run must not stop the others; the record says why
                status, error = "failed", f"{type(e).__name__}: {e}"
                atomic_write_text(root / "errors" / f"{step.name}.txt", traceback.format_exc())
                log.error("study step %s failed (%s); traceback in %s", step.name, error, root / "errors")
        if status in ("done", "skipped"):
            ok.add(step.name)
        seconds = data_s if step.kind == "data" else time.perf_counter() - start
        state["steps"][step.name] = {
            "kind": step.kind,
            "folder": str(step.folder),
            "status": status,
            "seconds": round(seconds, 1),
            **({"error": error} if error else {}),
        }
        atomic_write_json(root / "study.json", state)
        if on_step:
            on_step(step, status, seconds)
    return state
