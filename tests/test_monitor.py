"""`pneumolab monitor`: counts, Wilson intervals and warnings per period from answer logs."""

import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest

from pneumolab.cli import main
from pneumolab.errors import InputError
from pneumolab.evaluation.calibration import reference_normal_calls, score_reference
from pneumolab.evaluation.metrics import wilson
from pneumolab.io import file_sha256
from pneumolab.site_adaptation.monitor import monitor

MODEL = "ab" * 32


def _log(path: Path, days: dict[str, tuple[int, int, int]], model: str = MODEL, month: str = "2026-11") -> Path:
    """A serve audit log: per day ``(assessed, of them flagged PNEUMONIA, not assessed)``."""
    lines = []
    for day, (assessed, flagged, not_assessed) in days.items():
        for i in range(assessed + not_assessed):
            t = f"{month}-{day}T09:{i // 60:02d}:{i % 60:02d}.000+00:00"
            if i < not_assessed:
                ans = {"label": "NOT_ASSESSED", "probability": None, "reasons": ["the feature guard: unlike X-rays"]}
            else:
                pneumonia = i - not_assessed < flagged
                ans = {"label": "PNEUMONIA" if pneumonia else "NORMAL", "probability": 0.9 if pneumonia else 0.2}
            lines.append(json.dumps({"time": t, "model_sha256": model, **ans}))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_wilson_interval_matches_the_formula() -> None:
    z = 1.959963984540054
    for k, n in [(12, 30), (0, 20), (20, 20), (1, 300)]:
        p = k / n
        centre = (p + z * z / (2 * n)) / (1 + z * z / n)
        half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
        assert wilson(k, n) == pytest.approx((centre - half, centre + half), abs=1e-9)
    assert wilson(0, 20)[1] == pytest.approx(z * z / (20 + z * z))  # 0.1611: no event in 20 still allows 16%


def test_counts_rates_and_a_spike_in_the_flagged_share(tmp_path) -> None:
    days = {f"{d:02d}": (40, 16, 0) for d in range(1, 7)}
    days["04"] = (40, 36, 0)  # 90% flagged on one day against 40%
    days["05"] = (40, 16, 4)  # 4 of 44 not assessed: the guard flags 0.5% of the training site's X-rays
    r = monitor([_log(tmp_path / "audit.jsonl", days)])
    rows = {row["period"]: row for row in r["periods"]}
    assert list(rows) == [f"2026-11-{d:02d}" for d in range(1, 7)]
    day5 = rows["2026-11-05"]
    assert (day5["images"], day5["assessed"], day5["flagged"], day5["not_assessed"]) == (44, 40, 16, 4)
    assert day5["not_assessed_rate"]["value"] == pytest.approx(4 / 44) and day5["not_assessed_rate"]["n"] == 44
    assert day5["flagged_rate"]["value"] == pytest.approx(0.4)
    assert day5["flagged_rate"]["ci"] == pytest.approx(list(wilson(16, 40)))
    assert day5["mean_probability"] == pytest.approx((16 * 0.9 + 24 * 0.2) / 40)
    assert day5["reasons"] == {"the feature guard: unlike X-rays": 4}
    assert len(r["warnings"]) == 2
    spike, guard = sorted(r["warnings"])
    # the other five days: 5 x 16 of 5 x 40 flagged
    assert spike.startswith("2026-11-04: 90.0% [") and "against 40.0% in the model's other periods" in spike
    assert guard.startswith("2026-11-05: 4 of 44 images not assessed (9.1% [") and "check what is being sent" in guard


def test_warnings_allow_for_the_number_of_periods(tmp_path) -> None:
    from scipy.stats import fisher_exact

    days = {f"{d:02d}": (40, 16, 0) for d in range(1, 11)}
    days["03"] = (40, 8, 1)  # 20% flagged against 40%: p = 0.016, significant alone, not among 10 periods x 3 tests
    assert 0.05 / 30 < fisher_exact([[8, 32], [9 * 16, 9 * 24]]).pvalue < 0.05
    low, high = wilson(8, 40)
    assert not low <= 0.4 <= high  # its 95% interval excludes the others' share all the same
    assert monitor([_log(tmp_path / "a.jsonl", days)])["warnings"] == []
    days["03"] = (40, 6, 2)  # 15% flagged: p = 0.0017, just above 0.05 / 30
    assert monitor([_log(tmp_path / "b.jsonl", days)])["warnings"] == []
    days["03"] = (40, 5, 2)  # 12.5% flagged: p = 0.00045; 2 of 42 not assessed: p = 0.019 against 0.5%
    (warning,) = monitor([_log(tmp_path / "c.jsonl", days)])["warnings"]
    assert warning.startswith("2026-11-03: 12.5% [") and "flagged PNEUMONIA against 40.0%" in warning


def test_a_surge_of_refused_uploads_is_warned_about_not_a_drop(tmp_path) -> None:
    days = {f"{d:02d}": (40, 16, 0) for d in range(1, 11)}
    log = _log(tmp_path / "audit.jsonl", days)
    refused = {f"{d:02d}": [("corrupt", 1)] for d in range(1, 11)}  # 1 of 41 uploads a day: 2.4%
    refused["07"] = [("unsupported_compression", 14), ("corrupt", 1)]  # 15 of 55 after a change at the sender
    refused["08"] = []  # none: fewer refusals are no alarm
    with log.open("a") as f:
        for day, kinds in refused.items():
            for kind, count in kinds:
                for i in range(count):
                    line = {"time": f"2026-11-{day}T17:00:{i:02d}+00:00", "model_sha256": MODEL, "refused": kind}
                    f.write(json.dumps(line) + "\n")
    r = monitor([log])
    rows = {row["period"]: row for row in r["periods"]}
    assert rows["2026-11-07"]["refused_rate"]["value"] == pytest.approx(15 / 55)
    assert rows["2026-11-07"]["refusals"] == {"unsupported_compression": 14, "corrupt": 1}
    (warning,) = r["warnings"]
    # the other nine days: 8 of 8 x 41 + 40 = 368 uploads refused
    assert warning.startswith("2026-11-07: 15 of 55 uploads refused (27.3% [")
    assert "against 2.2% in the model's other periods (most often: unsupported_compression, corrupt)" in warning


def test_against_past_compares_only_with_earlier_periods(tmp_path) -> None:
    days = {f"{d:02d}": (40, 16, 0) for d in range(1, 9)}
    days["01"] = (40, 36, 0)  # 90% flagged on the first day, 40% after
    days["08"] = (40, 36, 0)  # and on the last
    log = _log(tmp_path / "a.jsonl", days)
    everything = monitor([log])["warnings"]
    assert [w[:10] for w in everything] == ["2026-11-01", "2026-11-08"]
    past = monitor([log], against="past")
    assert past["against"] == "past"
    # day 1 has no earlier period to differ from; day 2 (40%) differs from day 1 (90%: one day of 40 images is
    # baseline enough); from day 3 on the baseline mixes both; day 8 (90%) differs from days 1-7 (47%)
    assert [w[:10] for w in past["warnings"]] == ["2026-11-02", "2026-11-08"]
    assert "against 90.0% in the model's earlier periods" in past["warnings"][0]
    # the past never moves: adding later days leaves the earlier verdicts as they were
    days["09"] = (40, 36, 0)
    again = monitor([_log(tmp_path / "b.jsonl", days)], against="past")["warnings"]
    assert [w[:10] for w in again][:2] == ["2026-11-02", "2026-11-08"]


def test_periods_by_week_and_month_and_one_comparison_per_model(tmp_path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    _log(logs / "predictions-a.jsonl", {"30": (30, 12, 0)})  # Monday 2026-11-30: ISO week 49
    _log(logs / "predictions-b.jsonl", {"06": (30, 27, 0)}, model="cd" * 32, month="2026-12")  # Sunday, week 49
    (logs / "notes.txt").write_text("not read: only *.jsonl")
    r = monitor([logs], every="week")
    assert [(row["period"], row["flagged"]) for row in r["periods"]] == [("2026-W49", 12), ("2026-W49", 27)]
    # each model is compared only with its own periods: 40% and 90% flagged raise no shift warning
    assert r["warnings"] == [
        "2 model files answered in this log: abababababab (2026-11-30 to 2026-11-30), cdcdcdcdcdcd (2026-12-06 to "
        "2026-12-06); each is compared with itself"
    ]
    assert [row["period"] for row in monitor([logs], every="month")["periods"]] == ["2026-11", "2026-12"]


def test_refused_and_skipped_lines_of_predict_json(tmp_path) -> None:
    log = tmp_path / "predict.jsonl"
    stamp = {"time": "2026-12-06T10:00:00.000+00:00", "model_sha256": MODEL}
    lines = [
        {"image": "a.jpeg", **stamp, "label": "NORMAL", "probability": 0.1, "assessed": True},
        {"image": "b.png", **stamp, "error": "not JPEG, PNG or DICOM", "refused": "not_an_image"},
        {"image": "DICOMDIR", "skipped": "a DICOM directory, not an image"},
    ]
    log.write_text("".join(json.dumps(x) + "\n" for x in lines))
    (row,) = monitor([log])["periods"]
    assert (row["images"], row["assessed"], row["refused"], row["flagged"]) == (2, 1, 1, 0)
    assert row["refusals"] == {"not_an_image": 1} and row["reasons"] == {}


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"time": "2026-12-06T10:00:00+00:00", "label": "NOT_ASSESSED"}\nnot json\n', "line 2: not JSON"),
        ('{"label": "NORMAL", "probability": 0.1}\n', "line 1: no 'time'"),
        ('{"time": "yesterday", "label": "NORMAL", "probability": 0.1}\n', "time 'yesterday' is not ISO 8601"),
        ('{"time": "2026-12-06T10:00:00+00:00", "label": "MAYBE"}\n', "neither a label"),
        ('{"time": "2026-12-06T10:00:00+00:00", "label": "NORMAL"}\n', "a NORMAL answer without a probability"),
        ("\n", "no answers in"),
    ],
)
def test_bad_logs_are_refused_with_file_and_line(tmp_path, content, message) -> None:
    log = tmp_path / "bad.jsonl"
    log.write_text(content)
    with pytest.raises(InputError, match=message) as e:
        monitor([log])
    assert "bad.jsonl" in str(e.value)


def test_monitor_cli_table_json_files_and_exit_code(tmp_path, capsys) -> None:
    log = _log(tmp_path / "audit.jsonl", {"01": (40, 16, 0), "02": (40, 16, 0)})
    assert main(["monitor", str(log), "--out", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "2026-11-01" in out and "16 = 40.0% [" in out and "warning" not in out
    assert main(["monitor", str(log), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((tmp_path / "out" / "monitor.json").read_text())
    assert (tmp_path / "out" / "monitor.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert main(["monitor", str(log), "--fail-on-warning", "--against", "past"]) == 0  # no warning: exit 0
    capsys.readouterr()
    spike = _log(tmp_path / "spike.jsonl", {"01": (40, 16, 0), "02": (40, 16, 0), "03": (40, 38, 0)})
    assert main(["monitor", str(spike)]) == 0  # a warning is printed, the exit code says nothing by default
    assert "warning: 2026-11-03" in capsys.readouterr().out
    assert main(["monitor", str(spike), "--fail-on-warning", "--json"]) == 1  # for a scheduled job
    assert json.loads(capsys.readouterr().out)["warnings"][0].startswith("2026-11-03")
    assert main(["monitor", str(log), "--against", "future"]) == 2
    assert "--against 'future': choose all or past" in capsys.readouterr().err
    assert main(["monitor", str(log), "--every", "hour"]) == 2
    assert "--every 'hour': choose day, week or month" in capsys.readouterr().err
    assert main(["monitor", str(tmp_path / "missing")]) == 2


def test_answers_given_with_a_caution_are_counted_and_noted(tmp_path, capsys) -> None:
    log = _log(tmp_path / "audit.jsonl", {"01": (40, 16, 0), "02": (40, 16, 2)})
    caution = "the patient is older than the patients this model learnt from (1-5 years; ...)"
    lines = [json.loads(line) for line in log.read_text().splitlines()]
    for rec in lines[:10] + lines[40:45]:  # 10 answers of day 1; day 2's 2 not assessed and 3 answers
        rec["cautions"] = [caution] if rec["label"] != "NOT_ASSESSED" else []
    log.write_text("".join(json.dumps(rec) + "\n" for rec in lines))
    r = monitor([log])
    assert [(row["cautioned"], row["cautions"]) for row in r["periods"]] == [(10, {caution: 10}), (3, {caution: 3})]
    assert r["notes"] == [f"model {MODEL[:12]}: 13 of 80 answers (16.2%) came with a caution: {caution} (13)"]
    assert r["warnings"] == []  # a standing fact, not a change
    assert main(["monitor", str(log)]) == 0
    assert f"note: model {MODEL[:12]}: 13 of 80 answers" in capsys.readouterr().out


def _model_file(path: Path, sensitivity: float, specificity: float, **sizes: dict) -> tuple[Path, str]:
    """A model file whose stored operating point promises ``sensitivity``/``specificity`` (on ``sizes``: images,
    effective_images); its SHA-256."""
    from torch import nn

    from pneumolab.models.checkpoint import save_model_file

    op = {"split": "val", "views": 8, "sensitivity": sensitivity, "specificity": specificity, **sizes}
    meta = {"model_name": "x", "model_kwargs": {}, "preprocessing": {}, "classes": [], "operating_point": op}
    save_model_file(path, nn.Linear(1, 1), meta)
    return path, file_sha256(path)


def _answers_with_outcomes(tmp_path: Path, model: str) -> tuple[Path, Path]:
    """Six days of 40 answers, 20 of them pneumonia by outcome; every day 19 of 20 flagged and, but on day 6,
    19 of 20 normals cleared (day 6: 12 of 20). Plus a not-assessed image with an outcome and an outcome whose answer
    is in no log."""
    lines, outcomes = [], ["request_id,label"]
    for day in range(1, 7):
        for i in range(40):
            rid = f"d{day}i{i}"
            truth = "PNEUMONIA" if i < 20 else "NORMAL"
            wrong = i in (0, 20) or (day == 6 and 20 <= i < 28)
            said = truth if not wrong else {"PNEUMONIA": "NORMAL", "NORMAL": "PNEUMONIA"}[truth]
            t = f"2026-11-{day:02d}T09:00:{i:02d}+00:00"
            lines.append({"time": t, "model_sha256": model, "request_id": rid, "label": said, "probability": 0.5})
            outcomes.append(f"{rid},{truth.lower() if i % 2 else int(truth == 'PNEUMONIA')}")  # names or 0/1
    na = {"time": "2026-11-06T10:00:00+00:00", "model_sha256": model, "request_id": "na", "label": "NOT_ASSESSED"}
    lines.append(na)
    outcomes += ["na,NORMAL", "elsewhere,PNEUMONIA"]
    log = tmp_path / "audit.jsonl"
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    (tmp_path / "outcomes.csv").write_text("\n".join(outcomes) + "\n")
    return log, tmp_path / "outcomes.csv"


def test_outcomes_give_sensitivity_and_specificity_and_drops_are_warned(tmp_path) -> None:
    model, sha = _model_file(tmp_path / "model.pt", sensitivity=0.95, specificity=0.95)
    log, outcomes = _answers_with_outcomes(tmp_path, sha)
    r = monitor([log], outcomes=outcomes, models=[model])
    day1, day6 = r["periods"][0], r["periods"][-1]
    assert (day1["tp"], day1["fn"], day1["tn"], day1["fp"]) == (19, 1, 19, 1)
    assert day1["sensitivity"] == {"value": 0.95, "ci": pytest.approx(list(wilson(19, 20))), "n": 20}
    assert day6["specificity"]["value"] == pytest.approx(12 / 20) and day6["outcome_not_assessed"] == 1
    assert r["outcomes"]["outcomes"] == 242 and r["outcomes"]["unmatched"] == 1 and r["outcomes"]["key"] == "request_id"
    (pooled,) = r["outcomes"]["models"]
    assert pooled["sensitivity"]["value"] == pytest.approx(114 / 120) and pooled["not_assessed"] == 1
    assert pooled["specificity"]["value"] == pytest.approx(107 / 120)
    # a file that stores no sample size: the rates, no intervals
    assert pooled["promised"] == {"split": "val", "views": 8, "sensitivity": 0.95, "specificity": 0.95, "ci95": {}}
    # day 6 against the other days (Fisher, one-sided, 0.05 / (5 kinds x 6 days)); the pooled specificity against
    # the promise (a file with no sample size: binomial, 107 of 120 against 0.95: p = 0.007 < 0.05 / 2); the
    # sensitivity keeps its promise
    day_warning, promise_warning = r["warnings"]
    assert (
        day_warning.startswith("2026-11-06: specificity 60.0% [")
        and "against 95.0% in the model's other" in day_warning
    )
    assert promise_warning.startswith(f"model {sha[:12]}: specificity 89.2% [") and (
        "promised (fitted on 8 augmented views of each validation image; its sample size is not stored: taken as "
        "exact)" in promise_warning
    )
    # A promise measured on 135 normals is itself uncertain: 107 of 120 against 128 of 135 (Fisher, one-sided:
    # p = 0.075) is no evidence at 0.025; against views worth 1000 images, 950 of 1000 (p = 0.012), it is.
    for sizes, warned in (({"images": {"NORMAL": 135}}, False), ({"effective_images": {"NORMAL": 1000.0}}, True)):
        folder = tmp_path / str(warned)
        folder.mkdir()
        sized, sized_sha = _model_file(folder / "model.pt", 0.95, 0.95, **sizes)
        r = monitor([_answers_with_outcomes(folder, sized_sha)[0]], outcomes=outcomes, models=[sized])
        said = [w for w in r["warnings"] if w.startswith(f"model {sized_sha[:12]}: specificity 89.2%")]
        assert len(said) == warned and all(
            "(fitted on 8 augmented views of each validation image; worth 1000 NORMAL images)" in w for w in said
        )
    # a model whose promise the site keeps: no promise warning; a model file of other answers: said so
    kept, _ = _model_file(tmp_path / "kept.pt", sensitivity=0.9, specificity=0.85)
    r = monitor([log], outcomes=outcomes, models=[kept])
    assert r["warnings"][0].startswith("2026-11-06: specificity") and r["warnings"][1] == (
        f"--model {kept}: no answer in these logs came from it (SHA-256 kept.pt {file_sha256(kept)[:12]})"
    )
    assert len(r["warnings"]) == 2


def _onnx_file(path: Path, sensitivity: float, specificity: float) -> tuple[Path, str]:
    """A one-node ONNX file carrying the metadata ``pneumolab export`` writes (an operating point); its SHA-256."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("image", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1])
    model = helper.make_model(helper.make_graph([helper.make_node("Identity", ["image"], ["logits"])], "g", [x], [y]))
    op = {"split": "val", "views": 8, "sensitivity": sensitivity, "specificity": specificity}
    helper.set_model_props(model, {"pneumolab": json.dumps({"operating_point": op})})
    onnx.save(model, str(path))
    return path, file_sha256(path)


def test_a_served_onnx_export_is_checked_against_its_own_promise(tmp_path) -> None:
    """The service logs the SHA-256 of the file it loaded: with --backend onnx, the .onnx file, not model.pt."""
    run = tmp_path / "run"
    run.mkdir()
    _model_file(run / "model.pt", sensitivity=0.5, specificity=0.5)  # a promise the answers keep
    onnx_path, sha = _onnx_file(run / "model.onnx", sensitivity=0.95, specificity=0.95)  # exported after calibrate
    log, outcomes = _answers_with_outcomes(tmp_path, sha)
    for target in (run, onnx_path):  # the run folder holds both files; or the .onnx named alone
        r = monitor([log], outcomes=outcomes, models=[target])
        assert r["outcomes"]["models"][0]["promised"]["specificity"] == 0.95
        assert r["warnings"][1].startswith(f"model {sha[:12]}: specificity 89.2% [")
    (tmp_path / "other.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(InputError, match=r"other\.onnx: not a readable ONNX file"):
        monitor([log], outcomes=outcomes, models=[tmp_path / "other.onnx"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("request_id,label\na,NORMAL\na,PNEUMONIA\n", "line 3: request_id a has both outcomes"),
        ("request_id,label\na,maybe\n", "line 2: label 'maybe' is not NORMAL/PNEUMONIA"),
        ("id,label\na,NORMAL\n", "needs the columns request_id,label"),
        ("request_id,label\nnot-in-the-log,NORMAL\n", "none of its 1 request_ids is in these logs"),
    ],
)
def test_bad_outcomes_are_refused_with_file_and_line(tmp_path, content, message) -> None:
    log, _ = _answers_with_outcomes(tmp_path, MODEL)
    (tmp_path / "bad.csv").write_text(content)
    with pytest.raises(InputError, match=message):
        monitor([log], outcomes=tmp_path / "bad.csv")


def _normal_answers(path: Path, model: str, probabilities: list[float], flagged: int = 10) -> Path:
    """A day's log: NORMAL answers with these probabilities, and ``flagged`` PNEUMONIA answers (P 0.9)."""
    answers = [("NORMAL", p) for p in probabilities] + [("PNEUMONIA", 0.9)] * flagged
    lines = [
        {
            "time": f"2026-11-02T09:{i // 60:02d}:{i % 60:02d}+00:00",
            "model_sha256": model,
            "label": lab,
            "probability": p,
        }
        for i, (lab, p) in enumerate(answers)
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_normal_answers_less_certain_than_on_validation_are_warned_without_labels(tmp_path, capsys) -> None:
    from torch import nn

    from pneumolab.models.checkpoint import save_model_file

    # The reference: 20 validation images called NORMAL (P 0.01-0.20 at temperature 2, threshold 0.5) and 5 above
    # the threshold, which a site's NORMAL answers are not compared with.
    ref = np.array([0.01 * (i + 1) for i in range(20)] + [0.6, 0.7, 0.8, 0.9, 0.95])
    margins = 2 * np.log(ref / (1 - ref))  # sigmoid(margin / 2) = ref
    meta = {"model_name": "x", "model_kwargs": {}, "preprocessing": {}, "classes": [], "threshold": 0.5}
    meta |= {"temperature": 2.0, "reference_scores": score_reference(np.stack([0 * margins, margins], 1), "val")}
    np.testing.assert_allclose(reference_normal_calls(meta), ref[:20], atol=1e-4)
    save_model_file(tmp_path / "model.pt", nn.Linear(1, 1), meta)
    sha = file_sha256(tmp_path / "model.pt")

    # 30 NORMAL answers, every one above every reference image: U = 600 of 30 x 20, no ties; the normal
    # approximation with continuity correction gives z = (600 - 300 - 0.5) / sqrt(30 x 20 x 51 / 12)
    shifted = _normal_answers(tmp_path / "shifted.jsonl", sha, [0.2 + 0.01 * i + 0.001 for i in range(30)])
    r = monitor([shifted], models=[tmp_path / "model.pt"])
    (row,) = r["normal_calls"]
    z = (600 - 300 - 0.5) / math.sqrt(30 * 20 * 51 / 12)
    assert row["p_value"] == pytest.approx(0.5 * math.erfc(z / math.sqrt(2)), rel=1e-6)
    assert (row["answers"], row["reference"], row["reference_split"]) == (30, 20, "val")
    assert row["median"] == pytest.approx(0.346) and row["reference_median"] == pytest.approx(0.105, abs=1e-4)
    (warning,) = r["warnings"]
    assert warning.startswith(f"model {sha[:12]}: its 30 NORMAL answers are less certain than on the 20 validation")
    assert "median P(pneumonia) 0.346 against 0.105" in warning and "(pneumolab calibrate)" in warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the log-scale panel draws without matplotlib's complaints
        assert main(["monitor", str(shifted), "--model", str(tmp_path / "model.pt"), "--out", str(tmp_path / "m")]) == 0
    out = capsys.readouterr().out
    (day,) = json.loads((tmp_path / "m" / "monitor.json").read_text())["periods"]
    assert day["normal_median"] == pytest.approx(0.346) and (tmp_path / "m" / "monitor.png").stat().st_size > 1000
    assert f"model {sha[:12]}: 30 NORMAL answers, median P(pneumonia) 0.346; on its validation images called " in out
    assert "NORMAL 0.105 (20 images), one-sided p = 1.5e-09" in out

    # answers like the reference: no warning; too few NORMAL answers to judge: none either, whatever the p-value
    alike = _normal_answers(tmp_path / "alike.jsonl", sha, [0.01 * (i + 1) + 0.0005 for i in range(20)] * 2)
    r = monitor([alike], models=[tmp_path / "model.pt"])
    assert r["normal_calls"][0]["p_value"] > 0.3 and r["warnings"] == []
    few = _normal_answers(tmp_path / "few.jsonl", sha, [0.45] * 19)
    r = monitor([few], models=[tmp_path / "model.pt"])
    assert r["normal_calls"][0]["p_value"] < 1e-6 and r["warnings"] == []
    # a model file made before the reference was kept: said so, not checked
    old, old_sha = _model_file(tmp_path / "old.pt", 0.95, 0.95)
    r = monitor([_normal_answers(tmp_path / "old.jsonl", old_sha, [0.4] * 30)], models=[old])
    assert r["normal_calls"] == [] and r["warnings"] == []
    assert r["notes"] == [
        f"model {old_sha[:12]} ({old}) keeps no reference scores (made by an older pneumolab): "
        "retrain it to compare its NORMAL answers with its validation images'"
    ]


def test_a_reference_keeps_at_most_its_cap_of_sorted_margins() -> None:
    from pneumolab.evaluation.calibration import REFERENCE_MAX

    logits = np.stack([np.zeros(5001), np.linspace(5, -5, 5001)], 1)  # margins from 5 down to -5
    ref = score_reference(logits, "val")
    assert ref["images"] == 5001 and len(ref["margins"]) == REFERENCE_MAX
    assert ref["margins"][0] == -5.0 and ref["margins"][-1] == 5.0 and ref["margins"] == sorted(ref["margins"])
    assert score_reference(logits[:3], "site") == {"split": "site", "images": 3, "margins": [4.996, 4.998, 5.0]}
