"""Does `pneumolab monitor` see a real change of site? Checked with real answers of a real model.

`benchmarks/monitor_alarms.py` measures the warnings on simulated counts. Here the answers are the model's own: the
stored model answers every validation image of its training data (the site it was made for) and every image of an
external set (another site: the official Kermany test split, whose normals the model calls pneumonia more often).
Simulated logs of `--before` days drawn from the validation answers, then `--after` days drawn from the external
answers (`--images` a day, with replacement); `monitor`'s warnings (`--against past`, as a daily job runs it):

- false alarms: logs with a warning on a day before the change;
- detection: logs with a warning on the first changed day, and on any of the first three.

No labels are used: only what the service logs (label, probability, not assessed).

    .venv/bin/python benchmarks/monitor_site_shift.py --run runs/train/fast --data runs/data/kermany \
        --external ../shared/data/chest_xray_external --before 20 --after 10 --images 50 --repeats 1000
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from pneumolab.data.manifest import Manifest
from pneumolab.data.sources import image_files
from pneumolab.inference.predictor import Predictor
from pneumolab.site_adaptation.monitor import Period, period_warnings


def answers(predictor: Predictor, paths: list[Path]) -> list[dict[str, Any]]:
    """Each image's answer as the service logs it (guard on): label and probability."""
    out = []
    for p in paths:
        a = predictor.predict(p.read_bytes(), name=p.name)
        out.append({"label": a.label, "probability": a.probability})
    return out


def day(name: str, pool: list[dict[str, Any]], rng: np.random.Generator, n: int) -> Period:
    """One day's period of ``n`` answers drawn from ``pool``."""
    p = Period(name, "m", name, name)
    for i in rng.integers(0, len(pool), n):
        p.add(pool[i])
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
    args = ap.parse_args()

    predictor = Predictor.load(args.run)
    manifest = Manifest.load(args.data)
    val = answers(predictor, [manifest.root / manifest.records[i].path for i in manifest.indices("val")])
    ext = answers(predictor, image_files(args.external)[0])
    print(summary("validation (the training site)", val))
    print(summary(f"{args.external} (another site)", ext))

    rng = np.random.default_rng(args.seed)
    false_alarm = first = first3 = 0
    for _ in range(args.repeats):
        days = [day(f"d{d:03d}", val, rng, args.images) for d in range(args.before)]
        days += [day(f"d{args.before + d:03d}", ext, rng, args.images) for d in range(args.after)]
        warned = {w.split(":")[0] for w in period_warnings(days, against="past")}
        false_alarm += any(f"d{d:03d}" in warned for d in range(args.before))
        first += f"d{args.before:03d}" in warned
        first3 += any(f"d{args.before + d:03d}" in warned for d in range(3))
    n = args.repeats
    print(f"{args.before} days of the training site, then {args.after} of the other, {args.images} a day, {n} logs")
    print("| share of logs | value |")
    print("|---|---|")
    print(f"| a warning before the change (false alarm) | {false_alarm / n:.3f} |")
    print(f"| a warning on the first changed day | {first / n:.3f} |")
    print(f"| a warning on one of the first three changed days | {first3 / n:.3f} |")


if __name__ == "__main__":
    main()
