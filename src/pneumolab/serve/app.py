"""FastAPI app: ``GET /`` (the page), ``POST /api/v1/predict``, ``GET /api/v1/model``, ``GET /healthz``.

Safe by default: the CLI binds 127.0.0.1; an optional bearer token; an upload size limit; the format
is sniffed from the bytes; decompression bombs are refused before decoding; every bad input is a 4xx
with a specific message; no DICOM header data is ever returned or logged.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import os
import secrets
import socket
from importlib import resources
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from uvicorn.protocols.http.auto import AutoHTTPProtocol

from pneumolab import __version__
from pneumolab.errors import ImageReadError, InputError
from pneumolab.inference.predictor import Prediction, Predictor

__all__ = ["ENV_SETTINGS", "NoDelayHTTPProtocol", "app_from_env", "create_app", "overlay_png"]

# `pneumolab serve --workers N`: uvicorn starts N processes, each builds its app from these JSON settings.
ENV_SETTINGS = "PNEUMOLAB_SERVE_SETTINGS"

log = logging.getLogger(__name__)

# Problem kind -> HTTP status: 413 for "too big", 415 for "not an image we read", 422 for the rest.
_STATUS = {"decompression_bomb": 413, "not_an_image": 415, "empty_file": 422, "truncated": 422, "corrupt": 422,
           "too_small": 422, "no_pixel_data": 422, "not_a_chest_radiograph": 422}  # fmt: skip


def overlay_png(image: np.ndarray, heat: np.ndarray | None, alpha: float = 0.45, max_side: int = 768) -> bytes:
    """The X-ray ``(H, W) uint8`` at its own aspect ratio (at most ``max_side`` px) with the Grad-CAM map
    (red-yellow) blended on top, as PNG. The model saw the image squashed to a square, so its ``(S, S)`` map
    is stretched back over the whole image: each heat pixel lands on the part of the X-ray it came from."""
    h, w = image.shape
    scale = min(1.0, max_side / max(h, w))
    size = (max(1, round(w * scale)), max(1, round(h * scale)))
    shown = np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR), dtype=np.float32) / 255.0
    gray = np.repeat(shown[..., None], 3, axis=2)  # (h', w', 3)
    if heat is not None:
        stretched = Image.fromarray(heat.astype(np.float32), mode="F").resize(size, Image.BILINEAR)
        a = np.clip(np.asarray(stretched), 0, 1)[..., None]  # (h', w', 1)
        colour = np.concatenate([np.ones_like(a), a, np.zeros_like(a)], axis=2)  # red -> yellow as heat rises
        gray = (1 - alpha * a) * gray + alpha * a * colour
    buf = io.BytesIO()
    Image.fromarray((gray * 255).round().astype(np.uint8)).save(buf, format="PNG", compress_level=1)  # speed, not size
    return buf.getvalue()


def create_app(predictor: Predictor, *, token: str | None = None, max_upload_mb: float = 20.0) -> FastAPI:
    """The service around one shared :class:`Predictor`."""
    app = FastAPI(
        title="pneumolab",
        version=__version__,
        description="Pneumonia probability and Grad-CAM for chest X-rays. Decision support, not a diagnosis.",
    )
    limit = int(max_upload_mb * 1024 * 1024)

    def check_token(request: Request) -> None:
        if token is None:
            return
        given = request.headers.get("authorization", "")
        if not given.startswith("Bearer ") or not secrets.compare_digest(given[7:].encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    def page() -> str:
        return (resources.files("pneumolab.serve") / "page.html").read_text()

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok", "version": __version__}

    @app.get("/api/v1/model", dependencies=[Depends(check_token)])
    def model_info() -> dict[str, Any]:
        return predictor.model_card()

    @app.post("/api/v1/predict", dependencies=[Depends(check_token)])
    async def predict(
        file: Annotated[UploadFile, File(description="A chest X-ray: PNG, JPEG or DICOM.")],
        gradcam: Annotated[bool, Query(description="Include a Grad-CAM overlay (base64 PNG).")] = False,
    ) -> JSONResponse:
        data = await file.read(limit + 1)  # never read more than the limit into memory
        if len(data) > limit:
            raise HTTPException(413, f"upload exceeds the {max_upload_mb:g} MB limit")
        name = "upload"  # not the client's file name: it may carry a patient's name
        try:
            result: Prediction = await run_in_threadpool(predictor.predict, data, name=name, gradcam=gradcam)
        except ImageReadError as e:
            raise HTTPException(_STATUS.get(e.kind, 422), f"{e.detail} [{e.kind}]") from None
        except InputError as e:
            raise HTTPException(422, str(e)) from None
        body = result.to_dict()
        body["operating_point"] = predictor.meta.get("operating_point")
        body["site"] = predictor.site
        body["notice"] = "Decision support only: not a diagnosis. A qualified reader must review the image."
        if gradcam:
            # The upload at its own aspect ratio; the heat map only on results at or above the threshold.
            body["gradcam_png"] = base64.b64encode(overlay_png(result.original, result.heatmap)).decode()
            body["gradcam_shown"] = result.heatmap is not None
        log.info("predicted %s in %.0f ms", result.label, result.timings_ms["total"])
        return JSONResponse(body)

    return app


class NoDelayHTTPProtocol(AutoHTTPProtocol):  # type: ignore[misc, valid-type]
    """uvicorn's HTTP protocol with TCP_NODELAY on every connection (``pneumolab serve`` uses it).

    With ``--workers N`` uvicorn binds the listening socket itself (``proto=0``), and asyncio then skips
    TCP_NODELAY on the accepted connections: every small response waited ~40 ms for the client's
    delayed ACK (measured: /healthz 44 ms instead of 1 ms). Setting it here restores the single-process
    behaviour.
    """

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().connection_made(transport)


def app_from_env() -> FastAPI:
    """App factory for uvicorn's worker processes: settings (model, backend, ood, token, upload limit,
    torch threads) come as JSON in ``PNEUMOLAB_SERVE_SETTINGS``, written by ``pneumolab serve``."""
    import torch

    settings = json.loads(os.environ[ENV_SETTINGS])
    torch.set_num_threads(settings["threads"])  # N processes x T threads = the cores, no oversubscription
    predictor = Predictor.load(
        settings["model"], backend=settings["backend"], ood=settings["ood"], guard=settings["guard"]
    )
    return create_app(predictor, token=settings["token"], max_upload_mb=settings["max_upload_mb"])
