"""The operating point fitted on augmented validation views vs on the validation images, scored on an external set.

Usage::

    python benchmarks/calibration_views.py --external runs/external/external_data runs/external/runs/fast-s* \
        [--views 0 1 8] [--policies "sensitivity>=0.95" "sensitivity>=0.9"] [--augment border_erase=0] \
        [--out runs/calibration_views]

For finished runs (no training): for each number of views K (0: the validation images as they are; K > 0: K
copies of each under the run's own training augmentation, ``calibration_views=K``), the temperature is fitted
and the threshold chosen on those validation logits only, then sensitivity, specificity, accuracy and ECE are
measured on the external set at them. Nothing is chosen on the external set: the values of K are compared there.
``--augment KEY=VALUE`` changes the views' augmentation (not the model's training), to see which part of it matters.
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from pneumolab.config import load_run_config
from pneumolab.data.manifest import Manifest
from pneumolab.data.transforms import Preprocessing
from pneumolab.evaluation.calibration import apply_temperature, fit_temperature
from pneumolab.evaluation.metrics import metrics_with_ci
from pneumolab.evaluation.predict import predict_logits, validation_logits, view_targets
from pneumolab.evaluation.thresholds import choose_threshold
from pneumolab.models.checkpoint import load_model_file

KEYS = ("sensitivity", "specificity", "accuracy", "ece")


def score(
    run: Path, external: Path, views: list[int], policies: list[str], augment: dict[str, Any]
) -> dict[str, dict[str, float]]:
    """``{"K=.. policy": {temperature, threshold, sensitivity, specificity, accuracy, ece}}`` on the external set."""
    model, meta = load_model_file(run / "model.pt")
    cfg, pre = load_run_config(run), Preprocessing.from_meta(meta)
    policy_of_views = cfg.data.augment.model_copy(update=augment)
    data = cfg.data.data_dir
    manifest, ext = Manifest.load(data), Manifest.load(external)
    val, ext_rows = manifest.indices("val"), ext.indices("test")
    ext_logits = torch.from_numpy(predict_logits(model, pre, ext, ext_rows, external / "cache"))
    ext_y = np.array([ext.records[i].target for i in ext_rows])
    groups = np.array([ext.records[i].patient_id for i in ext_rows])
    out = {}
    for k in views:
        logits = validation_logits(model, pre, manifest, val, data / "cache", augment=policy_of_views, views=k)
        y = view_targets(manifest, val, len(logits))
        t = fit_temperature(torch.from_numpy(logits), torch.from_numpy(y))
        val_prob = apply_temperature(torch.from_numpy(logits), t).numpy()
        ext_prob = apply_temperature(ext_logits, t).numpy()
        for policy in policies:
            thr = choose_threshold(val_prob, y, policy)["threshold"]
            m = metrics_with_ci(ext_prob, ext_y, groups, thr, n_boot=1000)  # 95% CIs, patient bootstrap
            point = {key: m[key]["value"] for key in KEYS}
            ci = {f"{key}_ci": [m[key]["ci_low"], m[key]["ci_high"]] for key in KEYS}
            out[f"K={k} {policy}"] = {"temperature": t, "threshold": thr, **point, **ci}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", type=Path)
    ap.add_argument("--external", type=Path, required=True, help="an indexed external set (its test split)")
    ap.add_argument("--views", nargs="+", type=int, default=[0, 1, 8])
    ap.add_argument("--policies", nargs="+", default=["sensitivity>=0.95", "sensitivity>=0.9"])
    ap.add_argument("--augment", nargs="*", default=[], help="KEY=VALUE changes to the views' augmentation")
    ap.add_argument("--out", type=Path, default=None, help="folder for results.json")
    args = ap.parse_args()
    augment = {k: yaml.safe_load(v) for k, v in (a.split("=", 1) for a in args.augment)}
    results = {run.name: score(run, args.external, args.views, args.policies, augment) for run in args.runs}
    print(f"{len(results)} runs; median (min-max); temperature and threshold fitted on validation (K views)")
    print("| validation views K | policy | temperature | ext. sens. | ext. spec. | ext. acc. | ext. ECE |")
    print("|---|---|---|---|---|---|---|")
    for key in next(iter(results.values())):
        cells = []
        for metric in ("temperature", *KEYS):
            v = [r[key][metric] for r in results.values()]
            cells.append(f"{statistics.median(v):.3f} ({min(v):.3f}-{max(v):.3f})")
        k, policy = key.split(" ", 1)
        print(f"| {k[2:]} | `{policy}` | " + " | ".join(cells) + " |")
    print("\nPer model, with patient-bootstrap 95% CIs:")
    print("| model | validation views K | policy | ext. sens. | ext. spec. | ext. acc. |")
    print("|---|---|---|---|---|---|")
    for name, r in results.items():
        for key, m in r.items():
            k, policy = key.split(" ", 1)
            cells = [f"{m[x]:.3f} [{m[x + '_ci'][0]:.3f}, {m[x + '_ci'][1]:.3f}]" for x in KEYS[:3]]
            print(f"| {name} | {k[2:]} | `{policy}` | " + " | ".join(cells) + " |")
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
