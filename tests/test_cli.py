import json
import subprocess
import sys

import pytest
import typer
from conftest import make_kaggle, make_npz, tree_digest, write_image

from pneumolab.cli import app, main
from pneumolab.data import sample_root
from pneumolab.data.manifest import Manifest


def _all_commands() -> list[list[str]]:
    """Every command and group of ``pneumolab``, read from the app itself (a new command is checked too)."""
    found, todo = [], [([], typer.main.get_command(app))]
    while todo:
        path, cmd = todo.pop()
        found.append(path)
        for name, sub in getattr(cmd, "commands", {}).items():
            if not sub.hidden:
                todo.append(([*path, name], sub))
    return sorted(found)


COMMANDS = _all_commands()


def test_the_command_tree_is_complete() -> None:
    assert {"data prepare", "train", "gan quality", "serve", "calibrate", "adapt", "version"} <= {
        " ".join(c) for c in COMMANDS
    }


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "top")
def test_every_help_shows_examples(cmd, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # a narrow terminal: examples must still be whole commands
    assert main([*cmd, "--help"]) == 0
    out = capsys.readouterr().out
    examples = [line.strip() for line in out.split("Examples:")[1].splitlines() if line.strip()]
    assert examples and all(e.startswith(("pneumolab ", "PNEUMOLAB_", "tensorboard ")) for e in examples), examples


def test_python_dash_m_works() -> None:
    res = subprocess.run([sys.executable, "-m", "pneumolab", "version"], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == __import__("pneumolab").__version__


@pytest.mark.slow
def test_demo_runs_on_the_bundled_sample_without_touching_it(tmp_path, capsys) -> None:
    before = tree_digest(sample_root())
    quick = [
        "overrides=[trainer.max_epochs=1,data.num_workers=0,trainer.precision=32]",
        "recipe_overrides=[trainer.max_epochs=1]",
        "gan.gan_overrides=[trainer.max_epochs=1,width=8,data.num_workers=0]",
    ]
    assert main(["demo", "--out", str(tmp_path), *quick]) == 0
    out = capsys.readouterr().out
    assert "CC BY 4.0" in out and "19 of 19 steps ok" in out and "report: " in out
    root = tmp_path / "demo"
    assert (root / "report" / "report.html").is_file() and (root / "runs" / "recipe-fast" / "model.pt").is_file()
    m = Manifest.load(root / "data")
    assert 200 <= len(m) <= 400 and {r.split for r in m.records} == {"train", "val", "test"}
    assert tree_digest(sample_root()) == before
    assert main(["demo", "--out", str(tmp_path), *quick]) == 0  # resumable: everything is reused
    state = json.loads((root / "study.json").read_text())["steps"]
    # the report and the robustness step run on every invocation (robustness only shifts models without a result)
    assert {n for n, s in state.items() if s["status"] != "skipped"} == {"robustness", "report"}


def test_sample_is_small_attributed_and_has_several_images_per_patient() -> None:
    root = sample_root()
    size = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    assert size <= 5_000_000
    assert "CC BY 4.0" in (root / "SAMPLE.md").read_text() and "Kermany" in (root / "SAMPLE.md").read_text()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["data", "index", "{tmp}/missing", "--out", "{tmp}/o"], "does not exist"),
        (["data", "split", "{tmp}/nothing"], "does not exist: give a dataset folder made by `pneumolab data prepare"),
        (["data", "cache", "{tmp}"], "is not a pneumolab dataset folder (no manifest.csv/manifest.json): make one"),
    ],
)
def test_bad_input_exits_2_with_one_sentence(tmp_path, capsys, args, message) -> None:
    assert main([a.format(tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err and "Traceback" not in err


def test_usage_errors_exit_2(capsys) -> None:
    assert main(["data", "bogus"]) == 2
    assert main(["data", "split", "x", "--source-val", "sometimes"]) == 2


def test_strict_index_exits_2(kaggle_dir, tmp_path, capsys) -> None:
    (kaggle_dir / "train" / "NORMAL" / "IM-0999-0001.jpeg").write_bytes(b"")
    assert main(["data", "index", str(kaggle_dir), "--out", str(tmp_path / "a"), "--workers", "1"]) == 0
    assert "IM-0999-0001.jpeg: file is empty" in capsys.readouterr().out
    assert main(["data", "index", str(kaggle_dir), "--out", str(tmp_path / "b"), "--strict"]) == 2


def test_medmnist_split_message_and_summary_json(tmp_path, capsys) -> None:
    npz = make_npz(tmp_path / "pneumoniamnist.npz")
    out = tmp_path / "ds"
    assert main(["data", "index", str(npz), "--out", str(out)]) == 0
    assert main(["data", "split", str(out), "--source-val", "merge"]) == 2
    assert "--by-image" in capsys.readouterr().err
    assert main(["data", "split", str(out)]) == 0
    capsys.readouterr()
    assert main(["data", "summary", str(out), "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["splits"]["train"]["patients"] is None
    assert any("no patient ids" in n for n in summary["notes"])


def test_prepare_accepts_the_full_kaggle_download_with_its_test_split(kaggle_dir, tmp_path, capsys) -> None:
    # Kermany restarts personN in test: train person100_virus_* and test person100_virus_* are two children.
    write_image(kaggle_dir / "test" / "PNEUMONIA" / "person100_virus_77.jpeg", seed=4242)
    test_files = sorted(p.relative_to(kaggle_dir).as_posix() for p in (kaggle_dir / "test").rglob("*.jpeg"))
    out = tmp_path / "ds"
    args = ["data", "prepare", str(kaggle_dir), "--out", str(out), "--size", "32", "--val-fraction", "0.2"]
    assert main([*args, "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    assert "restarts in the test folder" in printed and "test:" in printed
    m = Manifest.load(out)
    assert sorted(r.path for r in m.records if r.split == "test") == test_files  # the official test stays test
    assert {r.split for r in m.records if r.source_split != "test"} == {"train", "val"}


@pytest.mark.parametrize(
    ("argv", "missing", "extra"),
    [
        (["serve", "runs/x"], "uvicorn", "serve"),
        (["tune", "-c", "tune/cpu_resnet18"], "optuna", "tune"),
        (["export", "runs/x", "--onnx", "x.onnx"], "onnxruntime", "onnx"),
        (["export", "runs/x", "--onnx", "x.onnx"], "onnxscript", "onnx"),  # torch's exporter writes with it
    ],
)
def test_an_optional_part_without_its_extra_names_the_install(argv, missing, extra, monkeypatch, capsys) -> None:
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == missing else real(name, *a))
    monkeypatch.delitem(sys.modules, missing, raising=False)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{missing}, which is not installed: pip install 'pneumolab[{extra}]'" in err


def test_summary_warns_when_the_proportions_alone_tell_the_classes_apart(tmp_path, capsys) -> None:
    root = make_kaggle(tmp_path / "src", n_pneu=12, n_norm=12, test=False)
    for i, f in enumerate(sorted(root.glob("*/PNEUMONIA/*.jpeg"))):
        write_image(f, seed=1000 + i, size=(60 + i % 5, 40))  # pneumonia: wide (1.5-1.6); normal: 48x40 (1.2)
    out = tmp_path / "ds"
    assert main(["data", "prepare", str(root), "--out", str(out), "--size", "32"]) == 0
    text = capsys.readouterr().out
    assert "width/height vs label: AUROC 1.000 over 62 non-square images" in text
    assert "warning: the images' proportions alone tell the classes apart" in text and "data.augment.aspect" in text
    assert main(["data", "summary", str(out), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["width_height_vs_label"] == {"images": 62, "auroc": 1.0}
    (flat := tmp_path / "flat").mkdir()
    make_kaggle(flat, n_pneu=12, n_norm=12, test=False)  # every image 48x40: no signal, no warning
    assert main(["data", "prepare", str(flat), "--out", str(tmp_path / "ds2"), "--size", "32"]) == 0
    text = capsys.readouterr().out
    assert "AUROC 0.500 over 62 non-square images" in text and "warning: the images' proportions" not in text


def test_each_command_starts_at_info_level_whatever_ran_before_in_the_process() -> None:
    """`study` quiets our logger to WARNING for its dozens of runs; a later command in the same process (tests, a
    notebook) must still show its information lines."""
    import logging

    logging.getLogger("pneumolab").setLevel(logging.WARNING)  # what a study leaves behind
    assert main(["version"]) == 0
    assert logging.getLogger("pneumolab").level == logging.INFO
