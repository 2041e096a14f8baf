"""FastAPI app: ``GET /`` (the page), ``POST /api/v1/predict``, ``GET /api/v1/model``, ``GET /healthz``,
``GET /openapi.json`` (no ``/docs``: Swagger's page needs a CDN).

Safe by default: the CLI binds 127.0.0.1; an optional bearer token; an upload size limit enforced while
the body streams in; the format is sniffed from the bytes; decompression bombs are refused before
decoding; every bad input is a 4xx with a specific message; no part of an upload (DICOM header data, the
file name, its bytes) is ever returned or logged.
"""

from __future__ import annotations

import base64
import json
import logging
import secrets
import uuid
from importlib import resources
from typing import Annotated, Any

from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse

from pneumolab import __version__
from pneumolab.errors import ImageReadError, InputError
from pneumolab.evaluation.metrics import promised_rates
from pneumolab.inference.overlay import overlay_png
from pneumolab.inference.predictor import Prediction, Predictor
from pneumolab.serve.audit import AuditLog

__all__ = ["create_app"]

log = logging.getLogger(__name__)

# Problem kind -> HTTP status: 413 for "too big", 415 for "not an image we read", 422 for the rest.
_STATUS = {
    "decompression_bomb": 413,
    "not_an_image": 415,
    "unsupported_compression": 415,
    "empty_file": 422,
    "truncated": 422,
    "corrupt": 422,
    "too_small": 422,
    "bilevel": 422,
    "no_pixel_data": 422,
    "not_a_chest_radiograph": 422,
    "not_a_frontal_view": 422,
    "for_processing": 422,
}


class UploadLimit:
    """ASGI middleware: a request body over ``limit`` bytes is answered 413 as soon as it is known to be too big
    (its Content-Length, or the bytes received so far), before the rest is read, parsed or spooled to disk."""

    def __init__(self, app: Any, limit: int, mb: float) -> None:
        self.app, self.limit, self.mb = app, limit, mb

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            return await self._too_big(send)
        seen = 0

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:  # a chunked body (no Content-Length) that keeps coming
                raise HTTPException(413, self.detail)  # FastAPI's body parser passes HTTPExceptions through
            return message

        await self.app(scope, counting_receive, send)

    @property
    def detail(self) -> str:
        return f"upload exceeds the {self.mb:g} MB limit"

    async def _too_big(self, send: Any) -> None:
        body = json.dumps({"detail": self.detail}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def create_app(
    predictor: Predictor, *, token: str | None = None, max_upload_mb: float = 20.0, audit: AuditLog | None = None
) -> FastAPI:
    """The service around one shared :class:`Predictor`; ``audit`` records every image it answers."""
    app = FastAPI(
        title="pneumolab",
        version=__version__,
        description="Pneumonia probability and Grad-CAM for chest X-rays. Decision support, not a diagnosis.",
        docs_url=None,  # the Swagger page loads its scripts from a CDN: blank on a hospital network
        redoc_url=None,
    )
    limit = int(max_upload_mb * 1024 * 1024)
    # The operating point's rates with their 95% CIs from the images they rest on: each answer's page shows them.
    op = predictor.meta.get("operating_point")
    if op:
        op = {**op, "ci95": {name: r["ci"] for name, r in promised_rates(op).items() if r["ci"]}}
    app.add_middleware(UploadLimit, limit=limit + 64 * 1024, mb=max_upload_mb)  # + room for the multipart framing

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's default answer echoes the offending input: for a malformed upload, the file's bytes
        # (a DICOM's patient name, id, birth date). Say what is wrong, never what was sent.
        where = sorted({".".join(str(p) for p in e.get("loc", ())) for e in exc.errors()})
        return JSONResponse(
            {"detail": f"malformed request ({', '.join(where)}): send one image as multipart form field 'file'"},
            status_code=422,
        )

    def check_token(request: Request) -> None:
        if token is None:
            return
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        # The scheme is case-insensitive (RFC 7235): "bearer" is as valid as "Bearer".
        if scheme.lower() != "bearer" or not secrets.compare_digest(given.strip().encode(), token.encode()):
            raise HTTPException(401, "missing or wrong bearer token (send 'Authorization: Bearer <token>')")

    def _audit(**fields: Any) -> None:
        """Record one answer; a log that cannot be written withholds the answer (503): no untraced results."""
        if audit is None:
            return
        try:
            audit.record(**fields)
        except OSError as e:
            log.error("audit log %s not written: %s", audit.folder, e.strerror)
            raise HTTPException(503, "the audit log could not be written; no result is given without it") from None

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
        request: Request,
        file: Annotated[UploadFile, File(description="A chest X-ray: PNG, JPEG or DICOM.")],
        gradcam: Annotated[bool, Query(description="Include a Grad-CAM overlay (base64 PNG).")] = False,
    ) -> JSONResponse:
        parts = [v for _, v in (await request.form()).multi_items() if not isinstance(v, str)]
        if len(parts) > 1:  # never pick one of several images silently
            raise HTTPException(422, f"the upload holds {len(parts)} files; send one image per request")
        data = await file.read(limit + 1)  # never read more than the limit into memory
        if len(data) > limit:
            raise HTTPException(413, f"upload exceeds the {max_upload_mb:g} MB limit")
        name = "upload"  # not the client's file name: it may carry a patient's name
        try:
            result: Prediction = await run_in_threadpool(predictor.predict, data, name=name, gradcam=gradcam)
        except ImageReadError as e:
            status = _STATUS.get(e.kind, 422)
            _audit(refused=e.kind, status=status)
            raise HTTPException(status, f"{e.detail} [{e.kind}]") from None
        except InputError as e:
            _audit(refused="input", status=422)
            raise HTTPException(422, str(e)) from None
        # An opaque id of this answer (not derived from the image): the site keeps it beside its own study id, and
        # `pneumolab monitor --outcomes` joins the confirmed diagnosis to the audit line by it.
        body = {"request_id": uuid.uuid4().hex, **result.to_dict()}
        _audit(**{k: v for k, v in body.items() if k != "timings_ms"}, total_ms=result.timings_ms["total"])
        body["operating_point"] = op
        body["site"] = predictor.site
        body["notice"] = "Decision support only: not a diagnosis. A qualified reader must review the image."
        if gradcam:
            # The upload at its own aspect ratio; the heat map only on results at or above the threshold.
            body["gradcam_png"] = base64.b64encode(overlay_png(result.original, result.heatmap)).decode()
            body["gradcam_shown"] = result.heatmap is not None
        log.info("predicted %s in %.0f ms", result.label, result.timings_ms["total"])
        return JSONResponse(body)

    return app
