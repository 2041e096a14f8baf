"""Does `pneumolab monitor` see a real change of site? Checked with real answers of a real model.

`benchmarks/monitor_alarms.py` measures the warnings on simulated counts. Here the answers are the model's own: the
stored model answers every validation image of its training data (the site it was made for) and every image of an
external set (another site: the official Kermany test split, whose normals the model calls pneumonia more often).
Simulated logs of `--before` days drawn from the validation answers, then `--after` days drawn from the external
answers (`--images` a day, with replacement); `monitor`'s warnings (`--against past`, as a daily job runs it):

- false alarms: logs with a warning on a day before the change;
- detection: logs with a warning on the first changed day, and on any of the first three.

First without labels (only what the service logs: label, probability, not assessed), then with the confirmed
outcomes of a share of the answers (`--labeled`, `monitor --outcomes`): the same logs' warnings, and the check of
the pooled sensitivity and specificity against the model's stored operating point (`monitor --model`) for a model
installed at either site and watched for `--days` days (at the training site a specificity warning is a false
alarm; its sensitivity on the clean images is below what the augmented views promised, so that warning is right).
Last, without labels again, the check of a model's NORMAL answers against its validation images' (`monitor --model`):
at the other site against the model file's stored reference; at the training site, where the stored reference holds
the very images the days would be drawn from, each log splits the validation patients in two halves, one the
reference and the other the site (a false alarm there is one a new site like the training site would see). These
days are drawn without replacement (a resampled image would count as new evidence: with replacement the false
alarms rose from ~6% to ~9-10%), so only as many days as the images allow in every log (`-` beyond).

    .venv/bin/python benchmarks/monitor_site_shift.py --run runs/train/fast --data runs/data/kermany \
        --external ../shared/data/chest_xray_external --before 20 --after 10 --images 50 --repeats 1000 \
        --labeled 0.2 --days 1 3 5 10
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from pneumolab.data.manifest import Manifest
from pneumolab.data.sources import image_files
from pneumolab.inference.predictor import Predictor
from pneumolab.site_adaptation.monitor import (
    MIN_IMAGES,
    Period,
    merged,
    model_files,
    normal_call_summary,
    normal_call_test,
    outcome_summary,
    period_warnings,
)


def answers(predictor: Predictor, paths: list[Path], labels: list[str], patients: list[str]) -> list[dict[str, Any]]:
    """Each image's answer as the service logs it (guard on): label and probability; its true label and patient."""
    out = []
    for p, truth, patient in zip(paths, labels, patients, strict=True):
        a = predictor.predict(p.read_bytes(), name=p.name)
        out.append({"label": a.label, "probability": a.probability, "_outcome": truth, "_patient": patient})
    return out


def distinct_days(pool: list[dict[str, Any]], rng: np.random.Generator, k: int, n: int, model: str) -> list[Period]:
    """``k`` days of ``n`` answers, each answer of ``pool`` at most once (``k * n <= len(pool)``), no outcomes."""
    picks = rng.permutation(len(pool))[: k * n]
    days = [Period(f"d{d:03d}", model, "", "") for d in range(k)]
    for j, i in enumerate(picks):
        days[j // n].add({key: v for key, v in pool[i].items() if key != "_outcome"})
    return days


def normal_probabilities(days: list[Period]) -> np.ndarray:
    return np.array([v for d in days for v in d.normal_probabilities])


def day(
    name: str, pool: list[dict[str, Any]], rng: np.random.Generator, n: int, labeled: float, model: str = "m"
) -> Period:
    """One day's period of ``n`` answers drawn from ``pool``, a ``labeled`` share of them with their outcome."""
    p = Period(name, model, name, name)
    for i in rng.integers(0, len(pool), n):
        answer = dict(pool[i])
        if rng.random() >= labeled:
            del answer["_outcome"]
        p.add(answer)
    return p


def summary(name: str, pool: list[dict[str, Any]]) -> str:
    labels = [a["label"] for a in pool]
    na, flagged = labels.count("NOT_ASSESSED"), labels.count("PNEUMONIA")
    assessed = len(labels) - na
    return (
        f"{name}: {len(labels)} images, {na} not assessed ({100 * na / len(labels):.1f}%), {flagged} of {assessed} "
        f"assessed flagged PNEUMONIA ({100 * flagged / max(assessed, 1):.1f}%)"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="run folder or model.pt")
    ap.add_argument("--data", type=Path, required=True, help="its prepared dataset (the validation split is read)")
    ap.add_argument("--external", type=Path, required=True, help="a folder of another site's images")
    ap.add_argument("--before", type=int, default=20, help="days of the training site's answers")
    ap.add_argument("--after", type=int, default=10, help="days of the other site's answers")
    ap.add_argument("--images", type=int, default=50, help="answers a day")
    ap.add_argument("--repeats", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--labeled", type=float, default=0.2, help="share of answers with a confirmed outcome")
    ap.add_argument("--days", type=int, nargs="+", default=[1, 3, 5, 10], help="days watched for the promise check")
    args = ap.parse_args()

    predictor = Predictor.load(args.run)
    files = merged(model_files([args.run]))  # read once: the checks below run thousands of times
    manifest = Manifest.load(args.data)
    val_records = [manifest.records[i] for i in manifest.indices("val")]
    paths, labels = [manifest.root / r.path for r in val_records], [r.label for r in val_records]
    val = answers(predictor, paths, labels, [r.patient_id for r in val_records])
    ext_paths = image_files(args.external)[0]
    ext = answers(predictor, ext_paths, [p.parent.name for p in ext_paths], [p.name for p in ext_paths])
    print(summary("validation (the training site)", val))
    print(summary(f"{args.external} (another site)", ext))

    rng = np.random.default_rng(args.seed)
    n = args.repeats
    print(f"{args.before} days of the training site, then {args.after} of the other, {args.images} a day, {n} logs")
    print("| share of logs | without outcomes | with the outcomes of a share of " + f"{args.labeled:g} |")
    print("|---|---|---|")
    counts = {False: [0, 0, 0], True: [0, 0, 0]}
    for _ in range(n):
        days = [day(f"d{d:03d}", val, rng, args.images, args.labeled) for d in range(args.before)]
        days += [day(f"d{args.before + d:03d}", ext, rng, args.images, args.labeled) for d in range(args.after)]
        for outcomes, c in counts.items():
            warned = {w.split(":")[0] for w in period_warnings(days, against="past", outcomes=outcomes)}
            c[0] += any(f"d{d:03d}" in warned for d in range(args.before))
            c[1] += f"d{args.before:03d}" in warned
            c[2] += any(f"d{args.before + d:03d}" in warned for d in range(3))
    for i, what in enumerate(("before the change (false alarm)", "on the first changed day", "on one of the first 3")):
        print(f"| a warning {what} | {counts[False][i] / n:.3f} | {counts[True][i] / n:.3f} |")

    print(f"\nThe model installed at one site, {args.labeled:g} of its {args.images} answers a day with an outcome,")
    print(f"against its stored operating point {predictor.meta.get('operating_point')}; share of {n} logs warned:")
    print("| days watched | training site: sensitivity / specificity below | other site: the same |")
    print("|---|---|---|")
    sha = predictor.model_sha256
    for k in args.days:
        cells = []
        for pool in (val, ext):
            warned = {"sensitivity": 0, "specificity": 0}
            for _ in range(n):
                days = [day(f"d{d:03d}", pool, rng, args.images, args.labeled, sha) for d in range(k)]
                said = " ".join(w for w in outcome_summary(days, files)[1] if w.startswith("model "))
                for name in warned:
                    warned[name] += f": {name} " in said
            cells.append(f"{warned['sensitivity'] / n:.3f} / {warned['specificity'] / n:.3f}")
        print(f"| {k} | {cells[0]} | {cells[1]} |")

    print(
        f"\nWithout labels: its NORMAL answers against the reference's, {args.images} answers a day; share of {n} logs"
    )
    print("| days watched | training site (half of the validation patients against the other half) | other site |")
    print("|---|---|---|")
    patients = sorted({a["_patient"] for a in val})
    for k in args.days:
        warned, tried = [0, 0], [0, 0]
        for _ in range(n):
            half = set(rng.permutation(patients)[: len(patients) // 2])
            ref = np.array([a["probability"] for a in val if a["_patient"] in half and a["label"] == "NORMAL"])
            site = [a for a in val if a["_patient"] not in half]
            if k * args.images <= len(site):
                said = normal_probabilities(distinct_days(site, rng, k, args.images, sha))
                warned[0] += len(said) >= MIN_IMAGES and normal_call_test(said, ref)["p_value"] < 0.05
                tried[0] += 1
            if k * args.images <= len(ext):
                warned[1] += bool(normal_call_summary(distinct_days(ext, rng, k, args.images, sha), files)[1])
                tried[1] += 1
        cells = [f"{w / n:.3f}" if t == n else "-" for w, t in zip(warned, tried, strict=True)]  # every log, or none
        print(f"| {k} | {cells[0]} | {cells[1]} |")


if __name__ == "__main__":
    main()
