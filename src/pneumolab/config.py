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
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from pneumolab.errors import InputError

__all__ = ["AugmentConfig", "DataConfig", "StrictModel", "load_config", "parse_overrides"]

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
    brightness: float = Field(0.1, ge=0, le=1)
    contrast: float = Field(0.1, ge=0, le=1)
    hflip: bool = False


class DataConfig(StrictModel):
    """What the DataModule needs: a dataset folder made by ``pneumolab data index``/``split``."""

    data_dir: Path
    image_size: int = Field(128, ge=16, le=1024)
    batch_size: int = Field(32, ge=1)
    num_workers: int = Field(2, ge=0)
    balance: Literal["weights", "sampler", "none"] = "weights"
    normalization: Literal["dataset", "per_image"] = "dataset"
    augment: AugmentConfig = AugmentConfig()
    synthetic: list[Path] = []  # folders with a synthetic manifest; added to the training loader only
    seed: int = 0


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=3", "c=[1,2]", "d=text"]`` -> ``{"a": {"b": 3}, "c": [1, 2], "d": "text"}``."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise InputError(f"override {item!r} must look like key=value (e.g. image_size=128)")
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw  # a bare word is a string
        node = out
        *parents, leaf = key.strip().split(".")
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


def load_config(model: type[M], path: str | Path | None = None, overrides: list[str] | None = None, **base: Any) -> M:
    """Build ``model`` from keyword defaults, then a YAML file, then ``key=value`` overrides.

    Raises:
        InputError: unreadable YAML, an unknown key (with the nearest valid one) or a bad value.
    """
    data: dict[str, Any] = dict(base)
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            raise InputError(f"cannot read config {path}: {e}") from None
        if not isinstance(loaded, dict):
            raise InputError(f"config {path} must be a mapping of keys to values")
        data = _merge(data, loaded)
    data = _merge(data, parse_overrides(overrides or []))
    try:
        return model.model_validate(data)
    except ValidationError as e:
        msgs = []
        for err in e.errors():
            key = ".".join(str(p) for p in err["loc"])
            msg = f"{key}: {err['msg']}"
            if err["type"] == "extra_forbidden":
                near = difflib.get_close_matches(str(err["loc"][-1]), _field_names(model, err["loc"][:-1]), n=1)
                msg = f"unknown key {key!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
            msgs.append(msg)
        where = f" in {path}" if path else ""
        raise InputError(f"invalid {model.__name__}{where}: " + "; ".join(msgs)) from None
