"""The licence the package declares (``MIT OR Apache-2.0``) is shipped: both texts are in the
repository and pyproject's ``license-files`` puts them into the wheel's
``.dist-info/licenses/`` (scripts/check_wheel.sh checks the built wheel)."""

from __future__ import annotations

import sys
from pathlib import Path

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_declares_and_ships_both_licences() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "MIT OR Apache-2.0"  # an SPDX expression (PEP 639)
    assert sorted(project["license-files"]) == ["LICENSE-APACHE", "LICENSE-MIT"]
    cargo = tomllib.loads((ROOT / "Cargo.toml").read_text())
    assert cargo["workspace"]["package"]["license"] == project["license"]


def test_mit_text() -> None:
    text = (ROOT / "LICENSE-MIT").read_text()
    assert text.startswith("MIT License\n\nCopyright (c) the kvmclock authors\n")
    flat = " ".join(text.split())
    assert "Permission is hereby granted, free of charge, to any person obtaining a copy" in flat
    assert 'THE SOFTWARE IS PROVIDED "AS IS", WITHOUT WARRANTY OF ANY KIND' in flat


def test_apache_text_is_the_whole_licence() -> None:
    text = (ROOT / "LICENSE-APACHE").read_text()
    flat = " ".join(text.split())
    assert flat.startswith("Apache License Version 2.0, January 2004")
    for clause in ("1. Definitions.", "2. Grant of Copyright License.",
                   "3. Grant of Patent License.", "4. Redistribution.",
                   "9. Accepting Warranty or Additional Liability.",
                   "END OF TERMS AND CONDITIONS", "APPENDIX: How to apply the Apache License"):
        assert clause in flat, clause
