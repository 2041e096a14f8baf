"""Model registry: ``name -> builder + spec``. The only place that knows architectures by name.

Every builder takes keyword-only ``num_classes``, ``in_chans``, ``dropout`` and ``weights`` (a local
ImageNet state dict; nothing is ever downloaded) and returns an ``nn.Module`` mapping
``(B, in_chans, H, W)`` to ``(B, num_classes)`` logits.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pneumolab.errors import InputError

__all__ = ["ModelSpec", "count_flops", "create_model", "get_spec", "list_models", "model_table", "register_model"]


@dataclass(frozen=True)
class ModelSpec:
    """What the rest of pneumolab needs to know about a model, without branching on its name.

    Attributes:
        name: registry name.
        builder: ``builder(*, num_classes, in_chans, dropout, weights, **kwargs) -> nn.Module``.
        input_size: default square input side (px) of the ``cpu`` preset.
        gradcam_layer: dotted module path of the layer Grad-CAM looks at (last spatial feature map).
        classifier: dotted module path of the head (replaced for a new number of classes).
        first_conv: dotted module path of the stem convolution (adapted to 1 channel).
        description: one line for ``pneumolab models``.
    """

    name: str
    builder: Callable[..., nn.Module]
    input_size: int
    gradcam_layer: str
    classifier: str
    first_conv: str
    description: str
    pretrainable: bool = False  # accepts a torchvision ImageNet state dict via ``weights``


_REGISTRY: dict[str, ModelSpec] = {}


def register_model(name: str, **spec: Any) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register ``builder`` under ``name`` with its spec. A duplicate name is an error."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is already registered")
        _REGISTRY[name] = ModelSpec(name=name, builder=builder, **spec)
        return builder

    return wrap


def list_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_REGISTRY)


def get_spec(name: str) -> ModelSpec:
    """The spec of ``name``; an unknown name is an :class:`InputError` listing the valid ones."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise InputError(f"unknown model {name!r}; registered models: {', '.join(list_models())}") from None


def create_model(
    name: str,
    *,
    num_classes: int = 2,
    in_chans: int = 1,
    dropout: float | None = None,
    weights: str | Path | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build a registered model.

    Args:
        name: registry name (see :func:`list_models`).
        num_classes: outputs of the head (2: NORMAL, PNEUMONIA logits).
        in_chans: input channels (1 for X-rays).
        dropout: dropout before the head; ``None`` keeps the architecture's default.
        weights: local torchvision ImageNet state dict (``.pth``) for pretrainable models.

    Example:
        >>> m = create_model("resnet18")
        >>> m(torch.zeros(2, 1, 64, 64)).shape
        torch.Size([2, 2])
    """
    spec = get_spec(name)
    if weights is not None and not spec.pretrainable:
        raise InputError(f"model {name!r} has no ImageNet weights to load; drop --weights")
    try:
        return spec.builder(num_classes=num_classes, in_chans=in_chans, dropout=dropout, weights=weights, **kwargs)
    except TypeError as e:
        raise InputError(f"model {name!r}: bad argument ({e})") from None


def count_flops(model: nn.Module, size: int, in_chans: int = 1) -> float:
    """Forward FLOPs (multiply and add counted separately) for one ``size x size`` image."""
    from torch.utils.flop_counter import FlopCounterMode

    was_training = model.training
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.zeros(1, in_chans, size, size))
    model.train(was_training)
    return float(counter.get_total_flops())


def model_table(size: int) -> list[dict[str, Any]]:
    """One row per registered model: name, parameters, forward GFLOPs at ``size`` (None when the input is too
    small for the architecture) and description (``pneumolab models``)."""
    rows = []
    for name in list_models():
        # On the meta device: shapes only, no weights initialised or multiplied (VGG19's init alone takes ~1.5 s)
        with torch.device("meta"):
            model = create_model(name)
            try:
                gflops: float | None = count_flops(model, size) / 1e9
            except RuntimeError:  # e.g. AlexNet's pooling on a 16 px image
                gflops = None
        params = sum(p.numel() for p in model.parameters())
        rows.append({"name": name, "params": params, "gflops": gflops, "description": get_spec(name).description})
    return rows
