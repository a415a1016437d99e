"""The repository documents itself: docs/cli.md indexes every command ``kvmclock --help``
lists, each with its page docs/commands/<command>.md; docs/json.md lists every JSON Schema file
of python/kvmclock/schemas/ and every command's document kind; every link of the docs and the
README to a file resolves inside the repository; and no text points to files outside it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from kvmclock.cli.parser import build_parser

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SCHEMAS = ROOT / "python" / "kvmclock" / "schemas"


def commands_in_help() -> list[str]:
    """The command names of ``kvmclock --help``, read from its text (its COMMAND block)."""
    text = build_parser().format_help()
    block = text.split("positional arguments:", 1)[1].split("options:", 1)[0]
    names = re.findall(r"^    ([a-z][a-z-]*)\b", block, flags=re.M)
    assert names, text
    return names


def markdown_files() -> list[Path]:
    return [ROOT / "README.md", *sorted(DOCS.rglob("*.md"))]


LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


def test_help_lists_the_ten_commands() -> None:
    assert commands_in_help() == ["simulate", "sweep", "profiles", "scenarios", "scale", "drift",
                                  "decode", "trace", "host", "verify"]


@pytest.mark.parametrize("command", commands_in_help())
def test_cli_index_lists_every_command_with_its_page(command: str) -> None:
    index = (DOCS / "cli.md").read_text()
    page = DOCS / "commands" / f"{command}.md"
    assert page.is_file(), f"no {page.relative_to(ROOT)}"
    assert f"`kvmclock {command}`" in index
    assert f"(commands/{command}.md)" in index, f"docs/cli.md does not link {command}'s page"
    text = page.read_text()
    assert re.match(rf"# `?kvmclock {command}`?\n", text), text[:80]
    assert "## Options" in text and "JSON" in text


@pytest.mark.parametrize("command", commands_in_help())
def test_json_index_lists_every_command(command: str) -> None:
    index = (DOCS / "json.md").read_text()
    assert f"`kvmclock.{command}`" in index
    assert f"python/kvmclock/schemas/{command}.schema.json" in index


def test_json_index_lists_every_schema_file() -> None:
    index = (DOCS / "json.md").read_text()
    files = sorted(p.name for p in SCHEMAS.glob("*.schema.json"))
    assert files, "no schema files"
    missing = [f for f in files if f"python/kvmclock/schemas/{f}" not in index]
    assert missing == []


def test_cli_index_gives_every_exit_code() -> None:
    text = (DOCS / "cli.md").read_text()
    for code in (0, 1, 2, 3, 70, 130):
        assert re.search(rf"^\| {code} \|", text, flags=re.M), code
    assert "`-`" in text and "--json [PATH|-]" in text


def test_every_link_to_a_file_resolves() -> None:
    broken: list[str] = []
    checked = 0
    for md in markdown_files():
        for target in LINK.findall(md.read_text()):
            checked += 1
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue  # a web address or an anchor in the same page
            path = target.split("#", 1)[0]
            resolved = (md.parent / path).resolve()
            if not resolved.exists():
                broken.append(f"{md.relative_to(ROOT)}: {target}")
            elif ROOT not in resolved.parents and resolved != ROOT:
                broken.append(f"{md.relative_to(ROOT)}: {target} (outside the repository)")
    assert broken == [] and checked > 50


def test_concepts_name_the_core_ideas() -> None:
    text = (DOCS / "concepts.md").read_text()
    for word in ("machine", "kernel", "KVM", "VMM", "profile", "switch", "scenario",
                 "CLOCK_MONOTONIC", "CLOCK_REALTIME", "kvm-clock", "masterclock",
                 "PVCLOCK_TSC_STABLE_BIT", "generation", "matching window", "lifecycle record"):
        assert word.lower() in text.lower(), word


OUTSIDE = re.compile(r"SPEC\.md|\.\./shared|/shared/|\breference/")


def test_no_text_points_outside_the_repository() -> None:
    """Docs, README, help texts and docstrings name no file outside the repository (the
    tests' own tests/reference folder is the repository's)."""
    hits: list[str] = []
    files = [*markdown_files(), *sorted((ROOT / "python").rglob("*.py")),
             *sorted((ROOT / "python").rglob("*.pyi"))]
    for f in files:
        for n, line in enumerate(f.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line.replace("tests/reference/", "")):
                hits.append(f"{f.relative_to(ROOT)}:{n}: {line.strip()}")
    assert hits == []
