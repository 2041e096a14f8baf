import json
from pathlib import Path

import pytest
import yaml

from pneumolab.cli import main
from pneumolab.config import load_run_config
from pneumolab.data.manifest import Manifest
from pneumolab.errors import InputError
from pneumolab.pipeline import StudyConfig, load_study_config, plan_study
from pneumolab.rundir import RunDir

FAST = [
    "data.num_workers=0",
    "trainer.precision=32",
    "trainer.channels_last=false",
    "trainer.log_images=false",
    "trainer.log_graph=false",
]


def _study_yaml(tmp_path: Path, **changes) -> Path:
    body = {
        "name": "t",
        "out_dir": str(tmp_path / "study"),
        "data": {"image_size": 32},
        "classifiers": ["cpu/cnn_base"],
        "recipe": "fast",
        "overrides": ["trainer.max_epochs=1", "trainer.early_stopping_patience=null", *FAST],
        "recipe_overrides": ["data.batch_size=16"],
        "autoencoder": {"overrides": ["trainer.max_epochs=1", "channels=[8,16]", *FAST]},
        "gan": {
            "models": ["cnn_base"],
            "per_class": 8,
            "epochs": 1,
            "seed_protocol": True,
            "gan_overrides": ["trainer.max_epochs=1", "width=8", "data.batch_size=8", *FAST],
        },
        "robustness": ["cnn_base", "recipe-fast"],
        **changes,
    }
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """One end-to-end study run shared by the `slow` tests below."""
    tmp = tmp_path_factory.mktemp("study")
    cfg_file = _study_yaml(tmp)
    assert main(["study", str(cfg_file)]) == 0
    return tmp, cfg_file, tmp / "study" / "t"


@pytest.mark.slow
def test_study_runs_every_step_and_writes_one_report(finished) -> None:
    _, _, root = finished
    state = json.loads((root / "study.json").read_text())
    assert {s["status"] for s in state["steps"].values()} == {"done"}
    assert list(state["steps"]) == [
        "data",
        "cnn_base",
        "recipe-fast",
        "autoencoder",
        "latent_cnn",
        "gan-NORMAL",
        "gan-PNEUMONIA",
        "synthetic-NORMAL",
        "synthetic-PNEUMONIA",
        "cnn_base-plain-s0",
        "cnn_base-gan-s0",
        "cnn_base-dup-s0",
        "seed-protocol-data",
        "cnn_base-seed-protocol",
        "robustness",
        "report",
    ]
    report = (root / "report" / "report.md").read_text()
    shifted = json.loads((root / "robustness" / "summary.json").read_text())
    assert set(shifted) == {"cnn_base", "recipe-fast"}  # the runs the `robustness` key names, on validation
    section = report.split("## Robustness to acquisition shifts")[1].split("\n## ")[0]
    assert "| cnn_base | val |" in section and "| recipe-fast | val |" in section and "latent_cnn" not in section
    assert "GAN augmentation" in report and "Autoencoder codes vs pixels" in report
    for name in ("cnn_base", "latent_cnn", "cnn_base-gan-s0"):
        assert f"| {name} " in report  # every classifier is in the comparison
    assert "| cnn_base-seed-protocol " not in report  # the leaky run is not ranked with the others...
    assert load_run_config(root / "runs" / "cnn_base").data.image_size == 32  # the study's size for its models,
    recipe = load_run_config(root / "runs" / "recipe-fast")
    assert recipe.data.image_size == 64 and recipe.data.batch_size == 16  # its own size; recipe_overrides


@pytest.mark.slow
def test_study_seed_protocol_is_leaky_by_construction_and_reported_beside_ours(finished, caplog, monkeypatch) -> None:
    from pneumolab.data import manifest
    from pneumolab.data.manifest import check_no_leakage
    from pneumolab.errors import LeakageError

    _, _, root = finished
    monkeypatch.setattr(manifest, "_WARNED_LEAKY", set())  # the study run already announced it in this process
    leaky = Manifest.load(root / "seed-protocol" / "data")
    assert caplog.text.count("LEAKY") == 1 and leaky.meta["protocol"] == "seed-leaky"
    Manifest.load(root / "seed-protocol" / "data")
    assert caplog.text.count("LEAKY") == 1  # once per dataset, not on every load
    real = Manifest.load(root / "data")
    assert len(leaky) == len(real) + 16  # every real image plus both synthetic sets
    assert {r.split for r in leaky.records if r.source == "synthetic"} >= {"train", "test"}  # the study's leak
    counts = {s: len(leaky.indices(s)) for s in ("train", "val", "test")}
    assert abs(counts["train"] / len(leaky) - 0.70) < 0.02 and abs(counts["test"] / len(leaky) - 0.15) < 0.02
    with pytest.raises(LeakageError):  # without the protocol mark the same rows are refused
        check_no_leakage(leaky.records)
    assert load_run_config(root / "seed-protocol" / "runs" / "cnn_base-seed-protocol").data.data_dir == (
        root / "seed-protocol" / "data"
    )
    report = (root / "report" / "report.md").read_text()
    section = report.split("## The original study's protocol vs ours")[1].split("\n## ")[0]
    rows = [line for line in section.splitlines() if line.startswith("| ")][2:]  # below header and rule
    assert rows[0].startswith("| patient-disjoint (pneumolab) | test split | ")
    assert rows[1].startswith("| seed protocol (image level, 70/15/15) | its test split | ")
    assert len(rows) >= 3  # ...and its test split broken into real / synthetic images


@pytest.mark.slow
def test_study_gan_arms_take_equal_steps_and_synthetic_stays_in_train(finished) -> None:
    _, _, root = finished
    arms = {a: load_run_config(root / "gan-experiment" / "runs" / f"cnn_base-{a}-s0") for a in ("plain", "gan", "dup")}
    n_train = len(Manifest.load(root / "data").indices("train", "real"))
    steps = -(-n_train // arms["plain"].data.batch_size)  # one epoch of the plain arm, rounded up
    assert {c.trainer.max_steps for c in arms.values()} == {steps}
    assert len(arms["gan"].data.synthetic) == 2 and not arms["plain"].data.synthetic and not arms["dup"].data.synthetic
    assert arms["dup"].data.duplicate_real == {"NORMAL": 8, "PNEUMONIA": 8}
    for syn in arms["gan"].data.synthetic:
        m = Manifest.load(syn)
        assert (
            len(m) == 8 and {r.source for r in m.records} == {"synthetic"} and {r.split for r in m.records} == {"train"}
        )


@pytest.mark.slow
def test_study_rerun_skips_finished_runs_and_resumes_an_interrupted_one(finished) -> None:
    _, cfg_file, root = finished
    run = root / "runs" / "cnn_base"
    (run / "summary.json").unlink()  # as if killed after its last checkpoint: last.ckpt, no summary
    (run / "marker").write_text("kept")
    assert main(["study", str(cfg_file)]) == 0
    state = json.loads((root / "study.json").read_text())["steps"]
    assert state["cnn_base"]["status"] == "done" and (run / "marker").read_text() == "kept"  # resumed, not restarted
    assert (run / "summary.json").is_file()
    assert {n for n, s in state.items() if s["status"] == "skipped"} == set(state) - {
        "cnn_base",
        "robustness",
        "report",
    }
    shifted = {
        name: RunDir(root / "runs" / name).robustness_dir(root / "data", "val") / "robustness.json"
        for name in ("cnn_base", "recipe-fast")
    }
    assert shifted["cnn_base"].stat().st_mtime >= (run / "model.pt").stat().st_mtime  # re-shifted: a new model.pt
    assert shifted["recipe-fast"].stat().st_mtime < (run / "model.pt").stat().st_mtime  # unchanged: not shifted again


def test_a_failed_run_is_recorded_and_the_rest_go_on(tmp_path, capsys) -> None:
    cfg_file = _study_yaml(
        tmp_path,
        classifiers=["cpu/cnn_base", "cpu/cnn_improved"],
        autoencoder=None,
        gan=None,
        overrides=["trainer.max_epochs=1", *FAST],
        robustness=[],
    )
    bad = tmp_path / "no_such_synthetic_set"
    code = main(["study", str(cfg_file), "classifiers=['cpu/cnn_base']", f"recipe={_bad_recipe(tmp_path, bad)}"])
    assert code == 1
    state = json.loads((tmp_path / "study" / "t" / "study.json").read_text())["steps"]
    assert state["cnn_base"]["status"] == "done" and state["report"]["status"] == "done"
    assert state["recipe-bad"]["status"] == "failed" and "no_such_synthetic_set" in state["recipe-bad"]["error"]
    assert "failed: recipe-bad" in capsys.readouterr().out
    assert "no_such_synthetic_set" in (tmp_path / "study" / "t" / "errors" / "recipe-bad.txt").read_text()


def test_pretrain_step_makes_the_encoder_the_recipe_starts_from(tmp_path, capsys) -> None:
    tiny = ["data.image_size=32", "data.batch_size=16", "model.kwargs.width=8", "trainer.max_epochs=1", *FAST]
    cfg_file = _study_yaml(
        tmp_path,
        classifiers=[],
        autoencoder=None,
        gan=None,
        robustness=[],
        recipe="fast_pretrained",
        recipe_overrides=tiny,
        pretrain={"overrides": tiny},
    )
    assert main(["study", str(cfg_file)]) == 0
    root = tmp_path / "study" / "t"
    state = json.loads((root / "study.json").read_text())["steps"]
    assert list(state) == ["data", "pretrain", "recipe-fast_pretrained", "report"]
    assert all(step["status"] == "done" for step in state.values())
    encoder = root / "pretrain" / "simclr" / "encoder.pt"
    assert encoder.is_file()
    recipe = load_run_config(root / "runs" / "recipe-fast_pretrained")
    assert recipe.model.init == encoder and recipe.data.image_size == 32
    # pre-training without a recipe to use it is refused before anything runs
    assert main(["study", str(cfg_file), "recipe=null"]) == 2
    assert "pretrain makes an encoder for the recipe" in capsys.readouterr().err


def _bad_recipe(tmp_path: Path, synthetic: Path) -> Path:
    path = tmp_path / "bad.yaml"  # valid as a config; fails when the run reads its data
    path.write_text(
        yaml.safe_dump({"name": "bad", "model": {"name": "cnn_base"}, "data": {"synthetic": [str(synthetic)]}})
    )
    return path


def test_dry_run_prints_the_plan_with_estimates_and_runs_nothing(tmp_path, capsys) -> None:
    cfg_file = _study_yaml(tmp_path)
    assert main(["study", str(cfg_file), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "cnn_base-gan-s0" in out and "min" in out and "estimated:" in out
    assert not (tmp_path / "study" / "t").exists()


@pytest.mark.parametrize("gpu", [False, True])
def test_dry_run_times_steps_where_they_will_run(monkeypatch, tmp_path, gpu) -> None:
    import torch

    from pneumolab import pipeline
    from pneumolab.config import AugmentConfig, TrainConfig, load_config
    from pneumolab.training import speed, trainer

    calls = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    monkeypatch.setattr(trainer, "_cpu_has_native_bf16", lambda: True)  # timed as it will train
    monkeypatch.setattr(speed, "classifier_step_rate", lambda *a, **k: calls.append((a, k)) or 100.0)
    cfg = load_config(TrainConfig, "fast", [f"data.data_dir={tmp_path}", "data.batch_size=64", "trainer.max_epochs=3"])
    # 10 s start-up + 1.35 x (3 epochs x 1,000 images x fast's 2 views at 100 img/s): validation adds ~a third
    assert pipeline._estimate(cfg, 1000, {}, None) == pytest.approx(10 + 1.35 * 60)
    one_view = cfg.model_copy(update={"data": cfg.data.model_copy(update={"augment": AugmentConfig()})})
    assert pipeline._estimate(one_view, 1000, {}, None) == pytest.approx(10 + 1.35 * 30)
    assert pipeline._estimate(cfg, 1000, {}, 0.5) == 30  # capped by a 0.5 min budget
    (name, size, batch), kwargs = calls[0]
    assert (name, size, kwargs["bf16"]) == ("cnn_improved", 64, True)
    assert (batch, kwargs["device"]) == ((64, "cuda") if gpu else (16, "cpu"))


def test_robustness_names_must_be_reported_runs(tmp_path, capsys) -> None:
    assert main(["study", str(_study_yaml(tmp_path)), "robustness=[cnn_bse]", "--dry-run"]) == 2
    assert (
        "no reported run named cnn_bse; choose from all, cnn_base, recipe-fast, latent_cnn" in capsys.readouterr().err
    )


def test_presets_load_and_bad_keys_are_named(tmp_path) -> None:
    for name in ("demo", "cpu", "seed"):
        cfg = load_study_config(name)
        assert isinstance(cfg, StudyConfig) and cfg.classifiers and cfg.gan is not None
        assert len(plan_study(cfg)) >= 10
    assert len(load_study_config("cpu").classifiers) == 12  # every model of the study, base and improved
    with pytest.raises(InputError, match="classifier"):
        load_study_config("demo", ["classifer=[]"])
