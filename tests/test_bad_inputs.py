"""Bad and non-X-ray inputs, table-driven (MONAI's TEST_CASE style): each row is one input class, checked
through the reader, the service and the CLI. Nothing that is not a chest radiograph gets a label; every
bad file gets a specific 4xx / one line and exit code 2; no 5xx, no traceback."""

import io
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pydicom
import pydicom.data
import pytest
import torch
from conftest import tiny_train_args, write_dicom, write_image
from fastapi.testclient import TestClient
from PIL import Image
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless, RLELossless

from pneumolab.cli import main
from pneumolab.data import sample_root
from pneumolab.data.index import index_source
from pneumolab.data.readers import decode_bytes
from pneumolab.errors import ImageReadError, InputError
from pneumolab.inference.predictor import Predictor
from pneumolab.serve.app import create_app

XRAY = sorted((sample_root() / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
PYDICOM_FILES = Path(pydicom.data.__file__).parent / "test_files"
PX = (np.indices((64, 64)).sum(0) * 2).astype(np.uint8)  # a 64 x 64 ramp: valid pixel data
PX16 = (np.indices((64, 64)).sum(0) * 200).astype(np.uint16)
RAMP = np.tile(np.linspace(0, 255, 300).astype(np.uint8), (300, 1))  # (300, 300)


@pytest.fixture(scope="module")
def run(sample_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bad_input_runs")
    assert main(tiny_train_args(sample_data, out, "trainer.max_epochs=1")) == 0
    return out / "cnn_base"


@pytest.fixture(scope="module")
def client(run) -> TestClient:
    return TestClient(create_app(Predictor.load(run)))


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _damaged_jpeg() -> bytes:
    """A JPEG whose entropy data has a hole: PIL decodes it without complaint (the damage comes out grey)."""
    rng = np.random.default_rng(0)
    buf = io.BytesIO()
    Image.fromarray((rng.random((256, 256)) * 255).astype(np.uint8)).save(buf, format="JPEG")
    d = buf.getvalue()
    return d[:2000] + bytes(500) + d[2500:]


def _jpeg(tmp: Path) -> bytes:
    return write_image(tmp / "t.jpeg", seed=1, size=(256, 256)).read_bytes()


def _pydicom_file(name: str, **retag) -> bytes:
    """One of pydicom's bundled test files, optionally re-tagged (e.g. as a CR to exercise its codec)."""
    ds = pydicom.dcmread(PYDICOM_FILES / name)
    for k, v in retag.items():
        setattr(ds, k, v)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _dicom(tmp: Path, pixels: np.ndarray = PX, **kw) -> bytes:
    return write_dicom(tmp / "x.dcm", pixels, **kw).read_bytes()


def _recompressed_label(tmp: Path, transfer_syntax: str) -> bytes:
    """A valid RLE-compressed DICOM relabelled with another compressed transfer syntax (one pydicom cannot decode)."""
    ds = pydicom.dcmread(write_dicom(tmp / "x.dcm", PX, transfer_syntax=RLELossless))
    ds.file_meta.TransferSyntaxUID = pydicom.uid.UID(transfer_syntax)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


# (name, make(tmp) -> bytes, reader kind, HTTP status, words in the message). Real DICOMs that are not
# chest radiographs, malformed DICOMs, bombs and damaged files: refused by the reader, whoever calls it.
REFUSED = [
    (
        "CT (pydicom's CT_small)",
        lambda t: (PYDICOM_FILES / "CT_small.dcm").read_bytes(),
        "not_a_chest_radiograph",
        422,
        "Modality 'CT'",
    ),
    (
        "MR (pydicom's MR_small)",
        lambda t: (PYDICOM_FILES / "MR_small.dcm").read_bytes(),
        "not_a_chest_radiograph",
        422,
        "Modality 'MR'",
    ),
    ("ultrasound", lambda t: _dicom(t, Modality="US"), "not_a_chest_radiograph", 422, "not a radiograph"),
    ("secondary capture", lambda t: _dicom(t, Modality="OT"), "not_a_chest_radiograph", 422, "Modality 'OT'"),
    ("no modality", lambda t: _dicom(t, Modality=""), "not_a_chest_radiograph", 422, "no Modality"),
    ("radiograph of a hand", lambda t: _dicom(t, BodyPartExamined="HAND"), "not_a_chest_radiograph", 422, "HAND"),
    ("a lateral chest view", lambda t: _dicom(t, ViewPosition="LL"), "not_a_frontal_view", 422, "ViewPosition 'LL'"),
    (
        "raw detector data",
        lambda t: _dicom(t, Modality="DX", PresentationIntentType="FOR PROCESSING"),
        "for_processing",
        422,
        "FOR PROCESSING",
    ),
    (
        "two frames",
        lambda t: _dicom(t, NumberOfFrames=2, PixelData=PX.tobytes() * 2),
        "not_a_chest_radiograph",
        422,
        "2 frames",
    ),
    (
        "more pixel data than declared",
        lambda t: _dicom(t, PixelData=PX.tobytes() * 3),
        "corrupt",
        422,
        "holds 3 frames but its header declares 1",
    ),
    (
        "less pixel data than declared",
        lambda t: _dicom(t, PixelData=PX.tobytes()[:1000]),
        "corrupt",
        422,
        "inconsistent with its header",
    ),
    (
        "deflated DICOM bomb (200 MB of zeros)",
        lambda t: _dicom(t, transfer_syntax=DeflatedExplicitVRLittleEndian, PixelData=bytes(200_000_000)),
        "decompression_bomb",
        413,
        "inflates beyond",
    ),
    (
        "a compression without a decoder (MPEG-2 video)",
        lambda t: _recompressed_label(t, "1.2.840.10008.1.2.4.100"),
        "unsupported_compression",
        415,
        "no decoder here for the DICOM transfer syntax 'MPEG2 Main Profile / Main Level'",
    ),
    ("damaged JPEG that PIL accepts", lambda t: _damaged_jpeg(), "corrupt", 422, "damaged JPEG data"),
    ("a 1-bit black-and-white PNG", lambda t: _png(RAMP > 127), "bilevel", 422, "1-bit (black-and-white)"),
    ("truncated JPEG", lambda t: _jpeg(t)[:3000], "truncated", 422, "runcat"),
]

# Hospital compressions that must decode (the pylibjpeg plugins are dependencies).
CODECS = [
    ("RLE", lambda t: _dicom(t, transfer_syntax=RLELossless)),
    ("JPEG 2000 lossless", lambda t: _dicom(t, PX16, transfer_syntax=JPEG2000Lossless)),
    ("JPEG-LS lossless", lambda t: _pydicom_file("MR_small_jpeg_ls_lossless.dcm", Modality="CR")),
    ("JPEG lossless (colour)", lambda t: _pydicom_file("SC_rgb_jpeg_gdcm.dcm", Modality="CR")),
    ("12-bit JPEG extended", lambda t: _pydicom_file("JPGExtended.dcm", Modality="CR", BodyPartExamined="CHEST")),
    ("deflated", lambda t: _dicom(t, transfer_syntax=DeflatedExplicitVRLittleEndian)),
]

# Readable images that are not chest X-rays: the guard answers 200 with "not assessed", never a label.
NOT_ASSESSED = [
    ("colour photo", lambda: _png(np.stack([RAMP, 255 - RAMP, np.full_like(RAMP, 90)], -1)), "colour"),
    ("all black", lambda: _png(np.zeros((300, 300), np.uint8)), "blank"),
    ("all white", lambda: _png(np.full((300, 300), 255, np.uint8)), "blank"),
    (
        "an ECG strip's shape",
        lambda: _png((np.random.default_rng(0).random((200, 1200)) * 255).astype(np.uint8)),
        "aspect ratio",
    ),
]


@pytest.mark.parametrize(("name", "make", "kind", "status", "words"), REFUSED, ids=[c[0] for c in REFUSED])
def test_the_reader_refuses(tmp_path, name, make, kind, status, words) -> None:
    with pytest.raises(ImageReadError) as e:
        decode_bytes(make(tmp_path), "upload")
    assert e.value.kind == kind and words in e.value.detail
    assert "Doe" not in str(e.value) and "MRN" not in str(e.value)  # no header value of the patient leaks


@pytest.mark.parametrize(("name", "make", "kind", "status", "words"), REFUSED, ids=[c[0] for c in REFUSED])
def test_the_service_answers_4xx(client, tmp_path, name, make, kind, status, words) -> None:
    r = client.post("/api/v1/predict", files={"file": ("x", make(tmp_path))})
    assert r.status_code == status and words in r.json()["detail"]


@pytest.mark.parametrize(
    "tags",
    [
        {"ViewPosition": "PA"},
        {"ViewPosition": "AP", "Modality": "DX", "PresentationIntentType": "FOR PRESENTATION"},
        {"ViewPosition": "LLD"},  # a decubitus film is a frontal projection with a horizontal beam
        {},
    ],
)
def test_frontal_views_for_presentation_are_read(tmp_path, tags) -> None:
    assert decode_bytes(_dicom(tmp_path, **tags), "x.dcm").pixels.shape == PX.shape


@pytest.mark.parametrize(("name", "make"), CODECS, ids=[c[0] for c in CODECS])
def test_hospital_dicom_compressions_decode(tmp_path, name, make) -> None:
    img = decode_bytes(make(tmp_path), "x.dcm")
    assert img.pixels.dtype == np.uint8 and img.pixels.std() > 0
    if name in ("RLE", "deflated"):  # lossless, 8-bit: the very pixels written
        np.testing.assert_array_equal(img.pixels, np.round(PX * (255 / PX.max())).astype(np.uint8))


@pytest.mark.parametrize(("name", "make", "reason"), NOT_ASSESSED, ids=[c[0] for c in NOT_ASSESSED])
def test_non_xrays_are_not_assessed(client, name, make, reason) -> None:
    body = client.post("/api/v1/predict", files={"file": ("x.png", make())}, params={"gradcam": "true"}).json()
    assert body["assessed"] is False and body["label"] == "NOT_ASSESSED" and body["ood"] is True
    assert body["probability"] is None and body["gradcam_shown"] is False
    assert any(reason in r for r in body["reasons"])


def test_the_feature_guard_flags_what_the_image_checks_pass(run) -> None:
    """A greyscale, non-blank, X-ray-shaped image far from every training X-ray: only the features say so."""
    predictor = Predictor.load(run)
    checker = ((np.indices((400, 400)) // 25).sum(0) % 2 * 255).astype(np.uint8)
    r = predictor.predict(_png(checker))
    assert r.reasons == ["its features are unlike the training X-rays' (out of distribution)"] and r.ood_score > 1
    ok = predictor.predict(XRAY.read_bytes())
    assert ok.assessed and ok.ood_score < 1


def test_a_model_without_a_guard_is_refused_unless_asked(run, tmp_path, capsys) -> None:
    blob = torch.load(run / "model.pt", weights_only=True)
    del blob["ood_guard"]
    old = tmp_path / "old" / "model.pt"
    old.parent.mkdir()
    torch.save(blob, old)
    with pytest.raises(InputError, match=r"no out-of-distribution guard.*--no-guard"):
        Predictor.load(old)
    assert main(["predict", str(old), str(XRAY)]) == 2
    assert "--no-guard" in capsys.readouterr().err
    assert main(["predict", str(old), str(XRAY), "--no-guard"]) == 0
    out = capsys.readouterr().out
    assert "warning: --no-guard" in out and ("PNEUMONIA" in out or "NORMAL" in out)
    assert Predictor.load(old, guard=False).predict(_png(np.zeros((300, 300), np.uint8))).label != "NOT_ASSESSED"


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda b: b["model_kwargs"].update(act="silu"), "unexpected keyword argument 'act'"),
        (lambda b: b["state_dict"].pop(next(iter(b["state_dict"]))), "Error(s) in loading state_dict"),
    ],
    ids=["an option this version lacks", "a layer this version lacks"],
)
def test_a_model_file_this_version_cannot_rebuild_is_refused_in_one_sentence(run, tmp_path, capsys, change, words):
    blob = torch.load(run / "model.pt", weights_only=True)
    change(blob)
    torch.save(blob, tmp_path / "model.pt")
    assert main(["predict", str(tmp_path / "model.pt"), str(sample_root() / "test")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{tmp_path / 'model.pt'}: cannot rebuild its network, cnn_base with " in err
    assert words in err and "load it with the pneumolab that made it, or retrain" in err


def test_cli_predict_every_file_alone(run, tmp_path, capsys) -> None:
    ct, black = tmp_path / "ct.dcm", tmp_path / "black.png"
    shutil.copy(PYDICOM_FILES / "CT_small.dcm", ct)
    black.write_bytes(_png(np.zeros((300, 300), np.uint8)))
    assert main(["predict", str(run), str(ct), str(black), str(XRAY)]) == 2
    lines = capsys.readouterr().out.splitlines()
    row = {p: next(line for line in lines if line.startswith(str(p))) for p in (ct, black, XRAY)}
    assert "error: DICOM Modality 'CT'" in row[ct]
    assert "NOT_ASSESSED" in row[black] and "blank" in row[black]
    assert "PNEUMONIA" in row[XRAY] or "NORMAL" in row[XRAY]


def test_indexing_reports_dicoms_that_are_not_chest_radiographs(tmp_path) -> None:
    src = tmp_path / "src"
    for i in range(3):
        write_image(src / "NORMAL" / f"n{i}.jpeg", seed=i, size=(64, 64))
        write_image(src / "PNEUMONIA" / f"p{i}.jpeg", seed=10 + i, size=(64, 64))
    shutil.copy(PYDICOM_FILES / "CT_small.dcm", src / "NORMAL" / "ct.dcm")
    result = index_source(src, tmp_path / "out", workers=1)
    assert len(result.manifest) == 6
    assert [(p.path, p.kind) for p in result.problems] == [("NORMAL/ct.dcm", "not_a_chest_radiograph")]


def _chunks(n: int):
    for _ in range(n):
        yield b"x" * 100_000


MULTIPART = {"content-type": "multipart/form-data; boundary=zz"}
WRONG_FIELD = b'--zz\r\nContent-Disposition: form-data; name="fil"; filename="a"\r\n\r\nDoe^Jane MRN-0042\r\n--zz--\r\n'

# Requests the service must answer with a specific 4xx, whatever the body holds: (name, request kwargs, status,
# words). The token is "s3cret"; the upload limit 1 MB.
REQUESTS = [
    (
        "two files in one upload",
        lambda: {"files": [("file", ("a", XRAY.read_bytes())), ("file", ("b", b"x"))]},
        422,
        "holds 2 files",
    ),
    ("chunked body over the limit", lambda: {"content": _chunks(40), "headers": MULTIPART}, 413, "1 MB limit"),
    (
        "declared length over the limit",
        lambda: {"files": {"file": ("x", b"\xff\xd8\xff" + bytes(3_000_000))}},
        413,
        "1 MB limit",
    ),
    (
        "malformed multipart never echoes the upload",
        lambda: {"content": WRONG_FIELD, "headers": MULTIPART},
        422,
        "multipart form field 'file'",
    ),
]


@pytest.mark.parametrize(("name", "kwargs", "status", "words"), REQUESTS, ids=[c[0] for c in REQUESTS])
def test_service_requests_get_specific_4xx(run, name, kwargs, status, words) -> None:
    c = TestClient(create_app(Predictor.load(run), token="s3cret", max_upload_mb=1.0))
    kw = kwargs()
    kw["headers"] = {**kw.get("headers", {}), "Authorization": "bearer s3cret"}  # the scheme is case-insensitive
    r = c.post("/api/v1/predict", **kw)
    assert r.status_code == status and words in r.json()["detail"]
    assert "Doe" not in r.text and "MRN" not in r.text


def test_service_has_no_cdn_docs_page_but_serves_its_schema(client) -> None:
    assert client.get("/docs").status_code == 404 and client.get("/openapi.json").json()["info"]["title"]


def _layout(src: Path, files: dict[str, int]) -> None:
    for rel, seed in files.items():
        write_image(src / rel, seed=seed, size=(64, 64))


BASE = {"train/NORMAL/a.jpeg": 1, "train/PNEUMONIA/b.jpeg": 2, "val/NORMAL/c.jpeg": 3, "val/PNEUMONIA/d.jpeg": 4}


def _thumbnails(src: Path) -> None:
    thumbs = [
        "val/NORMAL/@eaDir/c.jpeg/SYNOPHOTO_THUMB_M.jpg",
        "train/NORMAL/._a.jpeg",
        "train/PNEUMONIA/.thumbnails/b.png",
    ]
    _layout(src, {name: 30 + i for i, name in enumerate(thumbs)})
    (src / "train" / "NORMAL" / "Thumbs.db").write_bytes(b"\xd0\xcf\x11\xe0")


def _dangling(src: Path) -> None:
    (src / "train" / "NORMAL" / "gone.jpeg").symlink_to(src / "nowhere.jpeg")


def _folder_link(src: Path, tmp: Path) -> None:
    _layout(tmp / "elsewhere", {"PNEUMONIA/e.jpeg": 40})
    (src / "train" / "linked").symlink_to(tmp / "elsewhere", target_is_directory=True)


# Source layouts where files used to vanish without a word: (name, change(src, tmp), {path: indexed split or the
# words of the reason it was not}). Every file under the source must be indexed or reported.
LAYOUTS = [
    (
        "class folders differing in case",
        lambda s, t: _layout(s, {"train/normal/e.jpeg": 5}),
        {"train/normal/e.jpeg": "train"},
    ),
    (
        "a validation/ folder",
        lambda s, t: _layout(s, {"validation/NORMAL/e.jpeg": 5}),
        {"validation/NORMAL/e.jpeg": "val"},
    ),
    (
        "class folders beside split folders",
        lambda s, t: _layout(s, {"PNEUMONIA/e.jpeg": 5}),
        {"PNEUMONIA/e.jpeg": "beside the train/val/test folders"},
    ),
    (
        "NAS and desktop thumbnails",
        lambda s, t: _thumbnails(s),
        {
            "val/NORMAL/@eaDir/c.jpeg/SYNOPHOTO_THUMB_M.jpg": "thumbnail",
            "train/NORMAL/._a.jpeg": "resource fork",
            "train/PNEUMONIA/.thumbnails/b.png": "thumbnail",
            "train/NORMAL/Thumbs.db": "thumbnail",
        },
    ),
    ("a dangling symlink", lambda s, t: _dangling(s), {"train/NORMAL/gone.jpeg": "broken symbolic link"}),
    ("a link to a folder", _folder_link, {"train/linked/": "link to a folder"}),
]


@pytest.mark.parametrize(("name", "change", "expected"), LAYOUTS, ids=[c[0] for c in LAYOUTS])
def test_every_file_under_a_source_is_indexed_or_reported(tmp_path, name, change, expected) -> None:
    src = tmp_path / "src"
    _layout(src, BASE)
    change(src, tmp_path)
    result = index_source(src, tmp_path / "out", workers=1)
    indexed = {r.path: r.split for r in result.manifest.records}
    reported = {p.path: p.detail for p in result.problems}
    reported |= dict(e.split(": ", 1) for e in result.report["ignored_files"])
    for path, outcome in expected.items():
        assert indexed.get(path) == outcome or outcome in reported.get(path, ""), (path, indexed, reported)
    links = {p for p in src.rglob("*") if p.is_symlink() and p.is_dir()}  # reported as "folder/"
    on_disk = {p.relative_to(src).as_posix() + "/" * (p in links) for p in src.rglob("*") if p.is_file() or p in links}
    on_disk |= {p.relative_to(src).as_posix() for p in src.rglob("*") if p.is_symlink() and not p.exists()}
    assert on_disk <= set(indexed) | set(reported)


def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


RNG = np.random.default_rng(0)
IMAGES = RNG.integers(0, 256, (6, 32, 32), dtype=np.uint8)
LABELS = np.array([0, 1, 0, 1, 0, 1])

# npz sources: (name, arrays, expected uint8 pixels of train image 0 or None, problems by kind)
NPZ = [
    ("float images in [0, 1]", {"train_images": IMAGES / 255.0, "train_labels": LABELS}, IMAGES[0], {}),
    ("(N, H, W, 1) images", {"train_images": IMAGES[..., None], "train_labels": LABELS}, IMAGES[0], {}),
    ("images beyond the labels", {"train_images": IMAGES, "train_labels": LABELS[:4]}, IMAGES[0], {"no_label": 2}),
    ("labels beyond the images", {"train_images": IMAGES[:4], "train_labels": LABELS}, IMAGES[0], {"no_image": 2}),
]


@pytest.mark.parametrize(("name", "arrays", "pixels", "problems"), NPZ, ids=[c[0] for c in NPZ])
def test_npz_sources_are_read_right_or_reported(tmp_path, name, arrays, pixels, problems) -> None:
    from pneumolab.data.cache import load_cache

    result = index_source(_npz(tmp_path / "pneumoniamnist.npz", **arrays), tmp_path / "out", workers=1)
    assert dict(Counter(p.kind for p in result.problems)) == problems
    cache = load_cache(result.manifest, 32, tmp_path / "out" / "cache")
    np.testing.assert_array_equal(cache[0], pixels)  # not an all-black cast of floats


def test_npz_with_python_objects_is_refused_without_pickle_advice(tmp_path) -> None:
    bad = _npz(tmp_path / "bad.npz", train_images=np.array([None, 1], dtype=object), train_labels=LABELS[:2])
    with pytest.raises(InputError, match="holds Python objects") as e:
        index_source(bad, tmp_path / "out", workers=1)
    assert "allow_pickle" not in str(e.value)


def _csv(tmp: Path, text: bytes) -> Path:
    src = tmp / "src"
    _layout(src, {"a.png": 1, "b.png": 2, "c.png": 3})
    (src / "list.csv").write_bytes(text)
    return src / "list.csv"


def _kaggle(tmp: Path) -> Path:
    _layout(tmp / "src", BASE)
    return tmp / "src"


def _train_on_gpu(tmp: Path) -> list[str]:
    return tiny_train_args(_indexed(tmp), tmp / "runs", "trainer.accelerator=gpu")


def _indexed(tmp: Path) -> Path:
    index_source(_kaggle(tmp), tmp / "d", workers=1)
    return tmp / "d"


def _replaced_after_indexing(tmp: Path) -> list[str]:
    src = _kaggle(tmp)
    index_source(src, tmp / "data", workers=1)
    write_image(src / "train" / "NORMAL" / "a.jpeg", seed=99, size=(64, 64))
    return ["data", "cache", str(tmp / "data"), "--size", "32"]


LATIN1 = "path,label\na.png,NORMAL\nb.png,Pneumonie é\n".encode("latin-1")

# Commands that must end in one sentence and exit code 2, never a traceback: (name, args(tmp), words on stderr).
COMMANDS = [
    ("a Latin-1 CSV", lambda t: ["data", "index", str(_csv(t, LATIN1)), "--out", str(t / "o")], "not UTF-8"),
    ("--out is a file", lambda t: ["data", "index", str(_kaggle(t)), "--out", str(_csv(t, b"x"))], "is a file"),
    (
        "--out inside the source",
        lambda t: ["data", "index", str(_kaggle(t)), "--out", str(t / "src" / "data")],
        "inside the source",
    ),
    ("--out is the source", lambda t: ["data", "index", str(_kaggle(t)), "--out", str(t / "src")], "inside the source"),
    ("--size 0", lambda t: ["data", "prepare", str(_kaggle(t)), "--out", str(t / "o"), "--size", "0"], "--size"),
    ("a file replaced after indexing", _replaced_after_indexing, "changed after indexing"),
    ("accelerator=gpu without a GPU", lambda t: _train_on_gpu(t), "no CUDA GPU"),
    (
        "a preset misspelt",
        lambda t: ["train", "-c", "fastt", "--data", str(t)],
        "config fastt not found (did you mean fast?)",
    ),
    # --data must be a prepared folder; the advice never writes into the source (sources are only read)
    (
        "--data is missing",
        lambda t: ["train", "-c", "fast", "--data", str(t / "nope")],
        "does not exist: give a dataset",
    ),
    (
        "--data is a raw source",
        lambda t: ["train", "-c", "fast", "--data", str(_kaggle(t))],
        "holds images but is not a prepared dataset: run `pneumolab data prepare",
    ),
    (
        "--data is a manifest file",
        lambda t: ["train", "-c", "fast", "--data", str(_indexed(t) / "manifest.csv")],
        "is a dataset's manifest: give its folder",
    ),
]


@pytest.mark.parametrize(("name", "args", "words"), COMMANDS, ids=[c[0] for c in COMMANDS])
def test_commands_fail_with_one_sentence(tmp_path, capsys, name, args, words) -> None:
    if name.startswith("accelerator") and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(args(tmp_path)) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_evaluate_refuses_a_datasets_own_manifest_as_a_csv_source(run, tmp_path, capsys) -> None:
    # evaluate also reads CSV lists of images; a dataset's manifest.csv read as one would lose every path
    assert main(["evaluate", str(run), "--data", str(_indexed(tmp_path) / "manifest.csv")]) == 2
    assert "is a dataset's manifest: give its folder" in capsys.readouterr().err


def test_csv_with_bom_missing_cells_and_conflicting_labels(tmp_path) -> None:
    rows = ["path,label,patient_id", "a.png,NORMAL,p1", "b.png,PNEUMONIA", "c.png,NORMAL,p3", "c.png,PNEUMONIA,p3"]
    text = "\n".join([*rows, "a.png,NORMAL,p1\n"])
    src = _csv(tmp_path, b"\xef\xbb\xbf" + text.encode())  # Excel's "CSV UTF-8" starts with a byte-order mark
    result = index_source(src, tmp_path / "out", workers=1)
    assert {r.path: r.patient_id for r in result.manifest.records} == {"a.png": "p1", "b.png": ""}
    kinds = sorted((p.path, p.kind) for p in result.problems)
    assert kinds == [("a.png", "listed_twice"), ("c.png", "conflicting_labels"), ("c.png", "conflicting_labels")]


def test_outputs_follow_the_umask_and_killed_writers_leave_nothing(tmp_path) -> None:
    import os

    from pneumolab.data.cache import build_cache

    src = _kaggle(tmp_path)
    data = tmp_path / "data"
    old = os.umask(0o027)
    try:
        result = index_source(src, data, workers=1)
    finally:
        os.umask(old)
    assert (data / "manifest.csv").stat().st_mode & 0o777 == 0o640  # not mkstemp's 0600
    orphan = data / "cache" / ".images_32_0.npy.pid999999999.x.npy.tmp"  # a writer that was SIGKILLed
    orphan.parent.mkdir()
    orphan.write_bytes(b"half")
    build_cache(result.manifest, 32, data / "cache")
    assert not orphan.exists()


def test_a_failed_reindex_removes_the_old_manifest(tmp_path) -> None:
    src = _kaggle(tmp_path)
    index_source(src, tmp_path / "data", workers=1)
    for f in (src / "train" / "PNEUMONIA").iterdir():
        f.unlink()
    shutil.rmtree(src / "val" / "PNEUMONIA")
    with pytest.raises(InputError, match="only NORMAL"):
        index_source(src, tmp_path / "data", workers=1)
    assert not (tmp_path / "data" / "manifest.csv").exists()


def _pdeathsig(_: int) -> int:
    import ctypes

    sig = ctypes.c_int()
    ctypes.CDLL(None).prctl(2, ctypes.byref(sig))  # PR_GET_PDEATHSIG
    return sig.value


def test_decoding_workers_die_with_their_parent() -> None:
    import signal

    from pneumolab.data.pool import process_pool

    with process_pool(2) as pool:
        assert set(pool.map(_pdeathsig, range(4))) == {int(signal.SIGKILL)}
