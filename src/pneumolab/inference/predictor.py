"""Predictor: model file (or ONNX export) -> preprocessing from its metadata -> calibrated probability,
label at the stored operating point, optional Grad-CAM heat map; and, before any label, the guard
(``inference/guard.py``): an image that does not look like a chest X-ray is "not assessed".

Preprocessing is rebuilt from the model's own metadata; the image goes through the same reader as
the data pipeline (JPEG/PNG/DICOM, any size or bit depth). One lock serialises model calls, so one
Predictor can serve concurrent requests safely.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pneumolab.data.manifest import AGE_CAP_YEARS, CLASSES, age_span
from pneumolab.data.readers import DecodedImage, decode_bytes
from pneumolab.data.transforms import Preprocessing
from pneumolab.errors import InputError
from pneumolab.evaluation.calibration import OperatingPoint
from pneumolab.evaluation.model_card import trained_on, training_ages
from pneumolab.extras import require_extra
from pneumolab.inference.guard import OOD_REASON, FeatureTap, feature_scores, image_problems
from pneumolab.io import file_sha256
from pneumolab.models import get_spec
from pneumolab.models.checkpoint import load_model_file, resolve_model_file
from pneumolab.rundir import RunDir
from pneumolab.site_adaptation.provenance import describe_site, threshold_origin

__all__ = ["NOT_ASSESSED", "Prediction", "Predictor", "age_caution", "age_side", "gradcam_layer"]

NOT_ASSESSED = "NOT_ASSESSED"  # the label of an image the guard refused: it does not look like a chest X-ray


@dataclass
class Prediction:
    probability: float | None  # calibrated P(pneumonia); None when not assessed
    label: str  # NORMAL, PNEUMONIA or NOT_ASSESSED
    threshold: float
    ood: bool | None  # None: no guard configured (`--no-guard`)
    timings_ms: dict[str, float]
    heatmap: np.ndarray | None = None  # (S, S) in [0, 1]: only for results at or above the threshold
    image: np.ndarray | None = field(default=None, repr=False)  # (S, S) uint8, what the model saw
    ood_score: float | None = None  # the feature guard's distance over its threshold (> 1: flagged)
    reasons: list[str] = field(default_factory=list)  # why the guard flagged the image
    original: np.ndarray | None = field(default=None, repr=False)  # (H, W) uint8, the decoded upload
    cautions: list[str] = field(default_factory=list)  # why an answer given may not hold for this patient

    @property
    def assessed(self) -> bool:
        return self.label != NOT_ASSESSED

    def to_dict(self) -> dict[str, Any]:
        return {
            "assessed": self.assessed,
            "label": self.label,
            "probability": self.probability,
            "threshold": self.threshold,
            "ood": self.ood,
            "ood_score": self.ood_score,
            "reasons": self.reasons,
            "cautions": self.cautions,
            "timings_ms": self.timings_ms,
        }


def age_side(age_years: float | None, ages: tuple[int, int] | None) -> str | None:
    """``"younger"`` or ``"older"`` when the age lies outside the training population's whole years ``ages``
    (inclusive: 5 covers 5.0-5.99; an oldest at the cap has no upper bound); None when inside or either is unknown."""
    if age_years is None or ages is None:
        return None
    if age_years < ages[0]:
        return "younger"
    return "older" if age_years >= ages[1] + 1 and ages[1] < AGE_CAP_YEARS else None


def _init_summary(init: dict[str, Any] | None) -> dict[str, Any] | None:
    """``model.init``'s record without the server's paths: an encoder or a model (and what that model learnt from)."""
    if not init:
        return None
    out = {"kind": init["kind"], "sha256": init["sha256"]}
    return out | ({"trained_on": trained_on(init.get("training_data"))} if init["kind"] == "model" else {})


def age_caution(age_years: float | None, ages: tuple[int, int] | None) -> str | None:
    """The caution for a patient outside the training ages (see :func:`age_side`), else None. The age itself is
    not repeated: the answer goes to the audit log, which holds no header data."""
    side = age_side(age_years, ages)
    if side is None:
        return None
    return (
        f"the patient is {side} than the patients this model learnt from ({age_span(*ages)}; age from the DICOM "
        "header): its answers were not validated on such patients unless it was evaluated on them here"
    )


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

    def __init__(
        self,
        model: nn.Module | None,
        meta: dict[str, Any],
        *,
        onnx_session: Any = None,
        ood: tuple[nn.Module, dict[str, Any]] | None = None,
        guard: bool = True,
        model_sha256: str | None = None,
    ) -> None:
        self.model, self.meta, self.session, self.ood = model, meta, onnx_session, ood
        self.model_sha256 = model_sha256  # of the file loaded: which model gave a result, in logs and JSON lines
        self.guarded = guard  # False only by an explicit `--no-guard`: every image then gets a label
        # The feature guard needs the pooled features: a hook on the PyTorch model, or the ONNX graph's
        # second output (``pneumolab export`` adds it when the model file has a guard).
        self.feature_guard = meta.get("ood_guard") if guard else None
        self.tap = None
        if self.feature_guard is not None and onnx_session is not None:
            if len(onnx_session.get_outputs()) < 2:  # an export without the features output
                self.feature_guard = None
        elif self.feature_guard is not None:
            self.tap = FeatureTap(gradcam_layer(model, meta["model_name"]))
        if guard and self.feature_guard is None and ood is None:
            raise InputError(
                "this model has no out-of-distribution guard (a model file from before guards were stored in it, "
                "or an ONNX file without its model.pt): images that are not chest X-rays would get a label. "
                "Retrain it or put model.pt beside the .onnx file, pass --ood AUTOENCODER_RUN, or --no-guard "
                "to accept that risk"
            )
        self.preprocessing = Preprocessing.from_meta(meta)
        self.operating_point = OperatingPoint.from_meta(meta)
        self.threshold = self.operating_point.threshold
        self.site = describe_site(meta)  # None, or where the model was calibrated / adapted
        self.ages = training_ages(meta.get("training_data"))  # None: the source records no ages
        self.lock = threading.Lock()
        self.backend = "onnx" if onnx_session is not None else "torch"

    @classmethod
    def load(
        cls, target: str | Path, *, backend: str = "torch", ood: str | Path | None = None, guard: bool = True
    ) -> Predictor:
        """From a run folder, ``model.pt`` or ``.onnx`` (its metadata inside); ``ood``: an autoencoder run;
        ``guard=False`` runs without any out-of-distribution guard (refused otherwise when the model has none)."""
        target = Path(target)
        onnx_file = RunDir(target).onnx if target.is_dir() else target
        if target.suffix == ".onnx" or backend == "onnx":
            if not onnx_file.is_file() or onnx_file.suffix != ".onnx":
                raise InputError(f"{target}: no ONNX model; run `pneumolab export RUN --onnx RUN/model.onnx` first")
            require_extra("onnx")
            import onnxruntime as ort

            from pneumolab.inference.export import onnx_meta

            session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
            meta = onnx_meta(session.get_modelmeta().custom_metadata_map, onnx_file)
            torch_file = RunDir.of(onnx_file).model  # Grad-CAM needs gradients: the PyTorch model, if present
            model = None
            if torch_file.is_file():
                model, torch_meta = load_model_file(torch_file)
                if "ood_guard" in torch_meta:  # tensors: kept in model.pt, not in the JSON sidecar
                    meta["ood_guard"] = torch_meta["ood_guard"]
            return cls(
                model, meta, onnx_session=session, ood=_load_ood(ood), guard=guard, model_sha256=file_sha256(onnx_file)
            )
        model, meta = load_model_file(target)
        return cls(model, meta, ood=_load_ood(ood), guard=guard, model_sha256=file_sha256(resolve_model_file(target)))

    def preprocess(self, img: DecodedImage) -> tuple[np.ndarray, torch.Tensor]:
        """``(S, S) uint8`` as the model sees it, and the ``(1, 1, S, S)`` normalised tensor."""
        small = self.preprocessing.resize(img.pixels)
        return small, self.preprocessing(small)  # (1, 1, S, S)

    def _logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits ``(1, 2)`` and the pooled features ``(1, C)`` when the feature guard is on."""
        if self.session is not None:
            out = self.session.run(None, {"image": x.numpy()})
            feats = torch.from_numpy(out[1]) if self.feature_guard is not None else None
            return torch.from_numpy(out[0]), feats
        with torch.no_grad():
            logits = self.model(x)
        return logits, self._tapped()

    def _tapped(self) -> torch.Tensor | None:
        return self.tap.take()[-1:] if self.tap is not None else None

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
            if gradcam and self.model is not None and self.session is None:
                # One PyTorch forward serves both (ONNX has no gradients): Grad-CAM's pass also yields the logits.
                heats, logits = self._gradcam(x)
                heat = heats[0]
                feats = self._tapped()
                t2 = t3 = time.perf_counter()
            else:
                logits, feats = self._logits(x)
                t2 = time.perf_counter()
                heat = self._gradcam(x)[0][0] if gradcam else None  # ONNX: no tap, the graph gave the features
                t3 = time.perf_counter()
            reasons, score = self._guard(img, feats)
        prob = float(self.operating_point.probability(logits.float())[0])
        label = CLASSES[int(prob >= self.threshold)]
        if reasons:  # not a chest X-ray as far as the guard can tell: no label, no probability, no heat map
            prob, label, heat = None, NOT_ASSESSED, None
        elif label != "PNEUMONIA":
            heat = None  # Grad-CAM of a negative result points at whatever raised the score most: misleading
        # With PyTorch and Grad-CAM, "model" includes the Grad-CAM pass and "gradcam" is 0.
        timings = {
            "preprocess": (t1 - t0) * 1e3,
            "model": (t2 - t1) * 1e3,
            "gradcam": (t3 - t2) * 1e3,
            "total": (time.perf_counter() - t0) * 1e3,
        }
        ood = bool(reasons) if self.guarded else None
        caution = age_caution(img.age_years, self.ages) if label != NOT_ASSESSED else None
        return Prediction(
            prob,
            label,
            self.threshold,
            ood,
            {k: round(v, 2) for k, v in timings.items()},
            heat,
            small,
            score,
            reasons,
            img.pixels,
            [caution] if caution else [],
        )

    def heatmaps(self, images: list[np.ndarray]) -> np.ndarray:
        """Grad-CAM ``(N, S, S)``, each in [0, 1], for the PNEUMONIA logit of decoded X-rays ``(H, W) uint8``,
        whatever the answers (error analysis: ``evaluate``'s gallery of false positives); one batched pass."""
        x = torch.cat([self.preprocessing(self.preprocessing.resize(p)) for p in images])  # (N, 1, S, S)
        with self.lock:
            return self._gradcam(x)[0]

    def _gradcam(self, x: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """Grad-CAM for the PNEUMONIA logit on the registry's layer, upsampled to the input ``(N, 1, S, S)``:
        ``(N, S, S)``, each image's map in [0, 1], and the logits ``(N, 2)`` of the same forward pass."""
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
        cam = LayerAttribution.interpolate(cam, (self.preprocessing.image_size,) * 2, interpolate_mode="bilinear")
        cam = torch.relu(cam)[:, 0].detach().numpy()  # (N, S, S); a model in eval mode keeps the images apart
        peak = cam.max(axis=(1, 2), keepdims=True)
        return np.divide(cam, peak, out=np.zeros_like(cam), where=peak > 0), seen["logits"].detach()

    def _guard(self, img: DecodedImage, feats: torch.Tensor | None) -> tuple[list[str], float | None]:
        """Why the image is not assessed (empty: it is), and the feature guard's score over its threshold."""
        if not self.guarded:
            return [], None
        reasons = image_problems(img)
        score = None
        if self.feature_guard is not None and feats is not None:
            score = float(feature_scores(self.feature_guard, feats)[0] / self.feature_guard["threshold"])
            if score > 1:
                reasons.append(OOD_REASON)
        if self.ood is not None:
            from pneumolab.generative.autoencoder import ood_flags

            ae, meta = self.ood
            x = Preprocessing.from_meta(meta)(img.pixels)  # (1, 1, S, S) as the autoencoder was trained
            if bool(ood_flags(ae, meta, x)[1][0]):
                reasons.append("the autoencoder guard cannot reconstruct it like a chest X-ray")
        return reasons, score

    def model_card(self) -> dict[str, Any]:
        """What ``GET /api/v1/model`` returns: identity, preprocessing, operating point, calibration, metrics."""
        m = self.meta
        return {
            "model": m["model_name"],
            "name": m.get("config", {}).get("name"),
            "model_sha256": self.model_sha256,
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
            "ood_guard": {
                "on": self.guarded,
                "image_checks": self.guarded,
                "feature_guard": self.feature_guard is not None,
                "autoencoder": self.ood is not None,
            },
            "site": self.site,
            "site_steps": m.get("site", []),
            "intended_use": "Research and decision support only; not a diagnostic device.",
            "trained_on": trained_on(m.get("training_data")),
            "initialised_from": _init_summary(m.get("init")),
            "training_ages_years": self.ages,  # [youngest, oldest] where the source documents them, else None
        }


def _load_ood(ood: str | Path | None) -> tuple[nn.Module, dict[str, Any]] | None:
    if ood is None:
        return None
    from pneumolab.generative.autoencoder import load_autoencoder

    return load_autoencoder(ood)
