"""How often `pneumolab monitor` warns when nothing changed, and how often it sees a change that happened.

Simulated logs of one model: `--periods` days of `--images` uploads each, every upload refused with probability
`--refused` (undecodable files), the rest not assessed with probability 0.5% (the feature guard's rate at the
training site) and the assessed ones flagged PNEUMONIA with probability `--flagged`. With no change, any warning is
a false alarm: the share of logs with at least one is the family-wise false-alarm rate that the Bonferroni
correction is meant to hold at 5%. Then one day changes (its flagged, not-assessed or refused share) and the share
of logs in which that day is warned about is the power.

    .venv/bin/python benchmarks/monitor_alarms.py --periods 30 --images 100 --repeats 1000 [--against past]
"""

from __future__ import annotations

import argparse

import numpy as np

from pneumolab.site_adaptation.monitor import EXPECTED_NOT_ASSESSED, Period, period_warnings


def simulate(rng: np.random.Generator, args: argparse.Namespace, changed: dict[str, float]) -> list:
    """One log's periods; ``changed``: the last day's ``flagged``, ``not_assessed`` and/or ``refused`` probability."""
    usual = {"flagged": args.flagged, "not_assessed": EXPECTED_NOT_ASSESSED, "refused": args.refused}
    periods = []
    for d in range(args.periods):
        p = {**usual, **changed} if d == args.periods - 1 else usual
        refused = int(rng.binomial(args.images, p["refused"]))
        not_assessed = int(rng.binomial(args.images - refused, p["not_assessed"]))
        assessed = args.images - refused - not_assessed
        flagged = int(rng.binomial(assessed, p["flagged"]))
        day = f"2026-11-{d + 1:02d}"
        periods.append(Period(day, "m", day, day, assessed, flagged, not_assessed, refused))
    return periods


def rate(rng, args, changed: dict[str, float], kind: str | None) -> float:
    """Share of simulated logs with a warning (``kind``: only warnings about the changed last day of that kind)."""
    hits = 0
    for _ in range(args.repeats):
        warns = period_warnings(simulate(rng, args, changed), args.against)
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
    ap.add_argument("--refused", type=float, default=0.02, help="share of uploads refused when nothing changes")
    ap.add_argument("--repeats", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--against", choices=["all", "past"], default="all", help="as `pneumolab monitor --against`")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    print(
        f"{args.periods} periods x {args.images} uploads, {args.refused:.0%} refused, {args.flagged:.0%} flagged, "
        f"{args.repeats} simulated logs, each period against the model's "
        f"{'earlier' if args.against == 'past' else 'other'} periods"
    )
    print("| what happened | share of logs warned |")
    print("|---|---|")
    print(f"| nothing (false alarm, any warning) | {rate(rng, args, {}, None):.3f} |")
    for p in (0.5, 0.55, 0.6, 0.7):
        print(f"| the last day {p:.0%} flagged | {rate(rng, args, {'flagged': p}, 'flagged PNEUMONIA'):.3f} |")
    for p in (0.02, 0.05, 0.1):
        print(f"| the last day {p:.0%} not assessed | {rate(rng, args, {'not_assessed': p}, 'not assessed'):.3f} |")
    for p in (0.05, 0.1, 0.2):
        print(f"| the last day {p:.0%} refused | {rate(rng, args, {'refused': p}, 'uploads refused'):.3f} |")


if __name__ == "__main__":
    main()
