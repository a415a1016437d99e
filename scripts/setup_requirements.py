"""Print requirement strings from pyproject.toml, one per line, for scripts/setup.sh.

    python scripts/setup_requirements.py build            # [build-system] requires (maturin)
    python scripts/setup_requirements.py runtime          # [project] dependencies
    python scripts/setup_requirements.py extra NAME...    # [project.optional-dependencies]
    python scripts/setup_requirements.py --names KIND ... # the distribution names that apply
                                                          # here (markers evaluated), one line

Kept apart from pip so that set-up installs exactly what a step needs: the build tool and the
runtime dependencies for `simulate`, the extras (dev, plot, fuzz) only for the tests. Markers
(``; python_version < '3.11'``) are passed through: pip evaluates them. Runs under Python 3.10
too, where tomllib does not exist yet (pip's own vendored tomli is used there).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: every pip that can install this project vendors tomli
    from pip._vendor import tomli as tomllib

PYPROJECT = Path(__file__).resolve().parent.parent / "pyproject.toml"


def requirements(kind: str, names: list[str], pyproject: dict[str, Any]) -> list[str]:
    """Requirement strings of one kind ('build', 'runtime', 'extra' with extra names)."""
    if kind == "build":
        return list(pyproject["build-system"]["requires"])
    if kind == "runtime":
        return list(pyproject["project"].get("dependencies", []))
    if kind == "extra":
        extras = pyproject["project"].get("optional-dependencies", {})
        unknown = [n for n in names if n not in extras]
        if unknown or not names:
            raise SystemExit(
                f"setup_requirements: unknown extra {', '.join(unknown) or '(none given)'}; "
                f"pyproject.toml defines: {', '.join(sorted(extras))}"
            )
        out: list[str] = []
        for n in names:
            out += [r for r in extras[n] if r not in out]
        return out
    raise SystemExit(f"setup_requirements: unknown kind {kind!r}; valid: build, runtime, extra")


def names(reqs: list[str]) -> list[str]:
    """Distribution names of the requirements whose environment markers hold here."""
    try:
        from pip._vendor.packaging.requirements import Requirement
    except ImportError:  # pragma: no cover - no pip: names only, markers not evaluated
        return [re.split(r"[\s;<>=!~\[]", r, maxsplit=1)[0] for r in reqs]
    parsed = [Requirement(r) for r in reqs]
    return [p.name for p in parsed if p.marker is None or p.marker.evaluate()]


def main(argv: list[str]) -> int:
    want_names = bool(argv) and argv[0] == "--names"
    if want_names:
        argv = argv[1:]
    if not argv:
        raise SystemExit("usage: setup_requirements.py [--names] build|runtime|extra NAME...")
    with PYPROJECT.open("rb") as f:
        pyproject = tomllib.load(f)
    reqs = requirements(argv[0], argv[1:], pyproject)
    if want_names:
        print(" ".join(names(reqs)))
    else:
        for r in reqs:
            print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
