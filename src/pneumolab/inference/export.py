"""``pneumolab export``: ONNX export of a model file, verified against PyTorch on real images."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pneumolab.data.readers import decode_bytes
from pneumolab.errors import InputError
from pneumolab.io import atomic_path, atomic_write_text
from pneumolab.models.checkpoint import load_model_file

__all__ = ["export_onnx"]

log = logging.getLogger(__name__)


def export_onnx(model_target: str | Path, out: str | Path, *, samples: list[bytes] | None = None,
                tolerance: float = 1e-4) -> dict[str, Any]:  # fmt: skip
    """Export to ONNX (opset 17, dynamic batch) plus a ``.onnx.json`` metadata sidecar, then compare
    ONNX Runtime with PyTorch on ``samples`` (encoded images; default: the bundled sample's test images).

    Raises:
        InputError: the outputs differ by more than ``tolerance`` (the file is then not kept).
    """
    import onnxruntime as ort

    from pneumolab.inference.predictor import Predictor

    model, meta = load_model_file(model_target)
    out = Path(out)
    pre = meta["preprocessing"]
    dummy = torch.zeros(2, 1, pre["image_size"], pre["image_size"])
    if samples is None:
        from pneumolab.data import sample_root

        samples = [p.read_bytes() for p in sorted((sample_root() / "test").rglob("*.jpeg"))[:16]]
    predictor = Predictor(model, meta)
    x = torch.cat(
        [predictor.preprocess(decode_bytes(b, f"sample {i}"))[1] for i, b in enumerate(samples)]
    )  # (N, 1, S, S)
    with torch.no_grad():
        expected = model(x).numpy()
    with atomic_path(out, suffix=".onnx") as tmp:
        axes = {"image": {0: "batch"}, "logits": {0: "batch"}}
        torch.onnx.export(model, (dummy,), str(tmp), dynamo=False, opset_version=17, input_names=["image"],
                          output_names=["logits"], dynamic_axes=axes)  # fmt: skip
        got = ort.InferenceSession(str(tmp), providers=["CPUExecutionProvider"]).run(None, {"image": x.numpy()})[0]
        diff = float(np.abs(got - expected).max())
        if not diff <= tolerance:
            raise InputError(f"ONNX export differs from PyTorch by {diff:.2e} (> {tolerance:.0e}); not written")
    sidecar = {k: v for k, v in meta.items() if k not in ("format",)}
    sidecar["onnx"] = {"opset": 17, "max_abs_diff": diff, "verified_on": len(samples)}
    atomic_write_text(out.with_suffix(".onnx.json"), json.dumps(sidecar, indent=2, default=str))
    log.info("exported %s (max |ONNX - PyTorch| = %.2e on %d images)", out, diff, len(samples))
    return {"path": str(out), "max_abs_diff": diff, "images": len(samples)}
