"""Site calibration (`pneumolab calibrate`) and adaptation (`pneumolab adapt`): numbers, round trips, errors."""

import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_train_args
from fastapi.testclient import TestClient
from PIL import Image
from torch import nn

from pneumolab.cli import main
from pneumolab.data.manifest import Manifest
from pneumolab.data.transforms import Preprocessing
from pneumolab.evaluation.calibration import OperatingPoint, estimate_prior_em
from pneumolab.evaluation.metrics import compute_metrics, ece_if_calibrated
from pneumolab.evaluation.predict import predict_logits
from pneumolab.evaluation.thresholds import choose_threshold, min_images_per_class
from pneumolab.inference.predictor import Predictor
from pneumolab.models.checkpoint import load_model_file
from pneumolab.serve.app import create_app
from pneumolab.site_adaptation.adapt import reestimate_batchnorm
from pneumolab.site_adaptation.calibrate import answer_margins, fit_platt
from pneumolab.site_adaptation.folds import site_fold_metrics
from pneumolab.site_adaptation.provenance import rows_digest


@pytest.fixture(scope="module")
def runs(sample_data, tmp_path_factory):
    """A model with BatchNorm (the study's improved CNN) and one without (the base CNN), trained briefly."""
    out = tmp_path_factory.mktemp("site-runs")
    assert main(tiny_train_args(sample_data, out, "-c", "cpu/cnn_improved")) == 0
    assert main(tiny_train_args(sample_data, out)) == 0
    runs = {"bn": out / "cnn_improved", "no_bn": out / "cnn_base"}
    for run in runs.values():  # a guard that passes every X-ray: the tiny models' own (the 99.5th percentile of
        # ~28 validation distances) refuses a few sample X-rays; the screening has its own tests below
        model_file = run / "model.pt"
        stat = model_file.stat()
        blob = torch.load(model_file, weights_only=True)
        blob["ood_guard"]["threshold"] = 1e30
        torch.save(blob, model_file)
        os.utime(model_file, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # the run's kept validation logits stay fresh
    return runs


def test_operating_point_probability_is_temperature_softmax_plus_a_log_odds_shift() -> None:
    z = torch.tensor([[0.0, 2.0], [1.0, -1.0]])
    plain = OperatingPoint(temperature=2.0).probability(z)
    assert torch.allclose(plain, (z / 2.0).softmax(1)[:, 1])
    shifted = OperatingPoint(temperature=2.0, prior_shift=math.log(3)).probability(z)
    odds = plain / (1 - plain) * 3  # a shift of log 3 triples the odds
    assert torch.allclose(shifted, odds / (1 + odds))
    assert OperatingPoint.prior_shift_for(0.5, 0.75) == pytest.approx(-math.log(3))


def test_fit_platt_recovers_a_known_temperature_and_intercept() -> None:
    g = torch.Generator().manual_seed(0)
    d = torch.randn(20000, generator=g, dtype=torch.float64) * 4  # logit margins
    y = torch.bernoulli(torch.sigmoid(d / 2.0 - 1.0), generator=g)  # true T = 2, b = -1
    t, b = fit_platt(torch.stack([torch.zeros_like(d), d], 1), y)
    assert t == pytest.approx(2.0, rel=0.05) and b == pytest.approx(-1.0, abs=0.07)


def test_em_prior_estimate_finds_the_site_prevalence_and_keeps_the_source_one() -> None:
    rng = np.random.default_rng(0)
    # Scores x ~ N(+1, 1) for positives, N(-1, 1) for negatives: the exact posterior under prior 0.5 is sigmoid(2x).
    y = rng.random(40000) < 0.2
    x = np.where(y, rng.normal(1, 1, y.size), rng.normal(-1, 1, y.size))
    posterior = 1 / (1 + np.exp(-2 * x))
    assert estimate_prior_em(posterior, 0.5) == pytest.approx(0.2, abs=0.01)
    # A site whose mean posterior is the source prior is the source itself: EM returns it unchanged.
    p = np.array([0.1, 0.9, 0.6, 0.4, 0.75, 0.25])
    assert estimate_prior_em(p, float(p.mean())) == pytest.approx(p.mean(), abs=1e-9)


def test_reestimate_batchnorm_gives_the_mean_of_the_batches_and_changes_nothing_else() -> None:
    net = nn.Sequential(nn.Conv2d(1, 2, 1, bias=False), nn.BatchNorm2d(2), nn.Dropout(0.5))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([1.0, 2.0]).view(2, 1, 1, 1))
    weights = {k: v.clone() for k, v in net.state_dict().items() if "running" not in k and "batches" not in k}
    batches = [torch.full((2, 1, 3, 3), 1.0), torch.full((2, 1, 3, 3), 3.0)]
    assert reestimate_batchnorm(net, batches) == 1
    # channel means: batch 1 -> (1, 2), batch 2 -> (3, 6); the cumulative average of the two batches
    assert torch.allclose(net[1].running_mean, torch.tensor([2.0, 4.0]))
    assert not net.training and net[1].momentum == 0.1
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in weights.items())


def test_policy_sets_the_fewest_site_images_per_class() -> None:
    assert min_images_per_class("sensitivity>=0.95") == {0: 10, 1: 20}
    assert min_images_per_class("specificity>=0.9") == {0: 10, 1: 10}
    assert min_images_per_class("specificity>=0.98") == {0: 50, 1: 10}
    assert min_images_per_class("youden") == {0: 10, 1: 10}


def test_calibrate_round_trip(runs, sample_data, tmp_path, capsys) -> None:
    run, new = runs["bn"], tmp_path / "calibrated"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    args = ["calibrate", str(run), "--data", str(sample_data), "--split", "test", "--out", str(new)]
    assert main(args) == 0
    said = capsys.readouterr().out
    assert "calibrated on 75 labeled images" in said
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # the original is untouched

    model, meta = load_model_file(new)
    step = meta["site"][-1]
    manifest = Manifest.load(sample_data)
    rows = manifest.indices("test")
    assert step["step"] == "calibrate" and step["images"] == len(rows) == 75
    assert step["data_sha256"] == rows_digest(manifest, rows) and step["from_model"] == str(run / "model.pt")
    labels = [manifest.records[i].label for i in rows]
    assert step["classes"] == {c: labels.count(c) for c in ("NORMAL", "PNEUMONIA")} and step["date"].startswith("20")
    # The stored numbers are what Platt scaling + the model's own policy give on those images.
    logits = torch.from_numpy(
        predict_logits(model, Preprocessing.from_meta(meta), manifest, rows, sample_data / "cache")
    )
    y = np.array([manifest.records[i].target for i in rows])
    t, b = fit_platt(logits, torch.from_numpy(y))
    assert (meta["temperature"], meta["prior_shift"]) == pytest.approx((t, b))
    prob = OperatingPoint(temperature=t, prior_shift=b).probability(logits).numpy()
    assert meta["threshold"] == pytest.approx(choose_threshold(prob, y, "youden")["threshold"])
    # the ECE it reached, beside what a perfectly calibrated model would show on these 75 images' probabilities
    floor = ece_if_calibrated(prob, compute_metrics(prob, y)["ece"])
    assert f"a perfectly calibrated model: {floor['mean']:.3f} [{floor['low']:.3f}, {floor['high']:.3f}]" in said
    assert meta["operating_point"]["split"] == "site"
    assert meta["operating_point"]["images"] == {c: labels.count(c) for c in ("NORMAL", "PNEUMONIA")}
    # the site's later answers are compared with these images' scores (monitor --model): the same logits, sorted
    ref = meta["reference_scores"]
    assert ref["split"] == "site" and ref["images"] == 75
    np.testing.assert_allclose(ref["margins"], np.sort((logits[:, 1] - logits[:, 0]).numpy()), atol=1e-4)
    assert not list(new.rglob("*.npy")) and not list(new.rglob("manifest.csv"))  # no copy of the site's images
    card = (new / "MODEL_CARD.md").read_text()
    assert "## Site calibration and adaptation" in card and "pneumolab calibrate" in card

    # evaluate says where the threshold comes from, and warns when scored on the very images it was fitted on
    assert main(["evaluate", str(new), "--data", str(sample_data), "--split", "test", "--n-boot", "50"]) == 0
    out = capsys.readouterr().out
    assert "site-calibrated on 75 labeled images" in out and "chosen on a labeled site sample" in out
    assert "calibrated or adapted on these very images" in out
    assert main(["evaluate", str(new), "--data", str(sample_data), "--split", "val", "--n-boot", "50"]) == 0
    assert "these very images" not in capsys.readouterr().out

    # predict and the service show it too
    from pneumolab.data import sample_root

    assert main(["predict", str(new), str(next(sample_root().glob("test/NORMAL/*.jpeg")))]) == 0
    assert "site-calibrated on 75 labeled images" in capsys.readouterr().out
    card = TestClient(create_app(Predictor.load(new))).get("/api/v1/model").json()
    assert card["site"].startswith("site-calibrated") and card["site_steps"][0]["step"] == "calibrate"
    assert "site sample" in card["threshold_origin"]
    assert main(args) == 2  # the new folder now holds a model: never overwritten
    assert "already holds a model.pt" in capsys.readouterr().err


def test_calibration_leaves_out_what_the_model_would_not_assess(runs, sample_data, tmp_path, capsys) -> None:
    """A guard that refuses every image leaves nothing to calibrate on: said in one sentence, nothing written."""
    blob = torch.load(runs["bn"] / "model.pt", weights_only=True)
    blob["ood_guard"]["threshold"] = 0.0
    torch.save(blob, tmp_path / "model.pt")
    args = ["calibrate", str(tmp_path / "model.pt"), "--data", str(sample_data), "--split", "test"]
    assert main([*args, "--out", str(tmp_path / "calibrated")]) == 2
    err = capsys.readouterr().err
    assert "none of its 75 images would be assessed by this model (first: " in err
    assert "not assessed by the model (its features are unlike the training X-rays' (out of distribution))" in err
    assert not (tmp_path / "calibrated").exists()


def test_calibrate_reports_every_site_file_it_leaves_out(runs, tmp_path, capsys) -> None:
    """A labeled site folder indexed in a temporary folder: what it leaves out is listed on the console and in the
    provenance record, not in a problems.csv that is gone when the command ends."""
    from pneumolab.data import sample_root

    site = tmp_path / "site"
    shutil.copytree(sample_root() / "test", site)
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(
        site / "NORMAL" / "a.png"
    )
    (site / "NORMAL" / "Thumbs.db").write_bytes(b"\0" * 16)
    assert main(["calibrate", str(runs["bn"]), "--data", str(site), "--out", str(tmp_path / "cal")]) == 0
    out = capsys.readouterr().out
    assert "calibrated on 75 labeled images" in out
    assert "skipped NORMAL/a.png: the image is in colour" in out and "skipped NORMAL/Thumbs.db: a thumbnail" in out
    _, meta = load_model_file(tmp_path / "cal")
    assert [line.split(":")[0] for line in meta["site"][-1]["skipped_files"]] == ["NORMAL/a.png", "NORMAL/Thumbs.db"]


def test_adapt_round_trip_on_a_folder_of_unlabeled_images(runs, sample_data, tmp_path, capsys) -> None:
    from pneumolab.data import sample_root

    flat = tmp_path / "site"  # no class folders: a hospital's export of unlabeled images
    flat.mkdir()
    for f in sorted(sample_root().glob("test/*/*.jpeg")):
        shutil.copy(f, flat / f.name)
    (flat / "README.txt").write_text("not an image")
    (flat / "@eaDir").mkdir()  # a NAS's thumbnails of the same images: not 75 more X-rays
    shutil.copy(next(flat.glob("*.jpeg")), flat / "@eaDir" / "thumb.jpeg")
    Image.new("RGB", (64, 48), (200, 30, 30)).save(flat / "logo.png")  # not an X-ray: not in the statistics
    Image.fromarray(np.tile(np.arange(250, dtype=np.uint8), (50, 1))).save(flat / "strip.png")  # 5:1: never assessed
    run, new = runs["bn"], tmp_path / "adapted"
    assert main(["adapt", str(run), "--data", str(flat), "--out", str(new)]) == 0
    out = capsys.readouterr().out
    assert "adapted on 75 unlabeled images" in out and "BatchNorm statistics of 8 layers" in out
    assert "skipped README.txt: not an image file" in out  # every file is used or reported
    assert "skipped @eaDir/thumb.jpeg: a thumbnail or system file" in out
    assert "skipped logo.png: not a chest X-ray (the image is blank or nearly uniform" in out
    assert "skipped strip.png: not assessed by the model (aspect ratio 250x50 is not that of a chest radiograph)" in out

    (orig, meta0), (model, meta) = load_model_file(run), load_model_file(new)
    step = meta["site"][-1]
    assert step["step"] == "adapt" and step["images"] == 75 and step["skipped_files"][0].startswith("README.txt")
    a, b = orig.state_dict(), model.state_dict()
    changed = {k for k in a if not torch.equal(a[k], b[k])}
    assert changed and all("running" in k or "num_batches" in k for k in changed)  # statistics only, never weights
    p = step["prior"]
    assert meta["prior_shift"] == pytest.approx(
        math.log(p["site_estimate"] / (1 - p["site_estimate"])) - math.log(p["source"] / (1 - p["source"]))
    )
    assert meta["threshold"] == meta0["threshold"]
    # new BatchNorm statistics give new scores: the site's images are the reference for its later answers
    assert meta0["reference_scores"]["split"] == "val" and meta["reference_scores"]["split"] == "site"
    assert meta["reference_scores"]["images"] == 75
    card = (new / "MODEL_CARD.md").read_text()
    assert "`pneumolab adapt` on 75 images" in card and "8 layers re-estimated, labels unused" in card


def test_answer_margins_invert_the_operating_point() -> None:
    d = np.array([-6.0, -0.5, 0.0, 1.5, 7.0])
    meta = {"temperature": 2.0, "prior_shift": -0.4}
    p = OperatingPoint.from_meta(meta).margin_probability(d).astype(np.float32)  # as a log holds them
    np.testing.assert_allclose(answer_margins(p, meta), d, atol=1e-5)
    assert answer_margins(np.array([0.0, 1.0]), meta) == pytest.approx([-31.44, 33.04], abs=0.01)  # clipped at 1e-7


def _log(path: Path, model_file: Path, images: list[str], probabilities: list[float], threshold: float) -> Path:
    """``predict --json``-style lines: each image's answer by ``model_file`` at ``threshold``."""
    from pneumolab.io import file_sha256

    sha = file_sha256(model_file)
    lines = [
        {"time": "2026-12-07T10:00:00Z", "model_sha256": sha, "image": i, "probability": p}
        | {"label": "PNEUMONIA" if p >= threshold else "NORMAL"}
        for i, p in zip(images, probabilities, strict=True)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _answers(run, folder, tmp_path, capsys) -> tuple:
    """``predict --json`` on ``folder``'s images and a CSV image,label of their true classes (their folder names)."""
    assert main(["predict", str(run), str(folder), "--json"]) == 0
    log = tmp_path / "answers.jsonl"
    log.write_text(capsys.readouterr().out)
    images = [json.loads(line)["image"] for line in log.read_text().splitlines()]
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text("image,label\n" + "".join(f"{i},{Path(i).parent.name}\n" for i in images))
    return log, outcomes, images


def test_calibrate_on_confirmed_outcomes_equals_calibrating_on_the_images(runs, sample_data, tmp_path, capsys) -> None:
    """The same site images, given as the model's logged answers with their outcomes, calibrate to the same numbers
    as given as labeled images: the answers' probabilities carry the margins."""
    # A tiny model's margins span a few hundredths (a Platt fit on them is ill-conditioned): its head is scaled so that
    # they span 4 around 0, as a trained model's do.
    manifest = Manifest.load(sample_data)
    rows = manifest.indices("test")

    def margins_of(model_file):  # (N,) logit margins of the test rows, and the file's metadata
        model, meta = load_model_file(model_file)
        z = predict_logits(model, Preprocessing.from_meta(meta), manifest, rows, sample_data / "cache")
        return torch.from_numpy(z[:, 1] - z[:, 0]), meta

    m, _ = margins_of(runs["bn"])
    k, centre = 4 / float(m.max() - m.min()), float(m.median())
    blob = torch.load(runs["bn"] / "model.pt", weights_only=True)
    w, b = blob["state_dict"]["head.1.weight"], blob["state_dict"]["head.1.bias"]
    w.mul_(k), b.mul_(k)
    b[1] -= k * centre  # margin: k x (old margin - its median)
    run = tmp_path / "model.pt"
    torch.save(blob, run)
    margins, meta0 = margins_of(run)
    assert float(margins.max() - margins.min()) == pytest.approx(4, rel=1e-3) and margins.min() < 0 < margins.max()
    logits = torch.stack([torch.zeros_like(margins), margins], 1)
    probabilities = OperatingPoint.from_meta(meta0).probability(logits).tolist()  # float32, as the service logs them
    images = [manifest.records[i].path for i in rows]
    log = _log(tmp_path / "predictions-2026-12-07.jsonl", run, images, probabilities, meta0["threshold"])
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text(
        "image,label\n" + "".join(f"{manifest.records[i].path},{manifest.records[i].label}\n" for i in rows)
    )
    assert (
        main(["calibrate", str(run), "--data", str(sample_data), "--split", "test", "--out", str(tmp_path / "img")])
        == 0
    )
    capsys.readouterr()
    args = ["calibrate", str(run), "--outcomes", str(outcomes), "--logs", str(log), "--out", str(tmp_path / "oc")]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "calibrated on 75 answers with confirmed outcomes" in out and "warning" not in out
    meta_img, meta = load_model_file(tmp_path / "img")[1], load_model_file(tmp_path / "oc")[1]
    np.testing.assert_allclose(meta["reference_scores"]["margins"], meta_img["reference_scores"]["margins"], atol=2e-4)
    for k in ("temperature", "prior_shift", "threshold"):
        assert meta[k] == pytest.approx(meta_img[k], rel=1e-3, abs=1e-4)
    assert meta["operating_point"] == meta_img["operating_point"]
    step = meta["site"][-1]
    assert step["source"] == "outcomes" and step["images"] == 75 and step["logs"] == [str(log.resolve())]
    assert step["classes"] == meta_img["site"][-1]["classes"]
    assert "answers with the confirmed outcomes" in (tmp_path / "oc" / "MODEL_CARD.md").read_text()
    assert main(["evaluate", str(tmp_path / "oc"), "--data", str(sample_data), "--split", "val", "--n-boot", "20"]) == 0
    out = capsys.readouterr().out
    assert "site-calibrated on 75 answers with confirmed outcomes" in out and "calibrate --outcomes" in out

    # an image answered twice counts once; an outcome for no logged answer is counted and said
    with log.open("a") as f:
        f.write(log.read_text().splitlines()[0] + "\n")
    with outcomes.open("a") as f:
        f.write("elsewhere.jpeg,NORMAL\n")
    args[-1] = str(tmp_path / "oc2")
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "calibrated on 75 answers" in out and "left out: 1 answers given again" in out
    assert "left out: 1 outcomes of no answer in these logs" in out


def test_outcomes_of_only_the_flagged_answers_are_warned_about(runs, tmp_path, capsys) -> None:
    run = runs["bn"] / "model.pt"
    p = np.linspace(0.01, 0.99, 60)  # 30 answers under 0.5 (NORMAL), 30 over (PNEUMONIA)
    images = [f"img{n:02d}.png" for n in range(60)]
    log = _log(tmp_path / "answers.jsonl", run, images, p.tolist(), 0.5)
    # every PNEUMONIA answer followed up (20 confirmed, 10 normal after all), 6 of the 30 NORMAL answers
    confirmed = {i: ("PNEUMONIA" if n % 3 else "NORMAL") for n, i in enumerate(images[30:])}
    confirmed |= dict.fromkeys(images[:30:5], "NORMAL")
    outcomes = tmp_path / "outcomes.csv"
    outcomes.write_text("image,label\n" + "".join(f"{i},{label}\n" for i, label in confirmed.items()))
    args = ["calibrate", str(run), "--outcomes", str(outcomes), "--logs", str(log), "--out", str(tmp_path / "oc")]
    assert main([*args, "--policy", "youden"]) == 0
    out = capsys.readouterr().out
    assert "calibrated on 36 answers with confirmed outcomes (16 NORMAL, 20 PNEUMONIA)" in out
    assert "warning: outcomes are known for 30 of 30 PNEUMONIA answers (100%) but 6 of 30 NORMAL ones (20%)" in out


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ([], "give the site sample as --data (labeled images) or --outcomes with --logs"),
        (["--outcomes", "OC"], "--outcomes needs --logs"),
        (["--data", "DATA", "--outcomes", "OC", "--logs", "LOG"], "one of the two"),
        (["--outcomes", "OC", "--logs", "LOG", "--split", "test"], "the answers of --logs have no splits"),
        (["--outcomes", "OC", "--logs", "OTHER"], "none of its outcomes belongs to an answer of"),
        (["--outcomes", "ONE", "--logs", "LOG"], "holds only PNEUMONIA confirmed answers"),
    ],
)
def test_calibrate_on_outcomes_refuses_bad_input_with_one_sentence(
    runs, sample_data, tmp_path, capsys, extra, message
) -> None:
    from pneumolab.data import sample_root

    log, outcomes, images = _answers(runs["bn"], sample_root() / "test", tmp_path, capsys)
    other = tmp_path / "other.jsonl"  # the same answers, given by another model file
    other.write_text(
        "".join(
            json.dumps({**json.loads(line), "model_sha256": "ab" * 32}) + "\n" for line in log.read_text().splitlines()
        )
    )
    one = tmp_path / "one.csv"
    one.write_text("image,label\n" + "".join(f"{i},PNEUMONIA\n" for i in images if "PNEUMONIA" in i))
    names = {"OC": outcomes, "LOG": log, "OTHER": other, "ONE": one, "DATA": sample_data}
    args = ["calibrate", str(runs["bn"]), "--out", str(tmp_path / "new"), *[str(names.get(a, a)) for a in extra]]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "new" / "model.pt").exists()


@pytest.mark.parametrize(
    ("command", "model", "setup", "message"),
    [
        (
            "calibrate",
            "bn",
            "one_class",
            "the site sample holds only PNEUMONIA images; calibration needs labeled images",
        ),
        ("calibrate", "bn", "policy", "PNEUMONIA image(s) in the site sample, but policy 'sensitivity>=0.99' needs"),
        ("calibrate", "bn", "unlabeled", "no train/val/test or NORMAL/PNEUMONIA folders"),
        ("adapt", "no_bn", "labeled", "cnn_base has no BatchNorm layers"),
        ("adapt", "bn", "too_few", "adaptation needs at least 32"),
        ("adapt", "bn", "same_out", "is the original run"),
    ],
)
def test_site_steps_refuse_bad_input_with_one_sentence(
    runs, sample_data, tmp_path, capsys, command, model, setup, message
) -> None:
    from pneumolab.data import sample_root

    data, extra = sample_root(), []
    if setup == "one_class":
        data = tmp_path / "one"
        shutil.copytree(sample_root() / "test" / "PNEUMONIA", data / "PNEUMONIA")
    elif setup == "policy":
        extra = ["--policy", "sensitivity>=0.99", "--split", "test"]  # needs 100 pneumonia images; test has 34
    elif setup in ("unlabeled", "too_few"):
        data = tmp_path / "flat"
        data.mkdir()
        for f in sorted(sample_root().glob("test/NORMAL/*.jpeg"))[: 30 if setup == "too_few" else None]:
            shutil.copy(f, data / f.name)
    out = runs[model] if setup == "same_out" else tmp_path / "new"
    assert main([command, str(runs[model]), "--data", str(data), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert not (tmp_path / "new" / "model.pt").exists()


def test_fold_metrics_score_each_fold_with_a_model_fitted_on_the_other(runs, sample_data, tmp_path) -> None:
    from pneumolab.evaluation.evaluate import evaluate

    r = site_fold_metrics(runs["bn"], sample_data, split="test", n_boot=50, seed=0)
    assert set(r) == {"zero-shot", "calibrate", "adapt", "adapt-bn-only", "adapt+calibrate"}
    for how in r.values():
        assert [f["fit_images"] + f["scored_images"] for f in how["folds"]] == [75, 75]
        assert sum(f["scored_images"] for f in how["folds"]) == 75
    # Zero-shot pooled over the folds is just the stored model on all 75 images: same numbers as `evaluate`.
    ev = evaluate(runs["bn"], sample_data, split="test", out=tmp_path / "ev", n_boot=50)
    for k in ("auroc", "sensitivity", "specificity", "accuracy"):
        assert r["zero-shot"]["pooled"][k] == pytest.approx(ev["at_threshold"][k]["value"], abs=1e-6)
    thresholds = {f["threshold"] for f in r["calibrate"]["folds"]}
    assert len(thresholds) == 2  # each fold got its own threshold from the other fold's labels
    json.dumps(r)  # plain data, ready for results.json
