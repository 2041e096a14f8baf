"""Turn every original-resolution image of a Kaggle-layout folder into a copy like the official test split's.

Usage::

    python benchmarks/simulate_copies.py ../shared/data/chest_xray runs/data/src-copylike
    pneumolab data prepare runs/data/src-copylike --out runs/data/kermany-copylike --size 128

The shared Kermany copy mixes two kinds of image: 30% original-resolution files (aspect ratio kept) and 70%
copies an uploader squashed to 224 x 224 and re-encoded as JPEG (~q75); the official test split is nearly all
copies (309 of 314 external images). This writes a new folder (the source is only read) in which each
non-224x224 image went through the copies' path: squashed to 224 x 224 with LANCZOS, JPEG quality 75, back to
greyscale; the 224 x 224 files are copied byte for byte. File names stay, so `data prepare` draws the same
patient split (its seed and the names decide it). Fourteenth round of issue 16 (docs/BENCHMARKS.md).
"""

from __future__ import annotations

import argparse
import io
import shutil
from pathlib import Path

from PIL import Image

COPY_SIZE = (224, 224)


def as_copy(path: Path, out: Path) -> bool:
    """Write ``path`` to ``out`` as a squashed JPEG copy; ``False`` where it already was one (copied as is)."""
    image = Image.open(path)
    if image.size == COPY_SIZE:
        shutil.copyfile(path, out)
        return False
    buffer = io.BytesIO()
    # RGB like the uploader's copies, whose chroma JPEG then discards
    image.convert("RGB").resize(COPY_SIZE, Image.LANCZOS).save(buffer, "JPEG", quality=75)
    Image.open(buffer).convert("L").save(out, "JPEG", quality=90)
    return True


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("source", type=Path, help="a Kaggle-layout folder (train/, val/, test/ with class folders)")
    parser.add_argument("out", type=Path, help="a new folder (must not exist)")
    args = parser.parse_args()
    if args.out.exists():
        parser.error(f"{args.out} exists: give a new folder")
    converted = kept = 0
    for path in sorted(args.source.rglob("*.jpeg")):
        out = args.out / path.relative_to(args.source)
        out.parent.mkdir(parents=True, exist_ok=True)
        if as_copy(path, out):
            converted += 1
        else:
            kept += 1
    print(f"{converted} originals turned into copies, {kept} copies kept as they were -> {args.out}")


if __name__ == "__main__":
    main()
