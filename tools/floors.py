"""Write a pip constraints file that pins every direct dependency at its declared floor (``>=X`` -> ``==X``).

CI installs pneumolab with it and runs a smoke subset: a floor the code outgrew then fails in CI instead of
on a user's machine. torch and torchvision are left to the machine (``--skip``): CI machines hold one build
of each on disk, and an older one would be a multi-GB download.

    python tools/floors.py --extras all --skip torch torchvision > floors.txt
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import tomllib

_REQ = re.compile(r"^\s*([A-Za-z0-9_.-]+)(\[[^\]]*\])?\s*>=\s*([0-9][^,;\s]*)")


def floors(pyproject: Path, extras: list[str], skip: set[str]) -> list[str]:
    """``name==floor`` for the core dependencies and those of ``extras`` (expanding ``pneumolab[...]``)."""
    project = tomllib.loads(pyproject.read_text())["project"]
    optional = project.get("optional-dependencies", {})
    reqs, todo, seen = list(project["dependencies"]), list(extras), set()
    while todo:
        extra = todo.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for req in optional[extra]:
            own = re.match(rf"^{project['name']}\[([^\]]+)\]$", req.strip())
            todo.extend(own.group(1).split(",")) if own else reqs.append(req)
    pins = {}
    for req in reqs:
        m = _REQ.match(req)
        if m is None:
            raise SystemExit(f"{pyproject}: {req!r} has no `>=` floor; declare one")
        name = m.group(1).lower()
        if name not in skip:
            pins[name] = f"{name}=={m.group(3)}"
    return sorted(pins.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pyproject", type=Path, default=Path(__file__).resolve().parents[1] / "pyproject.toml")
    parser.add_argument("--extras", nargs="*", default=[])
    parser.add_argument("--skip", nargs="*", default=[])
    args = parser.parse_args()
    sys.stdout.write("\n".join(floors(args.pyproject, args.extras, {s.lower() for s in args.skip})) + "\n")


if __name__ == "__main__":
    main()
