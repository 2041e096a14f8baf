"""``MODEL_CARD.md`` for a run: intended use, data, preprocessing, metrics with CIs, operating point,
calibration and known limitations (Mitchell et al., "Model Cards for Model Reporting", 2019)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pneumolab.data.manifest import age_span
from pneumolab.evaluation.metrics import promised_rates
from pneumolab.io import atomic_write_text

__all__ = ["KERMANY_AGES_YEARS", "render_model_card", "trained_on", "training_ages", "write_model_card"]

_ROWS = ("auroc", "sensitivity", "specificity", "precision", "npv", "f1", "balanced_accuracy", "accuracy", "ece")


def _fmt(m: dict[str, float | None]) -> str:
    """``0.950 [0.900, 0.980]``, or ``-`` where the evaluated set leaves the metric undefined (one class only)."""
    return "-" if m["value"] is None else f"{m['value']:.3f} [{m['ci_low']:.3f}, {m['ci_high']:.3f}]"


def _selected(trainer: dict[str, Any], epoch: int | None) -> str:
    """Which epoch model.pt holds and why (``trainer.select``; older configs have no such key: best)."""
    n = "?" if epoch is None else epoch + 1  # history counts from 0, people from 1
    if trainer.get("select", "best") == "last":
        return f"last epoch ({n}) kept: the end of the schedule, not selected on validation"
    return f"best epoch {n} selected on {trainer['monitor']} (validation split)"


def _views(cfg: dict[str, Any]) -> str:
    """``"2 augmented views of each batch, "`` for ``data.augment.views`` > 1 (older configs have no such key)."""
    views = cfg.get("data", {}).get("augment", {}).get("views", 1)
    return f"{views} augmented views of each batch, " if views > 1 else ""


def _split_counts(name: str, c: dict[str, Any]) -> str:
    patients = f" of {c['patients']} patients" if c.get("patients") else " (no patient ids)"
    return f"{name} {c['images']} images ({c['NORMAL']} NORMAL, {c['PNEUMONIA']} PNEUMONIA){patients}"


def _source(data: dict[str, Any]) -> str:
    """The training source as the user gave it (model files of 2026-12-06 and before recorded its folder)."""
    return data.get("source") or data["root"]


def _data_lines(cfg: dict[str, Any], data: dict[str, Any] | None) -> list[str]:
    """The card's data section, from what the model file recorded (older files recorded only the folder)."""
    lines = [f"- Training data: `{cfg['data']['data_dir']}`"]
    if data:
        splits = [_split_counts(k, data["splits"][k]) for k in ("train", "val") if k in data["splits"]]
        lines[0] += f", indexed from `{_source(data)}` ({data['source_kind']}): " + "; ".join(splits)
    lines[0] += (
        ". The validation split is carved from train by patient (patient-disjoint, stratified, seeded); test data "
        "is read only by `pneumolab evaluate`."
    )
    return [*lines, "- Synthetic training images: " + (", ".join(cfg["data"]["synthetic"]) or "none")]


def _kermany(data: dict[str, Any]) -> bool:
    """Whether the training images are Kermany's (most file names follow its patterns): its population applies."""
    return data["kermany_file_names"] >= 0.5


# Kermany et al. 2018: "pediatric patients of one to five years old" (its JPEGs carry no ages).
KERMANY_AGES_YEARS = (1, 5)
# Recorded ages (a CSV column, DICOM headers) define the population only when nearly every training image has one:
# a range read off a few images would put most patients outside it, or claim a range the rest do not have.
MIN_AGED_SHARE = 0.9


def training_ages(data: dict[str, Any] | None) -> tuple[int, int] | None:
    """The youngest and oldest age in whole years of the patients the model learnt from (train and val): the
    images' recorded ages (CSV, DICOM headers) when at least ``MIN_AGED_SHARE`` of them have one, else Kermany's
    documented range for Kermany's images; None otherwise. ``data``: the model file's ``training_data``."""
    if data is None:
        return None
    ages = data.get("ages_years")  # absent in model files from before ages were recorded
    if ages and ages["known"] >= MIN_AGED_SHARE * ages["of"]:
        return ages["youngest"], ages["oldest"]
    return KERMANY_AGES_YEARS if _kermany(data) else None


def trained_on(data: dict[str, Any] | None) -> str:
    """Who the model has seen, as a phrase (the card, the service's page): Kermany's children only where the
    training file names are Kermany's, a site's own source otherwise. ``data``: the model file's ``training_data``."""
    if data is None:
        return "a training set this model file does not record (an older file)"
    if _kermany(data):
        return (
            f"pediatric ({age_span(*KERMANY_AGES_YEARS)}) anterior-posterior chest X-rays from a single centre "
            "(Guangzhou Women and Children's Medical Center, Kermany et al. 2018)"
        )
    n = data["splits"].get("train", {}).get("images", "an unknown number of")
    ages = training_ages(data)
    return f"{n} chest X-rays from one source" + (f", patients of {age_span(*ages)}" if ages else "")


def _population(data: dict[str, Any] | None) -> list[str]:
    """The card's first limitations: who the model has seen, and what its validation can and cannot say."""
    if data is None:
        return [
            f"- Trained on {trained_on(data)}: X-rays from any other source are out of distribution until checked "
            "on them (`pneumolab evaluate`)."
        ]
    if _kermany(data):
        return [
            f"- Trained on {trained_on(data)}; adults, PA/lateral views, other hospitals, scanners and "
            "post-processing are out of distribution.",
            "- Validation on Kermany's data is nearly saturated (AUROC ~0.99), while its official test split shows "
            "an acquisition shift that moves normal X-rays towards pneumonia: report specificity at the stored "
            "threshold on external data, not only AUROC.",
        ]
    return [
        f"- Trained on {trained_on(data)} (`{_source(data)}`): other hospitals, scanners, post-processing, "
        "patient ages and views are out of distribution until checked on them (`pneumolab evaluate`, then "
        "`pneumolab calibrate` or `adapt` at a site).",
        "- Validation is carved from the same source and measures the model there only: report specificity at "
        "the stored threshold on external data, not only AUROC.",
    ]


def _precision(op: dict[str, Any]) -> str:
    """``"; 95% CIs ..."`` of the operating point's two rates from the images they rest on (what ``pneumolab
    monitor`` and ``evaluate`` test a site's rates against); empty for a model file that does not store them."""
    rates = promised_rates(op)
    if len(rates) < 2 or not all(r["ci"] for r in rates.values()):
        return ""
    sens, spec = rates["sensitivity"], rates["specificity"]
    return (
        f"; 95% CIs {sens['ci'][0]:.3f}-{sens['ci'][1]:.3f} and {spec['ci'][0]:.3f}-{spec['ci'][1]:.3f}, as precise "
        f"as {sens['images']} PNEUMONIA and {spec['images']} NORMAL images"
    )


def render_model_card(meta: dict[str, Any], evaluations: list[dict[str, Any]]) -> str:
    """Markdown text of the card from a model file's metadata and its evaluations (``metrics.json``)."""
    cfg, pre = meta["config"], meta["preprocessing"]
    op = meta.get("operating_point", {})
    where = "a labeled site sample (see below)" if op.get("split") == "site" else "the validation split"
    if op.get("split") == "val" and op.get("views"):
        where = f"{op['views']} copies of each validation image under the training augmentation"
    cal = meta.get("calibration", {})
    lines = [
        f"# Model card: {cfg['name']} ({meta['model_name']})",
        "",
        "## Intended use",
        "Research and **decision support only**: flags chest X-rays that may show pneumonia for a clinician to "
        "review. It is **not a diagnostic device**, has no regulatory clearance, and must not be used to rule "
        "pneumonia in or out without a qualified reader.",
        "",
        "## Model",
        f"- Architecture: `{meta['model_name']}` ({meta['model_kwargs']}), pneumolab {meta.get('version', '?')}",
        f"- Training: {cfg['trainer']['max_epochs']} epochs max, {cfg['optim']['optimizer']} lr {cfg['optim']['lr']}, "
        f"{_views(cfg)}{_selected(cfg['trainer'], meta.get('best_epoch'))}",
        *_init_lines(meta.get("init")),
        "",
        "## Data and splits",
        *_data_lines(cfg, meta.get("training_data")),
        "",
        "## Preprocessing (rebuilt from the model file at inference)",
        f"- Grayscale, resized to {pre['image_size']}x{pre['image_size']} (aspect ratio not kept), "
        f"normalisation `{pre['normalization']}` (mean {pre['mean']:.4f}, std {pre['std']:.4f} from the training "
        "split only)",
        "",
        "## Operating point and calibration",
        f"- Threshold {meta.get('threshold', 0.5):.4f} on P(pneumonia), "
        f"policy `{meta.get('threshold_policy', 'none')}`, "
        f"chosen on {where} (sensitivity {op.get('sensitivity', float('nan')):.3f}, "
        f"specificity {op.get('specificity', float('nan')):.3f} there{_precision(op)})",
        *(
            [
                f"- On the validation images as they are, the same threshold gives sensitivity "
                f"{clean['sensitivity']:.3f} and specificity {clean['specificity']:.3f}: the augmented copies stand "
                "for a shifted site, and a site as clean as the training images trades the other way"
            ]
            if (clean := op.get("images_as_they_are"))
            else []
        ),
        f"- Temperature scaling T = {meta.get('temperature', 1.0):.3f}, log-odds shift "
        f"{meta.get('prior_shift', 0.0):+.3f}, fitted on {where}; ECE {cal.get('ece_before', float('nan')):.3f} -> "
        f"{cal.get('ece_after', float('nan')):.3f}",
        *(
            [
                f"- Keeps the scores of the {ref['images']} {'validation' if ref['split'] == 'val' else 'site sample'} "
                "images (logit margins only: no pixels, names or labels): `pneumolab monitor --model` tests a site's "
                "NORMAL answers against those it calls NORMAL, without labels"
            ]
            if (ref := meta.get("reference_scores"))
            else []
        ),
        "",
        *_site_section(meta.get("site") or []),
        "## Metrics (95% CIs from a patient-level bootstrap)",
    ]
    if not evaluations:
        lines.append("No evaluation yet: run `pneumolab evaluate RUN --data DATA`.")
    for ev in evaluations:
        m = ev["at_threshold"]
        lines += [
            "",
            f"### {ev['split']} split of `{ev['data']}` ({m['n_images']} images, {m['n_patients']} patients)",
            f"Threshold {ev['threshold']['value']:.4f} ({ev['threshold']['origin']}).",
            *([f"**Warning:** {ev['warning']}."] if ev.get("warning") else []),
            "",
            "| metric | value [95% CI] |",
            "| --- | --- |",
            *[f"| {k} | {_fmt(m[k])} |" for k in _ROWS],
            *_subgroup_table(ev.get("subgroups")),
        ]
    lines += [
        "",
        "## Known limitations",
        *_population(meta.get("training_data")),
        "- Labels are image-level NORMAL/PNEUMONIA from the source; bacterial vs viral and other findings are not "
        "distinguished. Prevalence differs between sites, so PPV/NPV do not transfer.",
        "",
    ]
    return "\n".join(lines)


def _init_lines(init: dict[str, Any] | None) -> list[str]:
    """Where ``model.init`` started the network (empty when it started from random or ImageNet weights)."""
    if not init:
        return []
    what = (
        "an encoder pre-trained without labels (`pneumolab pretrain`): every weight but the head's"
        if init["kind"] == "encoder"
        else f"a classifier trained on {trained_on(init.get('training_data'))}: every weight, fine-tuned on the data "
        "below"
    )
    return [f"- Initialised from `{init['file']}` (SHA-256 `{init['sha256'][:16]}`), {what}"]


def _site_section(steps: list[dict[str, Any]]) -> list[str]:
    """What ``pneumolab calibrate`` / ``adapt`` changed, on which images and when (empty for a model as trained)."""
    if not steps:
        return []
    lines = ["## Site calibration and adaptation", ""]
    for s in steps:
        images = f"{s['images']} images of `{s['data']}` (SHA-256 of their hashes `{s['data_sha256'][:16]}`)"
        if s.get("source") == "outcomes":
            images = f"{s['images']} logged answers with the confirmed outcomes of `{s['data']}` (no images)"
        lines.append(f"- {s['date']}: `pneumolab {s['step']}` on {images}, from `{s['from_model']}`")
        if s["step"] == "calibrate":
            lines.append(
                f"  - labeled sample {s['classes']}; policy `{s['policy']}`: threshold {s['threshold']['before']:.4f}"
                f" -> {s['threshold']['after']:.4f}, temperature {s['temperature']['after']:.3f}, log-odds shift "
                f"{s['prior_shift']['after']:+.3f}"
            )
        if s.get("batchnorm"):
            lines.append(f"  - BatchNorm statistics of {s['batchnorm']['layers']} layers re-estimated, labels unused")
        if s.get("prior"):
            p = s["prior"]
            lines.append(f"  - pneumonia prior {p['source']:.3f} (source) -> {p['site_estimate']:.3f} (EM)")
    lines += ["- Numbers measured on the images a step was fitted on are optimistic: evaluate on other images.", ""]
    return lines


def _subgroup_table(sub: dict[str, Any] | None) -> list[str]:
    """``evaluate --by COLUMN``'s groups: counts and rates at the threshold above ('-': the group lacks a class)."""
    if not sub:
        return []
    keys = ("auroc", "sensitivity", "specificity")

    rows = [
        f"| {name} | {g['n_images']} ({g['NORMAL']} / {g['PNEUMONIA']}) | "
        + " | ".join(_fmt(g[k]) for k in keys)
        + " |"
        for name, g in sub["groups"].items()
    ]
    return [
        "",
        f"By `{sub['column']}`:",
        "",
        f"| {sub['column']} | images (NORMAL / PNEUMONIA) | " + " | ".join(keys) + " |",
        "| --- | --- | " + " | ".join("---" for _ in keys) + " |",
        *rows,
    ]


def write_model_card(run_dir: Path, meta: dict[str, Any], evaluations: list[dict[str, Any]]) -> Path:
    path = Path(run_dir) / "MODEL_CARD.md"
    atomic_write_text(path, render_model_card(meta, evaluations))
    return path
