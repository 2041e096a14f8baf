"""What a model answered at a site, period by period: ``pneumolab monitor``.

Reads the service's audit log (``serve --audit DIR``) or ``predict --json`` lines: both hold, per image, when,
which model file (SHA-256), and the answer (label, probability, not assessed and why, or refused). Without labels
nothing says whether the answers were right; what can be seen is a change: more images the guard will not assess
(another scanner, another view, images that are no chest X-ray), another share flagged PNEUMONIA (another
population, referral pattern or acquisition), or more uploads refused (a sending system that changed). Each
period (UTC day, ISO week or month) and model gets counts and rates with 95% Wilson intervals, and three kinds of
warning, each an exact test, together at a family-wise 5% over the model's periods (Bonferroni: p < 0.05 / (3 x
periods)), so that a month of daily periods does not raise an alarm on chance alone
(``benchmarks/monitor_alarms.py`` measures how often it warns, and how soon it sees a change):

- **not assessed**: more than the 0.5% at which the feature guard flags the training site's own validation X-rays
  (its threshold is their 99.5th percentile): a one-sided binomial test;
- **flagged share**: another share flagged PNEUMONIA than on the same model's other periods (both with at least
  ``MIN_IMAGES`` assessed images): Fisher's exact test on the two periods' counts;
- **refused uploads**: a larger share refused before any model ran (undecodable, compressed without a decoder, not a
  chest radiograph's DICOM) than on the same model's other periods (both with at least ``MIN_IMAGES`` images):
  one-sided Fisher's exact test. A sending system that changed (a PACS now compressing, another modality routed)
  shows here first; each clinician only sees their own upload fail.

"The model's other periods" are all of them by default (a review of the whole log: a period's verdict may change
when later periods arrive), or only the earlier ones with ``against="past"`` (what a daily job asks: did today
differ from before? A verdict then never changes; the first periods have no baseline to differ from).

A warning says what to look at; checking a labeled sample (``pneumolab evaluate``) says whether the model still
holds.

**The model files** (``models=``) add a check without labels that the counts cannot make: a model's NORMAL answers,
pooled over the log, against the validation images it calls NORMAL (their scores are kept in the model file,
``reference_scores``; after ``calibrate``, or ``adapt`` with new BatchNorm statistics, the site sample's): one-sided
Mann-Whitney test at 5% over the models. Normals that look more like pneumonia to the model than the training site's
did are what cost ``fast`` its specificity on the official test split, where the flagged share did not move.

Answers given with a caution (a patient outside the ages the model learnt from) are counted per period and summed
per model in ``notes``: a standing fact to act on, not a change to test.

**Outcomes** (``outcomes=``: a CSV of ``request_id,label`` for the service's answers, or ``image,label`` for
``predict --json``'s; the reading a radiologist or a later test confirmed) turn the counts into accuracy: per period
and model, sensitivity and specificity at the threshold the answers were given with (Wilson intervals), and two more
kinds of warning: a period's sensitivity or specificity below the model's other periods (one-sided Fisher's exact
test), and a model's pooled sensitivity or specificity below what its stored operating point promised (``models=``,
its model files; one-sided Fisher's exact test against the validation images the promise was measured on). The
second is what the counts alone cannot see: a model that was worse at the site from its first day (on the official
test split, ``fast`` keeps its flagged share and loses specificity; docs/BENCHMARKS.md, "Site monitoring").
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

import numpy as np

from pneumolab.data.manifest import normalise_label
from pneumolab.data.sources import read_csv_table
from pneumolab.errors import InputError
from pneumolab.evaluation.metrics import RATES, promise_p_value, promised_rates, wilson
from pneumolab.io import atomic_path

__all__ = [
    "EXPECTED_NOT_ASSESSED",
    "MIN_IMAGES",
    "Period",
    "attach_outcomes",
    "caution_notes",
    "merged",
    "model_files",
    "monitor",
    "normal_call_summary",
    "normal_call_test",
    "outcome_summary",
    "period_warnings",
    "plot_monitor",
    "read_outcomes",
    "read_records",
]

EXPECTED_NOT_ASSESSED = 0.005  # the feature guard's threshold: 99.5th percentile of validation X-rays' distances
MIN_IMAGES = 20  # images on each side (assessed ones for the flagged share) before two shares are compared
Every = Literal["day", "week", "month"]
Against = Literal["all", "past"]


@dataclass
class Period:
    """One period's answers of one model."""

    period: str  # 2026-12-06, 2026-W49 or 2026-12
    model_sha256: str | None
    first: str  # time of the first and last answer
    last: str
    assessed: int = 0
    flagged: int = 0  # assessed and labeled PNEUMONIA
    not_assessed: int = 0
    refused: int = 0  # unreadable or refused before any model ran (not a chest radiograph's DICOM, corrupt...)
    probability_sum: float = 0.0
    cautioned: int = 0  # assessed and answered with a caution (e.g. a patient outside the training ages)
    # assessed answers with a known outcome: PNEUMONIA flagged / missed, NORMAL cleared / flagged
    tp: int = 0
    fn: int = 0
    tn: int = 0
    fp: int = 0
    outcome_not_assessed: int = 0  # outcomes of images the model gave no label: nothing to check
    reasons: Counter = field(default_factory=Counter)  # why images were not assessed
    cautions: Counter = field(default_factory=Counter)  # the cautions given with answers
    refusals: Counter = field(default_factory=Counter)  # the kinds of problem of the refused ones
    normal_probabilities: list[float] = field(default_factory=list)  # P(pneumonia) of the NORMAL answers

    def add(self, rec: dict[str, Any]) -> None:
        """Count one answer: ``{"refused": kind}``, or a ``label`` (with ``probability`` unless NOT_ASSESSED)."""
        if "refused" in rec:
            self.refused += 1
            self.refusals[str(rec["refused"])] += 1
        elif rec["label"] == "NOT_ASSESSED":
            self.not_assessed += 1
            self.reasons.update(rec.get("reasons") or ["not assessed"])
            self.outcome_not_assessed += "_outcome" in rec
        else:
            self.assessed += 1
            flagged = rec["label"] == "PNEUMONIA"
            self.flagged += flagged
            if rec.get("_outcome") == "PNEUMONIA":
                self.tp, self.fn = self.tp + flagged, self.fn + (not flagged)
            elif rec.get("_outcome") == "NORMAL":
                self.tn, self.fp = self.tn + (not flagged), self.fp + flagged
            self.probability_sum += float(rec["probability"])
            if not flagged:
                self.normal_probabilities.append(float(rec["probability"]))
            self.cautioned += bool(rec.get("cautions"))
            self.cautions.update(rec.get("cautions") or [])

    def checked(self, cls: str) -> tuple[int, int]:
        """Of the assessed answers whose outcome is ``cls``: how many were right, and how many there were."""
        return (self.tp, self.tp + self.fn) if cls == "PNEUMONIA" else (self.tn, self.tn + self.fp)

    @property
    def images(self) -> int:
        return self.assessed + self.not_assessed + self.refused

    def row(self) -> dict[str, Any]:
        """JSON-ready: counts, rates with their 95% intervals, the mean probability, the commonest reasons and kinds
        of refusal."""
        seen = self.assessed + self.not_assessed
        return {
            **{
                k: v
                for k, v in asdict(self).items()
                if k not in ("probability_sum", "reasons", "refusals", "cautions", "normal_probabilities")
            },
            "images": self.images,
            "refused_rate": _rate(self.refused, self.images),
            "not_assessed_rate": _rate(self.not_assessed, seen),
            "flagged_rate": _rate(self.flagged, self.assessed),
            "mean_probability": self.probability_sum / self.assessed if self.assessed else None,
            # what `--model` tests, pooled over the periods, against the model's reference
            "normal_median": float(np.median(self.normal_probabilities)) if self.normal_probabilities else None,
            **{name: _rate(*self.checked(cls)) for name, cls in RATES},
            "reasons": dict(self.reasons.most_common(5)),
            "refusals": dict(self.refusals.most_common(5)),
            "cautions": dict(self.cautions.most_common(5)),
        }


def _checked(periods: list[Period], cls: str) -> tuple[int, int]:
    """:meth:`Period.checked` summed over ``periods``."""
    pairs = [p.checked(cls) for p in periods]
    return sum(k for k, _ in pairs), sum(n for _, n in pairs)


def _rate(k: int, n: int) -> dict[str, Any] | None:
    return {"value": k / n, "ci": list(wilson(k, n)), "n": n} if n else None


def _files(paths: list[Path]) -> list[Path]:
    files = []
    for p in paths:
        if p.is_dir():
            found = sorted(p.glob("*.jsonl"))
            if not found:
                raise InputError(f"{p}: no .jsonl files in this folder (the audit log of `serve --audit {p}`?)")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise InputError(f"{p}: no such file or folder")
    return files


def read_records(paths: list[Path]) -> list[dict[str, Any]]:
    """Every answer in the files (folders: their ``*.jsonl``), each with its ``time`` as a UTC datetime in
    ``"_utc"``; ``predict --json``'s lines for skipped non-image files are left out."""
    records = []
    for path in _files(paths):
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path} line {n}"
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    raise InputError(f"{where}: not JSON; give the audit log or `predict --json` output") from None
                if not isinstance(rec, dict):
                    raise InputError(f"{where}: not a JSON object; give the audit log or `predict --json` output")
                if "skipped" in rec:  # a file that is not an image, listed by predict: no answer
                    continue
                if "time" not in rec:
                    raise InputError(
                        f"{where}: no 'time' (written by another tool, or by `predict --json` before it stamped "
                        "its lines); re-run predict with this version"
                    )
                if "refused" not in rec and rec.get("label") not in ("NORMAL", "PNEUMONIA", "NOT_ASSESSED"):
                    raise InputError(f"{where}: neither a label (NORMAL, PNEUMONIA, NOT_ASSESSED) nor 'refused'")
                if rec.get("label") in ("NORMAL", "PNEUMONIA") and not isinstance(rec.get("probability"), int | float):
                    raise InputError(f"{where}: a {rec['label']} answer without a probability")
                try:
                    stamp = datetime.fromisoformat(str(rec["time"]).replace("Z", "+00:00"))
                except ValueError:
                    raise InputError(f"{where}: time {rec['time']!r} is not ISO 8601") from None
                # a time without a zone is taken as UTC, as both writers give it
                rec["_utc"] = stamp.astimezone(timezone.utc) if stamp.tzinfo else stamp.replace(tzinfo=timezone.utc)
                records.append(rec)
    if not records:
        raise InputError(f"no answers in {', '.join(map(str, paths))}: nothing to monitor")
    return sorted(records, key=lambda r: r["_utc"])


def read_outcomes(path: Path) -> tuple[str, dict[str, str]]:
    """``(key column, {key: NORMAL or PNEUMONIA})`` of an outcomes CSV: ``request_id,label`` (the service's
    answers) or ``image,label`` (``predict --json``'s); a label is NORMAL/PNEUMONIA or 0/1."""
    if not path.is_file():
        raise InputError(f"--outcomes {path}: no such file")
    fields, rows = read_csv_table(path)
    cols = {c.strip().lower(): c for c in fields if c is not None}
    key = next((k for k in ("request_id", "image") if k in cols), None)
    if key is None or "label" not in cols:
        raise InputError(
            f"{path}: needs the columns request_id,label (the service's answers) or image,label (predict --json's); "
            f"found {fields}"
        )
    table: dict[str, str] = {}
    for line, row in enumerate(rows, start=2):
        k, raw = (row.get(cols[key]) or "").strip(), (row.get(cols["label"]) or "").strip()
        label = normalise_label(raw)
        if not k or label is None:
            why = f"no {key}" if not k else f"label {raw!r} is not NORMAL/PNEUMONIA (or 0/1)"
            raise InputError(f"{path} line {line}: {why}; correct or remove the line")
        if table.setdefault(k, label) != label:
            raise InputError(
                f"{path} line {line}: {key} {k} has both outcomes, NORMAL and PNEUMONIA; keep the right one"
            )
    return key, table


def attach_outcomes(records: list[dict[str, Any]], path: Path) -> dict[str, Any]:
    """Set each answer's ``"_outcome"`` from the CSV; what matched and what did not."""
    key, table = read_outcomes(path)
    found = set()
    for rec in records:
        if "refused" not in rec and (v := rec.get(key)) in table:
            rec["_outcome"] = table[v]
            found.add(v)
    if not found:
        raise InputError(
            f"{path}: none of its {len(table)} {key}s is in these logs; give the outcomes of these answers "
            f"(the service's JSON and audit lines carry request_id, predict --json's lines image)"
        )
    return {"file": str(path), "key": key, "outcomes": len(table), "unmatched": len(table) - len(found)}


def _period(t: datetime, every: Every) -> str:
    if every == "day":
        return t.strftime("%Y-%m-%d")
    if every == "month":
        return t.strftime("%Y-%m")
    year, week, _ = t.isocalendar()
    return f"{year}-W{week:02d}"


def _group(records: list[dict[str, Any]], every: Every) -> list[Period]:
    periods: dict[tuple[str, str | None], Period] = {}
    for rec in records:
        stamp = rec["_utc"].isoformat(timespec="seconds")
        key = (_period(rec["_utc"], every), rec.get("model_sha256"))
        p = periods.setdefault(key, Period(key[0], key[1], first=stamp, last=stamp))
        p.last = stamp
        p.add(rec)
    return list(periods.values())  # in time order: records were sorted


def _pct(r: dict[str, Any]) -> str:
    return f"{100 * r['value']:.1f}% [{100 * r['ci'][0]:.1f}, {100 * r['ci'][1]:.1f}]"


def _unlike(k: int, n: int, k_other: int, n_other: int, alpha: float, alternative: str = "two-sided") -> bool:
    """``k`` of ``n`` against ``k_other`` of ``n_other``, both with at least ``MIN_IMAGES``: Fisher's exact test."""
    from scipy.stats import fisher_exact

    if n < MIN_IMAGES or n_other < MIN_IMAGES:
        return False
    table = [[k, n - k], [k_other, n_other - k_other]]
    return bool(fisher_exact(table, alternative=alternative).pvalue < alpha)


def period_warnings(periods: list[Period], against: Against = "all", outcomes: bool = False) -> list[str]:
    """The warnings of the module docstring, for periods in time order (one model or several); each period is
    compared with the same model's other periods (``"all"``) or its earlier ones (``"past"``); with ``outcomes``
    their sensitivity and specificity too."""
    from scipy.stats import binomtest

    out, which = [], "earlier" if against == "past" else "other"
    n_kinds = 5 if outcomes else 3
    for p in periods:
        row = p.row()
        same = [q for q in periods if q.model_sha256 == p.model_sha256]  # in time order
        at = [q is p for q in same].index(True)
        others = same[:at] if against == "past" else same[:at] + same[at + 1 :]
        alpha = 0.05 / (n_kinds * len(same))  # Bonferroni over the model's periods and the kinds of warning
        na = row["not_assessed_rate"]
        # exact tests: at rates like 0.5% an interval's bound is no test (Wilson's warned on a third of quiet months)
        if na and binomtest(p.not_assessed, na["n"], EXPECTED_NOT_ASSESSED, alternative="greater").pvalue < alpha:
            why = ", ".join(r for r, _ in p.reasons.most_common(2))
            out.append(
                f"{p.period}: {p.not_assessed} of {na['n']} images not assessed ({_pct(na)}); the guard flags "
                f"{100 * EXPECTED_NOT_ASSESSED:.1f}% of the training site's X-rays: check what is being sent "
                f"(most often: {why})"
            )
        k, n = sum(q.flagged for q in others), sum(q.assessed for q in others)
        if _unlike(p.flagged, p.assessed, k, n, alpha):
            out.append(
                f"{p.period}: {_pct(row['flagged_rate'])} of assessed images flagged PNEUMONIA against "
                f"{100 * k / n:.1f}% in the model's {which} periods: another population, referral pattern or "
                "acquisition; check a labeled sample (pneumolab evaluate)"
            )
        k, n = sum(q.refused for q in others), sum(q.images for q in others)
        if _unlike(p.refused, p.images, k, n, alpha, alternative="greater"):  # fewer refusals are no cause for alarm
            kinds = ", ".join(r for r, _ in p.refusals.most_common(2))
            out.append(
                f"{p.period}: {p.refused} of {p.images} uploads refused ({_pct(row['refused_rate'])}) against "
                f"{100 * k / n:.1f}% in the model's {which} periods (most often: {kinds}): check what the sending "
                "system changed (format, compression, modality)"
            )
        for name, cls in RATES if outcomes else ():
            (k, n), (k_other, n_other) = p.checked(cls), _checked(others, cls)
            if _unlike(k, n, k_other, n_other, alpha, alternative="less"):
                out.append(
                    f"{p.period}: {name} {_pct(row[name])} on {n} {cls} outcomes against {100 * k_other / n_other:.1f}%"
                    f" in the model's {which} periods: check what changed (scanner, population, the outcomes' source)"
                )
    models = list(dict.fromkeys(p.model_sha256 for p in periods))
    if len(models) > 1:
        spans = [
            f"{(m or 'unknown')[:12]} ({min(p.first for p in periods if p.model_sha256 == m)[:10]} to "
            f"{max(p.last for p in periods if p.model_sha256 == m)[:10]})"
            for m in models
        ]
        out.append(f"{len(models)} model files answered in this log: {', '.join(spans)}; each is compared with itself")
    return out


def caution_notes(periods: list[Period]) -> list[str]:
    """Per model, how many answers came with a caution and which: not a change to test, a standing fact a site
    should act on (e.g. a children's model answering adults: evaluate it on them)."""
    out = []
    for m in dict.fromkeys(p.model_sha256 for p in periods):
        mine = [p for p in periods if p.model_sha256 == m]
        n, k = sum(p.assessed for p in mine), sum(p.cautioned for p in mine)
        if k:
            said = sum((p.cautions for p in mine), Counter()).most_common(2)
            out.append(
                f"model {(m or 'unknown')[:12]}: {k} of {n} answers ({100 * k / n:.1f}%) came with a caution: "
                + "; ".join(f"{text} ({c})" for text, c in said)
            )
    return out


def outcome_summary(
    periods: list[Period], files: dict[str, tuple[Path, dict[str, Any]]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """Per model, its answers' pooled sensitivity and specificity against what its operating point promised (its model
    file in ``files``, :func:`merged`; Bonferroni over the models and the two rates), and the warnings where the site
    is below the promise. The promise is itself measured, on a few hundred validation images: the site's rate is
    tested against the images it rests on (one-sided Fisher's exact test, :func:`promise_p_value`), not against a
    number."""
    promised = {sha: (path, meta.get("operating_point") or {}) for sha, (path, meta) in files.items()}
    rows, out = [], []
    shas = list(dict.fromkeys(p.model_sha256 for p in periods))
    alpha = 0.05 / (2 * max(1, sum(sha in promised for sha in shas)))
    for sha in shas:
        mine = [p for p in periods if p.model_sha256 == sha]
        path, op = promised.get(sha, (None, {}))
        promise = promised_rates(op)
        row = {
            "model_sha256": sha,
            **{name: _rate(*_checked(mine, cls)) for name, cls in RATES},
            "not_assessed": sum(p.outcome_not_assessed for p in mine),
            "promised": {
                **{k: op.get(k) for k in ("split", "views", "sensitivity", "specificity")},
                "ci95": {name: r["ci"] for name, r in promise.items() if r["ci"]},
            }
            if path
            else None,
        }
        rows.append(row)
        for name, cls in RATES:
            k, n = _checked(mine, cls)
            if n and name in promise and promise_p_value(k, n, promise[name]) < alpha:
                where = "a site sample" if op.get("split") == "site" else "validation"
                if op.get("split") == "val" and op.get("views"):
                    where = f"{op['views']} augmented views of each validation image"
                size = promise[name]["images"]
                size = f"worth {size} {cls} images" if size else "its sample size is not stored: taken as exact"
                out.append(
                    f"model {(sha or 'unknown')[:12]}: {name} {_pct(row[name])} on {n} {cls} outcomes, below the "
                    f"{100 * op[name]:.1f}% its operating point promised (fitted on {where}; {size}): its threshold "
                    "does not hold here; re-choose it on these outcomes (pneumolab calibrate MODEL --outcomes CSV "
                    "--logs LOGS) or a labeled site sample, and evaluate it on other site images"
                )
    return rows, out


def normal_call_summary(
    periods: list[Period], files: dict[str, tuple[Path, dict[str, Any]]]
) -> tuple[list[dict[str, Any]], list[str], list[str]]:
    """Per model, without labels: its NORMAL answers' probabilities, pooled over the log, against those of the images
    its model file (in ``files``, :func:`merged`) keeps as the reference (the validation images, or the site sample
    it was calibrated or adapted on) that it calls NORMAL; a warning where the site's are higher (one-sided
    Mann-Whitney test, Bonferroni over the models), with at least ``MIN_IMAGES`` NORMAL answers. On the official test
    split ``fast`` keeps its flagged share and loses specificity, and its NORMAL answers there are less certain than
    its validation images' (docs/BENCHMARKS.md, "Without labels: the NORMAL answers"): what the counts cannot see.
    Returns rows, warnings and notes."""
    from pneumolab.evaluation.calibration import reference_normal_calls  # torch: only where models are checked

    shas = [sha for sha in dict.fromkeys(p.model_sha256 for p in periods) if sha in files]
    alpha = 0.05 / max(1, len(shas))
    rows, out, notes = [], [], []
    for sha in shas:
        path, meta = files[sha]
        ref = reference_normal_calls(meta)
        site = [v for p in periods if p.model_sha256 == sha for v in p.normal_probabilities]
        if ref is None:
            notes.append(
                f"model {sha[:12]} ({path}) keeps no reference scores (made by an older pneumolab): retrain it "
                "to compare its NORMAL answers with its validation images'"
            )
            continue
        row = normal_call_test(np.array(site), ref)
        where = (meta.get("reference_scores") or {}).get("split")
        rows.append({"model_sha256": sha, **row, "reference_split": where})
        if len(site) >= MIN_IMAGES and row["p_value"] < alpha:
            what = "validation images" if where == "val" else "site sample's images (calibrated or adapted there)"
            out.append(
                f"model {sha[:12]}: its {len(site)} NORMAL answers are less certain than on the {row['reference']} "
                f"{what} it calls NORMAL (median P(pneumonia) {row['median']:.3f} against {row['reference_median']:.3f}"
                f"; one-sided Mann-Whitney p = {row['p_value']:.2g}): normal X-rays here look more like pneumonia to "
                "it, or more of its NORMAL answers are missed pneumonia, so the specificity or sensitivity it promised "
                "may not hold; check it on a labeled site sample (pneumolab evaluate) and re-choose the threshold "
                "there (pneumolab calibrate)"
            )
    return rows, out, notes


def normal_call_test(site: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    """A site's NORMAL answers' probabilities ``(n,)`` against a reference's ``(m,)``: sizes, medians and the
    one-sided Mann-Whitney p-value of the site's being higher (1.0 where either side is empty)."""
    from scipy.stats import mannwhitneyu

    both = len(site) and len(reference)
    return {
        "answers": len(site),
        "median": float(np.median(site)) if len(site) else None,
        "reference": len(reference),
        "reference_median": float(np.median(reference)) if len(reference) else None,
        "p_value": float(mannwhitneyu(site, reference, alternative="greater").pvalue) if both else 1.0,
    }


def model_files(models: list[Path]) -> dict[Path, dict[str, tuple[Path, dict[str, Any]]]]:
    """Per ``--model``, the model files it names, by SHA-256, each with its metadata: a ``.pt`` or ``.onnx`` file, or
    a run folder's ``model.pt`` and, when exported, its ``model.onnx`` (the service may answer with either, and the
    logs name the file it loaded). Read once: the checks take them merged, :func:`merged`."""
    return {target: _model_files(target) for target in models}


def merged(by_model: dict[Path, dict[str, tuple[Path, dict[str, Any]]]]) -> dict[str, tuple[Path, dict[str, Any]]]:
    """:func:`model_files` as one ``{SHA-256: (file, metadata)}``."""
    return {sha: pair for files in by_model.values() for sha, pair in files.items()}


def _unused_models(by_model: dict[Path, dict[str, tuple[Path, dict[str, Any]]]], periods: list[Period]) -> list[str]:
    """A warning per ``--model`` none of whose files answered in these logs (a wrong file or log)."""
    shas, out = {p.model_sha256 for p in periods}, []
    for target, files in by_model.items():
        if not set(files) & shas:
            which = ", ".join(f"{path.name} {sha[:12]}" for sha, (path, _) in files.items())
            out.append(f"--model {target}: no answer in these logs came from it (SHA-256 {which})")
    return out


def _model_files(target: Path) -> dict[str, tuple[Path, dict[str, Any]]]:
    """The model files of one ``--model`` (:func:`model_files`)."""
    from pneumolab.inference.export import read_onnx_meta
    from pneumolab.io import file_sha256
    from pneumolab.models.checkpoint import read_model_meta
    from pneumolab.rundir import RunDir

    if target.suffix == ".onnx" and target.is_file():
        pairs = [(target, read_onnx_meta(target))]
    else:
        pairs = [read_model_meta(target)]
        if target.is_dir() and RunDir(target).onnx.is_file():
            pairs.append((RunDir(target).onnx, read_onnx_meta(RunDir(target).onnx)))
    return {file_sha256(path): (path, meta) for path, meta in pairs}


def monitor(
    paths: list[Path],
    every: Every = "day",
    against: Against = "all",
    outcomes: Path | None = None,
    models: list[Path] | None = None,
) -> dict[str, Any]:
    """Counts, rates with 95% intervals and warnings per period and model, from audit or ``predict --json`` lines;
    with ``models``, their NORMAL answers against the images each model file keeps as its reference; with
    ``outcomes`` also sensitivity and specificity, checked against the operating points of ``models``."""
    models = models or []
    files = _files(paths)
    records = read_records(files)
    matched = attach_outcomes(records, outcomes) if outcomes is not None else None
    periods = _group(records, every)
    warnings = period_warnings(periods, against, outcomes=matched is not None)
    result = {"every": every, "against": against, "files": [str(f) for f in files]}
    notes = caution_notes(periods)
    by_model = model_files(models)
    if models:
        result["normal_calls"], said, unchecked = normal_call_summary(periods, merged(by_model))
        warnings += said
        notes += unchecked
    if matched is not None:
        per_model, promise_warnings = outcome_summary(periods, merged(by_model))
        result["outcomes"] = {**matched, "models": per_model}
        warnings += promise_warnings
    warnings += _unused_models(by_model, periods)
    return {**result, "periods": [p.row() for p in periods], "warnings": warnings, "notes": notes}


def plot_monitor(result: dict[str, Any], path: Path) -> None:
    """Flagged, not-assessed and refused shares per period with their 95% intervals, one colour per model; with
    ``--model``, the NORMAL answers' median probability beside the model's reference; with outcomes, sensitivity and
    specificity too, beside what each model's operating point promised."""
    from matplotlib.ticker import FuncFormatter

    from pneumolab.evaluation.plots import fig_to_png, plt

    rows = result["periods"]
    labels = list(dict.fromkeys(r["period"] for r in rows))
    panels = [
        ("flagged_rate", "assessed images flagged PNEUMONIA"),
        ("not_assessed_rate", "images not assessed (guard)"),
        ("refused_rate", "uploads refused before any model ran"),
    ]
    if result.get("normal_calls"):
        panels += [("normal_median", "median P(pneumonia) of the NORMAL answers (log scale)")]
    if "outcomes" in result:
        panels += [
            ("sensitivity", "sensitivity (confirmed PNEUMONIA)"),
            ("specificity", "specificity (confirmed NORMAL)"),
        ]
    models = list(dict.fromkeys(r["model_sha256"] for r in rows))
    promised = {m["model_sha256"]: m["promised"] for m in result.get("outcomes", {}).get("models", []) if m["promised"]}
    reference = {m["model_sha256"]: m["reference_median"] for m in result.get("normal_calls", [])}
    fig, axes = plt.subplots(len(panels), 1, figsize=(max(6.0, 0.5 * len(labels)), 2.8 * len(panels)), sharex=True)
    for ax, (key, title) in zip(axes, panels, strict=True):
        for colour, m in enumerate(models):
            pts = [(labels.index(r["period"]), r[key]) for r in rows if r["model_sha256"] == m and r[key]]
            if key == "normal_median":  # a median per period, no interval: the test pools the periods
                if pts and m in reference:
                    ax.plot(*zip(*pts, strict=True), "o-", color=f"C{colour}", label=f"model {(m or 'unknown')[:12]}")
                    if reference[m] is not None:
                        ax.axhline(
                            reference[m], color=f"C{colour}", ls="--", lw=1, label="its reference images called NORMAL"
                        )
                continue
            if pts:
                x = [i for i, _ in pts]
                y = [100 * v["value"] for _, v in pts]
                err = [
                    [100 * (v["value"] - v["ci"][0]) for _, v in pts],
                    [100 * (v["ci"][1] - v["value"]) for _, v in pts],
                ]
                ax.errorbar(
                    x, y, yerr=err, fmt="o-", capsize=3, color=f"C{colour}", label=f"model {(m or 'unknown')[:12]}"
                )
            if promised.get(m, {}).get(key) is not None:
                ax.axhline(
                    100 * promised[m][key], color=f"C{colour}", ls="--", lw=1, label="promised (stored operating point)"
                )
        if key == "normal_median":
            ax.set_yscale("log")
            # plain numbers (0.01, 0.02, 0.05), not mathtext powers of ten: easier to read, and no pyparsing
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "25" else ""))
            ax.set_ylabel("P(pneumonia)")
            ax.set_title(title)
        else:
            ax.set_ylabel("%")
            ax.set_title(f"{title}, 95% Wilson intervals")
    axes[1].axhline(100 * EXPECTED_NOT_ASSESSED, color="grey", ls="--", lw=1, label="expected at the training site")
    axes[-1].set_xticks(range(len(labels)), labels, rotation=45, ha="right")
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:  # a panel without points (no outcomes of a class) has no legend
            ax.legend(fontsize=8)
    with atomic_path(path, suffix=".png") as tmp:
        tmp.write_bytes(fig_to_png(fig))
