import base64
import hashlib
import io
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pydicom.data
import pytest
import torch
from conftest import tiny_train_args, write_dicom
from fastapi.testclient import TestClient
from PIL import Image

from pneumolab.cli import main
from pneumolab.data import sample_root
from pneumolab.errors import InputError
from pneumolab.evaluation.metrics import wilson
from pneumolab.inference.export import export_onnx
from pneumolab.inference.predictor import Predictor
from pneumolab.models import create_model
from pneumolab.serve.app import create_app
from pneumolab.serve.audit import AuditLog

XRAY = sorted((sample_root() / "test" / "PNEUMONIA").glob("*.jpeg"))[0]


@pytest.fixture(scope="module")
def run(sample_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("serve_runs")
    assert main(tiny_train_args(sample_data, out, "trainer.max_epochs=1")) == 0
    return out / "cnn_base"


@pytest.fixture(scope="module")
def client(run):
    return TestClient(create_app(Predictor.load(run), max_upload_mb=1.0))


def _png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    (Image.fromarray(arr, mode) if mode else Image.fromarray(arr)).save(buf, format="PNG")
    return buf.getvalue()


def _post(client, data: bytes, name: str = "x.png", **params):
    return client.post("/api/v1/predict", files={"file": (name, data)}, params=params)


def test_predict_a_real_xray_with_gradcam(client) -> None:
    r = _post(client, XRAY.read_bytes(), "x.jpeg", gradcam="true")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["assessed"] is True and body["reasons"] == [] and body["ood"] is False
    assert body["cautions"] == []  # a JPEG carries no age
    assert 0 <= body["probability"] <= 1
    assert body["label"] == ("PNEUMONIA" if body["probability"] >= body["threshold"] else "NORMAL")
    assert body["operating_point"]["split"] == "val" and "not a diagnosis" in body["notice"]
    op = body["operating_point"]  # with the 95% CI of each rate from the images it rests on (the page shows them)
    for name, cls in (("sensitivity", "PNEUMONIA"), ("specificity", "NORMAL")):
        n = round(op["effective_images"][cls])
        assert op["ci95"][name] == pytest.approx(list(wilson(round(op[name] * n), n)))
    overlay = Image.open(io.BytesIO(base64.b64decode(body["gradcam_png"])))
    w, h = Image.open(XRAY).size  # the upload at its own aspect ratio (at most 768 px), not the 32 px input
    scale = min(1.0, 768 / max(w, h))
    assert overlay.size == (round(w * scale), round(h * scale)) and overlay.mode == "RGB"
    assert body["gradcam_shown"] == (body["label"] == "PNEUMONIA")
    assert set(body["timings_ms"]) == {"preprocess", "model", "gradcam", "total"}


def _cmyk() -> bytes:
    buf = io.BytesIO()
    Image.new("CMYK", (64, 64), (0, 0, 0, 128)).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.mark.parametrize(
    ("kind", "status", "message"),
    [
        ("empty", 422, "empty"),
        ("truncated", 422, "truncated"),
        ("text_as_png", 415, "not JPEG, PNG or DICOM"),
        ("huge_dimensions", 413, "12000x12000"),
        ("oversized", 413, "1 MB limit"),
        ("dicom_without_pixels", 422, "no pixel data"),
    ],
)
def test_bad_inputs_get_specific_4xx(client, tmp_path, kind, status, message) -> None:
    if kind == "empty":
        data = b""
    elif kind == "truncated":
        data = XRAY.read_bytes()[:3000]
    elif kind == "text_as_png":
        data = b"this is a text file with a .png name"
    elif kind == "huge_dimensions":
        buf = io.BytesIO()
        Image.new("1", (12000, 12000)).save(buf, format="PNG")
        data = buf.getvalue()
    elif kind == "oversized":
        data = b"\xff\xd8\xff" + b"\0" * (1024 * 1024 + 10)
    else:
        data = write_dicom(tmp_path / "sr.dcm", np.zeros((1, 1), np.uint8), with_pixels=False).read_bytes()
    r = _post(client, data)
    assert r.status_code == status and message in r.json()["detail"], r.text


@pytest.mark.parametrize("kind", ["png16", "rgba", "cmyk", "dicom_monochrome1"])
def test_unusual_but_valid_inputs_work_and_leak_no_patient_data(client, tmp_path, kind) -> None:
    rng = np.random.default_rng(0)
    if kind == "png16":
        data = _png(rng.integers(0, 65535, (80, 80)).astype(np.uint16))
    elif kind == "rgba":
        data = _png(rng.integers(0, 255, (80, 80, 4)).astype(np.uint8), "RGBA")
    elif kind == "cmyk":
        data = _cmyk()
    else:
        arr = rng.integers(0, 4096, (80, 80)).astype(np.uint16)
        data = write_dicom(tmp_path / "m1.dcm", arr, photometric="MONOCHROME1").read_bytes()
    r = _post(client, data, "Doe^Jane_MRN-0042.dcm", gradcam="true")
    assert r.status_code == 200, r.text
    assert "Doe" not in r.text and "MRN" not in r.text


def _xray_dicom(path: Path, **tags) -> bytes:
    """The real X-ray as an 8-bit DICOM of ~0.3 MP (under the test client's 1 MB limit)."""
    img = Image.open(XRAY).convert("L")
    img.thumbnail((640, 640))
    return write_dicom(path, np.asarray(img), **tags).read_bytes()


@pytest.mark.parametrize(
    ("age", "caution"),
    [("054Y", "older than the patients this model learnt from (1-5 years"), ("003Y", None), ("006M", "younger")],
)
def test_a_patient_outside_the_training_ages_gets_a_caution_with_the_answer(client, tmp_path, age, caution) -> None:
    """The sample is Kermany's (children of 1-5 years): an adult's X-ray is answered, with a caution that says
    so; the age itself is not repeated (the answer goes to the audit log, which holds no header data)."""
    body = _post(client, _xray_dicom(tmp_path / "x.dcm", PatientAge=age), "x.dcm").json()
    assert body["assessed"] is True and body["label"] in ("NORMAL", "PNEUMONIA")
    if caution is None:
        assert body["cautions"] == []
    else:
        assert len(body["cautions"]) == 1 and caution in body["cautions"][0]
        assert str(int(age[:-1])) not in body["cautions"][0]  # the age itself is not repeated
    assert client.get("/api/v1/model").json()["training_ages_years"] == [1, 5]


@pytest.mark.parametrize(
    ("age", "ages", "side"),
    [
        (0.99, (1, 5), "younger"),
        (1.0, (1, 5), None),
        (5.99, (1, 5), None),  # "5 years" covers 5.0-5.99
        (6.0, (1, 5), "older"),
        (104.0, (18, 90), None),  # an oldest at the storage cap stands for "90 or older"
        (17.5, (18, 90), "younger"),
        (None, (1, 5), None),  # no age in the header
        (40.0, None, None),  # a source that records no ages
    ],
)
def test_age_caution_bounds(age, ages, side) -> None:
    from pneumolab.inference.predictor import age_caution

    said = age_caution(age, ages)
    assert (said is None) if side is None else said.startswith(f"the patient is {side} than")


def test_token_is_enforced(run) -> None:
    c = TestClient(create_app(Predictor.load(run), token="s3cret"))
    assert _post(c, XRAY.read_bytes()).status_code == 401
    bad = c.post("/api/v1/predict", files={"file": ("x", XRAY.read_bytes())}, headers={"Authorization": "Bearer nope"})
    assert bad.status_code == 401 and "bearer token" in bad.json()["detail"]
    ok = c.post("/api/v1/predict", files={"file": ("x", XRAY.read_bytes())}, headers={"Authorization": "Bearer s3cret"})
    assert ok.status_code == 200
    assert c.get("/healthz").status_code == 200  # health stays open for probes


def test_model_page_health_and_openapi(client, run) -> None:
    info = client.get("/api/v1/model").json()
    assert info["model"] == "cnn_base" and "not a diagnostic device" in info["intended_use"]
    assert info["model_sha256"] == hashlib.sha256((run / "model.pt").read_bytes()).hexdigest()  # which file answers
    assert info["trained_on"].startswith("pediatric (1-5 years)")  # the bundled sample is Kermany's
    assert info["operating_point"]["split"] == "val" and info["preprocessing"]["image_size"] == 32
    assert client.get("/healthz").json()["status"] == "ok"
    assert "/api/v1/predict" in client.get("/openapi.json").json()["paths"]
    page = client.get("/").text
    assert "Decision support, not a diagnosis" in page and 'type="file"' in page


def test_concurrent_requests_share_the_model_safely(client) -> None:
    data = XRAY.read_bytes()
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(lambda _: _post(client, data, gradcam="true"), range(16)))
    assert all(r.status_code == 200 for r in results)
    assert len({r.json()["probability"] for r in results}) == 1
    assert len({r.json()["gradcam_png"] for r in results}) == 1


def test_serve_command_with_two_worker_processes(run, tmp_path) -> None:
    import httpx

    audit = tmp_path / "audit"

    port = _free_port()
    cmd = [
        sys.executable,
        "-m",
        "pneumolab",
        "serve",
        str(run),
        "--port",
        str(port),
        "--workers",
        "2",
        "--token",
        "s3cret",
        "--audit",
        str(audit),
    ]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url, auth = f"http://127.0.0.1:{port}", {"Authorization": "Bearer s3cret"}
    try:
        deadline = time.time() + 90
        while time.time() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        data = XRAY.read_bytes()
        with ThreadPoolExecutor(4) as pool:
            answers = list(
                pool.map(
                    lambda _: httpx.post(
                        f"{url}/api/v1/predict", files={"file": ("x.jpeg", data)}, headers=auth, timeout=60
                    ),
                    range(8),
                )
            )
        refused = httpx.post(f"{url}/api/v1/predict", files={"file": ("x.jpeg", data)}, timeout=60)
    finally:
        server.terminate()
        out = server.communicate(timeout=30)[0]
    assert [a.status_code for a in answers] == [200] * 8 and refused.status_code == 401  # every worker has the token
    expected = Predictor.load(run).predict(data).probability
    assert {round(a.json()["probability"], 5) for a in answers} == {round(expected, 5)}
    assert "2 process(es) x 1 thread(s)" in out
    # both workers append to one audit file, a whole line per answer (the 401 never reached the model)
    (log,) = audit.glob("predictions-*.jsonl")
    logged = [json.loads(line)["probability"] for line in log.read_text().splitlines()]
    assert len(logged) == 8 and {round(p, 5) for p in logged} == {round(expected, 5)}


def test_audit_log_records_every_answer_and_nothing_of_the_image(run, tmp_path) -> None:
    predictor = Predictor.load(run)
    assert predictor.model_sha256 == hashlib.sha256((run / "model.pt").read_bytes()).hexdigest()
    client = TestClient(create_app(predictor, audit=AuditLog(tmp_path / "audit", predictor.model_sha256)))
    ok = _post(client, XRAY.read_bytes(), "Doe^Jane_MRN-0042.jpeg")
    bad = _post(client, b"Doe^Jane, MRN-0042: a text file", "Doe^Jane.png")
    assert (ok.status_code, bad.status_code) == (200, 415)
    (log,) = (tmp_path / "audit").glob("predictions-*.jsonl")
    text = log.read_text()
    first, second = (json.loads(line) for line in text.splitlines())
    assert log.name == f"predictions-{first['time'][:10]}.jsonl" and first["time"].endswith("+00:00")
    assert first["model_sha256"] == predictor.model_sha256 and first["pneumolab"]
    assert {k: first[k] for k in ("request_id", "label", "probability", "threshold", "assessed")} == {
        k: ok.json()[k] for k in ("request_id", "label", "probability", "threshold", "assessed")
    }
    assert (
        len(first["request_id"]) == 32 and _post(client, XRAY.read_bytes()).json()["request_id"] != first["request_id"]
    )
    assert (second["refused"], second["status"]) == ("not_an_image", 415) and "label" not in second
    assert "Doe" not in text and "MRN" not in text and "image" not in first
    # a log that cannot be written withholds the answer: no untraced results
    (tmp_path / "audit" / log.name).unlink()
    (tmp_path / "audit").rmdir()
    (tmp_path / "audit").write_text("a file where the folder was")
    r = _post(client, XRAY.read_bytes())
    assert r.status_code == 503 and "audit log could not be written" in r.json()["detail"]
    with pytest.raises(InputError, match="cannot write there"):
        AuditLog(tmp_path / "audit" / "sub", None)


def test_serve_refuses_an_audit_folder_it_cannot_write(run, tmp_path, capsys) -> None:
    (tmp_path / "taken").write_text("")
    assert main(["serve", str(run), "--audit", str(tmp_path / "taken" / "audit")]) == 2
    assert "--audit" in capsys.readouterr().err


def test_served_connections_get_tcp_nodelay(monkeypatch) -> None:
    # uvicorn's multi-process sockets lose asyncio's TCP_NODELAY: small answers then wait ~40 ms for a delayed ACK.
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    from pneumolab.serve.server import NoDelayHTTPProtocol

    monkeypatch.setattr(AutoHTTPProtocol, "connection_made", lambda self, transport: None)  # only our part runs

    class Transport:
        def __init__(self, sock):
            self.sock = sock

        def get_extra_info(self, name, default=None):
            return self.sock if name == "socket" else default

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0
        NoDelayHTTPProtocol.__new__(NoDelayHTTPProtocol).connection_made(Transport(sock))
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1


def test_onnx_export_parity_and_backend(run, tmp_path, capsys) -> None:
    target = tmp_path / "model.onnx"
    report = export_onnx(run, target)
    assert report["max_abs_diff"] < 1e-4 and target.with_suffix(".onnx.json").is_file()
    capsys.readouterr()
    assert main(["export", str(run), "--onnx", str(tmp_path / "cli.onnx")]) == 0
    said = capsys.readouterr()
    assert (said.out + said.err).count("max |ONNX - PyTorch|") == 1  # said once, by the library's log line
    assert len((said.out + said.err).splitlines()) == 1  # and nothing else: no exporter progress or rewrite notes
    shutil.copy(run / "model.pt", tmp_path / "model.pt")  # Grad-CAM still comes from the PyTorch weights
    target.with_suffix(".onnx.json").unlink()  # for people: the .onnx file itself carries the metadata
    torch_p, onnx_p = Predictor.load(run), Predictor.load(target)
    assert onnx_p.backend == "onnx" and onnx_p.operating_point == torch_p.operating_point
    assert onnx_p.preprocessing == torch_p.preprocessing
    assert onnx_p.feature_guard is not None  # the guard's features are the graph's second output
    # probabilities compared without the guard: a tiny test model's guard may refuse an image (then no probability)
    torch_all, onnx_all = Predictor.load(run, guard=False), Predictor.load(target, guard=False)
    for path in sorted((sample_root() / "test").rglob("*.jpeg"))[:6]:
        a, b = torch_p.predict(path.read_bytes()), onnx_p.predict(path.read_bytes(), gradcam=True)
        assert a.label == b.label and a.ood_score == pytest.approx(b.ood_score, rel=1e-4)
        assert (b.heatmap is not None) == (b.label == "PNEUMONIA")
        a, b = torch_all.predict(path.read_bytes()), onnx_all.predict(path.read_bytes())
        assert a.label == b.label and abs(a.probability - b.probability) < 1e-5


def test_predict_cli_table_json_and_per_file_errors(run, tmp_path, capsys) -> None:
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    code = main(["predict", str(run), str(XRAY), str(bad), "--json", "--gradcam", str(tmp_path / "cam")])
    assert code == 2  # one file failed, the other still ran
    out = capsys.readouterr().out
    lines = [json.loads(line) for line in out.splitlines()]
    assert lines[0]["image"] == str(XRAY) and 0 <= lines[0]["probability"] <= 1
    assert "not JPEG, PNG or DICOM" in lines[1]["error"] and lines[1]["refused"] == "not_an_image"
    # stamped like the service's audit log, so that `pneumolab monitor` reads them
    assert {line["model_sha256"] for line in lines} == {Predictor.load(run).model_sha256}
    (tmp_path / "answers.jsonl").write_text(out)
    assert main(["monitor", str(tmp_path / "answers.jsonl"), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["periods"]
    assert (row["period"], row["assessed"], row["refused"]) == (lines[0]["time"][:10], 1, 1)
    assert (tmp_path / "cam" / f"{XRAY.stem}_gradcam.png").is_file()
    adult = tmp_path / "adult.dcm"
    _xray_dicom(adult, PatientAge="054Y")
    assert main(["predict", str(run), str(XRAY), str(adult)]) == 0
    out = capsys.readouterr().out
    assert "P(pneumonia)" in out
    rows = {line.split()[0]: line for line in out.splitlines() if line.startswith(str(tmp_path)) or XRAY.name in line}
    # the probabilities line up under their header, however long the paths (tmp_path's are over 40 characters)
    column_end = next(line for line in out.splitlines() if "P(pneumonia)" in line).index("P(pneumonia)") + 12
    assert all(row[column_end - 6 : column_end].startswith("0.") for row in rows.values())
    assert "(the patient is older than" in rows[str(adult)] and "(" not in rows[str(XRAY)]


def test_predict_and_evaluate_never_import_torchvision_or_lightning(run, sample_data, tmp_path) -> None:
    # Importing torchvision takes ~1.5 s on 2 cores (its ops import torch._dynamo), Lightning ~1.7 s: more than the
    # rest of a one-image `pneumolab predict`. Neither command needs them; a module-level import would creep back.
    # predict without the guard: Grad-CAM runs whatever the tiny model's guard says (evaluate runs the guard).
    code = (
        "import sys; from pneumolab.cli import main; "
        "rc = [main(['predict', *sys.argv[1:6]]), main(['evaluate', sys.argv[1], '--data', *sys.argv[6:]])]; "
        "print(rc, [m in sys.modules for m in ('torchvision', 'torch._dynamo', 'lightning')])"
    )
    cam, ev = tmp_path / "cam", tmp_path / "ev"
    args = [str(run), str(XRAY), "--gradcam", str(cam), "--no-guard", str(sample_data), "--out", str(ev)]
    res = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
    assert res.stdout.splitlines()[-1] == "[0, 0] [False, False, False]", res.stdout + res.stderr[-2000:]
    assert (cam / f"{XRAY.stem}_gradcam.png").is_file() and (ev / "metrics.json").is_file()


def test_predict_a_pacs_style_folder_uses_every_image_and_reports_every_other_file(run, tmp_path, capsys) -> None:
    export = tmp_path / "export"  # a PACS export: one folder per study, DICOM files without an extension
    pixels = np.asarray(Image.open(XRAY).convert("L"))
    for study in ("p1", "p2"):
        (export / study).mkdir(parents=True)
        write_dicom(export / study / "IM0001", pixels)
    write_dicom(export / "DICOMDIR", pixels, with_pixels=False)  # the media index: DICOM, but no X-ray
    (export / "notes.txt").write_text("not an image")
    (export / "p1" / "Thumbs.db").write_bytes(b"\0" * 64)
    elsewhere = tmp_path / "elsewhere" / "p1"  # a second IM0001 given by name: its overlay must not replace one
    elsewhere.mkdir(parents=True)
    shutil.copy(export / "p1" / "IM0001", elsewhere / "IM0001")
    cam = tmp_path / "cam"
    named = [elsewhere / "IM0001", export / "p2" / "IM0001"]  # given by name, alike: the second gets "-2"
    args = [str(export), *map(str, named), "--json", "--gradcam", str(cam), "--no-guard"]  # the guard: elsewhere
    code = main(["predict", str(run), *args])
    assert code == 0  # skipped files are reported, not failures
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in out.splitlines()]  # stdout stays JSON lines; the tally goes to stderr
    label = lines[-1]["label"]  # the same pixels four times: one label
    assert err.strip().splitlines()[-1] == f"7 files: 4 {label}, 3 skipped"
    skipped = {Path(x["image"]).relative_to(export).as_posix(): x["skipped"] for x in lines if "skipped" in x}
    assert set(skipped) == {"DICOMDIR", "notes.txt", "p1/Thumbs.db"}
    assert "nor a DICOM file" in skipped["notes.txt"] and "DICOM media index" in skipped["DICOMDIR"]
    done = [x for x in lines if "skipped" not in x]
    assert [x["image"] for x in done] == [
        str(export / "p1" / "IM0001"),
        str(export / "p2" / "IM0001"),
        *map(str, named),
    ]
    assert len({x["probability"] for x in done}) == 1  # the same pixels four times
    expected = ["p1/IM0001_gradcam.png", "p2/IM0001_gradcam.png", "IM0001_gradcam.png", "IM0001-2_gradcam.png"]
    assert [x["gradcam"] for x in done] == [str(cam / o) for o in expected]
    assert all(x["gradcam_shown"] == (x["label"] == "PNEUMONIA") for x in done)  # a map on positives only
    assert sorted(p.relative_to(cam).as_posix() for p in cam.rglob("*.png")) == sorted(expected)  # none overwritten

    (tmp_path / "empty" / "sub").mkdir(parents=True)
    assert main(["predict", str(run), str(tmp_path / "empty")]) == 2
    assert "no JPEG, PNG or DICOM files in this folder or its subfolders" in capsys.readouterr().err


def test_gradcam_is_highest_where_a_toy_model_looks() -> None:
    """A CNN trained to detect a bright patch in one corner must put its Grad-CAM peak on that corner."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    n, s = 128, 32
    x = rng.normal(0.3, 0.1, (n, 1, s, s)).astype(np.float32)
    y = np.arange(n) % 2
    x[y == 1, :, 3:11, 3:11] += 0.6  # the positive class has a patch in the top-left corner
    model = create_model("cnn_base")
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    xt, yt = torch.from_numpy((x - 0.3) / 0.2), torch.from_numpy(y)
    for _ in range(40):
        loss = torch.nn.functional.cross_entropy(model(xt), yt)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    meta = {
        "model_name": "cnn_base",
        "classes": ["NORMAL", "PNEUMONIA"],
        "threshold": 0.5,
        "preprocessing": {"image_size": s, "mean": 0.3, "std": 0.2, "normalization": "dataset"},
    }
    img = (np.clip(x[1, 0], 0, 1) * 255).astype(np.uint8)  # a positive example
    r = Predictor(model, meta, guard=False).predict(_png(img), gradcam=True)
    heat = r.heatmap
    assert heat.shape == (s, s) and np.isfinite(heat).all() and heat.std() > 0
    assert r.probability > 0.5
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    assert 0 <= peak[0] < s // 2 and 0 <= peak[1] < s // 2, peak  # the top-left quadrant, where the patch is
    assert heat[: s // 2, : s // 2].mean() > 2 * heat[s // 2 :, s // 2 :].mean()
    # evaluate's error gallery: one batched pass gives each image its own map, as one image at a time does
    other = (np.clip(x[0, 0], 0, 1) * 255).astype(np.uint8)  # a negative example
    both = Predictor(model, meta, guard=False).heatmaps([other, img])
    assert both.shape == (2, s, s) and np.allclose(both[1], heat, atol=1e-5)
    assert np.allclose(both[0], Predictor(model, meta, guard=False).heatmaps([other])[0], atol=1e-5)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.skipif(not shutil.which("chromium"), reason="needs Debian's chromium (.ci/run installs it with apt)")
def test_real_browser_sees_a_result_a_refused_ct_and_a_not_assessed_image(run, tmp_path) -> None:
    """The page as a hospital deploys it: behind a reverse proxy that serves it under a path (a Starlette mount
    strips the prefix as nginx's ``proxy_pass http://127.0.0.1:8000/`` does), with a token."""
    import uvicorn
    from playwright.sync_api import sync_playwright
    from starlette.applications import Starlette
    from starlette.routing import Mount

    port = _free_port()
    proxied = Starlette(routes=[Mount("/pneumolab", app=create_app(Predictor.load(run), token="s3cret"))])
    server = uvicorn.Server(uvicorn.Config(proxied, host="127.0.0.1", port=port, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 20
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(
                executable_path=shutil.which("chromium"),
                args=[
                    "--no-sandbox",
                    "--disable-gpu",
                    "--disable-background-networking",
                    "--disable-component-update",
                    "--disable-sync",
                    "--no-first-run",
                    "--disable-quic",
                ],
            )
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{port}/pneumolab/")
            page.wait_for_load_state("networkidle")
            model_before_token = page.text_content("#model")
            page.fill("#token", "s3cret")
            page.press("#token", "Tab")  # the field's change event
            page.wait_for_function("document.getElementById('model').textContent.startsWith('Model:')")
            page.set_input_files("#file", str(XRAY))
            page.wait_for_function("document.getElementById('prob').textContent.endsWith('%')", timeout=20000)
            shown = float(page.text_content("#prob").rstrip("%"))
            label = page.text_content("#label")
            rates = page.text_content("#op")
            src = page.get_attribute("#overlay", "src")
            loaded = page.evaluate("document.getElementById('overlay').naturalWidth")
            # on a desktop-wide window the answer sits beside the image, and the bar is red only for a positive result
            beside = page.evaluate(
                "document.getElementById('overlay').getBoundingClientRect().right"
                " <= document.querySelector('.answer').getBoundingClientRect().left"
            )
            grey_bar = page.evaluate("document.getElementById('fill').classList.contains('below')")
            # A CT (refused: 422) and a blank image (read, then not assessed by the guard).
            ct, blank = tmp_path / "ct.dcm", tmp_path / "blank.png"
            shutil.copy(Path(pydicom.data.__file__).parent / "test_files" / "CT_small.dcm", ct)
            blank.write_bytes(_png(np.zeros((300, 300), np.uint8)))
            page.set_input_files("#file", str(ct))
            page.wait_for_function("document.getElementById('status').className === 'err'", timeout=20000)
            refused = page.text_content("#status")
            assert page.is_hidden("#result")
            page.set_input_files("#file", str(blank))
            page.wait_for_function("!document.getElementById('notassessed').classList.contains('hidden')")
            flagged = page.text_content("#notassessed")
            flagged_visible = page.is_visible("#notassessed") and page.is_hidden("#assessed")
            flagged_name = page.text_content("#filename")
            adult = tmp_path / "adult.dcm"
            adult.write_bytes(_xray_dicom(adult, PatientAge="054Y"))
            page.set_input_files("#file", str(adult))
            page.wait_for_function("!document.getElementById('cautions').classList.contains('hidden')")
            caution = page.text_content("#cautions")
            browser.close()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
    assert model_before_token == ""  # the model's line needs the token too
    assert beside and grey_bar == (label == "Below the decision threshold")
    expected = Predictor.load(run).predict(XRAY.read_bytes())
    assert shown == pytest.approx(100 * expected.probability, abs=0.051)
    assert label in ("Pneumonia suspected (at or above the decision threshold)", "Below the decision threshold")
    op = Predictor.load(run).meta["operating_point"]
    n = round(op["effective_images"]["NORMAL"])
    low, high = wilson(round(op["specificity"] * n), n)
    assert rates.startswith("sensitivity ") and rates.endswith(
        f"specificity {100 * op['specificity']:.1f}% (95% CI {100 * low:.1f}-{100 * high:.1f}%)"
    )
    assert src.startswith("data:image/png;base64,") and loaded == min(768, Image.open(XRAY).size[0])
    assert refused.startswith("Could not analyse ct.dcm. This file cannot be used: ") and "Modality 'CT'" in refused
    assert flagged_visible and flagged_name == "blank.png"
    assert "Not assessed" in flagged and "blank or nearly uniform" in flagged
    assert caution.startswith("Caution: the patient is older than the patients this model learnt from (1-5 years")


def test_ood_guard_in_the_predictor(run, ae_run) -> None:
    predictor = Predictor.load(run, ood=ae_run)  # its own 64 px preprocessing, the model's is 32 px
    assert predictor.predict(XRAY.read_bytes()).ood is False
    blank = predictor.predict(_png(np.zeros((200, 200), np.uint8)))
    assert blank.ood is True and blank.label == "NOT_ASSESSED" and blank.probability is None
    assert any("autoencoder" in r for r in blank.reasons) and any("blank" in r for r in blank.reasons)
    guard = TestClient(create_app(predictor)).get("/api/v1/model").json()["ood_guard"]
    assert guard == {"on": True, "image_checks": True, "feature_guard": True, "autoencoder": True}


def test_the_service_does_not_import_the_training_stack() -> None:
    """Serving imports inference only: Lightning (and the DataModule) would slow every worker's start."""
    heavy = "('lightning', 'pneumolab.training', 'pneumolab.data.datamodule')"
    code = f"import sys, pneumolab.serve.server; print(sorted(m for m in {heavy} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_monitor_cli_with_outcomes_of_predict_json_lines(run, tmp_path, capsys) -> None:
    answers = tmp_path / "answers.jsonl"
    # no guard: the join is under test, not whether the tiny model's guard passes the sample X-ray (see .ci/floors)
    assert main(["predict", str(run), str(XRAY), "--json", "--no-guard"]) == 0
    line = json.loads(capsys.readouterr().out.splitlines()[-1])
    assert len(line["request_id"]) == 32
    answers.write_text(json.dumps(line) + "\n")
    (tmp_path / "outcomes.csv").write_text(f"image,label\n{XRAY},PNEUMONIA\n")
    args = ["monitor", str(answers), "--outcomes", str(tmp_path / "outcomes.csv"), "--model", str(run)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the console stays clean (no legend without points)
        assert main([*args, "--out", str(tmp_path / "mon")]) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "mon" / "monitor.png").read_bytes()[:4] == b"\x89PNG"
    promised = json.loads((tmp_path / "mon" / "monitor.json").read_text())["outcomes"]["models"][0]["promised"]
    low, high = promised["ci95"]["specificity"]
    assert low <= promised["specificity"] <= high
    right = int(line["label"] == "PNEUMONIA")
    assert f"outcomes: 1 of 1 in {tmp_path / 'outcomes.csv'} matched an answer by image" in out
    assert f"sensitivity {right}/1 = {100.0 * right:.1f}% [" in out and "specificity -" in out and "promised" in out
    assert f"/ {100 * promised['specificity']:.1f}% [{100 * low:.1f}, {100 * high:.1f}]" in out
    # without outcomes --model compares its NORMAL answers with the validation images': one answer is too few to warn
    assert main(["monitor", str(answers), "--model", str(run), "--fail-on-warning"]) == 0
    out = capsys.readouterr().out
    assert f"model {line['model_sha256'][:12]}: {int(line['label'] == 'NORMAL')} NORMAL answers" in out
