"""``pneumolab predict``, ``export`` and ``serve``: a trained model used on new X-rays."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from pathlib import Path
from typing import Annotated

import typer

from pneumolab.cli.base import NoGuard, app, command


def _inputs(paths: list[Path]) -> tuple[list[tuple[Path, Path]], list[tuple[Path, str]]]:
    """``(file, its Grad-CAM file name)`` for every image to predict, and ``(file, reason)`` for every file left out.

    A folder stands for every image under it (:func:`image_files`); its Grad-CAM files mirror its subfolders, so
    that ``p1/IM0001`` and ``p2/IM0001`` (a PACS export) do not overwrite each other. Files named alike from
    different places get ``-2``, ``-3``, ... rather than one overlay silently replacing another.
    """
    from pneumolab.data.sources import IMAGE_SUFFIXES, image_files
    from pneumolab.errors import InputError

    inputs, skipped, taken = [], [], set()
    for path in paths:
        if path.is_dir():
            files, left_out = image_files(path)
            skipped += [(path / rel, why) for rel, why in left_out]
            if not files:
                raise InputError(f"{path}: no JPEG, PNG or DICOM files in this folder or its subfolders")
            names = [f.relative_to(path) for f in files]
        else:
            files, names = [path], [Path(path.name)]
        for f, rel in zip(files, names, strict=True):
            stem = rel.stem if rel.suffix.lower() in IMAGE_SUFFIXES else rel.name  # a UID name's dots are not a suffix
            cam, n = rel.parent / f"{stem}_gradcam.png", 1
            while cam in taken:
                n += 1
                cam = rel.parent / f"{stem}-{n}_gradcam.png"
            taken.add(cam)
            inputs.append((f, cam))
    return inputs, skipped


@command(
    app,
    "predict",
    [
        "pneumolab predict runs/train/resnet18 xray1.png xray2.dcm",
        "pneumolab predict runs/train/resnet18/model.onnx scans/*.jpeg --json",
        "pneumolab predict runs/train/resnet18 pacs_export/ --gradcam out/ --json",
        "pneumolab predict runs/train/resnet18 xray.png --gradcam out/ --ood runs/autoencoder/autoencoder",
    ],
)
def predict_cmd(
    model: Annotated[Path, typer.Argument(help="Run folder, model.pt or model.onnx.")],
    images: Annotated[
        list[Path], typer.Argument(help="PNG, JPEG or DICOM files, or folders (searched with their subfolders).")
    ],
    gradcam: Annotated[Path | None, typer.Option(help="Write Grad-CAM overlays (PNG) into this folder.")] = None,
    ood: Annotated[Path | None, typer.Option(help="Also use this autoencoder run's guard.")] = None,
    no_guard: NoGuard = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Probability, label at the stored operating point and timing per image; bad files fail alone (exit 2).

    Images the guard flags (not a chest X-ray as far as it can tell) are NOT_ASSESSED: no label, no probability.
    A folder is searched with its subfolders for JPEG, PNG and DICOM files (DICOM also without an extension);
    every other file in it is listed as skipped, with the reason.
    """
    from pneumolab.errors import ImageReadError
    from pneumolab.inference.overlay import overlay_png
    from pneumolab.inference.predictor import Predictor
    from pneumolab.io import atomic_path
    from pneumolab.serve.audit import now_utc

    inputs, skipped = _inputs(images)
    predictor = Predictor.load(model, ood=ood, guard=not no_guard)
    failed, labels = 0, Counter()
    # the table's first column as wide as the longest path (up to 100 characters): the columns line up
    w = min(max([40, *(len(str(path)) for path, _ in [*inputs, *skipped])]), 100)
    if not as_json:
        typer.echo(f"model {model}: {predictor.site or 'as trained (not site-calibrated or adapted)'}")
        if no_guard:
            typer.echo("warning: --no-guard: every image gets a label, even one that is not a chest X-ray")
        typer.echo(f"{'image':<{w}} {'P(pneumonia)':>12}  {'label':<12} ms   (threshold {predictor.threshold:.3f})")
    for path, why in skipped:
        typer.echo(json.dumps({"image": str(path), "skipped": why}) if as_json else f"{path!s:<{w}} skipped: {why}")
    for path, cam in inputs:
        # time and model as in the service's audit log: `pneumolab monitor` reads both
        stamp = {
            "image": str(path),
            "request_id": uuid.uuid4().hex,
            "time": now_utc(),
            "model_sha256": predictor.model_sha256,
        }
        try:
            r = predictor.predict(path.read_bytes(), name=str(path), gradcam=gradcam is not None)
        except (ImageReadError, OSError) as e:
            failed += 1
            msg, kind = (e.detail, e.kind) if isinstance(e, ImageReadError) else (e.strerror, "unreadable")
            said = {**stamp, "error": msg, "refused": kind}
            typer.echo(json.dumps(said) if as_json else f"{path!s:<{w}} error: {msg}")
            continue
        labels[r.label] += 1
        written = {}
        if gradcam is not None and r.assessed:
            with atomic_path(gradcam / cam, suffix=".png") as tmp:
                tmp.write_bytes(overlay_png(r.original, r.heatmap))
            # as on the service's page: the image, with the map only at or above the threshold (gradcam_shown)
            written = {"gradcam": str(gradcam / cam), "gradcam_shown": r.heatmap is not None}
        if as_json:
            typer.echo(json.dumps({**stamp, **r.to_dict(), "site": predictor.site, **written}))
        else:
            p_text = "-" if r.probability is None else f"{r.probability:.4f}"
            why = f"  ({'; '.join(r.reasons + r.cautions)})" if r.reasons or r.cautions else ""
            typer.echo(f"{path!s:<{w}} {p_text:>12}  {r.label:<12} {r.timings_ms['total']:.0f}{why}")
    if len(inputs) + len(skipped) > 1:  # after a folder's hundreds of lines, the tally (stderr: --json stays JSON)
        tally = [f"{labels[k]} {k}" for k in ("PNEUMONIA", "NORMAL", "NOT_ASSESSED") if labels[k]]
        tally += [f"{n} {what}" for n, what in ((failed, "failed"), (len(skipped), "skipped")) if n]
        typer.echo(f"{len(inputs) + len(skipped)} files: {', '.join(tally)}", err=True)
    if failed:
        raise typer.Exit(2)


@command(app, "export", ["pneumolab export runs/train/resnet18 --onnx runs/train/resnet18/model.onnx"])
def export_cmd(
    model: Annotated[Path, typer.Argument(help="Run folder or model.pt.")],
    onnx: Annotated[Path, typer.Option(help="Output .onnx file (a .onnx.json with the metadata goes beside it).")],
    tolerance: Annotated[float, typer.Option(help="Largest accepted |ONNX - PyTorch| on the sample images.")] = 1e-4,
) -> None:
    """Export to ONNX and verify ONNX Runtime against PyTorch on real sample images."""
    from pneumolab.inference.export import export_onnx

    export_onnx(model, onnx, tolerance=tolerance)  # it logs the file and the parity it measured


@command(
    app,
    "serve",
    [
        "pneumolab serve runs/train/resnet18",
        "PNEUMOLAB_TOKEN=secret pneumolab serve runs/train/resnet18 --backend onnx --ood runs/autoencoder/autoencoder",
        "pneumolab serve runs/train/fast --audit /var/log/pneumolab   # then: pneumolab monitor /var/log/pneumolab",
    ],
)
def serve_cmd(
    model: Annotated[Path, typer.Argument(help="Run folder, model.pt or model.onnx.")],
    host: Annotated[str, typer.Option(help="Interface to bind (127.0.0.1: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port.")] = 8000,
    token: Annotated[str | None, typer.Option(envvar="PNEUMOLAB_TOKEN", help="Require this bearer token.")] = None,
    backend: Annotated[str, typer.Option(help="torch or onnx.")] = "torch",
    ood: Annotated[Path | None, typer.Option(help="Also use this autoencoder run's guard.")] = None,
    no_guard: NoGuard = False,
    max_upload_mb: Annotated[float, typer.Option(help="Largest accepted upload.")] = 20.0,
    workers: Annotated[
        int, typer.Option(help="Server processes (the cores, e.g. 2, for many concurrent clients).", min=1)
    ] = 1,
    audit: Annotated[
        Path | None,
        typer.Option(help="Append a JSON line per answered image to DIR/predictions-<UTC day>.jsonl (no image data)."),
    ] = None,
) -> None:
    """The web page and JSON API (OpenAPI schema at /openapi.json) for one model."""
    from pneumolab.extras import require_extra

    require_extra("serve")
    from pneumolab.serve.server import serve

    if no_guard:
        typer.echo("warning: --no-guard: every upload gets a label, even one that is not a chest X-ray")

    def ready(threads: int) -> None:
        typer.echo(
            f"serving {model} on http://{host}:{port} (backend {backend}, {workers} process(es) x {threads} "
            f"thread(s), token {'on' if token else 'off'}, audit log {audit or 'off'})"
        )

    serve(
        model,
        host=host,
        port=port,
        backend=backend,
        ood=ood,
        guard=not no_guard,
        token=token,
        max_upload_mb=max_upload_mb,
        workers=workers,
        audit=audit,
        on_ready=ready,
    )
