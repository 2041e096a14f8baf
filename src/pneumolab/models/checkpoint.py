"""Self-describing model files: weights plus everything needed to rebuild model and preprocessing.

``model.pt`` holds only tensors and plain Python values, so it loads with ``weights_only=True``
(no pickled code runs). Inference rebuilds preprocessing from it, never from its own constants.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pneumolab import __version__
from pneumolab.data.transforms import Preprocessing
from pneumolab.errors import InputError
from pneumolab.io import atomic_path, file_sha256
from pneumolab.models.registry import create_model, get_spec
from pneumolab.rundir import RunDir

__all__ = [
    "load_init_file",
    "load_model_file",
    "read_model_meta",
    "resolve_model_file",
    "save_encoder_file",
    "save_model_file",
    "with_encoder",
]

FORMAT = "pneumolab.model/1"
ENCODER_FORMAT = "pneumolab.encoder/1"
# Model keyword arguments that leave every weight's shape alone: an encoder file fits whatever they are.
_WEIGHTLESS_KWARGS = ("dropout", "weights")


def save_model_file(path: str | Path, model: nn.Module, meta: dict[str, Any]) -> None:
    """Write ``{"format", "version", "state_dict", **meta}`` atomically.

    ``meta`` must hold ``model_name``, ``model_kwargs``, ``preprocessing`` and ``classes``; anything
    else (config, metrics, threshold) is kept as is. Values must be plain (str, numbers, lists, dicts).
    """
    missing = {"model_name", "model_kwargs", "preprocessing", "classes"} - set(meta)
    if missing:
        raise ValueError(f"model file metadata lacks {sorted(missing)}")
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, "version": __version__, **meta, "state_dict": state}, tmp)


def resolve_model_file(target: str | Path) -> Path:
    """A run folder (its ``model.pt``) or a model file."""
    target = Path(target)
    if target.is_dir():
        if not RunDir(target).model.is_file():
            raise InputError(f"{target} has no model.pt: give a finished run folder or a model file")
        return RunDir(target).model
    if not target.is_file():
        raise InputError(f"{target}: no such run folder or model file")
    return target


def _read_model_file(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """A model file's metadata and its state dict."""
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"{path}: not a loadable pneumolab model file ({type(e).__name__})") from None
    if not isinstance(blob, dict) or blob.get("format") != FORMAT:
        raise InputError(
            f"{path}: not a pneumolab model file (format {blob.get('format') if isinstance(blob, dict) else '?'})"
        )
    return {k: v for k, v in blob.items() if k != "state_dict"}, blob.get("state_dict", {})


def read_model_meta(target: str | Path) -> tuple[Path, dict[str, Any]]:
    """The model file of a run folder or model file, and its metadata (threshold, operating point, ...), without
    rebuilding its network."""
    path = resolve_model_file(target)
    return path, _read_model_file(path)[0]


def load_model_file(path: str | Path) -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild the model (in eval mode) from a model file or run folder; returns it with its metadata."""
    path = resolve_model_file(path)
    meta, state = _read_model_file(path)
    try:
        return _rebuild(meta, state), meta
    except (InputError, RuntimeError) as e:  # options or layers of another pneumolab version (or a removed experiment)
        why = str(e).splitlines()[0]  # load_state_dict lists every key; the first line says what kind of mismatch
        raise InputError(
            f"{path}: cannot rebuild its network, {meta['model_name']} with {meta['model_kwargs']} ({why}): the file "
            "was made by another pneumolab version or with an experiment's option; load it with the pneumolab that "
            "made it, or retrain"
        ) from None


def _rebuild(meta: dict[str, Any], state: dict[str, torch.Tensor]) -> nn.Module:
    """The network a model file describes, its weights loaded, in eval mode."""
    kwargs = dict(meta["model_kwargs"])
    kwargs.pop("weights", None)  # the trained weights replace any ImageNet initialisation
    model = create_model(meta["model_name"], num_classes=len(meta["classes"]), **kwargs)
    pre = Preprocessing.from_meta(meta)
    if any(k.startswith("encoder.") for k in state):  # a latent model with its encoder inside: self-contained
        from pneumolab.generative.autoencoder import ConvAutoencoder

        net = with_encoder(model, pre, ConvAutoencoder(tuple(pre.latent["channels"])).encoder)
        net.load_state_dict(state)
        return net.eval()
    model.load_state_dict(state)
    return with_encoder(model, pre).eval()


def with_encoder(model: nn.Module, preprocessing: Preprocessing, encoder: nn.Module | None = None) -> nn.Module:
    """A model trained on autoencoder codes, put behind that autoencoder's encoder so that it takes pixels
    like every other model: ``(B, 1, S, S) -> encoder -> (B, C, h, w) -> model -> (B, 2)``.

    Without ``encoder``, the one of the autoencoder file the codes came from, refused if that file changed.
    """
    latent = preprocessing.latent
    if not latent:
        return model
    if encoder is None:
        from pneumolab.generative.autoencoder import load_autoencoder

        path = Path(latent["autoencoder"])
        if not path.is_file() or file_sha256(path) != latent["sha256"]:
            raise InputError(
                f"{path}: the autoencoder this model was trained on is missing or changed (SHA-256 differs); "
                "use a model.pt written by a current `pneumolab train`, which holds its encoder"
            )
        encoder = load_autoencoder(path)[0].encoder
    return nn.Sequential(OrderedDict(encoder=encoder, head=model))


def save_encoder_file(path: str | Path, encoder: nn.Module, meta: dict[str, Any]) -> None:
    """Write a pre-trained encoder ``{"format", "version", "state_dict", **meta}`` atomically: the state dict of
    a registered model whose head was replaced by ``nn.Identity`` (so it has no head keys). ``meta`` must hold
    ``model_name``, ``model_kwargs`` and ``preprocessing``."""
    missing = {"model_name", "model_kwargs", "preprocessing"} - set(meta)
    if missing:
        raise ValueError(f"encoder file metadata lacks {sorted(missing)}")
    state = {k: v.detach().cpu() for k, v in encoder.state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save({"format": ENCODER_FORMAT, "version": __version__, **meta, "state_dict": state}, tmp)


def load_init_file(
    net: nn.Module, path: str | Path, model_name: str, model_kwargs: dict[str, Any], preprocessing: Preprocessing
) -> dict[str, Any]:
    """Initialise ``net`` (a fresh ``model_name`` classifier) for ``model.init``: from a ``pneumolab pretrain``
    encoder file, every weight but the head's; from a model file (or a run folder with one), every weight, head
    included: a trained classifier fine-tuned on new data, e.g. a site's own labeled images. Refused, naming what
    differs, unless the file was made for the same architecture (name and shape-changing kwargs) and the same input
    (image size, normalisation). Returns what the new model file records of it: kind, file, SHA-256 and, for a
    model file, the data it was trained on (its ``training_data``)."""
    path = Path(path)
    target = path
    if path.is_dir():  # a pretrain run holds encoder.pt, a training run model.pt
        target = path / "encoder.pt" if (path / "encoder.pt").is_file() else RunDir(path).model
    if not target.is_file():
        raise InputError(
            f"model.init {path}: no such encoder or model file (give RUN/encoder.pt of `pneumolab pretrain`, e.g. "
            "`pneumolab pretrain -c pretrain/simclr --data DIR` writes runs/pretrain/simclr/encoder.pt, or a trained "
            "run folder or model.pt to fine-tune)"
        )
    try:
        blob = torch.load(target, map_location="cpu", weights_only=True)
    except Exception as e:
        raise InputError(f"model.init {target}: not a loadable file ({type(e).__name__})") from None
    kind = {ENCODER_FORMAT: "encoder", FORMAT: "model"}.get(blob.get("format") if isinstance(blob, dict) else None)
    if kind is None:
        raise InputError(f"model.init {target}: not an encoder file of `pneumolab pretrain` nor a pneumolab model file")
    made = "pre-trained" if kind == "encoder" else "trained"

    def arch(kwargs: dict[str, Any]) -> dict[str, Any]:  # in_chans: 1 unless said (every builder's default)
        return {k: v for k, v in {"in_chans": 1, **kwargs}.items() if k not in _WEIGHTLESS_KWARGS}

    wanted = (model_name, arch(model_kwargs), preprocessing.image_size, preprocessing.normalization)
    found = (
        blob["model_name"],
        arch(blob["model_kwargs"]),
        blob["preprocessing"]["image_size"],
        blob["preprocessing"]["normalization"],
    )
    if wanted != found:
        raise InputError(
            f"model.init {target} was {made} for {found[0]} {found[1]} on {found[2]} px {found[3]}-normalised "
            f"images, not {wanted[0]} {wanted[1]} on {wanted[2]} px {wanted[3]}-normalised: train the recipe it "
            "was made for (its config.yaml), or make one for this recipe"
        )
    if kind == "model" and list(blob["classes"]) != list(preprocessing.classes):
        raise InputError(f"model.init {target}: its classes {blob['classes']} are not {list(preprocessing.classes)}")
    head = get_spec(model_name).classifier + "."
    try:
        missing, unexpected = net.load_state_dict(blob["state_dict"], strict=False)
    except RuntimeError:  # a tensor of another shape under the same name
        missing, unexpected = [], ["(tensors of other shapes)"]
    if unexpected or any(kind == "model" or not k.startswith(head) for k in missing):
        raise InputError(
            f"model.init {target}: its weights do not fit {model_name} (e.g. {[*unexpected, *missing][:2]})"
        )
    record = {"kind": kind, "file": str(target), "sha256": file_sha256(target)}
    if kind == "model":
        record["training_data"] = blob.get("training_data")
    return record
