"""``pneumolab export``: ONNX export of a model file, verified against PyTorch on real images."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumolab.data.readers import decode_bytes
from pneumolab.data.transforms import Preprocessing
from pneumolab.errors import InputError
from pneumolab.extras import require_extra
from pneumolab.io import atomic_path, atomic_write_text
from pneumolab.models.checkpoint import load_model_file

__all__ = ["META_KEY", "export_onnx", "onnx_meta", "read_onnx_meta"]

META_KEY = "pneumolab"  # the ONNX metadata property holding the model file's metadata as JSON
OPSET = 18  # the lowest the torch.export-based exporter writes


class _WithFeatures(torch.nn.Module):
    """The model with a second output: the pooled features ``(B, C)`` its out-of-distribution guard scores."""

    def __init__(self, model: torch.nn.Module, model_name: str) -> None:
        from pneumolab.inference.predictor import gradcam_layer

        super().__init__()
        self.model, self.seen = model, {}
        gradcam_layer(model, model_name).register_forward_hook(lambda m, i, o: self.seen.__setitem__("f", o))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.model(x)
        return logits, self.seen.pop("f").float().mean(dim=(2, 3))  # (B, 2), (B, C)


def _as_tuple(out: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


log = logging.getLogger(__name__)


def onnx_meta(props: dict[str, str], path: str | Path) -> dict[str, Any]:
    """The model file's metadata from an ONNX file's metadata properties (``path`` names it in the error)."""
    if META_KEY not in props:
        raise InputError(f"{path}: not exported by `pneumolab export` (no pneumolab metadata inside)")
    return json.loads(props[META_KEY])


def read_onnx_meta(path: str | Path) -> dict[str, Any]:
    """The metadata (threshold, operating point, ...) inside an exported ``.onnx`` file, without a runtime session."""
    require_extra("onnx")
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:
        raise InputError(f"{path}: not a readable ONNX file ({type(e).__name__})") from None
    return onnx_meta({p.key: p.value for p in model.metadata_props}, path)


def export_onnx(
    model_target: str | Path, out: str | Path, *, samples: list[bytes] | None = None, tolerance: float = 1e-4
) -> dict[str, Any]:
    """Export to ONNX (opset 18, dynamic batch), then compare ONNX Runtime with PyTorch on ``samples`` (encoded
    images; default: the bundled sample's test images).

    The model file's metadata (preprocessing, operating point, provenance) travels inside the ``.onnx`` file
    (its ``pneumolab`` metadata property), which is what the ONNX backend reads; the ``.onnx.json`` beside it
    is the same JSON for people and tools that do not open ONNX files.

    Raises:
        InputError: the outputs differ by more than ``tolerance`` (the file is then not kept).
    """
    require_extra("onnx")
    import onnx
    import onnxruntime as ort

    from pneumolab.inference.predictor import Predictor

    model, meta = load_model_file(model_target)
    out = Path(out)
    size = Preprocessing.from_meta(meta).image_size
    dummy = torch.zeros(2, 1, size, size)
    if samples is None:
        from pneumolab.data import sample_root

        samples = [p.read_bytes() for p in sorted((sample_root() / "test").rglob("*.jpeg"))[:16]]
    predictor = Predictor(model, meta, guard=False)  # for its preprocessing only
    x = torch.cat(
        [predictor.preprocess(decode_bytes(b, f"sample {i}"))[1] for i, b in enumerate(samples)]
    )  # (N, 1, S, S)
    graph = _WithFeatures(model, meta["model_name"]).eval() if "ood_guard" in meta else model
    names = ["logits", "features"] if "ood_guard" in meta else ["logits"]
    with torch.no_grad():
        expected = [t.numpy() for t in _as_tuple(graph(x))]
    # The guard's tensors stay in model.pt (the Predictor reads them from there); the rest is plain JSON.
    info = {k: v for k, v in meta.items() if k not in ("format", "ood_guard")}
    with atomic_path(out, suffix=".onnx") as tmp:
        # torch.export's graph (the TorchScript exporter is deprecated); the batch size stays free
        torch.onnx.export(
            graph,
            (dummy,),
            str(tmp),
            dynamo=True,
            opset_version=OPSET,
            input_names=["image"],
            output_names=names,
            dynamic_shapes=({0: torch.export.Dim("batch")},),
            verbose=False,
        )
        exported = onnx.load(str(tmp))
        onnx.helper.set_model_props(exported, {META_KEY: json.dumps(info, default=str)})
        onnx.save(exported, str(tmp))
        got = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})
        diff = max(float(np.abs(g - e).max()) for g, e in zip(got, expected, strict=True))
        if not diff <= tolerance:
            raise InputError(f"ONNX export differs from PyTorch by {diff:.2e} (> {tolerance:.0e}); not written")
    info["onnx"] = {"opset": OPSET, "max_abs_diff": diff, "verified_on": len(samples)}
    atomic_write_text(out.with_suffix(".onnx.json"), json.dumps(info, indent=2, default=str))
    log.info("exported %s (max |ONNX - PyTorch| = %.2e on %d images)", out, diff, len(samples))
    return {"path": str(out), "max_abs_diff": diff, "images": len(samples)}
