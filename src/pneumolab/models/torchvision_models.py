"""torchvision architectures of the study (VGG19, ResNet34, DenseNet121, GoogLeNet) plus ResNet18 and
two fast CPU models, with a 1-channel stem and a 2-class head.

``weights`` loads a local torchvision ImageNet state dict (never downloaded); the stem's RGB kernels
are summed into one grayscale kernel, which gives the same response to a gray image replicated
over three channels.

torchvision is imported when one of these models is built, not when they are registered: importing it costs
~1.5 s on a 2-core CPU (its ops import torch._dynamo), which every command that never builds one (predict on the
study's CNN, evaluate, serve) would pay.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from pneumolab.errors import InputError
from pneumolab.models.registry import get_spec, register_model

__all__: list[str] = []


def _set_module(model: nn.Module, path: str, new: nn.Module) -> None:
    parent, _, name = path.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, name, new)


def _load_imagenet(model: nn.Module, name: str, weights: str | Path, ignore: tuple[str, ...] = ()) -> None:
    path = Path(weights)
    if not path.is_file():
        raise InputError(f"--weights {path}: file not found (pneumolab never downloads weights; give a local .pth)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"--weights {path}: not a readable PyTorch state dict ({type(e).__name__})") from None
    state = state.get("state_dict", state) if isinstance(state, dict) else state
    state = {k: v for k, v in state.items() if not k.startswith(ignore)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    mismatched = [k for k, v in state.items() if k in model.state_dict() and model.state_dict()[k].shape != v.shape]
    if missing or unexpected or mismatched:
        raise InputError(
            f"--weights {path} does not match {name}: {len(missing)} missing keys (e.g. {missing[:2]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:2]}); use torchvision's ImageNet weights for {name}"
        )


def _adapt(model: nn.Module, name: str, *, num_classes: int, in_chans: int, dropout: float | None) -> nn.Module:
    """Swap the stem for ``in_chans`` inputs and the head for ``num_classes`` outputs (optionally after dropout)."""
    spec = get_spec(name)
    old = model.get_submodule(spec.first_conv)
    stem = nn.Conv2d(
        in_chans, old.out_channels, old.kernel_size, old.stride, old.padding, bias=old.bias is not None
    )  # (out, in_chans, k, k)
    with torch.no_grad():
        # Sum over RGB: a gray image copied to 3 channels gives the same activations as before.
        stem.weight.copy_(old.weight.sum(1, keepdim=True).repeat(1, in_chans, 1, 1) / in_chans)
        if old.bias is not None:
            stem.bias.copy_(old.bias)
    _set_module(model, spec.first_conv, stem)
    head = model.get_submodule(spec.classifier)
    linear = nn.Linear(head.in_features, num_classes)
    _set_module(model, spec.classifier, nn.Sequential(nn.Dropout(dropout), linear) if dropout else linear)
    return model


def _tv(name: str, ignore: tuple[str, ...] = (), **factory_kwargs: Any):
    def build(*, num_classes: int = 2, in_chans: int = 1, dropout: float | None = None, weights=None) -> nn.Module:
        import torchvision.models as tvm

        model = getattr(tvm, name)(weights=None, **factory_kwargs)
        if weights is not None:
            _load_imagenet(model, name, weights, ignore)
        return _adapt(model, name, num_classes=num_classes, in_chans=in_chans, dropout=dropout)

    build.__name__ = name
    build.__doc__ = f"torchvision {name} with a {{in_chans}}-channel stem and a {{num_classes}}-class head."
    return build


_TV = [
    # torchvision name, grad-cam layer, head, stem, description, factory kwargs, state-dict keys to ignore
    ("vgg19", "features.35", "classifier.6", "features.0", "VGG19 (~140M params; GPU preset)", {}, ()),
    ("resnet18", "layer4", "fc", "conv1", "ResNet18: the fast CPU baseline", {}, ()),
    ("resnet34", "layer4", "fc", "conv1", "ResNet34 (study)", {}, ()),
    ("densenet121", "features", "classifier", "features.conv0", "DenseNet121 (study)", {}, ()),
    (
        "googlenet",
        "inception5b",
        "fc",
        "conv1.conv",
        "GoogLeNet / Inception v1 (study), no aux heads",
        {"aux_logits": False, "init_weights": True, "transform_input": False},
        ("aux1.", "aux2."),
    ),
    ("mobilenet_v3_small", "features", "classifier.3", "features.0.0", "MobileNetV3-Small: fastest on a CPU", {}, ()),
    ("efficientnet_b0", "features", "classifier.1", "features.0.0", "EfficientNet-B0", {}, ()),
]

for _name, _cam, _head, _stem, _desc, _kw, _ignore in _TV:
    register_model(
        _name,
        input_size=128,
        gradcam_layer=_cam,
        classifier=_head,
        first_conv=_stem,
        description=_desc,
        pretrainable=True,
    )(_tv(_name, _ignore, **_kw))
