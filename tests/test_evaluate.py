import csv
import hashlib
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_train_args, write_dicom
from PIL import Image

from pneumolab.cli import main
from pneumolab.data.manifest import Manifest
from pneumolab.data.transforms import Preprocessing
from pneumolab.errors import InputError
from pneumolab.evaluation import evaluate as evaluate_module
from pneumolab.evaluation.evaluate import evaluate
from pneumolab.evaluation.predict import predict_logits, read_val_logits
from pneumolab.evaluation.report import compare
from pneumolab.inference.predictor import Predictor
from pneumolab.models.checkpoint import load_model_file
from pneumolab.rundir import RunDir
from pneumolab.site_adaptation.provenance import threshold_origin


@pytest.fixture(scope="module")
def two_runs(sample_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    assert main(tiny_train_args(sample_data, out)) == 0
    assert main(tiny_train_args(sample_data, out, "-c", "cpu/cnn_improved", "trainer.max_epochs=1")) == 0
    return out / "cnn_base", out / "cnn_improved"


def test_training_stores_a_validation_operating_point(two_runs, sample_data) -> None:
    model, meta = load_model_file(two_runs[0] / "model.pt")
    # ... and the validation logits it came from, which later stages read instead of predicting again
    manifest = Manifest.load(sample_data)
    kept = read_val_logits(RunDir(two_runs[0]).val_logits, manifest)
    pre, val = Preprocessing.from_meta(meta), manifest.indices("val")
    np.testing.assert_allclose(kept, predict_logits(model, pre, manifest, val, sample_data / "cache"), atol=1e-5)
    assert 0 < meta["threshold"] < 1 and meta["threshold_policy"] == "youden"
    assert meta["operating_point"]["split"] == "val" and meta["temperature"] > 0
    card = (two_runs[0] / "MODEL_CARD.md").read_text()
    assert "not a diagnostic device" in card and "pediatric" in card  # the sample's file names are Kermany's
    train = [manifest.records[i] for i in manifest.indices("train")]
    normals = sum(r.label == "NORMAL" for r in train)
    patients = len({r.patient_id for r in train})
    expected = f"train {len(train)} images ({normals} NORMAL, {len(train) - normals} PNEUMONIA) of {patients} patients"
    assert expected in card and meta["training_data"]["kermany_file_names"] == 1.0


def test_the_model_card_states_kermany_population_only_for_kermany_images(two_runs) -> None:
    from pneumolab.evaluation.model_card import render_model_card

    _, meta = load_model_file(two_runs[0] / "model.pt")
    site = {**meta["training_data"], "source": "/data/st-elsewhere.csv", "kermany_file_names": 0.0}  # a site's own
    card = render_model_card({**meta, "training_data": site}, [])
    assert "Guangzhou" not in card and "pediatric" not in card
    n = meta["training_data"]["splits"]["train"]["images"]
    assert f"Trained on {n} chest X-rays from one source (`/data/st-elsewhere.csv`)" in card
    site.pop("source")  # a file of 2026-12-06 recorded the images' folder as root
    card = render_model_card({**meta, "training_data": {**site, "root": "/data/st-elsewhere"}}, [])
    assert f"Trained on {n} chest X-rays from one source (`/data/st-elsewhere`)" in card
    older = render_model_card({k: v for k, v in meta.items() if k != "training_data"}, [])  # before the record
    assert "Guangzhou" not in older and "Trained on a training set this model file does not record" in older


def test_the_training_population_s_ages_come_from_dicom_headers_or_kermany_s_documentation(two_runs) -> None:
    from pneumolab.evaluation.model_card import render_model_card, training_ages

    _, meta = load_model_file(two_runs[0] / "model.pt")
    kermany = meta["training_data"]
    assert kermany["ages_years"] is None and training_ages(kermany) == (1, 5)  # JPEGs: the documented range
    site = {**kermany, "kermany_file_names": 0.0, "source": "/data/site"}
    assert training_ages(site) is None  # a site's JPEGs: no ages, no claim
    aged = {**site, "ages_years": {"known": 95, "of": 100, "youngest": 18, "oldest": 90}}
    assert training_ages(aged) == (18, 90)
    assert "chest X-rays from one source, patients of 18-90+ years (`/data/site`)" in render_model_card(
        {**meta, "training_data": aged}, []
    )
    assert training_ages({**aged, "ages_years": {"known": 80, "of": 100, "youngest": 18, "oldest": 90}}) is None
    # ages read from the headers override the documentation, also for Kermany-named files
    assert training_ages({**kermany, "ages_years": {"known": 100, "of": 100, "youngest": 0, "oldest": 9}}) == (0, 9)


def test_view_logits_are_seeded_leave_the_random_stream_alone_and_reduce_to_plain_logits(two_runs, sample_data) -> None:
    from pneumolab.config import AugmentConfig
    from pneumolab.data.cache import load_cache
    from pneumolab.evaluation.predict import view_logits

    model, meta = load_model_file(two_runs[0] / "model.pt")
    manifest, pre = Manifest.load(sample_data), Preprocessing.from_meta(meta)
    val = manifest.indices("val")
    images = load_cache(manifest, pre.image_size, sample_data / "cache")
    plain = predict_logits(model, pre, manifest, val, sample_data / "cache")
    # no augmentation: every view is the image as it is
    same = view_logits(model, pre, images, val, AugmentConfig(enabled=False), 2)
    np.testing.assert_allclose(same, np.concatenate([plain, plain]), atol=1e-5)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    strong = AugmentConfig(rotation_deg=10, scale=(0.8, 1.2), aspect=0.5, border_erase=0.2, brightness=0.4)
    views = view_logits(model, pre, images, val, strong, 3)
    assert torch.equal(torch.rand(3), expected_next)  # the caller's random stream did not move
    assert views.shape == (3 * len(val), 2)
    np.testing.assert_array_equal(views, view_logits(model, pre, images, val, strong, 3))  # seeded
    assert not np.allclose(views[: len(val)], plain, atol=1e-3)  # the views are augmented
    assert not np.allclose(views[: len(val)], views[len(val) : 2 * len(val)], atol=1e-3)  # each drawn anew


def test_an_operating_point_fitted_on_augmented_validation_views(sample_data, tmp_path) -> None:
    from pneumolab.evaluation.calibration import apply_temperature, fit_temperature, reference_normal_calls
    from pneumolab.evaluation.metrics import wilson
    from pneumolab.evaluation.thresholds import choose_threshold, effective_images

    extra = ("calibration_views=3", "threshold_policy=sensitivity>=0.9", "data.augment.aspect=0.4")
    extra += ("data.augment.batched=true", "data.augment.views=2")  # trained on 2 views, calibrated on 3
    assert main(tiny_train_args(sample_data, tmp_path, *extra)) == 0
    run = tmp_path / "cnn_base"
    _, meta = load_model_file(run / "model.pt")
    manifest = Manifest.load(sample_data)
    val = manifest.indices("val")
    kept = read_val_logits(RunDir(run).val_logits, manifest)
    assert kept.shape == (3 * len(val), 2) and meta["operating_point"]["views"] == 3
    y = torch.tensor([manifest.records[i].target for i in val] * 3)
    temperature = fit_temperature(torch.from_numpy(kept), y)
    assert meta["temperature"] == pytest.approx(temperature)
    prob = apply_temperature(torch.from_numpy(kept), temperature).numpy()
    assert meta["threshold"] == pytest.approx(choose_threshold(prob, y.numpy(), "sensitivity>=0.9")["threshold"])
    # what the rates are worth: between the images and 3 copies of each (the precision `monitor` tests against)
    op = meta["operating_point"]
    assert op["effective_images"] == effective_images(prob, y.numpy(), meta["threshold"], 3)
    assert all(op["images"][c] <= op["effective_images"][c] <= 3 * op["images"][c] for c in op["images"])
    # the same threshold on the validation images as they are: what `evaluate --split val` measures
    clean = meta["operating_point"]["images_as_they_are"]
    scored = evaluate(run, sample_data, out=tmp_path / "val", split="val", n_boot=50)["at_threshold"]
    assert clean == pytest.approx({k: scored[k]["value"] for k in ("sensitivity", "specificity")})
    # ... and what `monitor --model` compares a site's NORMAL answers with: those images' own scores, not the views'
    with open(tmp_path / "val" / "predictions.csv", newline="") as f:
        val_prob = np.array([float(r["probability"]) for r in csv.DictReader(f)])
    assert meta["reference_scores"]["split"] == "val" and meta["reference_scores"]["images"] == len(val)
    np.testing.assert_allclose(reference_normal_calls(meta), np.sort(val_prob[val_prob < meta["threshold"]]), atol=1e-3)
    card = (run / "MODEL_CARD.md").read_text()
    assert "3 copies of each validation image under the training augmentation" in card
    worth = {c: round(op["effective_images"][c]) for c in op["images"]}
    low, high = wilson(round(op["specificity"] * worth["NORMAL"]), worth["NORMAL"])
    assert f"-{high:.3f}, as precise as {worth['PNEUMONIA']} PNEUMONIA and {worth['NORMAL']} NORMAL images)" in card
    assert f"and {low:.3f}-" in card
    assert f"the same threshold gives sensitivity {clean['sensitivity']:.3f} and specificity" in card
    assert f"- Keeps the scores of the {len(val)} validation images (logit margins only" in card
    assert "lr 0.001, 2 augmented views of each batch, best epoch" in card
    assert threshold_origin(meta).startswith("chosen on 3 augmented views of each validation image")
    # `evaluate --policy` re-chooses on the same views: from the kept logits, or predicting them again
    first = evaluate(run, sample_data, out=tmp_path / "a", policy="youden", n_boot=50)["alternative_threshold"]
    RunDir(run).val_logits.unlink()
    again = evaluate(run, sample_data, out=tmp_path / "b", policy="youden", n_boot=50)["alternative_threshold"]
    assert again["value"] == pytest.approx(first["value"], abs=1e-6)


def test_evaluate_writes_predictions_metrics_plots_and_keeps_the_threshold(
    two_runs, sample_data, tmp_path, capsys, monkeypatch
) -> None:
    run = two_runs[0]
    before = (run / "model.pt").read_bytes()
    predicted = []
    real = evaluate_module._probabilities
    monkeypatch.setattr(evaluate_module, "_probabilities", lambda *a: predicted.append(a[3]) or real(*a))
    code = main(
        [
            "evaluate",
            str(run),
            "--data",
            str(sample_data),
            "--out",
            str(tmp_path),
            "--n-boot",
            "300",
            "--policy",
            "sensitivity>=0.95",
        ]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "threshold" in printed
    assert (run / "model.pt").read_bytes() == before  # evaluate never changes the stored threshold
    m = json.loads((tmp_path / "metrics.json").read_text())
    _, meta = load_model_file(run / "model.pt")
    assert m["split"] == "test" and m["threshold"]["value"] == meta["threshold"]
    assert "validation" in m["threshold"]["origin"]
    assert m["alternative_threshold"]["policy"] == "sensitivity>=0.95"
    assert len(predicted) == 1  # the test split only: the policy read the run's kept validation logits
    assert m["alternative_threshold"]["metrics"]["sensitivity"]["value"] >= m["at_threshold"]["sensitivity"]["value"]
    auroc = m["at_threshold"]["auroc"]
    assert auroc["ci_low"] <= auroc["value"] <= auroc["ci_high"]
    with open(tmp_path / "predictions.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == m["at_threshold"]["n_images"] == 75 and rows[0].keys() == {
        "path",
        "patient_id",
        "label",
        "probability",
        "prediction",
        "assessed",
    }
    t = m["threshold"]["value"]
    assert all((r["prediction"] == "PNEUMONIA") == (float(r["probability"]) >= t) for r in rows)
    for name in ("roc", "pr", "decision_curve", "confusion", "reliability", "curves"):
        assert (tmp_path / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    # net benefit at the stored threshold, from the confusion counts: TP/n - FP/n x t/(1-t)
    c, n = m["at_threshold"]["confusion"], m["at_threshold"]["n_images"]
    assert m["at_threshold"]["net_benefit"]["value"] == pytest.approx((c["tp"] - c["fp"] * t / (1 - t)) / n)
    tp = sum(r["label"] == r["prediction"] == "PNEUMONIA" for r in rows)
    assert m["at_threshold"]["confusion"]["tp"] == tp
    # errors.html: the 12 most confident false positives (Grad-CAM on) and the 12 lowest-scored false negatives
    fp = sorted((r for r in rows if r["label"] == "NORMAL" != r["prediction"]), key=lambda r: -float(r["probability"]))
    fn = sorted(
        (r for r in rows if r["label"] == "PNEUMONIA" != r["prediction"]), key=lambda r: float(r["probability"])
    )
    assert m["errors"] == {
        "false_positives": {"total": len(fp), "shown": [r["path"] for r in fp[:12]]},
        "false_negatives": {"total": len(fn), "shown": [r["path"] for r in fn[:12]]},
    }
    page = (tmp_path / "errors.html").read_text()
    assert page.count("<img ") == min(12, len(fp)) + min(12, len(fn)) and fp and fn
    assert [page.index(r["path"]) for r in fp[:12]] == sorted(page.index(r["path"]) for r in fp[:12])
    assert f"P(pneumonia) = {float(fn[0]['probability']):.3f}" in page
    shown = f"errors.html: {min(12, len(fp))} of {len(fp)} false positives (most confident first, with Grad-CAM) and "
    assert shown + f"{min(12, len(fn))} of {len(fn)} false negatives, to look at" in printed
    # each rate at the stored threshold against what the operating point promised, on the images it was measured on
    from scipy.stats import fisher_exact

    op = meta["operating_point"]
    for name, cls in (("sensitivity", "PNEUMONIA"), ("specificity", "NORMAL")):
        mine = [r for r in rows if r["label"] == cls]
        k = sum(r["prediction"] == cls for r in mine)
        n_ref = round(op["effective_images"][cls])
        k_ref = round(op[name] * n_ref)
        p = fisher_exact([[k, len(mine) - k], [k_ref, n_ref - k_ref]], alternative="less").pvalue
        pr = m["promise"][name]
        assert pr["here"] == {"value": k / len(mine), "k": k, "n": len(mine)} and pr["images"] == n_ref
        assert pr["p_value"] == pytest.approx(p) and pr["below"] == (p < 0.025)
        assert f"(promised {op[name]:.4f} [{pr['ci'][0]:.4f}, {pr['ci'][1]:.4f}]" in printed
        assert (f"warning: {name} {k / len(mine):.3f} ({k} of {len(mine)}) is below" in printed) == pr["below"]


def test_evaluating_the_selection_split_warns(two_runs, sample_data, tmp_path) -> None:
    m = evaluate(two_runs[0], sample_data, split="val", out=tmp_path, n_boot=100)
    assert "optimistic" in m["warning"] and "promise" not in m  # the promise was measured on these very images


def test_evaluate_on_a_raw_folder_indexes_it_first(two_runs, tmp_path) -> None:
    from pneumolab.data import sample_root

    m = evaluate(two_runs[0], sample_root(), split="test", out=tmp_path / "ext", n_boot=100)
    assert m["at_threshold"]["n_images"] == 75 and (tmp_path / "ext" / "data" / "manifest.csv").is_file()
    assert m["images_without_patient_id"] == 0  # Kermany's file names carry them


def test_evaluate_says_when_images_have_no_patient_id_or_are_left_out(two_runs, sample_data, tmp_path, capsys) -> None:
    """A site's CSV without a patient_id or split column: every image is scored (no --split needed) and resampled
    alone, and the console says so; a listed image that cannot be read is named, not silently dropped."""
    m = Manifest.load(sample_data)
    listed = tmp_path / "site.csv"
    rows = "".join(f"{m.root / r.path},{r.label}\n" for r in m.records[::10])
    listed.write_text(f"path,label\n{rows}scans/gone.png,NORMAL\n")
    args = ["evaluate", str(two_runs[0]), "--data", str(listed), "--out", str(tmp_path / "e")]
    assert main([*args, "--n-boot", "50"]) == 0
    out, err = capsys.readouterr()
    n = len(m.records[::10])
    assert f"{n} images, {n} patients" in out and f"{n} image(s) have no patient id" in out
    result = json.loads((tmp_path / "e" / "metrics.json").read_text())
    assert result["images_without_patient_id"] == n and result["split"] == "all"
    assert f"{listed} has no train/val/test splits: scoring all its images (--split all)" in err
    assert f"1 of the {n + 1} images of {listed} are left out (1 unreadable; first: scans/gone.png: no such file" in err
    assert main([*args, "--split", "test"]) == 2
    assert "has no train/val/test splits (its images all count as train): use --split all" in capsys.readouterr().err


def test_evaluate_on_dicoms_counts_the_patients_outside_the_training_ages_and_groups_by_headers(
    two_runs, sample_data, tmp_path, capsys
) -> None:
    """A site's DICOMs of adults and children from two makers, scored by a model of Kermany's children (1-5 years):
    the ages are counted, and --by groups by a header attribute or by age against the training ages."""
    m = Manifest.load(sample_data)
    site = tmp_path / "site"
    for i, r in enumerate(m.records[:8]):
        pixels = np.asarray(Image.open(m.root / r.path).convert("L").resize((96, 96)))
        tags = {"PatientAge": ["054Y", "003Y", "006M", "041Y"][i % 4], "Manufacturer": ["GE", "Agfa"][i % 2]}
        write_dicom(site / r.label / f"im{i}.dcm", pixels, patient_id=f"MRN-{i}", **tags)
    base = ["evaluate", str(two_runs[0]), "--data", str(site), "--n-boot", "50"]
    assert main([*base, "--out", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert (
        "ages: 6 of 8 images with an age (CSV or DICOM headers) are of patients outside the 1-5 years the model" in out
    )
    ages = json.loads((tmp_path / "e" / "metrics.json").read_text())["ages"]
    assert ages == {"training_ages_years": [1, 5], "images_with_age": 8, "outside": 6}

    assert main([*base, "--out", str(tmp_path / "m"), "--by", "dicom:manufacturer"]) == 0  # any case
    groups = json.loads((tmp_path / "m" / "metrics.json").read_text())["subgroups"]["groups"]
    assert {k: g["n_images"] for k, g in groups.items()} == {"Agfa": 4, "GE": 4}
    assert main([*base, "--out", str(tmp_path / "a"), "--by", "age"]) == 0
    groups = json.loads((tmp_path / "a" / "metrics.json").read_text())["subgroups"]["groups"]
    assert {k: g["n_images"] for k, g in groups.items()} == {
        "1-5 years (the training ages)": 2,
        "older than the training ages": 4,
        "younger than the training ages": 2,
    }
    capsys.readouterr()
    assert main([*base, "--by", "dicom:PatientName"]) == 2  # it identifies: the groups would print names
    assert "--by dicom:PatientName: choose one of Manufacturer, ManufacturerModelName" in capsys.readouterr().err
    assert main(["evaluate", str(two_runs[0]), "--data", str(sample_data), "--by", "dicom:Manufacturer"]) == 2
    assert "none of the evaluated images is a DICOM file" in capsys.readouterr().err
    site_model = {"training_data": {"kermany_file_names": 0.0, "ages_years": None}}  # a site's JPEGs: no ages
    with pytest.raises(InputError, match="--by age: this model file records no training ages"):
        evaluate_module._age_groups(m, [0], site_model)


def test_evaluate_by_a_column_of_the_sites_csv(two_runs, sample_data, tmp_path, capsys) -> None:
    """--by scanner: each group's numbers are the overall evaluation restricted to its images; a group of one class
    has no AUROC (null, '-'); a column the CSV lacks, or a source that is no CSV, is refused before any work."""
    from sklearn.metrics import roc_auc_score

    m = Manifest.load(sample_data)
    records = m.records[::5]
    normals = [r for r in records if r.label == "NORMAL"]
    scanner = {r.path: ("GE" if i % 2 else "Philips") for i, r in enumerate(records)}
    scanner[normals[0].path] = "Siemens"  # a group holding one normal image only
    listed = tmp_path / "site.csv"
    rows = "".join(f"{m.root / r.path},{r.label},{scanner[r.path]}\n" for r in records)
    listed.write_text("path,label,Scanner\n" + rows)
    args = ["evaluate", str(two_runs[0]), "--data", str(listed), "--split", "all", "--n-boot", "50"]
    assert main([*args, "--out", str(tmp_path / "e"), "--by", "scanner"]) == 0  # the column's case is not the CSV's
    out = capsys.readouterr().out
    result = json.loads((tmp_path / "e" / "metrics.json").read_text())
    groups = result["subgroups"]["groups"]
    assert result["subgroups"]["column"] == "scanner" and list(groups) == ["GE", "Philips", "Siemens"]
    assert result["model_sha256"] == hashlib.sha256((two_runs[0] / "model.pt").read_bytes()).hexdigest()
    with open(tmp_path / "e" / "predictions.csv") as f:
        preds = list(csv.DictReader(f))
    for name in ("GE", "Philips"):
        mine = [p for p in preds if scanner[Path(p["path"]).relative_to(m.root).as_posix()] == name]
        y = [p["label"] == "PNEUMONIA" for p in mine]
        assert groups[name]["n_images"] == len(mine) and groups[name]["PNEUMONIA"] == sum(y)
        auroc = roc_auc_score(y, [float(p["probability"]) for p in mine])
        assert groups[name]["auroc"]["value"] == pytest.approx(auroc)
    assert groups["Siemens"]["n_images"] == 1 and groups["Siemens"]["auroc"]["value"] is None
    assert groups["Siemens"]["sensitivity"]["value"] is None and groups["Siemens"]["specificity"]["value"] in (0, 1)
    siemens = next(line for line in out.splitlines() if line.strip().startswith("Siemens"))
    assert siemens.split()[1:5] == ["1", "1", "0", "-"] and siemens.endswith("(< 10 of a class: rough)")
    from pneumolab.evaluation.model_card import render_model_card

    _, meta = load_model_file(two_runs[0] / "model.pt")
    card = render_model_card(meta, [result])
    assert (
        "By `scanner`:" in card
        and f"| Siemens | 1 (1 / 0) | - | - | {groups['Siemens']['specificity']['value']:.3f}" in card
    )
    # compare --by: the same groups for every run, each number the run's own evaluation by that column
    report = ["compare", *map(str, two_runs), "--data", str(listed), "--split", "all", "--n-boot", "50"]
    assert main([*report, "--by", "scanner", "--out", str(tmp_path / "r")]) == 0
    md = (tmp_path / "r" / "report.md").read_text()
    table = md[md.index("By `scanner`") :].splitlines()
    ge = next(row for row in table if row.startswith("| GE |")).split(" | ")
    assert ge[2] == two_runs[0].name and ge[3].startswith(f"{groups['GE']['auroc']['value']:.3f} [")
    first, second = table[table.index(next(r for r in table if r.startswith("| Siemens |"))) :][:2]
    assert first.startswith("| Siemens | 1 (1 / 0) (< 10 of a class: rough) |") and "| - | - |" in first
    assert second.startswith(f"|  |  | {two_runs[1].name} | - | - |")

    assert main([*args, "--by", "sex"]) == 2
    assert "no column 'sex' to group by; it has ['Scanner']" in capsys.readouterr().err
    assert main(["evaluate", str(two_runs[0]), "--data", str(sample_data), "--by", "scanner"]) == 2
    assert "was not indexed from a CSV" in capsys.readouterr().err
    from pneumolab.data.index import index_source

    index_source(listed, tmp_path / "prepared", workers=1)  # a dataset prepared from the CSV reads it at --by time
    listed.write_text("path,label,Scanner\nelsewhere.png,NORMAL,GE\n")  # ... which has changed since
    prepared = ["evaluate", str(two_runs[0]), "--data", str(tmp_path / "prepared"), "--split", "all", "--by", "scanner"]
    assert main(prepared) == 2
    assert "none of the evaluated images is listed in" in capsys.readouterr().err


def test_evaluate_says_which_images_the_service_would_not_assess(two_runs, sample_data, tmp_path, capsys) -> None:
    """The guard's verdicts as predict/serve would give them: a 5:1 strip (indexed: sources may hold crops) is
    refused for its proportions, and the feature guard's threshold decides the rest; every image is still scored."""
    m = Manifest.load(sample_data)
    strip = tmp_path / "strip.png"
    Image.fromarray(np.tile(np.linspace(0, 255, 300).astype(np.uint8), (60, 1))).save(strip)
    listed = tmp_path / "site.csv"
    rows = "".join(f"{m.root / r.path},{r.label}\n" for r in m.records[::20])
    listed.write_text(f"path,label\n{rows}{strip},NORMAL\n")
    n = len(m.records[::20]) + 1
    blob = torch.load(two_runs[0] / "model.pt", weights_only=True)
    for threshold, expected in ((1e30, 1), (0.0, n)):  # a guard that passes every X-ray, one that refuses all
        blob["ood_guard"]["threshold"] = threshold
        model_file = tmp_path / f"guard-{threshold:g}" / "model.pt"
        model_file.parent.mkdir()
        torch.save(blob, model_file)
        out = tmp_path / f"eval-{threshold:g}"
        args = ["evaluate", str(model_file), "--data", str(listed), "--split", "all", "--out", str(out)]
        assert main([*args, "--n-boot", "20"]) == 0
        r = json.loads((out / "metrics.json").read_text())
        assert r["guard"] == {"images": n, "not_assessed": expected, "feature_guard": True}
        assert r["at_threshold"]["n_images"] == n  # scored all the same
        with open(out / "predictions.csv") as f:
            verdicts = {Path(p["path"]).name: p["assessed"] for p in csv.DictReader(f)}
        assert verdicts["strip.png"] == "no" and list(verdicts.values()).count("no") == expected
        assert f"guard: {expected} of {n} images would be NOT_ASSESSED" in capsys.readouterr().out
    assert not Predictor.load(tmp_path / "guard-1e+30").predict(strip.read_bytes()).assessed  # the service agrees


def test_evaluate_scores_a_sites_normals_alone_and_compare_refuses_them(two_runs, sample_data, tmp_path, capsys):
    """Normal X-rays alone: specificity (the share the model clears) is defined, AUROC and sensitivity are not
    (null, '-'), no ROC is drawn; the comparison report, which ranks by AUROC, refuses the set before any work."""
    m = Manifest.load(sample_data)
    listed = tmp_path / "normals.csv"
    normals = [r for r in m.records if r.label == "NORMAL"][:25]
    listed.write_text("path,label\n" + "".join(f"{m.root / r.path},NORMAL\n" for r in normals))
    args = ["evaluate", str(two_runs[0]), "--data", str(listed), "--split", "all", "--out", str(tmp_path / "e")]
    assert main([*args, "--n-boot", "50", "--errors", "3"]) == 0
    out, err = capsys.readouterr()
    r = json.loads((tmp_path / "e" / "metrics.json").read_text())
    with open(tmp_path / "e" / "predictions.csv") as f:
        probs = [float(p["probability"]) for p in csv.DictReader(f)]
    cleared = sum(p < r["threshold"]["value"] for p in probs) / len(probs)
    assert r["at_threshold"]["specificity"]["value"] == pytest.approx(cleared) and len(probs) == 25
    assert r["at_threshold"]["auroc"] == {"value": None, "ci_low": None, "ci_high": None}
    assert r["at_threshold"]["sensitivity"]["value"] is None and "roc" not in r["plots"]
    assert not (tmp_path / "e" / "roc.png").exists() and (tmp_path / "e" / "confusion.png").is_file()
    assert "  auroc              -\n" in out and "undefined with no PNEUMONIA images" in out
    assert "Warning" not in err and "warning" not in err
    flagged = sorted((p for p in probs if p >= r["threshold"]["value"]), reverse=True)
    assert r["errors"]["false_positives"]["total"] == len(flagged) and r["errors"]["false_negatives"]["total"] == 0
    page = (tmp_path / "e" / "errors.html").read_text()
    assert page.count("<img ") == min(3, len(flagged)) and "(false negatives): none</h2>" in page
    if len(flagged) > 3:
        assert f"(false positives): the 3 most confident of {len(flagged)}</h2>" in page
    args[-1] = str(tmp_path / "none")  # --out
    assert main([*args, "--n-boot", "50", "--errors", "0"]) == 0
    assert not (tmp_path / "none" / "errors.html").exists()
    assert "errors" not in json.loads((tmp_path / "none" / "metrics.json").read_text())
    compare = ["compare", str(two_runs[0]), "--data", str(listed), "--split", "all", "--out", str(tmp_path / "r")]
    assert main(compare) == 2
    assert "holds one class only: the report ranks runs by AUROC" in capsys.readouterr().err


def test_evaluate_errors(two_runs, sample_data, tmp_path, capsys) -> None:
    assert main(["evaluate", str(tmp_path), "--data", str(sample_data)]) == 2
    assert "no model.pt" in capsys.readouterr().err
    assert main(["evaluate", str(two_runs[0]), "--data", str(sample_data), "--split", "holdout"]) == 2


def _variant(run, out, name: str, **data_changes):
    """A copy of ``run`` whose config claims other training data (perturbed weights, so predictions differ)."""
    import yaml

    from pneumolab.models.checkpoint import save_model_file

    out.mkdir()
    model, meta = load_model_file(run / "model.pt")
    meta["config"]["data"].update(data_changes)
    meta["config"]["name"] = name
    torch.manual_seed(len(name))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    save_model_file(out / "model.pt", model, {k: v for k, v in meta.items() if k not in ("format", "version")})
    (out / "config.yaml").write_text(yaml.safe_dump(meta["config"]))
    return out


def test_compare_renders_every_section(two_runs, sample_data, tmp_path) -> None:
    gan = _variant(two_runs[0], tmp_path / "gan_run", "cnn_base_gan", synthetic=["runs/gan/pneumonia"])
    dup = _variant(two_runs[0], tmp_path / "dup_run", "cnn_base_dup", duplicate_real={"PNEUMONIA": 10})
    html = compare([*two_runs, gan, dup], sample_data, tmp_path / "report", n_boot=200)
    text = (tmp_path / "report" / "report.md").read_text()
    for section in ("The study's table", "Operating points", "Size and cost", "Pairwise AUROC", "GAN augmentation"):
        assert section in text, section
    # what a reader wants first: the best run, then the ROC figure; paths come last
    assert text.index("**Best AUROC on the test split") < text.index("![ROC") < text.index("About this report")
    assert (
        text.index("![ROC") < text.index("![Decision curves") and (tmp_path / "report" / "decision_curve.png").is_file()
    )
    assert text.index("About this report") < text.index("MODEL_CARD.md")
    galleries = re.findall(r"`([^`]*errors\.html)`", text)  # each run's errors to look at, evaluated for the report
    assert len(galleries) == 4 and all(Path(g).is_file() for g in galleries)
    pairs = (tmp_path / "report" / "pairwise.csv").read_text().splitlines()
    assert len(pairs) == 1 + 4 * 3 // 2 and pairs[0].startswith("a,b,auroc_a_minus_b")
    assert "| GAN images | cnn_base_gan | cnn_base |" in text
    assert "duplicated real (control)" in text and "1 seed(s)" in text
    page = html.read_text()
    assert page.startswith("<!doctype html>") and "data:image/png;base64," in page and "<table>" in page
    assert page.count("<table>") == text.count("\n| --- |")  # every Markdown table, from the same source
    assert "<h2>Operating points" in page and "<strong>Best AUROC" in page
    # each run's count of images the service would not assess, read from its evaluation (scored all the same)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.endswith("| not assessed* |"))
    table = lines[header + 2 : header + 6]
    assert [row.split(" | ")[-1].rstrip(" |").isdigit() for row in table] == [True] * 4
    assert "*Not assessed: the images of this split that `predict` and the service would not label" in text


def test_paired_auroc_test_matches_hand_computed_values() -> None:
    from pneumolab.evaluation.report import RunResult, paired_auroc_test

    # 4 patients x 2 images. a ranks every pneumonia image above every normal one (AUROC 1); b puts one
    # pneumonia image (0.3) below two normals (0.4, 0.6): 2 of the 16 pairs wrong, AUROC 14/16.
    y = [1, 1, 1, 1, 0, 0, 0, 0]
    pa = [0.9, 0.8, 0.7, 0.6, 0.4, 0.3, 0.2, 0.1]
    pb = [0.9, 0.8, 0.7, 0.3, 0.4, 0.6, 0.2, 0.1]
    groups = ["p1", "p1", "p2", "p2", "p3", "p3", "p4", "p4"]

    def run(name: str, prob: list[float]) -> RunResult:
        preds = {f"img{i}": (p, t, g) for i, (p, t, g) in enumerate(zip(prob, y, groups, strict=True))}
        return RunResult(name, Path(name), {}, {}, {}, preds, 0, 0.0)

    t = paired_auroc_test(run("a", pa), run("b", pb), n_boot=500)
    assert t["diff"] == pytest.approx(2 / 16) and t["n"] == 8
    assert t["ci_low"] >= 0  # b is never better on any resample: a's ranking is perfect
    back = paired_auroc_test(run("b", pb), run("a", pa), n_boot=500)
    assert back["diff"] == pytest.approx(-2 / 16) and back["p_value"] == t["p_value"]
    same = paired_auroc_test(run("a", pa), run("a2", pa), n_boot=100)
    assert same["diff"] == 0 and same["p_value"] == 1.0

    # the report's opening sentence, with two runs tied for the best AUROC (the first listed leads)
    from pneumolab.evaluation.report import _headline, _pairwise

    runs = [run("a", pa), run("a2", pa), run("b", pb)]
    for r, auroc in zip(runs, (1.0, 1.0, 14 / 16), strict=True):
        ci = {"value": auroc, "ci_low": auroc, "ci_high": auroc}
        r.metrics = {
            "at_threshold": {"auroc": ci, "sensitivity": ci, "specificity": ci, "n_images": 8, "n_patients": 4}
        }
    text = _headline(runs, _pairwise(runs, n_boot=100), "test split of x")
    assert (
        text.startswith("**Best AUROC on the test split of x: a, 1.000")
        and "not significantly ahead of the next, a2" in text
    )
    assert text.endswith("(8 images, 4 patients).")
    runs[0].metrics["images_without_patient_id"] = 3  # e.g. a CSV whose patient_id cells are partly empty
    assert _headline(runs, _pairwise(runs, n_boot=100), "x").endswith(
        "(8 images, 4 patients, 3 images without a patient id)."
    )


def test_robustness_reports_every_shift_and_matches_clean_evaluation(two_runs, sample_data, tmp_path, capsys) -> None:
    from pneumolab.evaluation.robustness import SHIFTS

    assert (
        main(["robustness", str(two_runs[0]), "--data", str(sample_data), "--split", "test", "--out", str(tmp_path)])
        == 0
    )
    assert "worst spec." in capsys.readouterr().out
    r = json.loads((tmp_path / "robustness.json").read_text())
    assert set(r["shifts"]) == set(SHIFTS) and all(len(v) == 3 for v in r["shifts"].values())
    m = evaluate(two_runs[0], sample_data, split="test", out=tmp_path / "ev", n_boot=50)["at_threshold"]
    for k in ("auroc", "sensitivity", "specificity"):
        assert r["clean"][k] == pytest.approx(m[k]["value"], abs=1e-6)  # same images, same threshold
    strongest = r["shifts"]["noise"][-1]
    assert (strongest["auroc"], strongest["specificity"]) != (r["clean"]["auroc"], r["clean"]["specificity"])
    flat = [(name, row) for name, rows in r["shifts"].items() for row in rows]
    name, worst = min(flat, key=lambda nr: nr[1]["specificity"])
    assert r["worst_specificity"] == worst["specificity"]
    assert r["worst_shift"] == {"shift": name, "severity": worst["severity"]}
    assert r["mean_balanced_accuracy"] == pytest.approx(np.mean([row["balanced_accuracy"] for _, row in flat]))
    assert (tmp_path / "robustness.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # only the shifted split was decoded at the 256 px reference size, into its own cache folder
    from pneumolab.data.cache import prepared_sizes

    manifest = Manifest.load(sample_data)
    assert 256 not in prepared_sizes(manifest, sample_data / "cache")
    (small,) = (sample_data / "cache" / "robustness").glob("images_256_*.npy")
    assert np.load(small, mmap_mode="r").shape == (len(manifest.indices("test")), 256, 256)


def test_robustness_of_several_models_shares_the_shifts_and_reaches_the_report(
    two_runs, sample_data, tmp_path, capsys
) -> None:
    from pneumolab.evaluation.robustness import robustness

    args = ["robustness", *map(str, two_runs), "--data", str(sample_data)]
    assert main([*args, "--out", str(tmp_path)]) == 2  # one --out folder cannot hold two results
    assert "--out takes one model" in capsys.readouterr().err
    assert main(args) == 0
    written = [RunDir(run).robustness_dir(sample_data, "val") / "robustness.json" for run in two_runs]
    assert str(written[1]) in capsys.readouterr().out
    for run, path in zip(two_runs, written, strict=True):  # the same numbers as one model at a time
        alone = robustness(run, sample_data, split="val")
        assert json.loads(path.read_text())["shifts"] == alone["shifts"]
        assert (path.parent / "robustness.png").is_file()
    compare(two_runs, sample_data, tmp_path / "report", n_boot=50)  # the report's split is test ...
    text = (tmp_path / "report" / "report.md").read_text()
    assert "## Robustness to acquisition shifts" in text
    assert "![Robustness to acquisition shifts](robustness.png)" in text
    r0 = json.loads(written[0].read_text())
    row = next(line for line in text.splitlines() if line.startswith(f"| {two_runs[0].name} | val |"))  # shifts: val
    assert f"{r0['worst_specificity']:.3f} ({r0['worst_shift']['shift']}" in row
    assert (tmp_path / "report" / "robustness.png").is_file()


def test_two_datasets_with_the_same_name_get_their_own_evaluation_folders(tmp_path) -> None:
    run = RunDir(tmp_path / "run")
    a, b = run.eval_dir(tmp_path / "a" / "data", "test"), run.eval_dir(tmp_path / "b" / "data", "test")
    assert a != b and a.parent == b.parent == tmp_path / "run" / "eval"
    assert a.name.startswith("data-") and a.name.endswith("-test")
    assert run.eval_dir(tmp_path / "a" / "data", "test") == a  # stable: a re-run finds its own results


def test_the_aspect_shift_narrows_or_widens_the_content_about_the_centre() -> None:
    from pneumolab.evaluation.robustness import SHIFTS

    shift, severities = SHIFTS["aspect"]
    assert severities == (0.9, 0.8, 1.2)
    x = torch.full((2, 1, 64, 64), 200, dtype=torch.uint8)
    x[:, :, :, :8] = 0  # a black band on the left eighth
    narrow = shift(x, 0.5, torch.Generator())  # 64 -> 32 columns, centred: 16 black columns each side
    assert narrow.shape == x.shape and (narrow[..., :16] == 0).all() and (narrow[..., -16:] == 0).all()
    assert (narrow[..., 16:19] == 0).all() and (narrow[..., 21:48] == 200).all()  # half the band; 19-20 its edge
    wide = shift(x, 2.0, torch.Generator())  # 64 -> 128 columns, the centre 64 kept: the band is cut away
    assert (wide == 200).all()
    assert torch.equal(shift(x, 1.0, torch.Generator()), x)
