"""The numbers the documentation quotes come from the commands shown beside them.

* docs/vmm.md, every ```console block: ``$ kvmclock ...`` is run (in process, through
  ``kvmclock.cli.main``) and every excerpt line must be a line of its output (a line ending in
  `` ...`` a line's beginning; a ``...`` line stands for lines left out).
* docs/vmm.md, the table of cases (header ``| case | command | VM |``): each row's command is
  run; every value in code in the later cells must be printed in that VM's lifecycle block
  (or anywhere in the output when the VM cell is ``-``), with exit code 2 where the row says
  "exit 2", else 0.
* README.md, the Python example: each expression statement whose comment is a Python literal
  (``# 411 (ns, forward)``) must evaluate to it.

So a model change that moves a quoted number fails here until the page says the new one.
"""

from __future__ import annotations

import ast
import io
import re
import shlex
from contextlib import redirect_stderr, redirect_stdout
from functools import cache
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
VMM_MD = ROOT / "docs" / "vmm.md"
README = ROOT / "README.md"


@cache
def run_command(command: str) -> tuple[int, str]:
    """Exit code and stdout + stderr of one ``kvmclock ...`` command line, run in process."""
    from kvmclock import cli

    argv = shlex.split(command)
    assert argv[0] == "kvmclock", command
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(argv[1:])
    return code, out.getvalue() + err.getvalue()


# ------------------------------------------------------------------ console blocks
def console_blocks(text: str) -> list[tuple[str, list[str]]]:
    """(command, excerpt lines) of every ```console block whose first line is ``$ kvmclock``."""
    out = []
    for body in re.findall(r"```console\n(.*?)```", text, re.S):
        lines = body.rstrip("\n").split("\n")
        assert lines[0].startswith("$ kvmclock "), lines[0]
        out.append((lines[0][2:], lines[1:]))
    return out


def excerpt_matches(excerpt: list[str], output: str) -> list[str]:
    """The excerpt lines not found in ``output`` (in order: each after the previous match)."""
    lines = [ln.rstrip() for ln in output.split("\n")]
    missing = []
    pos = 0
    for want in excerpt:
        if want.strip() == "...":
            continue
        prefix = want.endswith(" ...")
        key = want[: -len(" ...")] if prefix else want.rstrip()
        for i in range(pos, len(lines)):
            if (lines[i].startswith(key) if prefix else lines[i] == key):
                pos = i + 1
                break
        else:
            missing.append(want)
    return missing


def test_excerpt_matching_is_strict() -> None:
    out = "a\n  b: 1 ns\n  c: 2 ns, more\n"
    assert excerpt_matches(["  b: 1 ns", "...", "  c: 2 ns ..."], out) == []
    assert excerpt_matches(["  b: 2 ns"], out) == ["  b: 2 ns"]  # a changed number
    assert excerpt_matches(["  c: 2 ns"], out) == ["  c: 2 ns"]  # a whole line must match
    assert excerpt_matches(["  c: 2 ns ...", "  b: 1 ns"], out) == ["  b: 1 ns"]  # order


VMM_BLOCKS = console_blocks(VMM_MD.read_text())


def test_vmm_md_has_console_blocks() -> None:
    commands = [c for c, _ in VMM_BLOCKS]
    assert "kvmclock simulate --scenario restore-shelf" in commands
    assert "kvmclock drift --tsc-khz 2593992 --seconds 60" in commands


@pytest.mark.parametrize(("command", "excerpt"), VMM_BLOCKS, ids=[c for c, _ in VMM_BLOCKS])
def test_console_block(command: str, excerpt: list[str]) -> None:
    code, output = run_command(command)
    assert code == 0, output
    assert excerpt_matches(excerpt, output) == []


# ------------------------------------------------------------------ the table of cases
def case_rows(text: str) -> list[list[str]]:
    """The cells of every row of the table whose header starts ``| case | command | VM |``."""
    lines = text.split("\n")
    start = next(i for i, ln in enumerate(lines) if ln.startswith("| case | command | VM |"))
    rows = []
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip().strip("|").split("|")])
    return rows


def lifecycle_block(output: str, vm: str) -> str:
    """The lifecycle block of ``vm`` in a one-profile ``kvmclock simulate`` text."""
    lines = output.split("\n")
    head = re.compile(rf"^  \S+: {re.escape(vm)} ")
    starts = [i for i, ln in enumerate(lines) if head.match(ln)]
    assert len(starts) == 1, f"one lifecycle block of {vm} expected, found {len(starts)}"
    block = [lines[starts[0]]]
    for ln in lines[starts[0] + 1 :]:
        if not ln.startswith("    "):
            break
        block.append(ln)
    return "\n".join(block)


def code_spans(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


CASES = case_rows(VMM_MD.read_text())


def test_case_table_is_read() -> None:
    assert len(CASES) >= 9
    assert all(len(r) == 7 for r in CASES), [len(r) for r in CASES]


@pytest.mark.parametrize("row", CASES, ids=[r[0] for r in CASES])
def test_case_row(row: list[str]) -> None:
    (command,) = code_spans(row[1])
    code, output = run_command(command)
    assert code == (2 if "exit 2" in " ".join(row) else 0), output
    vm = code_spans(row[2])
    where = lifecycle_block(output, vm[0]) if vm else output
    values = [v for cell in row[3:] for v in code_spans(cell)]
    assert values, "a row quotes at least one value"
    missing = [v for v in values if v not in where]
    assert missing == [], f"{command}: not printed for {vm}: {missing}\n{where}"


# ------------------------------------------------------------------ README's Python example
def readme_checks() -> list[tuple[str, Any]]:
    """Run the README's ``## Using it`` Python block; (expression, quoted literal) of each
    expression statement whose trailing comment is a literal, with its value computed."""
    text = README.read_text()
    section = text[text.index("## Using it") :]
    (code,) = re.findall(r"```python\n(.*?)```", section, re.S)[:1]
    src_lines = code.split("\n")
    ns: dict[str, Any] = {}
    checks: list[tuple[str, Any]] = []
    for stmt in ast.parse(code).body:
        seg = "\n".join(src_lines[stmt.lineno - 1 : stmt.end_lineno])
        quoted: Any = None
        comment = src_lines[(stmt.end_lineno or stmt.lineno) - 1].partition("#")[2].strip()
        for candidate in (comment, comment.split(" ")[0]):
            try:
                quoted = ast.literal_eval(candidate)
                break
            except (ValueError, SyntaxError):
                continue
        if isinstance(stmt, ast.Expr) and quoted is not None:
            value = eval(compile(ast.Expression(stmt.value), "README.md", "eval"), ns)
            checks.append((seg.split("#")[0].strip(), (value, quoted)))
        else:
            exec(compile(ast.Module([stmt], []), "README.md", "exec"), ns)
    return checks


def test_readme_python_example_values() -> None:
    checks = readme_checks()
    assert len(checks) >= 2  # get_time_scale and the drift prediction
    wrong = [(expr, got, quoted) for expr, (got, quoted) in checks if got != quoted]
    assert wrong == []
