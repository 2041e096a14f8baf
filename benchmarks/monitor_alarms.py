"""How often `pneumolab monitor` warns when nothing changed, and how often it sees a change that happened.

Simulated logs of one model: `--periods` days of `--images` answers each, every answer flagged PNEUMONIA with
probability `--flagged` and not assessed with probability 0.5% (the feature guard's rate at the training site).
With no change, any warning is a false alarm: the share of logs with at least one is the family-wise false-alarm
rate that the Bonferroni correction is meant to hold at 5%. Then one day changes (its flagged share, or its
not-assessed share) and the share of logs in which that day is warned about is the power.

    .venv/bin/python benchmarks/monitor_alarms.py --periods 30 --images 100 --repeats 1000
"""

from __future__ import annotations

import argparse

import numpy as np

from pneumolab.site_adaptation.monitor import EXPECTED_NOT_ASSESSED, Period, period_warnings


def simulate(rng: np.random.Generator, days: int, images: int, flagged: float, changed: dict[str, float]) -> list:
    """One log's periods; ``changed``: the last day's ``flagged`` and/or ``not_assessed`` probability."""
    periods = []
    for d in range(days):
        last = d == days - 1
        p_na = changed.get("not_assessed", EXPECTED_NOT_ASSESSED) if last else EXPECTED_NOT_ASSESSED
        p_fl = changed.get("flagged", flagged) if last else flagged
        not_assessed = int(rng.binomial(images, p_na))
        assessed = images - not_assessed
        day = f"2026-11-{d + 1:02d}"
        flagged_n = int(rng.binomial(assessed, p_fl))
        periods.append(Period(day, "m", day, day, assessed=assessed, flagged=flagged_n, not_assessed=not_assessed))
    return periods


def rate(rng, args, changed: dict[str, float], kind: str | None) -> float:
    """Share of simulated logs with a warning (``kind``: only warnings about the changed last day of that kind)."""
    hits = 0
    for _ in range(args.repeats):
        warns = period_warnings(simulate(rng, args.periods, args.images, args.flagged, changed))
        last = f"2026-11-{args.periods:02d}:"
        if kind is None:
            hits += bool(warns)
        else:
            hits += any(w.startswith(last) and kind in w for w in warns)
    return hits / args.repeats


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--periods", type=int, default=30)
    ap.add_argument("--images", type=int, default=100, help="answers per period")
    ap.add_argument("--flagged", type=float, default=0.4, help="share flagged PNEUMONIA when nothing changes")
    ap.add_argument("--repeats", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print(f"{args.periods} periods x {args.images} images, {args.flagged:.0%} flagged, {args.repeats} simulated logs")
    print("| what happened | share of logs warned |")
    print("|---|---|")
    print(f"| nothing (false alarm, any warning) | {rate(rng, args, {}, None):.3f} |")
    for p in (0.5, 0.55, 0.6, 0.7):
        print(f"| the last day {p:.0%} flagged | {rate(rng, args, {'flagged': p}, 'flagged PNEUMONIA'):.3f} |")
    for p in (0.02, 0.05, 0.1):
        print(f"| the last day {p:.0%} not assessed | {rate(rng, args, {'not_assessed': p}, 'not assessed'):.3f} |")


if __name__ == "__main__":
    main()
