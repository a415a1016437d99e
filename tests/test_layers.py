"""The house reads bottom-up: a room never imports a higher one at run time.

machine (hardware) -> timekeeping -> kernel (a kernel on a machine) -> kvm (KVM turns a kernel
into machines) -> vmm (userspace driving KVM) -> sim, scenario, real, drift -> render -> cli.
Imports under ``if TYPE_CHECKING:`` are type hints only and do not count.  The one allowed
upward import is ``Kernel.load_kvm`` importing ``kvmclock.kvm.x86`` when it is called (loading
the KVM module into a kernel), which this test lists explicitly.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "python" / "kvmclock"

#: (module prefix, rank): the longest matching prefix decides
RANKS: list[tuple[str, int]] = [
    ("kvmclock", 0),  # the package root: the native math and its types
    ("kvmclock._native", 0),
    ("kvmclock.errors", 0),
    ("kvmclock.counters", 0),
    ("kvmclock.limits", 0),
    ("kvmclock.profiles", 0),
    ("kvmclock.trace", 0),
    ("kvmclock.machine", 0),
    ("kvmclock.kvm.requests", 0),
    ("kvmclock.timekeeping", 1),
    ("kvmclock.kernel", 2),
    ("kvmclock.kvm", 3),
    ("kvmclock.vmm", 4),
    ("kvmclock.sim", 5),
    ("kvmclock.scenario", 5),
    ("kvmclock.real", 5),
    ("kvmclock.drift", 5),
    ("kvmclock.decode", 5),
    ("kvmclock.sweep", 5),
    ("kvmclock.render", 6),
    ("kvmclock.cli", 7),
    ("kvmclock.__main__", 7),
]
ALLOWED_UPWARD = {("kvmclock.kernel", "kvmclock.kvm.x86")}


def rank(module: str) -> int:
    best = max(
        (p for p, _ in RANKS if module == p or module.startswith(p + ".")),
        key=len,
        default=None,
    )
    if best is None:
        raise KeyError(module)
    return dict(RANKS)[best]


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _runtime_imports(path: Path) -> set[str]:
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if "TYPE_CHECKING" in ast.unparse(node.test):
                for n in node.orelse:
                    self.visit(n)
                return
            self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.level == 0 and node.module and node.module.split(".")[0] == "kvmclock":
                found.add(node.module)

        def visit_Import(self, node: ast.Import) -> None:
            for alias in node.names:
                if alias.name.split(".")[0] == "kvmclock":
                    found.add(alias.name)

    Visitor().visit(ast.parse(path.read_text(encoding="utf-8")))
    return found


MODULES = sorted(ROOT.rglob("*.py"))


def test_every_module_has_a_room() -> None:
    missing = [
        m
        for m in map(_module_name, MODULES)
        if not any(m == p or m.startswith(p + ".") for p, _ in RANKS[1:]) and m != "kvmclock"
    ]
    assert not missing, f"give these modules a rank in tests/test_layers.py: {missing}"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: _module_name(p))
def test_no_upward_import(path: Path) -> None:
    me = _module_name(path)
    bad = [
        dep
        for dep in sorted(_runtime_imports(path))
        if rank(dep) > rank(me) and (me, dep) not in ALLOWED_UPWARD
    ]
    assert not bad, f"{me} (rank {rank(me)}) imports higher rooms at run time: {bad}"


def test_rule_catches_an_upward_import(tmp_path: Path) -> None:
    src = tmp_path / "x.py"
    src.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from kvmclock.cli import main\n"
        "from kvmclock.sim.scenarios import run_scenario\n",
        encoding="utf-8",
    )
    assert _runtime_imports(src) == {"kvmclock.sim.scenarios"}
    assert rank("kvmclock.sim.scenarios") > rank("kvmclock.kvm.x86")
    assert rank("kvmclock.kvm.requests") < rank("kvmclock.kvm.x86")
