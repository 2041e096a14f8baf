"""Predictor: model file (or ONNX export) -> preprocessing from its metadata -> calibrated probability,
label at the stored operating point, optional Grad-CAM heat map and out-of-distribution flag.

Preprocessing is rebuilt from the model's own metadata; the image goes through the same reader as
the data pipeline (JPEG/PNG/DICOM, any size or bit depth). One lock serialises model calls, so one
Predictor can serve concurrent requests safely.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumolab.data.cache import resize_square
from pneumolab.data.manifest import CLASSES
from pneumolab.data.readers import DecodedImage, decode_bytes
from pneumolab.data.transforms import EvalPreset
from pneumolab.errors import InputError
from pneumolab.evaluation.calibration import OperatingPoint
from pneumolab.models import get_spec
from pneumolab.models.checkpoint import load_model_file
from pneumolab.site_adaptation.provenance import describe_site, threshold_origin

__all__ = ["Prediction", "Predictor", "gradcam_layer"]


@dataclass
class Prediction:
    probability: float  # calibrated P(pneumonia)
    label: str
    threshold: float
    ood: bool | None  # None: no guard configured
    timings_ms: dict[str, float]
    heatmap: np.ndarray | None = None  # (S, S) in [0, 1], the model input's resolution
    image: np.ndarray | None = field(default=None, repr=False)  # (S, S) uint8, what the model saw
    ood_score: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"probability": self.probability, "label": self.label, "threshold": self.threshold,
                "ood": self.ood, "ood_score": self.ood_score, "timings_ms": self.timings_ms}  # fmt: skip


def gradcam_layer(model: nn.Module, model_name: str) -> nn.Module:
    """The registry's Grad-CAM layer (inside the head when the model sits behind an autoencoder encoder)."""
    path = get_spec(model_name).gradcam_layer
    if isinstance(model, nn.Sequential) and hasattr(model, "head"):
        path = f"head.{path}"
    return model.get_submodule(path)


class Predictor:
    """Load once, predict many times.

    Example:
        >>> p = Predictor.load("runs/train/resnet18")          # doctest: +SKIP
        >>> p.predict(Path("xray.dcm").read_bytes(), name="xray.dcm", gradcam=True).probability
    """

    def __init__(self, model: nn.Module | None, meta: dict[str, Any], *, onnx_session: Any = None,
                 ood: tuple[nn.Module, dict[str, Any]] | None = None) -> None:  # fmt: skip
        self.model, self.meta, self.session, self.ood = model, meta, onnx_session, ood
        pre = meta["preprocessing"]
        self.size = int(pre["image_size"])
        self.transform = EvalPreset(mean=pre["mean"], std=pre["std"], normalization=pre["normalization"])
        self.operating_point = OperatingPoint.from_meta(meta)
        self.threshold = self.operating_point.threshold
        self.site = describe_site(meta)  # None, or where the model was calibrated / adapted
        self.lock = threading.Lock()
        self.backend = "onnx" if onnx_session is not None else "torch"

    @classmethod
    def load(cls, target: str | Path, *, backend: str = "torch", ood: str | Path | None = None) -> Predictor:
        """From a run folder, ``model.pt`` or ``.onnx`` (with its ``.json`` sidecar); ``ood``: an autoencoder run."""
        target = Path(target)
        onnx_file = target / "model.onnx" if target.is_dir() else target
        if target.suffix == ".onnx" or backend == "onnx":
            if not onnx_file.is_file() or onnx_file.suffix != ".onnx":
                raise InputError(f"{target}: no ONNX model; run `pneumolab export RUN --onnx RUN/model.onnx` first")
            import onnxruntime as ort

            meta = json.loads(onnx_file.with_suffix(".onnx.json").read_text())
            session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
            torch_file = onnx_file.parent / "model.pt"  # Grad-CAM needs gradients: the PyTorch model, if present
            model = load_model_file(torch_file)[0] if torch_file.is_file() else None
            return cls(model, meta, onnx_session=session, ood=_load_ood(ood))
        model, meta = load_model_file(target)
        return cls(model, meta, ood=_load_ood(ood))

    def preprocess(self, img: DecodedImage) -> tuple[np.ndarray, torch.Tensor]:
        """``(S, S) uint8`` as the model sees it, and the ``(1, 1, S, S)`` normalised tensor."""
        small = resize_square(img.pixels, self.size)
        return small, self.transform(torch.from_numpy(np.array(small))[None, None])  # (1, 1, S, S); a writable copy

    def _logits(self, x: torch.Tensor) -> torch.Tensor:
        if self.session is not None:
            return torch.from_numpy(self.session.run(None, {"image": x.numpy()})[0])
        with torch.no_grad():
            return self.model(x)

    def predict(self, data: bytes, *, name: str = "upload", gradcam: bool = False) -> Prediction:
        """Predict one encoded image (PNG/JPEG/DICOM bytes).

        Raises:
            ImageReadError: unreadable or unsupported input (the service answers 4xx).
        """
        t0 = time.perf_counter()
        img = decode_bytes(data, name)
        small, x = self.preprocess(img)
        t1 = time.perf_counter()
        with self.lock:
            if gradcam and self.model is not None:
                # One PyTorch forward serves both (ONNX has no gradients): Grad-CAM's pass also yields the logits.
                heat, logits = self._gradcam(x)
                t2 = t3 = time.perf_counter()
            else:
                logits = self._logits(x)
                t2 = time.perf_counter()
                heat = self._gradcam(x)[0] if gradcam else None
                t3 = time.perf_counter()
            logits = logits.float()  # (1, 2)
            ood, score = self._ood(img)
        prob = float(self.operating_point.probability(logits)[0])
        # With PyTorch and Grad-CAM, "model" includes the Grad-CAM pass and "gradcam" is 0.
        timings = {"preprocess": (t1 - t0) * 1e3, "model": (t2 - t1) * 1e3, "gradcam": (t3 - t2) * 1e3,
                   "total": (time.perf_counter() - t0) * 1e3}  # fmt: skip
        return Prediction(prob, CLASSES[int(prob >= self.threshold)], self.threshold, ood,
                          {k: round(v, 2) for k, v in timings.items()}, heat, small, score)  # fmt: skip

    def _gradcam(self, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """Grad-CAM for the PNEUMONIA logit on the registry's layer, upsampled to the input: (S, S) in [0, 1],
        and the logits of the same forward pass."""
        if self.model is None:
            raise InputError("Grad-CAM needs the PyTorch model (model.pt beside the .onnx file)")
        from captum.attr import LayerAttribution, LayerGradCam

        layer = gradcam_layer(self.model, self.meta["model_name"])
        n_out = self.meta.get("num_outputs", len(self.meta["classes"]))
        target = None if n_out == 1 else 1  # single-logit heads have no class index
        seen: dict[str, torch.Tensor] = {}

        def forward(inp: torch.Tensor) -> torch.Tensor:
            seen["logits"] = out = self.model(inp)
            return out

        cam = LayerGradCam(forward, layer).attribute(x.clone().requires_grad_(True), target=target)  # (1, 1, h, w)
        cam = LayerAttribution.interpolate(cam, (self.size, self.size), interpolate_mode="bilinear")
        cam = torch.relu(cam)[0, 0].detach().numpy()
        return (cam / cam.max() if cam.max() > 0 else cam), seen["logits"].detach()

    def _ood(self, img: DecodedImage) -> tuple[bool | None, float | None]:
        """The autoencoder guard on the image preprocessed the autoencoder's own way."""
        if self.ood is None:
            return None, None
        from pneumolab.generative.autoencoder import ood_flags

        ae, meta = self.ood
        pre = meta["preprocessing"]
        tf = EvalPreset(mean=pre["mean"], std=pre["std"], normalization=pre["normalization"])
        x = tf(torch.from_numpy(np.array(resize_square(img.pixels, pre["image_size"])))[None, None])
        errors, flags = ood_flags(ae, meta, x)
        return bool(flags[0]), float(errors[0])

    def model_card(self) -> dict[str, Any]:
        """What ``GET /api/v1/model`` returns: identity, preprocessing, operating point, calibration, metrics."""
        m = self.meta
        return {
            "model": m["model_name"],
            "name": m.get("config", {}).get("name"),
            "version": m.get("version"),
            "backend": self.backend,
            "classes": m["classes"],
            "preprocessing": {k: v for k, v in m["preprocessing"].items() if k != "latent"},
            "threshold": self.threshold,
            "threshold_policy": m.get("threshold_policy"),
            "threshold_origin": threshold_origin(m),
            "operating_point": m.get("operating_point"),
            "temperature": self.operating_point.temperature,
            "prior_shift": self.operating_point.prior_shift,
            "calibration": m.get("calibration"),
            "validation_metrics": m.get("metrics"),
            "ood_guard": self.ood is not None,
            "site": self.site,
            "site_steps": m.get("site", []),
            "intended_use": "Research and decision support only; not a diagnostic device.",
        }


def _load_ood(ood: str | Path | None) -> tuple[nn.Module, dict[str, Any]] | None:
    if ood is None:
        return None
    from pneumolab.generative.autoencoder import load_autoencoder

    return load_autoencoder(ood)
