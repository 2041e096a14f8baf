import os
import shutil
import socket
import subprocess
import tempfile
import warnings
from pathlib import Path

import optuna
import pytest

from pneumolab.cli import main
from pneumolab.config import TrainConfig, load_config
from pneumolab.errors import InputError
from pneumolab.evaluation.robustness import SHIFTS
from pneumolab.tuning.search import load_tune_config, run_study, write_best


def _tune_yaml(tmp_path: Path, space: str = "") -> Path:
    path = tmp_path / "tune.yaml"
    path.write_text(f"""
name: t
train_config: cpu/cnn_base
overrides: [trainer.max_epochs=2, data.image_size=32, trainer.precision=32, trainer.channels_last=false,
            data.num_workers=0]
objective: val/auroc
trials: 3
pruner: median
out_dir: {tmp_path / "tune"}
space:
  optim.lr: {{type: float, low: 1.0e-4, high: 3.0e-3, log: true}}
  model.dropout: {{type: float, low: 0.0, high: 0.4}}
{space}""")
    return path


def test_a_three_trial_study_writes_runs_best_config_and_report(sample_data, tmp_path, capsys) -> None:
    cfg_file = _tune_yaml(tmp_path)
    best = tmp_path / "tuned.yaml"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["tune", "-c", str(cfg_file), "--data", str(sample_data), "--out-config", str(best)]) == 0
    assert not [str(w.message) for w in caught if "optuna" in w.filename]  # no "experimental feature" notices
    out = capsys.readouterr().out
    assert "study t: 3 finished trials" in out
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'tune' / 't' / 'study.db'}")
    states = [t.state.name for t in study.trials]
    # the median pruner never prunes its 2 start-up trials; the third may be pruned, depending on its curve
    assert len(states) == 3 and states[:2] == ["COMPLETE", "COMPLETE"] and states[2] in ("COMPLETE", "PRUNED")
    for t in study.trials:  # every finished trial is an ordinary run with its own folder
        if t.state.name == "COMPLETE":
            assert (Path(t.user_attrs["run_dir"]) / "model.pt").is_file()
    tuned = load_config(TrainConfig, best)  # ready to use with `pneumolab train -c`
    assert tuned.optim.lr == pytest.approx(study.best_params["optim.lr"]) and tuned.data.image_size == 32
    report = (tmp_path / "tune" / "t" / "report.md").read_text()
    assert "val/auroc" in report and "history.png" in report

    # Resume: the same command with more trials continues the same study.
    assert (
        main(["tune", "-c", str(cfg_file), "--data", str(sample_data), "--trials", "4", "--out-config", str(best)]) == 0
    )
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 'tune' / 't' / 'study.db'}")
    assert len(study.trials) == 4 and [t.number for t in study.trials] == [0, 1, 2, 3]
    assert len({tuple(t.params.values()) for t in study.trials}) == 4  # resuming draws new points, not trial 0 again
    again = ["tune", "-c", str(cfg_file), "--data", str(sample_data), "--trials", "4", "--out-config", str(best)]
    assert main(again) == 0
    db = f"sqlite:///{tmp_path / 'tune' / 't' / 'study.db'}"
    assert len(optuna.load_study(study_name="t", storage=db).trials) == 4  # complete: nothing more runs


def test_pruning_stops_an_obviously_bad_trial(sample_data, tmp_path) -> None:
    # lr up to 10 only so that the third, enqueued trial can be absurd: its weights blow up in epoch 0.
    cfg_file = _tune_yaml(tmp_path)
    cfg_file.write_text(cfg_file.read_text().replace("high: 3.0e-3, log: true", "high: 10.0, log: true"))
    cfg = load_tune_config(cfg_file, sample_data)
    storage = f"sqlite:///{tmp_path / 'p.db'}"
    study = optuna.create_study(study_name="t", storage=storage, direction="maximize")
    for lr in (1e-3, 2e-3, 10.0):
        study.enqueue_trial({"optim.lr": lr, "model.dropout": 0.0})
    run_study(cfg, data=sample_data, storage=storage)
    states = [t.state.name for t in optuna.load_study(study_name="t", storage=storage).trials]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED"]


def test_robustness_objective_scores_each_trial_under_the_shifts(sample_data, tmp_path) -> None:
    import json

    cfg_file = _tune_yaml(tmp_path)
    cfg_file.write_text(
        cfg_file.read_text().replace("objective: val/auroc", "objective: robustness/mean_balanced_accuracy")
    )
    cfg = load_tune_config(cfg_file, sample_data, ["trials=2"])
    study = run_study(cfg, data=sample_data)
    best = load_config(TrainConfig, write_best(study, cfg, tmp_path / "best.yaml", sample_data))
    assert best.trainer.monitor == "val/auroc"  # robustness has no per-epoch value: checkpoints still by AUROC
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    n_sets = 3 * len(SHIFTS)  # every shift at three severities
    for t in study.trials:
        r = json.loads((Path(t.user_attrs["run_dir"]) / "robustness" / "robustness.json").read_text())
        rows = [row for rows in r["shifts"].values() for row in rows]
        assert r["split"] == "val" and len(rows) == n_sets == 33
        assert t.value == pytest.approx(sum(row["balanced_accuracy"] for row in rows) / n_sets)


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ("  optim.lrr: {type: float, low: 1.0e-4, high: 1.0e-3}", "optim.lrr"),
        ("  model.dropout2: {type: float, low: 0.0, high: 0.3}", "model.dropout2"),
        ("  optim.weight_decay: {type: float, low: 0.1, high: 0.01}", "low < high"),
        ("  data.batch_size: {type: categorical}", "choices"),
        ("  model.dropout: {type: float, low: 0.1, high: 1.5}", "model.dropout' = 1.5"),  # only the bound is bad
        ("  data.batch_size: {type: categorical, choices: [32, 0]}", "data.batch_size' = 0"),
    ],
)
def test_bad_search_space_entries_name_the_key(tmp_path, space, message) -> None:
    with pytest.raises(InputError, match=message.replace(".", r"\.")):
        load_tune_config(_tune_yaml(tmp_path, space))


def _initdb() -> str | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"))
    return str(found[-1]) if found else shutil.which("initdb")


@pytest.fixture
def postgres():
    """A throw-away PostgreSQL server on loopback (trust auth, a fresh data directory, removed afterwards)."""
    initdb = _initdb()
    if initdb is None:
        pytest.skip("PostgreSQL server binaries not installed (.ci/run installs Debian's postgresql)")
    bindir = Path(initdb).parent
    # Directly under /tmp: pytest's own tmp folders are private to root, and the server cannot run as root.
    data = Path(tempfile.mkdtemp(prefix="pneumolab-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(data, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-U", "postgres", "--auth=trust"],
        check=True,
        capture_output=True,
    )
    opts = f"-p {port} -k {data} -c listen_addresses=127.0.0.1"
    subprocess.run(
        [*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-o", opts, "-w", "start", "-l", str(data / "log")],
        check=True,
        capture_output=True,
    )
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, str(bindir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"], capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def test_two_workers_share_one_study_through_postgresql(postgres, sample_data, tmp_path, monkeypatch) -> None:
    cfg_file = _tune_yaml(tmp_path)
    monkeypatch.chdir(tmp_path)  # workers inherit this folder: they must not write configs/tuned/ there
    code = main(
        [
            "tune",
            "-c",
            str(cfg_file),
            "--data",
            str(sample_data),
            "--storage",
            postgres,
            "--workers",
            "2",
            "--trials",
            "4",
            "--out-config",
            str(tmp_path / "best.yaml"),
        ]
    )
    assert code == 0
    study = optuna.load_study(study_name="t", storage=postgres)
    finished = [t for t in study.trials if t.state.name in ("COMPLETE", "PRUNED")]
    assert len(finished) >= 4
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2  # both processes ran trials
    assert (tmp_path / "best.yaml").is_file() and not (tmp_path / "configs").exists()  # only the parent writes
