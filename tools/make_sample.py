"""Build the small real sample shipped in ``src/pneumolab/sample`` from the shared Kermany copy.

Run once by a maintainer (the product never needs ``../shared``)::

    python tools/make_sample.py ../shared/data/chest_xray src/pneumolab/sample/chest_xray

Picks whole patients (several images each where possible) so patient-level splitting can be
exercised, copies the files byte for byte, and writes ``SAMPLE.md`` with the attribution.
The sample's ``test/`` folder is a *stand-in*: patients from the official train folder that are
not in the sample's ``train/``; the official test split is not used.
"""

from __future__ import annotations

import csv
import random
import re
import shutil
import sys
from collections import defaultdict
from pathlib import Path


def _patient(name: str) -> str:
    m = re.match(r"person(\d+)_", name) or re.match(r"((?:NORMAL2-)?IM-\d+)", name)
    return m.group(1)


def main(src: Path, dst: Path, seed: int = 7) -> None:
    with open(src / "MANIFEST.csv") as f:
        rows = list(csv.DictReader(f))
    groups: dict[tuple[str, str, str], list[dict]] = defaultdict(list)
    for r in rows:
        groups[(r["split"], r["label"], _patient(r["filename"]))].append(r)
    rng = random.Random(seed)
    chosen: dict[str, list[dict]] = defaultdict(list)
    # (label, train patients, stand-in test patients): multi-image patients first, then singles.
    plan = {"NORMAL": (40, 14), "PNEUMONIA": (45, 14)}
    for label, (n_train, n_test) in plan.items():
        keys = sorted(k for k in groups if k[0] == "train" and k[1] == label)
        multi = [k for k in keys if 2 <= len(groups[k]) <= 4]
        single = [k for k in keys if len(groups[k]) == 1]
        rng.shuffle(multi)
        rng.shuffle(single)
        n_multi = n_train * 2 // 3 if label == "NORMAL" else n_train
        picked = multi[:n_multi] + single[: n_train - n_multi]
        chosen["train"] += [r for k in picked for r in groups[k]]
        if label == "PNEUMONIA":  # keep one known byte-identical pair (person124) to show duplicate reporting
            pair = ("person124_virus_246.jpeg", "person124_virus_247.jpeg")
            chosen["train"] += [r for r in groups[("train", "PNEUMONIA", "124")] if r["filename"] in pair]
        rest = [k for k in multi[n_multi:] + single[n_train:] if k not in picked]
        chosen["test"] += [r for k in rest[:n_test] for r in groups[k]]
        val = sorted(k for k in groups if k[0] == "val" and k[1] == label)[:4]
        chosen["val"] += [r for k in val for r in groups[k]]
    if dst.exists():
        shutil.rmtree(dst)
    total = 0
    for split, rs in chosen.items():
        for r in rs:
            out = dst / split / r["label"] / r["filename"]
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / r["split"] / r["label"] / r["filename"], out)
            total += out.stat().st_size
    counts = {
        (s, lab): sum(r["label"] == lab for r in rs) for s, rs in chosen.items() for lab in ("NORMAL", "PNEUMONIA")
    }
    lines = [f"| {s} | {lab} | {n} |" for (s, lab), n in sorted(counts.items())]
    (dst / "SAMPLE.md").write_text(SAMPLE_MD.format(table="\n".join(lines), mb=total / 1e6))
    print(f"wrote {sum(len(v) for v in chosen.values())} images, {total / 1e6:.2f} MB")


SAMPLE_MD = """# Bundled sample of the Kermany chest X-ray dataset

A small real sample so that `make demo` and the tests run on a new machine with no dataset.

**Attribution (CC BY 4.0).** Kermany D., Zhang K., Goldbaum M. (2018), *Labeled Optical Coherence
Tomography (OCT) and Chest X-Ray Images for Classification*, Mendeley Data, v2,
doi:10.17632/rscbjbr9sj.2, licensed under CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/).
Paper: Kermany et al., *Identifying Medical Diagnoses and Treatable Diseases by Image-Based Deep
Learning*, Cell 172(5):1122-1131, 2018. Pediatric (1-5 years) anterior-posterior chest X-rays,
Guangzhou Women and Children's Medical Center. Folder layout follows the Kaggle re-distribution
"Chest X-Ray Images (Pneumonia)" (P. Mooney).

**Changes.** Files are byte-identical to a normalised copy of the dataset: 8-bit grayscale JPEG,
either 224x224 (from a re-distribution that squashed every image to 224x224) or the original
image with its shorter side reduced to 256 px. Whole patients were drawn at random (seed 7,
`tools/make_sample.py`); most have several images.

**Splits.** `train/` and `val/` come from the official train and val folders. `test/` is a
*stand-in*: other patients from the official **train** folder, patient-disjoint from `train/`.
It exists so the demo can exercise a test split; it is not the official test set, and numbers
measured on it say nothing about the published benchmark. `train/PNEUMONIA` keeps one
byte-identical pair from the original data (person124_virus_246/247) to show duplicate reporting.

| split | label | images |
| --- | --- | --- |
{table}

Total size: {mb:.2f} MB.
"""

if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
