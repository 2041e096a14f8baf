"""Decode one X-ray (JPEG, PNG, DICOM or a MedMNIST array entry) into an 8-bit grayscale array.

Every reader returns ``(H, W) uint8``; the format is sniffed from the content, never trusted from
the extension. Problems raise :class:`~pneumolab.errors.ImageReadError` with a ``kind`` code, so
indexing can report them per file and the service can answer 4xx.
"""

from __future__ import annotations

import functools
import io
import warnings
import zlib
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from pneumolab.errors import ImageReadError

__all__ = [
    "GROUPING_KEYWORDS",
    "MAX_ASPECT",
    "MAX_PIXELS",
    "MIN_SIDE",
    "DecodedImage",
    "age_in_years",
    "aspect_problem",
    "decode_bytes",
    "dicom_age_years",
    "dicom_header_value",
    "image_problems",
    "read_entry",
    "sniff_format",
]

MAX_PIXELS = 80_000_000  # ~8,900 px square: larger than any real radiograph, small enough to stop a bomb
# DICOM: a projection radiograph of the chest, nothing else (CT, MR, ultrasound, nuclear medicine, dose maps,
# secondary captures of anything are refused before a model sees them). DR is not a DICOM modality, but some
# vendors write it. An empty body part is accepted: many CR/DX devices never fill it in.
RADIOGRAPH_MODALITIES = ("CR", "DX", "DR")
CHEST_BODY_PARTS = ("", "CHEST", "THORAX", "LUNG", "TORAX", "THORAX_CHEST")
# ViewPosition's defined terms for a lateral or oblique projection: the models were trained on frontal (PA/AP)
# chest X-rays, and a PACS study sends the lateral beside the frontal. Other values (PA, AP, decubitus, none) pass.
NOT_FRONTAL_VIEWS = ("LL", "RL", "LLO", "RLO", "LAO", "RAO", "LPO", "RPO", "LATERAL", "LAT", "OBLIQUE")
# The DICOM attributes a site may score subgroups by (`evaluate --by dicom:KEYWORD`): how, where and of whom an
# image was taken, never what identifies a patient or a study (names, ids, dates, UIDs), which would be printed.
GROUPING_KEYWORDS = (
    "Manufacturer",
    "ManufacturerModelName",
    "SoftwareVersions",
    "DetectorType",
    "InstitutionName",
    "InstitutionalDepartmentName",
    "StationName",
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "PatientPosition",
    "PatientSex",
    "PhotometricInterpretation",
    "BitsStored",
)
DX_FOR_PROCESSING = "1.2.840.10008.5.1.4.1.1.1.1.1"  # SOP class: raw detector data, not meant to be looked at
_DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian: the whole dataset is zlib-compressed
MIN_SIDE = 32
_EXIF_ORIENTATION = 0x0112
NPZ_SEP = "#"  # "pneumoniamnist_128.npz#train/12" addresses image 12 of train_images


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image. ``patient_key`` is a raw DICOM PatientID: hash it, never store or log it."""

    pixels: np.ndarray  # (H, W) uint8
    mode: str  # what the source was, e.g. "L", "RGB", "I;16", "DICOM MONOCHROME1 16-bit"
    converted: bool  # True if it was not 8-bit grayscale and had to be converted
    patient_key: str | None = None
    colourfulness: float = 0.0  # mean |channel - grey| of a colour source, 0..255: a radiograph has ~0
    age_years: float | None = None  # the patient's age from a DICOM header; None when not recorded


MIN_GREY_STD = 4.0  # of 255: below it an image is blank or a uniform fill (a radiograph has std ~40-70)
MAX_COLOURFULNESS = 6.0  # of 255: X-rays saved as RGB JPEG score ~0-2, photos and colour maps tens
MAX_ASPECT = 2.5  # chest radiographs are 0.6-1.6 wide per high


def aspect_problem(width: int, height: int) -> str | None:
    """Why these proportions are not a chest radiograph's (an ECG strip, a panorama); None if they can be."""
    if max(width, height) / min(width, height) > MAX_ASPECT:
        return f"aspect ratio {width}x{height} is not that of a chest radiograph"
    return None


def image_problems(img: DecodedImage, *, aspect: bool = True) -> list[str]:
    """Reasons, in words, why ``img`` cannot be a chest radiograph; empty if none is found.

    ``aspect=False`` leaves out the proportions, as indexing does: a labelled source may hold crops of real chest
    X-rays (Kermany's train has ten, ~3:1), which a model may learn from but which are not assessable as uploads.
    """
    problems = []
    h, w = img.pixels.shape
    if aspect and (why := aspect_problem(w, h)):
        problems.append(why)
    if float(img.pixels.std()) < MIN_GREY_STD:
        problems.append("the image is blank or nearly uniform")
    if img.colourfulness > MAX_COLOURFULNESS:
        problems.append("the image is in colour (a photo or screenshot?); X-rays are greyscale")
    return problems


def sniff_format(head: bytes) -> str | None:
    """``"jpeg"``, ``"png"``, ``"dicom"`` or ``None`` from the first 132 bytes of a file."""
    if head[:3] == b"\xff\xd8\xff":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[128:132] == b"DICM":
        return "dicom"
    return None


def _to_uint8(arr: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
    """Linearly map the array's own range (of the ``valid`` pixels only, when given) onto 0..255 (for >8-bit data
    with no window)."""
    arr = arr.astype(np.float64)
    seen = arr if valid is None else arr[valid]
    if seen.size == 0:
        return np.zeros(arr.shape, np.uint8)
    lo, hi = float(seen.min()), float(seen.max())
    if hi <= lo:
        return np.zeros(arr.shape, np.uint8)
    return np.round((np.clip(arr, lo, hi) - lo) * (255.0 / (hi - lo))).astype(np.uint8)


def _dicom_padding(ds, stored: np.ndarray) -> np.ndarray | None:
    """``(H, W)`` bool, True where the stored value is the DICOM's pixel padding (PixelPaddingValue, up to
    PixelPaddingRangeLimit): the area outside the detector or collimation, which has no image in it."""
    pad = ds.get("PixelPaddingValue")
    if pad is None:
        return None
    limit = ds.get("PixelPaddingRangeLimit", pad)
    lo, hi = sorted((int(pad), int(limit)))
    mask = (stored >= lo) & (stored <= hi)
    return mask if mask.any() else None


def _decode_pil(data: bytes, name: str, max_pixels: int) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # our own limit below decides
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageReadError(
                    name, "decompression_bomb", f"{w}x{h} pixels exceeds the {max_pixels:,}-pixel limit"
                )
            mode = img.mode
            img.load()
    except ImageReadError:
        raise
    except Image.DecompressionBombError as e:  # PIL refuses > 2x its limit at open(), before we see the size
        raise ImageReadError(name, "decompression_bomb", f"too many pixels ({e})") from None
    except (OSError, SyntaxError, ValueError) as e:
        msg = str(e)
        kind = "truncated" if "truncat" in msg.lower() else "corrupt"
        raise ImageReadError(name, kind, f"cannot decode the image ({msg or type(e).__name__})") from None
    if img.format == "JPEG":
        _check_jpeg_strictly(data, name)
    if mode == "1":
        raise ImageReadError(
            name,
            "bilevel",
            "a 1-bit (black-and-white) image: the grey levels a radiograph is read from are gone; "
            "export it as 8- or 16-bit greyscale",
        )
    if img.getexif().get(_EXIF_ORIENTATION, 1) != 1:
        # A camera or scanner stored the pixels turned and says how to turn them back: read the image every viewer
        # shows (and the clinician sees), not the stored raster, so that a label and a heat map match it.
        ImageOps.exif_transpose(img, in_place=True)
    if mode == "L":
        return DecodedImage(np.asarray(img, dtype=np.uint8), mode, converted=False)
    if mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        return DecodedImage(_to_uint8(np.asarray(img)), mode, converted=True)
    if mode == "CMYK":  # PIL's CMYK->L ignores K; go through RGB so dark ink stays dark
        img = img.convert("RGB")
    return DecodedImage(np.asarray(img.convert("L"), dtype=np.uint8), mode, True, colourfulness=_colourfulness(img))


def _colourfulness(img: Image.Image) -> float:
    """How far a colour image's channels stray from grey: a photo scores tens, an X-ray saved as RGB ~0-2."""
    rgb = img.convert("RGB")
    rgb = rgb.reduce(max(1, min(rgb.size) // 128))  # ~128 px is enough to see colour, and cheap
    arr = np.asarray(rgb, dtype=np.float32)  # (h, w, 3)
    return float(np.abs(arr - arr.mean(axis=2, keepdims=True)).mean())


def _check_jpeg_strictly(data: bytes, name: str) -> None:
    """PIL decodes a JPEG with corrupt entropy data without complaint (libjpeg only warns, and the damaged
    part comes out grey); libjpeg-turbo through simplejpeg in strict mode turns those warnings into errors."""
    import simplejpeg

    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=True)
    except ValueError as e:
        msg = str(e)
        if "Corrupt JPEG data" in msg or "Premature end" in msg:
            kind = "truncated" if "Premature end" in msg else "corrupt"
            raise ImageReadError(name, kind, f"damaged JPEG data ({msg.rstrip('.')})") from None
        # anything else (a colour conversion this checker lacks, e.g. CMYK): PIL's decode above stands


def _inflated_size_ok(data: bytes, limit: int) -> bool:
    """Whether a deflated DICOM's dataset inflates to at most ``limit`` bytes, found without inflating more."""
    # File meta (group 0002, explicit VR little endian) follows the 128-byte preamble and "DICM"; its first
    # element, (0002,0000) UL, gives the meta group's length. The deflated dataset starts right after it.
    if len(data) < 144 or data[132:136] != b"\x02\x00\x00\x00":
        return True  # no group length: pydicom will fail on it or it is not deflated in the usual way
    start = 144 + int.from_bytes(data[140:144], "little")
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        inflater.decompress(data[start:], limit)
    except zlib.error:
        return True  # pydicom reports the damage itself
    return not inflater.unconsumed_tail


def _check_chest_radiograph(ds, name: str) -> None:
    """Refuse DICOMs that are not a single-frame frontal projection radiograph of the chest, processed for
    presentation (see RADIOGRAPH_MODALITIES, NOT_FRONTAL_VIEWS)."""
    modality = str(ds.get("Modality", "") or "").strip().upper()
    what = "DICOM file has no Modality" if not modality else f"DICOM Modality {modality!r}"
    if modality not in RADIOGRAPH_MODALITIES:
        raise ImageReadError(
            name,
            "not_a_chest_radiograph",
            f"{what}: not a radiograph (pneumolab reads chest radiographs only: Modality CR or DX)",
        )
    part = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    if part not in CHEST_BODY_PARTS:
        raise ImageReadError(name, "not_a_chest_radiograph", f"DICOM BodyPartExamined {part!r}: not a chest radiograph")
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    if frames != 1:
        raise ImageReadError(
            name, "not_a_chest_radiograph", f"DICOM file holds {frames} frames; a chest radiograph has one"
        )
    view = str(ds.get("ViewPosition", "") or "").strip().upper()
    if view in NOT_FRONTAL_VIEWS:
        raise ImageReadError(
            name,
            "not_a_frontal_view",
            f"DICOM ViewPosition {view!r}: a lateral or oblique view; pneumolab reads frontal (PA/AP) chest "
            "radiographs only",
        )
    intent = str(ds.get("PresentationIntentType", "") or "").strip().upper()
    if intent == "FOR PROCESSING" or str(ds.get("SOPClassUID", "")) == DX_FOR_PROCESSING:
        raise ImageReadError(
            name,
            "for_processing",
            "DICOM image FOR PROCESSING (raw detector data, before the scanner's image processing): send the FOR "
            "PRESENTATION image of the same exposure",
        )


def _decode_dicom(data: bytes, name: str, max_pixels: int) -> DecodedImage:
    import pydicom

    # 2 bytes a pixel (16-bit) plus 1 MB of header: any real radiograph within the pixel limit inflates to less.
    if _DEFLATED.encode() in data[:1024] and not _inflated_size_ok(data, 2 * max_pixels + 1_000_000):
        raise ImageReadError(name, "decompression_bomb", "deflated DICOM inflates beyond the size limit")
    try:
        ds = pydicom.dcmread(io.BytesIO(data))
    except Exception as e:  # pydicom raises many types; none of them carries patient data in the message
        raise ImageReadError(name, "corrupt", f"not a readable DICOM file ({type(e).__name__})") from None
    if "PixelData" not in ds:
        raise ImageReadError(name, "no_pixel_data", "DICOM file has no pixel data (a report or structured document?)")
    _check_chest_radiograph(ds, name)
    rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
    if rows * cols > max_pixels:
        raise ImageReadError(name, "decompression_bomb", f"{cols}x{rows} pixels exceeds the {max_pixels:,}-pixel limit")
    try:
        return replace(_dicom_pixels(ds), age_years=dicom_age_years(ds))
    except _FrameMismatch as e:
        raise ImageReadError(name, "corrupt", str(e)) from None
    except Exception as e:  # pydicom/numpy raise many types; the message may name a codec, never patient data
        raise ImageReadError(name, *_dicom_pixel_problem(ds, e)) from None


_AGE_UNIT_DAYS = {"D": 1.0, "W": 7.0, "M": 365.25 / 12, "Y": 365.25}


def age_in_years(text: str) -> float | None:
    """``"54"``, ``"1.5"`` (years) or a DICOM age string (``"054Y"``, ``"018M"``, ``"010W"``, ``"100D"``) in years;
    None when it is neither (or negative)."""
    age = text.strip().upper()
    if len(age) >= 2 and age[:-1].isdigit() and age[-1] in _AGE_UNIT_DAYS:
        return int(age[:-1]) * _AGE_UNIT_DAYS[age[-1]] / 365.25
    try:
        years = float(age)
    except ValueError:
        return None
    return years if 0 <= years < 200 else None  # also refuses nan and inf


def dicom_age_years(ds) -> float | None:
    """The patient's age at the study in years: ``PatientAge`` (``"054Y"``, ``"018M"``, ``"010W"``, ``"100D"``),
    else ``StudyDate`` - ``PatientBirthDate``; None when neither is recorded or readable (never an error: an
    anonymised file often has no age)."""
    age = str(ds.get("PatientAge", "") or "").strip().upper()
    if len(age) >= 2 and age[-1] in _AGE_UNIT_DAYS:  # the AS form only: a bare number is no DICOM age
        return age_in_years(age)
    try:  # DICOM DA values are YYYYMMDD
        born, seen = (datetime.strptime(str(ds.get(t, "") or ""), "%Y%m%d") for t in ("PatientBirthDate", "StudyDate"))
        days = (seen - born).days
    except ValueError:  # missing, partial or impossible dates
        return None
    return days / 365.25 if days >= 0 else None


def dicom_header_value(path: Path, keyword: str) -> str | None:
    """One of :data:`GROUPING_KEYWORDS` of a DICOM file, as text (``""`` when absent or empty), read without the
    pixels; None when the file is not DICOM."""
    import pydicom

    if keyword not in GROUPING_KEYWORDS:
        raise ValueError(f"{keyword!r} is not one of {GROUPING_KEYWORDS}")
    with path.open("rb") as f:
        if sniff_format(f.read(132)) != "dicom":
            return None
    value = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=[keyword]).get(keyword)
    return "" if value is None else str(value).strip()


class _FrameMismatch(ValueError):
    """The pixel data holds another number of frames than the header declares: refused, never guessed at."""


def _frames_message(frames: int | str, declared: int) -> str:
    return (
        f"the DICOM pixel data holds {frames} frames but its header declares {declared} (NumberOfFrames): damaged or "
        "mislabelled, refused rather than guessed at"
    )


def _dicom_pixel_problem(ds, e: Exception) -> tuple[str, str]:
    """Why the pixel data did not decode, as ``(kind, detail)``: a compression without a decoder here (a valid file
    that a sending system can send otherwise) or damaged data."""
    from pydicom.pixels import get_decoder

    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is not None and ts.is_transfer_syntax and ts.is_compressed:
        try:
            available = get_decoder(ts).is_available
        except NotImplementedError:  # pydicom has no decoder for it at all (MPEG, JPEG XL...)
            available = False
        if not available:
            return "unsupported_compression", (
                f"no decoder here for the DICOM transfer syntax {ts.name!r}: have the sending system send "
                "uncompressed, JPEG, JPEG-LS, JPEG 2000 or RLE DICOM"
            )
    return "corrupt", f"cannot decode DICOM pixel data: damaged or inconsistent with its header ({type(e).__name__})"


def _dicom_pixels(ds) -> DecodedImage:
    from pydicom.pixels import apply_modality_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    colour = int(ds.get("SamplesPerPixel", 1)) == 3
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None or not ts.is_compressed:  # native: whole frames are counted from the byte length, before pydicom
        # (which would return them all, with a warning on the console) decodes them
        per_frame = int(ds.Rows) * int(ds.Columns) * (3 if colour else 1) * ((int(ds.BitsAllocated) + 7) // 8)
        frames, declared = len(ds.PixelData) // max(per_frame, 1), int(ds.get("NumberOfFrames", 1) or 1)
        if frames > declared:
            raise _FrameMismatch(_frames_message(frames, declared))
    arr = ds.pixel_array
    if arr.ndim != (3 if colour else 2):  # pydicom returns every frame the bytes hold, whatever the header says
        frames = arr.shape[0] if arr.ndim == (4 if colour else 3) else "no whole"
        raise _FrameMismatch(_frames_message(frames, ds.get("NumberOfFrames", 1)))
    if colour:
        # (H, W, 3) colour secondary capture: ITU-R 601-2 luma, like PIL's convert("L")
        gray = arr[..., 0] * 0.299 + arr[..., 1] * 0.587 + arr[..., 2] * 0.114
        chroma = float(np.abs(arr - arr.mean(axis=2, keepdims=True)).mean() * 255 / max(float(arr.max()), 1.0))
        return DecodedImage(_to_uint8(gray), f"DICOM {photometric}", True, ds.get("PatientID"), chroma)
    # Padding (a value far outside the image's, e.g. 65535) would otherwise set the range the image is scaled to
    # and squash the X-ray into a few grey levels; it is left out of the range and shown black, as collimation.
    padding = _dicom_padding(ds, arr)
    arr = apply_modality_lut(arr, ds)  # stored values -> e.g. Hounsfield / optical density
    arr = apply_voi_lut(arr, ds)  # window centre/width or VOI LUT: the range the radiologist looks at
    out = _to_uint8(arr, None if padding is None else ~padding)
    if photometric == "MONOCHROME1":  # 0 = white: invert so that bone is bright, as in MONOCHROME2
        out = 255 - out
    if padding is not None:
        out[padding] = 0
    bits = int(ds.get("BitsStored", 8))
    return DecodedImage(out, f"DICOM {photometric} {bits}-bit", True, ds.get("PatientID"))


def decode_bytes(data: bytes, name: str, *, max_pixels: int = MAX_PIXELS, min_side: int = MIN_SIDE) -> DecodedImage:
    """Decode an image file's bytes to ``(H, W) uint8`` grayscale.

    Args:
        data: the file content.
        name: how to name the file in errors (a path, never a patient name).
        max_pixels: larger images are refused as decompression bombs.
        min_side: images with a side shorter than this are refused.
    """
    if not data:
        raise ImageReadError(name, "empty_file", "file is empty (0 bytes)")
    fmt = sniff_format(data[:132])
    if fmt is None:
        raise ImageReadError(name, "not_an_image", "content is not JPEG, PNG or DICOM (whatever the extension says)")
    img = _decode_dicom(data, name, max_pixels) if fmt == "dicom" else _decode_pil(data, name, max_pixels)
    h, w = img.pixels.shape[:2]
    if min(h, w) < min_side:
        raise ImageReadError(name, "too_small", f"{w}x{h} px is smaller than the {min_side} px minimum")
    return img


@functools.lru_cache(maxsize=4)
def _npz_images(path: str, split: str) -> np.ndarray:
    with np.load(path) as z:
        return z[f"{split}_images"]


def read_entry(root: Path, rel: str) -> tuple[bytes, DecodedImage]:
    """Read one manifest entry (a file, or ``file.npz#split/index``) and decode it.

    Returns:
        The raw bytes (what the manifest's sha256 is computed over) and the decoded image.
    """
    if NPZ_SEP in rel:
        file, _, key = rel.partition(NPZ_SEP)
        split, _, idx = key.partition("/")
        arr = _npz_images(str(root / file), split)[int(idx)]  # (H, W), (H, W, 1) or (H, W, 3)
        raw = arr.tobytes()
        if arr.ndim == 3 and arr.shape[2] == 1:
            arr = arr[..., 0]
        converted = arr.dtype != np.uint8
        if converted:  # floats in [0, 1] (or [0, 255]), 16-bit integers: onto 0..255, never a silent cast
            if not np.isfinite(arr).all():
                raise ImageReadError(rel, "corrupt", "the array holds NaN or infinite values")
            scale = 255.0 if arr.dtype.kind == "f" and float(arr.max()) <= 1.0 else 1.0
            arr = _to_uint8(arr) if float(arr.max()) * scale > 255 or float(arr.min()) < 0 else arr * scale
            arr = np.round(arr).astype(np.uint8)
        if arr.ndim == 3:
            return raw, DecodedImage(np.asarray(Image.fromarray(arr).convert("L")), "RGB", True)
        return raw, DecodedImage(np.ascontiguousarray(arr), str(arr.dtype) if converted else "L", converted)
    path = root / rel
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        where = "" if path == Path(rel) else f" (looked for {path})"  # a relative path: relative to what?
        raise ImageReadError(rel, "unreadable", f"no such file{where}") from None
    except OSError as e:
        raise ImageReadError(rel, "unreadable", f"cannot read the file ({e.strerror})") from None
    return data, decode_bytes(data, rel)
