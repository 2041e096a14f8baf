"""How often the guard refuses real chest X-rays, and how often it lets through images that are not.

Usage::

    python benchmarks/ood_guard.py RUN [RUN ...] --external ../shared/data/chest_xray_external [--data DIR]

For each trained run (its model file's guard; with ``--data``, a guard is fitted now for model files made
before guards were stored, on that dataset's train/val splits, exactly as training does):

- **real X-rays that must pass**: the external set (another time and reading than training: the hard case);
- **images that are not chest X-rays**, all from locally installed packages (nothing is downloaded):
  every image in pydicom's bundled test files (CT, MR, ultrasound, nuclear medicine, dose maps, test
  patterns) rendered to greyscale PNG (as a screenshot or export would arrive, so the DICOM modality check
  does not apply), matplotlib's sample images (a photo, a DEM, an MR slice) in colour and in greyscale,
  and synthetic ones (noise, gradients, a checkerboard, text, blank frames, an inverted X-ray, an X-ray
  rotated by 90 degrees).

Prints, per run, the flag rates and which check caught each non-X-ray; ``--json`` writes them.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import io
import json
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from pneumolab.data.index import as_dataset
from pneumolab.data.readers import read_entry
from pneumolab.data.transforms import Preprocessing
from pneumolab.errors import ImageReadError
from pneumolab.inference.guard import fit_model_guard
from pneumolab.inference.predictor import Predictor
from pneumolab.models.checkpoint import load_model_file


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _to_u8(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    lo, hi = np.percentile(a, 0.5), np.percentile(a, 99.5)
    return np.clip((a - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)


def not_xrays(xray: np.ndarray) -> dict[str, bytes]:
    """Name -> PNG/JPEG bytes of images that are not (usable) chest X-rays; ``xray`` (H, W) is a real one."""
    import matplotlib
    import pydicom
    import pydicom.data

    out: dict[str, bytes] = {}
    test_files = Path(pydicom.data.__file__).parent / "test_files"
    for f in sorted(glob.glob(str(test_files / "**" / "*.dcm"), recursive=True)):
        try:
            ds = pydicom.dcmread(f, force=True)
            arr = ds.pixel_array
        except Exception:  # no pixel data, or a codec test file: not an image to render
            continue
        modality = str(ds.get("Modality", "?"))
        while arr.ndim > 2 and arr.shape[-1] not in (3, 4):
            arr = arr[arr.shape[0] // 2]  # a middle frame / slice
        if arr.ndim == 3:
            arr = arr[..., :3].mean(-1)
        if min(arr.shape) >= 32:
            out[f"pydicom {modality} {Path(f).name}"] = _png(_to_u8(arr))
    sample = Path(matplotlib.get_data_path()) / "sample_data"
    photo = Image.open(sample / "grace_hopper.jpg")
    out["photo (colour)"] = (sample / "grace_hopper.jpg").read_bytes()
    out["photo (grey)"] = _png(np.asarray(photo.convert("L")))
    with np.load(sample / "jacksboro_fault_dem.npz") as z:
        out["elevation map (grey)"] = _png(_to_u8(z["elevation"]))
    with gzip.open(sample / "s1045.ima.gz") as fh:
        out["MR slice (grey)"] = _png(_to_u8(np.frombuffer(fh.read(), np.uint16).reshape(256, 256)))
    rng = np.random.default_rng(0)
    out["uniform noise"] = _png((rng.random((512, 512)) * 255).astype(np.uint8))
    blobs = Image.fromarray((rng.random((16, 16)) * 255).astype(np.uint8)).resize((512, 512), Image.BICUBIC)
    out["smooth noise"] = _png(np.asarray(blobs))
    out["gradient"] = _png(np.tile(np.linspace(0, 255, 512).astype(np.uint8), (512, 1)))
    out["checkerboard"] = _png(((np.indices((512, 512)) // 64).sum(0) % 2 * 255).astype(np.uint8))
    text = Image.new("L", (512, 512), 255)
    draw = ImageDraw.Draw(text)
    for i in range(20):
        draw.text((10, 10 + 25 * i), "Patient report: findings unremarkable. " * 2, fill=0)
    out["text page"] = _png(np.asarray(text))
    out["black"] = _png(np.zeros((512, 512), np.uint8))
    out["white"] = _png(np.full((512, 512), 255, np.uint8))
    out["inverted X-ray"] = _png(255 - xray)
    out["X-ray rotated 90 degrees"] = _png(np.ascontiguousarray(np.rot90(xray)))
    return out


def flagged(predictor: Predictor, data: bytes, name: str) -> tuple[bool, str]:
    try:
        r = predictor.predict(data, name=name)
    except ImageReadError as e:
        return True, f"refused: {e.kind}"
    return (not r.assessed), "; ".join(r.reasons)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--external", type=Path, required=True)
    ap.add_argument("--data", type=Path, help="dataset to fit a guard on for model files without one")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    manifest, _ = as_dataset(args.external, Path("runs/ood_guard/external"))
    root = Path(manifest.root)
    real = [(r.path, read_entry(root, r.path)[0]) for r in manifest.records]
    others = not_xrays(read_entry(root, manifest.records[0].path)[1].pixels)
    results = {}
    for run in args.runs:
        model, meta = load_model_file(run)
        if "ood_guard" not in meta:
            if args.data is None:
                raise SystemExit(f"{run} has no guard: pass --data to fit one")
            meta["ood_guard"] = fit_model_guard(model, meta["model_name"], Preprocessing.from_meta(meta), args.data)
        predictor = Predictor(model, meta)
        real_flags = [flagged(predictor, b, n) for n, b in real]
        other_flags = {n: flagged(predictor, b, n) for n, b in others.items()}
        caught = sum(f for f, _ in other_flags.values())
        res = {
            "external_flagged": sum(f for f, _ in real_flags) / len(real_flags),
            "external_n": len(real_flags),
            "not_xray_flagged": caught / len(other_flags),
            "not_xray_n": len(other_flags),
            "missed": sorted(n for n, (f, _) in other_flags.items() if not f),
            "why": {n: w for n, (f, w) in other_flags.items()},
        }
        results[str(run)] = res
        print(
            f"{run}: external X-rays flagged {res['external_flagged']:.3f} (n={res['external_n']}); "
            f"non-X-rays flagged {res['not_xray_flagged']:.3f} (n={res['not_xray_n']}); missed: {res['missed']}",
            flush=True,
        )
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
