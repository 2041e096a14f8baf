"""How often the ECE's 95% bootstrap interval holds the true ECE, by simulation (no training).

Usage::

    python benchmarks/ece_interval.py runs/external/runs/fast-s0/eval/external/predictions.csv [--reps 300]

The probabilities of a ``predictions.csv`` (an ``evaluate`` output) set the shape of the simulated models' scores:
each replicate draws as many images from them, outcomes ``y ~ Bernoulli(g_k(p))`` with ``g_k`` scaling the logit by
``k`` (1: calibrated, < 1: over-confident), and scores the percentile interval and the basic (reflected) interval
of ``metrics_with_ci``'s bootstrap against the true ECE of ``g_k`` (from 2 million draws).
"""

from __future__ import annotations

import argparse
import csv

import numpy as np

from pneumolab.evaluation.metrics import _weighted_metrics, bootstrap_weights, compute_metrics


def _miscalibrate(p: np.ndarray, k: float) -> np.ndarray:
    z = np.log(np.clip(p, 1e-6, 1 - 1e-6) / (1 - np.clip(p, 1e-6, 1 - 1e-6)))
    return 1 / (1 + np.exp(-k * z))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("predictions", help="an evaluate predictions.csv (its probability column)")
    ap.add_argument("--reps", type=int, default=300)
    ap.add_argument("--boot", type=int, default=1000)
    args = ap.parse_args()
    with open(args.predictions, newline="") as f:
        scores = np.array([float(r["probability"]) for r in csv.DictReader(f)])
    n, rng = len(scores), np.random.default_rng(0)
    print(f"| logit scale k | true ECE | mean estimate ({n} images) | percentile covers | basic covers |")
    print("|---|---|---|---|---|")
    for k in (1.0, 0.8, 0.6):
        big = rng.choice(scores, 2_000_000)
        true = compute_metrics(big, (rng.random(big.size) < _miscalibrate(big, k)).astype(int))["ece"]
        hits, estimates = np.zeros(2), []
        for rep in range(args.reps):
            p = rng.choice(scores, n)
            y = (rng.random(n) < _miscalibrate(p, k)).astype(int)
            ece = compute_metrics(p, y)["ece"]
            boot = _weighted_metrics(p, y, bootstrap_weights(np.arange(n), args.boot, rep), 0.5)["ece"]
            lo, hi = np.quantile(boot, [0.025, 0.975])
            hits += [lo <= true <= hi, max(2 * ece - hi, 0) <= true <= max(2 * ece - lo, 0)]
            estimates.append(ece)
        cover = hits / args.reps
        print(f"| {k} | {true:.4f} | {np.mean(estimates):.4f} | {cover[0]:.2f} | {cover[1]:.2f} |")


if __name__ == "__main__":
    main()
