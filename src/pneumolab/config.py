"""Typed, validated configuration. Unknown keys are errors that name the nearest valid key.

Defaults live in the models below; a YAML file and ``key=value`` overrides (parsed as Python
literals, never ``eval``) can change them. The resolved config is saved with every run.
"""

from __future__ import annotations

import ast
import difflib
from pathlib import Path
from typing import Any, Literal, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from pneumolab.errors import InputError
from pneumolab.rundir import RunDir

__all__ = [
    "AugmentConfig",
    "AutoencoderConfig",
    "DataConfig",
    "GanConfig",
    "ModelConfig",
    "OptimConfig",
    "PretrainConfig",
    "StrictModel",
    "TrainConfig",
    "TrainerConfig",
    "load_config",
    "load_run_config",
    "nested",
    "parse_overrides",
    "preset_names",
    "resolve_config",
    "resolve_config_path",
]

M = TypeVar("M", bound="StrictModel")


class StrictModel(BaseModel):
    """Base for every config: unknown keys and wrong types are errors; instances are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class AugmentConfig(StrictModel):
    """Train-only augmentation on tensors. Defaults are mild: X-rays vary in position and exposure,
    not in anatomy.

    No horizontal flip by default: a chest X-ray is not mirror-symmetric (heart on the left, the
    laterality marker, the gastric bubble), so a flipped image is an anatomy the model never meets.
    """

    enabled: bool = True
    rotation_deg: float = Field(7.0, ge=0, le=45)
    translate: float = Field(0.05, ge=0, le=0.3)  # fraction of the side
    scale: tuple[float, float] = (0.95, 1.05)
    # > 0: each image is stretched horizontally against vertically by exp(U(-aspect, aspect)), area kept. Images
    # squashed to a square carry their original width/height in the anatomy's proportions, and in Kermany's train
    # that ratio alone separates the classes (docs/BENCHMARKS.md, issue 16): the model must not read it.
    aspect: float = Field(0.0, ge=0, le=1)
    # true: the stretch of each class is centred on the ratio that gives both classes the same median width/height
    # in train (measured on the non-square training images; `pneumolab data summary` shows how well it separates
    # them), so that the proportions carry no label on average; needs `batched` (the labels reach the batch).
    aspect_balance: bool = False
    brightness: float = Field(0.1, ge=0, le=1)
    contrast: float = Field(0.1, ge=0, le=1)
    hflip: bool = False
    # > 0: half the images get a black border of up to this fraction of the side on every edge, as
    # collimation and cropped laterality markers give them; the model must not read "normal" off the border.
    border_erase: float = Field(0.0, ge=0, le=0.3)
    # > 0: half the images are blurred by a Gaussian of sigma U(0, blur) x side / 64 pixels (detector resolution
    # and resizing differ between sites; the model must not read the diagnosis off fine texture).
    blur: float = Field(0.0, ge=0, le=3)
    # > 0: additive Gaussian noise of std U(0, noise) in [0, 1] grey levels (quantum noise, dose differs).
    noise: float = Field(0.0, ge=0, le=0.3)
    # > 0: a tone curve x ** g per image, log g ~ U(-gamma, gamma), on [0, 1] grey levels. Exposure, penetration and
    # each vendor's look-up table bend the grey scale; per-image normalisation undoes only its linear part.
    gamma: float = Field(0.0, ge=0, le=1)
    # true: the loader yields raw uint8 batches and the DataModule augments each whole batch on the device
    # (per-sample random parameters, vectorised: ~50x less CPU per image than per-image transforms, and on
    # the GPU when training there); false: torchvision's per-image transforms in the loader workers.
    batched: bool = False
    # > 1: each training batch of B images is augmented this many times, independently, and trained on as one
    # batch of V x B (targets repeated): V times the compute per step, as many steps. The fast recipe spends its
    # time this way (docs/BENCHMARKS.md, seventh round); pretrain's two SimCLR views are the same mechanism.
    views: int = Field(1, ge=1, le=8)
    # > 1: the training images come from the cache at this many times data.image_size, are augmented at that size
    # and then resized to image_size with antialiasing. Resampled at the model's own size, every rotated, shifted or
    # zoomed image is interpolated between its pixels (a blur: a 1.25x zoom keeps half the pixel-to-pixel detail of
    # an X-ray at 64 px) while the images a model is scored on are sharp. Needs `batched`; the fast recipe uses 2.
    supersample: float = Field(1.0, ge=1, le=4)

    def source_size(self, image_size: int) -> int:
        """The cache size (px) the training images are augmented from, for a model of ``image_size`` px."""
        return round(image_size * self.supersample)

    @model_validator(mode="after")
    def _batched_only(self) -> AugmentConfig:
        for what, on in (("views", self.views > 1), ("supersample", self.supersample > 1)):
            if on and not (self.enabled and self.batched):
                raise ValueError(
                    f"{what}={getattr(self, what)} augments whole batches: set data.augment.batched=true "
                    "(and enabled=true)"
                )
        return self


class DataConfig(StrictModel):
    """What the DataModule needs: a dataset folder made by ``pneumolab data index``/``split``."""

    data_dir: Path
    image_size: int = Field(128, ge=16, le=1024)
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(2, ge=0)
    balance: Literal["weights", "sampler", "none"] = "weights"
    normalization: Literal["dataset", "per_image", "equalize"] = "dataset"
    augment: AugmentConfig = AugmentConfig()
    synthetic: list[Path] = []  # folders with a synthetic manifest; added to the training loader only
    # A control for synthetic augmentation: this many extra copies of real training images per class
    # (drawn with replacement, seeded), so "more images" and "new images" can be told apart.
    duplicate_real: dict[Literal["NORMAL", "PNEUMONIA"], int] = {}
    real_train: bool = True  # false: train on the synthetic sets alone (train-on-synthetic, test-on-real)
    seed: int = 0


class ModelConfig(StrictModel):
    """Which registered model, and how to build it ("improved" variants are configs, not classes)."""

    name: str = "resnet18"
    dropout: float | None = Field(None, ge=0, lt=1)  # before the head; None keeps the architecture's default
    weights: Path | None = None  # local torchvision ImageNet state dict; never downloaded
    # An encoder file of `pneumolab pretrain` (self-supervised, on the training images) for this model: every
    # weight but the head's starts from it; or a trained model file / run folder of the same recipe: every weight
    # (fine-tuning, e.g. on a site's own labeled images). A resumed run continues from its checkpoint.
    init: Path | None = None
    kwargs: dict[str, Any] = {}


class OptimConfig(StrictModel):
    optimizer: Literal["adamw", "adam", "sgd", "muon"] = "adamw"
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    schedule: Literal["cosine", "plateau", "none"] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0)  # cosine: linear warm-up, then cosine decay to 0 over max_epochs
    plateau_patience: int = Field(2, ge=0)
    plateau_factor: float = Field(0.5, gt=0, lt=1)
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # > 0: mixup (Zhang et al. 2018) with lambda ~ Beta(alpha, alpha): each training batch is blended with a
    # shuffled copy of itself and the loss with both labels, so the model is trained between the classes too.
    mixup_alpha: float = Field(0.0, ge=0)


class TrainerConfig(StrictModel):
    max_epochs: int = Field(10, ge=1)
    max_steps: int = -1  # > 0: stop after this many optimiser steps (equal-step comparisons)
    max_time_min: float | None = Field(None, gt=0)  # wall-clock budget; stops after the current epoch
    precision: Literal["32", "bf16-mixed", "16-mixed"] = "32"
    channels_last: bool = False
    gradient_clip: float | None = Field(None, gt=0)
    # An exponential moving average of the weights and BatchNorm statistics (Lightning's WeightAveraging):
    # validation, checkpoints and the exported model use the average; training continues on the raw weights.
    # Its horizon is ~1 / (1 - decay) optimiser steps. None: off.
    ema_decay: float | None = Field(None, gt=0, lt=1)
    monitor: Literal["val/auroc", "val/loss", "val/acc"] = "val/auroc"  # validation only, never test
    # Which epoch's model becomes model.pt: "best" on `monitor` (validation), or "last", where the learning-rate
    # schedule ends. A saturated validation split ranks epochs by the noise of a few images; the fast recipe
    # keeps the last (docs/BENCHMARKS.md, eighth round). Early stopping, when on, still watches `monitor`.
    select: Literal["best", "last"] = "best"
    early_stopping_patience: int | None = Field(5, ge=1)  # None: no early stopping
    deterministic: bool = True
    accelerator: str = "auto"
    devices: int = Field(1, ge=1)
    num_nodes: int = Field(1, ge=1)
    histogram_every_n_epochs: int = Field(5, ge=0)  # 0: no weight/gradient histograms
    log_images: bool = True  # a grid of augmented inputs in TensorBoard each epoch
    log_graph: bool = True
    log_every_n_steps: int = Field(10, ge=1)
    limit_train_batches: float | int | None = None  # smoke tests only
    limit_val_batches: float | int | None = None

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_as_text(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v  # `trainer.precision=32` parses as an int


class TrainConfig(StrictModel):
    """Everything ``pneumolab train`` needs; saved resolved as ``config.yaml`` in the run and in checkpoints."""

    name: str = "run"
    out_dir: Path = Path("runs/train")
    seed: int = 0
    model: ModelConfig = ModelConfig()
    data: DataConfig
    threshold_policy: str = "youden"  # operating point chosen on validation: youden, sensitivity>=0.95, ...
    # > 0: the temperature and the threshold are fitted on this many copies of each validation image under the
    # training augmentation (`data.augment`, drawn with a fixed seed), not on the images as they are: a saturated
    # validation split puts both where a shifted site's images are not (docs/BENCHMARKS.md, sixth round)
    calibration_views: int = Field(0, ge=0, le=64)
    latent: Path | None = None  # an autoencoder run: train on its codes instead of pixels
    optim: OptimConfig = OptimConfig()
    trainer: TrainerConfig = TrainerConfig()

    @field_validator("threshold_policy")
    @classmethod
    def _known_policy(cls, v: str) -> str:
        from pneumolab.evaluation.thresholds import parse_policy

        try:
            parse_policy(v)
        except InputError as e:
            raise ValueError(str(e)) from None
        return v


class AutoencoderTrainerConfig(TrainerConfig):
    """Trainer defaults for reconstruction: select and stop on validation MSE."""

    monitor: Literal["val/loss"] = "val/loss"
    early_stopping_patience: int | None = Field(None, ge=1)
    log_graph: bool = False


class AutoencoderOptimConfig(OptimConfig):
    """The study's optimiser for its autoencoder: Adam 1e-3, no schedule, no weight decay."""

    optimizer: Literal["adamw", "adam", "sgd"] = "adam"
    weight_decay: float = Field(0.0, ge=0)
    schedule: Literal["cosine", "plateau", "none"] = "none"


class AutoencoderConfig(StrictModel):
    """``pneumolab autoencoder train``: the study's autoencoder (or a real bottleneck) on the training split."""

    name: str = "autoencoder"
    out_dir: Path = Path("runs/autoencoder")
    seed: int = 0
    channels: tuple[int, ...] = (32, 64, 128, 256)  # encoder widths; the last is the code's channels
    data: DataConfig
    optim: AutoencoderOptimConfig = AutoencoderOptimConfig()
    trainer: AutoencoderTrainerConfig = AutoencoderTrainerConfig()
    ood_percentile: float = Field(99.5, gt=50, le=100)  # of training reconstruction errors: above it = not an X-ray


class GanTrainerConfig(TrainerConfig):
    """A GAN has no validation metric to select on: keep the last epoch, no early stopping."""

    max_epochs: int = Field(20, ge=1)
    monitor: None = None  # type: ignore[assignment]
    early_stopping_patience: None = None  # type: ignore[assignment]
    log_graph: bool = False


class GanConfig(StrictModel):
    """``pneumolab gan train``: the study's DCGAN for one class, on the training split only."""

    name: str = "dcgan"
    out_dir: Path = Path("runs/gan")
    seed: int = 0
    label: Literal["NORMAL", "PNEUMONIA"] = "PNEUMONIA"
    nz: int = Field(100, ge=1)
    width: int = Field(64, ge=8)  # ngf = ndf
    lr: float = Field(2e-4, gt=0)  # Adam, beta1 0.5 (DCGAN)
    beta1: float = Field(0.5, ge=0, lt=1)
    data: DataConfig
    trainer: GanTrainerConfig = GanTrainerConfig()


class PretrainTrainerConfig(GanTrainerConfig):
    """Contrastive pre-training has no validation metric either: the last epoch is the encoder."""

    max_epochs: int = Field(30, ge=1)


class PretrainConfig(StrictModel):
    """``pneumolab pretrain``: SimCLR (Chen et al. 2020) on the training images, labels unused.

    Two augmentations of each image (``data.augment``, batched) must map close to each other and far from the
    batch's other images (NT-Xent loss on a projection of the pooled features). The encoder it writes initialises
    a classifier of the same architecture (``pneumolab train ... model.init=RUN/encoder.pt``).
    """

    name: str = "simclr"
    out_dir: Path = Path("runs/pretrain")
    seed: int = 0
    model: ModelConfig = ModelConfig(name="cnn_improved")
    data: DataConfig
    temperature: float = Field(0.2, gt=0, le=1)  # of the NT-Xent softmax
    projection_dim: int = Field(64, ge=2)  # Linear(F, 2F) -> BN -> ReLU -> Linear(2F, projection_dim)
    optim: OptimConfig = OptimConfig()
    trainer: PretrainTrainerConfig = PretrainTrainerConfig()


def _literal(raw: str, words: dict[str, Any]) -> Any:
    try:
        return words[raw.strip().lower()] if raw.strip().lower() in words else ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw  # a bare word is a string


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=3", "c=[1,2]", "d=text"]`` -> ``{"a": {"b": 3}, "c": [1, 2], "d": "text"}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"override {item!r} must look like key=value (e.g. image_size=128)")
        words = {"null": None, "true": True, "false": False}  # YAML spellings; `None`/`True` are literals already
        value = _literal(raw, words)
        if isinstance(value, str) and value.startswith("[") and value.endswith("]"):  # [a, b] with bare words
            value = [_literal(v.strip(), words) for v in value[1:-1].split(",") if v.strip()]
        out = _merge(out, nested({key.strip(): value}))
    return out


def nested(values: dict[str, Any]) -> dict[str, Any]:
    """``{"data.image_size": 64, "name": "x"}`` -> ``{"data": {"image_size": 64}, "name": "x"}``: values set by
    code as objects (paths, lists, dicts), never formatted into ``key=value`` strings and parsed back."""
    out: dict[str, Any] = {}
    for key, value in values.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in extra.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def _field_names(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Valid keys at ``loc`` (for suggesting the nearest one)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        ann = getattr(field, "annotation", None)
        if not (isinstance(ann, type) and issubclass(ann, BaseModel)):
            break
        model = ann
    return list(model.model_fields)


PRESETS = Path(__file__).parent / "configs"
# Preset families derived for every registered model: `cpu/MODEL`, `cpu/MODEL_improved`, `seed/...`.
# A family's _defaults.yaml is its recipe; a file FAMILY/MODEL.yaml, where present, replaces the derived preset.
_FAMILY_SUFFIX = {"cpu": "", "seed": "-seed"}


def resolve_config_path(name: str | Path) -> Path:
    """A config file path, or a packaged preset file such as ``tune/cpu_resnet18``."""
    path = Path(name)
    if path.is_file():
        return path
    preset = PRESETS / (str(name) if str(name).endswith(".yaml") else f"{name}.yaml")
    if preset.is_file() and not preset.name.startswith("_"):
        return preset
    names = preset_names()
    near = difflib.get_close_matches(str(name), names, n=1)
    guess = f" (did you mean {near[0]}?)" if near else ""
    raise InputError(f"config {name} not found{guess}: give a YAML file or a preset ({', '.join(names)})")


def preset_names() -> list[str]:
    """Every packaged preset: the files, and the derived ``cpu/MODEL[_improved]`` and ``seed/...``."""
    from pneumolab.models import list_models

    files = {p.relative_to(PRESETS).with_suffix("").as_posix() for p in PRESETS.rglob("*.yaml")}
    derived = {f"{fam}/{m}{v}" for fam in _FAMILY_SUFFIX for m in list_models() for v in ("", "_improved")}
    names = files | {n for n in derived if _derived_preset(n) is not None}
    return sorted(n for n in names if not n.rpartition("/")[2].startswith("_"))


def _derived_preset(name: str) -> dict[str, Any] | None:
    """``cpu/MODEL`` = the family's defaults + the model; ``cpu/MODEL_improved`` (MODEL a torchvision
    architecture) = ``cpu/MODEL`` + the family's _improved.yaml; None when ``name`` is not such a preset."""
    from pneumolab.models import get_spec, list_models

    family, _, model = str(name).removesuffix(".yaml").partition("/")
    if family not in _FAMILY_SUFFIX or "/" in model or model.startswith("_"):
        return None
    if (PRESETS / family / f"{model}.yaml").is_file():
        return _read_yaml(PRESETS / family / f"{model}.yaml")
    if model in list_models():
        own = {"name": f"{model}{_FAMILY_SUFFIX[family]}", "model": {"name": model}}
        return _merge(_read_yaml(PRESETS / family / "_defaults.yaml"), own)
    base = model.removesuffix("_improved")
    # The study's own networks have their improved versions as separate networks (cnn_improved, ...).
    if base != model and base in list_models() and get_spec(base).pretrainable:
        start = _derived_preset(f"{family}/{base}")
        improved = _merge(start, _read_yaml(PRESETS / family / "_improved.yaml"))
        return _merge(improved, {"name": f"{model}{_FAMILY_SUFFIX[family]}"})
    return None


def _read_source(name: str | Path) -> tuple[str, dict[str, Any]]:
    """``(label for messages, values)`` of a config file or preset."""
    if not Path(name).is_file() and (derived := _derived_preset(str(name))) is not None:
        return f"preset {name}", derived
    path = resolve_config_path(name)
    return str(path), _read_yaml(path)


def _read_yaml(path: Path, depth: int = 0) -> dict[str, Any]:
    """Read a YAML config; a ``base: other.yaml`` key (relative to this file) is read first and overridden."""
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as e:
        raise InputError(f"cannot read config {path}: {e}") from None
    if not isinstance(loaded, dict):
        raise InputError(f"config {path} must be a mapping of keys to values")
    if "base" in loaded:
        if depth > 8:
            raise InputError(f"config {path}: `base` chain is too deep (a cycle?)")
        loaded = _merge(_read_yaml(path.parent / str(loaded.pop("base")), depth + 1), loaded)
    return loaded


def load_config(
    schema: type[M],
    path: str | Path | None = None,
    overrides: list[str] | None = None,
    /,
    *,
    set_values: dict[str, Any] | None = None,
    **base: Any,
) -> M:
    """Build ``schema`` from keyword defaults, then a YAML file (or preset name), then ``key=value`` overrides,
    then ``set_values`` (dotted keys, e.g. ``{"data.data_dir": path}``: what a caller fixes, as objects).

    Raises:
        InputError: unreadable YAML, an unknown key (with the nearest valid one) or a bad value.
    """
    data: dict[str, Any] = dict(base)
    if path is not None:
        path, values = _read_source(path)
        data = _merge(data, values)
    data = _merge(data, parse_overrides(overrides or []))
    data = _merge(data, nested(set_values or {}))
    try:
        return schema.model_validate(data)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = f"{key}: {err['msg']}"
            if err["type"] == "extra_forbidden":
                near = difflib.get_close_matches(str(err["loc"][-1]), _field_names(schema, err["loc"][:-1]), n=1)
                msg = f"unknown key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
            msgs.append(msg)
        where = f" ({path} + overrides)" if path else ""
        raise InputError(f"invalid {schema.__name__}{where}: " + "; ".join(msgs)) from None


def load_run_config(run_dir: Path, schema: type[M] = TrainConfig) -> M:
    """The resolved config a run saved in its ``config.yaml`` (what ``--resume`` continues), as ``schema``."""
    path = RunDir(Path(run_dir)).config
    if not path.is_file():
        raise InputError(f"{run_dir} is not a training run (no config.yaml); give the folder that pneumolab made")
    return load_config(schema, path)


def resolve_config(schema: type[M], path: str | Path | None, overrides: list[str], resume: Path | None = None) -> M:
    """A new run's config (preset/file + overrides), or for ``resume`` the run's saved config + ``trainer.*``.

    A resumed run must stay the run it was: only how long and where it trains may change.
    """
    if resume is None:
        return load_config(schema, path, overrides)
    if path is not None or any(not o.startswith("trainer.") for o in overrides):
        raise InputError("--resume continues a run with its saved config; only trainer.* overrides are allowed")
    return load_config(schema, None, overrides, **load_run_config(resume, schema).model_dump(mode="json"))
