"""The original study's own networks: its two CNNs and its two AlexNets.

The AlexNets are exactly the structures printed in the study's report (1-channel input, 2 outputs;
layer indices match the printout so state-dict keys do too). The report gives no layer list for
its CNNs, so ``cnn_base``/``cnn_improved`` are designed here and documented in their docstrings.
"""

from __future__ import annotations

import itertools
from typing import Literal

from torch import nn

from pneumolab.errors import InputError
from pneumolab.models.registry import register_model

__all__ = ["AlexNet", "SmallCNN"]


class AlexNet(nn.Module):
    """``features`` -> ``AdaptiveAvgPool2d(6)`` -> ``classifier`` (the report's printed layout)."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = classifier

    def forward(self, x):  # (B, C, H, W) -> (B, num_classes)
        x = self.avgpool(self.features(x))  # (B, C', 6, 6)
        return self.classifier(x.flatten(1))


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(kernel_size=3, stride=2)


@register_model(
    "alexnet_base",
    input_size=128,
    gradcam_layer="features.11",
    classifier="classifier.6",
    first_conv="features.0",
    description="The study's BaseAlexNet: 5 conv 64-192-384-256-256, FC 9216-4096-4096-2 (~57M params)",
)
def alexnet_base(*, num_classes: int = 2, in_chans: int = 1, dropout: float | None = None, weights=None) -> AlexNet:
    """BaseAlexNet as printed in the report (min input 63 px)."""
    p = 0.5 if dropout is None else dropout
    features = nn.Sequential(
        nn.Conv2d(in_chans, 64, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        _pool(),
        nn.Conv2d(64, 192, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        _pool(),
        nn.Conv2d(192, 384, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(384, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(256, 256, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        _pool(),
    )
    classifier = nn.Sequential(
        nn.Dropout(p),
        nn.Linear(256 * 6 * 6, 4096),
        nn.ReLU(inplace=True),
        nn.Dropout(p),
        nn.Linear(4096, 4096),
        nn.ReLU(inplace=True),
        nn.Linear(4096, num_classes),
    )
    return AlexNet(features, classifier)


@register_model(
    "alexnet_improved",
    input_size=128,
    gradcam_layer="features.7",
    classifier="classifier.6",
    first_conv="features.0",
    description="The study's ImprovedAlexNet: 3 conv 32-64-128, FC 4608-1024-512-2 (~5M params)",
)
def alexnet_improved(*, num_classes: int = 2, in_chans: int = 1, dropout: float | None = None, weights=None) -> AlexNet:
    """ImprovedAlexNet as printed in the report (min input 63 px)."""
    p = 0.5 if dropout is None else dropout
    features = nn.Sequential(
        nn.Conv2d(in_chans, 32, kernel_size=11, stride=4, padding=2),
        nn.ReLU(inplace=True),
        _pool(),
        nn.Conv2d(32, 64, kernel_size=5, padding=2),
        nn.ReLU(inplace=True),
        _pool(),
        nn.Conv2d(64, 128, kernel_size=3, padding=1),
        nn.ReLU(inplace=True),
        _pool(),
    )
    classifier = nn.Sequential(
        nn.Dropout(p),
        nn.Linear(128 * 6 * 6, 1024),
        nn.ReLU(inplace=True),
        nn.Dropout(p),
        nn.Linear(1024, 512),
        nn.ReLU(inplace=True),
        nn.Linear(512, num_classes),
    )
    return AlexNet(features, classifier)


class SmallCNN(nn.Module):
    """Conv blocks -> global average pool -> head. Size-agnostic (any input >= 2**len(blocks) px)."""

    def __init__(self, features: nn.Sequential, head: nn.Module) -> None:
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = head

    def forward(self, x):  # (B, C, H, W) -> (B, num_classes)
        return self.head(self.pool(self.features(x)).flatten(1))  # features: (B, C', H/2^k, W/2^k)


def _norm(kind: str, channels: int) -> nn.Module:
    # Group norm (8 groups) normalises each image by itself: no batch statistics to carry to another site.
    return nn.BatchNorm2d(channels) if kind == "batch" else nn.GroupNorm(8, channels)


def _block(cin: int, cout: int, *, norm: str | None, convs: int, stride: int = 1) -> nn.Sequential:
    """``convs`` x [Conv3x3 -> norm -> ReLU], then MaxPool2; ``stride=2`` halves the map in the first convolution
    instead of in the pool (the same output size, at a quarter of the activations)."""
    layers: list[nn.Module] = []
    for i in range(convs):
        layers += [
            nn.Conv2d(cin if i == 0 else cout, cout, 3, stride=stride if i == 0 else 1, padding=1, bias=norm is None)
        ]
        layers += [_norm(norm, cout)] if norm else []
        layers += [nn.ReLU(inplace=True)]
    return nn.Sequential(*layers, nn.MaxPool2d(2) if stride == 1 else nn.Identity())


@register_model(
    "cnn_base",
    input_size=128,
    gradcam_layer="features.3.1",  # last ReLU, before the final pooling halves the map
    classifier="head.3",
    first_conv="features.0.0",
    description="The study's base CNN: 4 blocks conv3x3-ReLU-maxpool 32-64-128-128, GAP, FC 128-64-2",
)
def cnn_base(*, num_classes: int = 2, in_chans: int = 1, dropout: float | None = None, weights=None) -> SmallCNN:
    """Base CNN: 4 x [Conv3x3 -> ReLU -> MaxPool2] (32, 64, 128, 128 channels), global average pool,
    Linear(128, 64) -> ReLU -> Linear(64, num_classes). No normalisation, no dropout (unless asked)."""
    chans = [in_chans, 32, 64, 128, 128]
    features = nn.Sequential(*[_block(a, b, norm=None, convs=1) for a, b in itertools.pairwise(chans)])
    head = nn.Sequential(
        nn.Linear(128, 64), nn.ReLU(inplace=True), nn.Dropout(dropout or 0.0), nn.Linear(64, num_classes)
    )
    return SmallCNN(features, head)


@register_model(
    "cnn_improved",
    input_size=128,
    gradcam_layer="features.3.5",
    classifier="head.1",
    first_conv="features.0.0",
    description="The study's improved CNN: 4 blocks of 2x conv3x3-BN-ReLU 16-32-64-128, GAP, dropout, FC",
)
def cnn_improved(
    *,
    num_classes: int = 2,
    in_chans: int = 1,
    dropout: float | None = None,
    weights=None,
    width: int = 16,
    norm: Literal["batch", "group"] = "batch",
    stem_stride: Literal[1, 2] = 1,
) -> SmallCNN:
    """Improved CNN (deeper, BatchNorm, dropout): 4 x [(Conv3x3 -> BN -> ReLU) x 2 -> MaxPool2]
    (16, 32, 64, 128 channels), global average pool, Dropout(0.3) -> Linear(128, num_classes).

    ``width`` sets the first block's channels (each block doubles them; a multiple of 8), ``norm="group"``
    puts GroupNorm(8) where BatchNorm is (``model.kwargs={width: 32, norm: group}`` in a config). ``stem_stride=2``
    downsamples in the first convolution instead of the first pool: the first block, whose full-size maps take
    ~2/3 of a CPU training step (mostly BatchNorm and ReLU passes over them), runs at half the side."""
    if width < 8 or width % 8:
        raise InputError(f"cnn_improved: model.kwargs.width must be a multiple of 8 (>= 8), got {width}")
    if norm not in ("batch", "group"):
        raise InputError(f"cnn_improved: model.kwargs.norm must be 'batch' or 'group', got {norm!r}")
    if stem_stride not in (1, 2):
        raise InputError(f"cnn_improved: model.kwargs.stem_stride must be 1 or 2, got {stem_stride!r}")
    chans = [in_chans, width, 2 * width, 4 * width, 8 * width]
    features = nn.Sequential(
        *[
            _block(a, b, norm=norm, convs=2, stride=stem_stride if i == 0 else 1)
            for i, (a, b) in enumerate(itertools.pairwise(chans))
        ]
    )
    head = nn.Sequential(nn.Dropout(0.3 if dropout is None else dropout), nn.Linear(8 * width, num_classes))
    return SmallCNN(features, head)


@register_model(
    "latent_cnn",
    input_size=14,
    gradcam_layer="features.1.2",
    classifier="head.1",
    first_conv="features.0.0",
    description="The study's CNN adapted to autoencoder codes (C x 14 x 14 by default): 2 conv blocks, GAP, FC",
)
def latent_cnn(*, num_classes: int = 2, in_chans: int = 256, dropout: float | None = None, weights=None) -> SmallCNN:
    """For autoencoder codes ``(B, C, h, w)``: [(Conv3x3 -> BN -> ReLU) x 2 -> MaxPool2] (128 ch),
    [Conv3x3 -> BN -> ReLU -> MaxPool2] (128 ch), global average pool, Dropout(0.3) -> Linear(128, num_classes)."""
    features = nn.Sequential(_block(in_chans, 128, norm="batch", convs=2), _block(128, 128, norm="batch", convs=1))
    head = nn.Sequential(nn.Dropout(0.3 if dropout is None else dropout), nn.Linear(128, num_classes))
    return SmallCNN(features, head)
