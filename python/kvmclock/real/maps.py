"""/proc/self/maps: find the vDSO data mappings (``[vvar]``, ``[vvar_vclock]``).

Since Linux 6.13 the x86 vDSO data is split: ``[vvar]`` holds the generic vDSO data and
``[vvar_vclock]`` the clock pages, whose first page is the KVM pvclock page (vCPU 0's
``pvclock_vcpu_time_info`` in its first 32 bytes; arch/x86/entry/vdso/vma.c ``vvar_vclock_fault``).
"""

from __future__ import annotations

from dataclasses import dataclass

VVAR_VCLOCK = "[vvar_vclock]"
VVAR = "[vvar]"


@dataclass(frozen=True)
class Mapping:
    """One line of /proc/<pid>/maps."""

    start: int
    end: int
    perms: str
    name: str

    @property
    def size(self) -> int:
        return self.end - self.start


def parse_maps(text: str) -> list[Mapping]:
    """Parse the text of /proc/<pid>/maps (fs/proc/task_mmu.c ``show_map_vma``)."""
    out: list[Mapping] = []
    for line in text.splitlines():
        parts = line.split(maxsplit=5)
        if len(parts) < 5:
            continue
        lo, hi = parts[0].split("-")
        out.append(
            Mapping(int(lo, 16), int(hi, 16), parts[1], parts[5].strip() if len(parts) > 5 else "")
        )
    return out


def read_maps(path: str = "/proc/self/maps") -> list[Mapping]:
    """The current process's mappings."""
    with open(path, encoding="utf-8") as f:
        return parse_maps(f.read())


def find_mapping(name: str, maps: list[Mapping] | None = None) -> Mapping | None:
    """First mapping called ``name`` (e.g. ``[vvar_vclock]``), or None."""
    for m in read_maps() if maps is None else maps:
        if m.name == name:
            return m
    return None


def count_mappings(path: str = "/proc/self/maps") -> int:
    """Number of lines of /proc/self/maps (used by leak tests)."""
    with open(path, encoding="utf-8") as f:
        return sum(1 for _ in f)
