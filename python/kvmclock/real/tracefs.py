"""Capture the four KVM clock trace events into a private tracefs instance.

The events (arch/x86/kvm/trace.h): ``kvm_update_master_clock``, ``kvm_track_tsc``,
``kvm_write_tsc_offset``, ``kvm_pvclock_update``. A new instance directory
``instances/kvmclock-<pid>-<random>`` is created (kernel/trace/trace.c ``instance_mkdir``), only
its own ``events/kvm/<event>/enable`` files are written, and it is removed afterwards
(``instance_rmdir``), so the global trace buffer and every other instance are untouched.

When tracefs is not mounted, ``capture_private_namespace`` runs the workload in a child process
inside a private mount namespace (``unshare -m --propagation private``) that mounts tracefs on a
temporary directory: the mount disappears with the child, the host's mount table is unchanged.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from typing import TypeVar

from kvmclock.errors import RealResourceUnavailable

EVENTS = (
    "kvm_update_master_clock",
    "kvm_track_tsc",
    "kvm_write_tsc_offset",
    "kvm_pvclock_update",
)

T = TypeVar("T")


def find_tracefs(mounts: str = "/proc/self/mounts") -> str | None:
    """Mount point of tracefs in this mount namespace, or None."""
    try:
        with open(mounts, encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) >= 3 and parts[2] == "tracefs":
                    return parts[1].replace("\\040", " ")
    except OSError:
        return None
    return None


@contextlib.contextmanager
def trace_instance(root: str, events: tuple[str, ...] = EVENTS) -> Iterator[str]:
    """Create a private instance under ``root/instances``, enable ``events``; always rmdir it.

    Yields the instance directory; read ``<dir>/trace`` before leaving the block.
    """
    instances = os.path.join(root, "instances")
    if not os.path.isdir(instances):
        raise RealResourceUnavailable(errno.ENOENT, f"{instances}: no tracefs instances directory")
    path = os.path.join(instances, f"kvmclock-{os.getpid()}-{secrets.token_hex(4)}")
    try:
        os.mkdir(path)
    except PermissionError as exc:
        raise RealResourceUnavailable(errno.EACCES, f"{path}: cannot create instance") from exc
    try:
        for ev in events:
            enable = os.path.join(path, "events", "kvm", ev, "enable")
            if not os.path.exists(enable):
                raise RealResourceUnavailable(errno.ENOENT, f"trace event kvm:{ev} not available")
            with open(enable, "w", encoding="ascii") as f:
                f.write("1")
        with open(os.path.join(path, "tracing_on"), "w", encoding="ascii") as f:
            f.write("1")
        yield path
    finally:
        with contextlib.suppress(OSError):
            with open(os.path.join(path, "tracing_on"), "w", encoding="ascii") as f:
                f.write("0")
        # rmdir of an instance drops its buffers and event files (instance_rmdir)
        os.rmdir(path)


def capture(workload: Callable[[], T], root: str | None = None) -> tuple[T, str]:
    """Run ``workload`` with the four events enabled in a private instance; return its
    result and the instance's ``trace`` text (ftrace text format)."""
    mount = root or find_tracefs()
    if mount is None:
        raise RealResourceUnavailable(
            errno.ENOENT, "tracefs is not mounted in this mount namespace"
        )
    with trace_instance(mount) as inst:
        result = workload()
        with open(os.path.join(inst, "trace"), encoding="utf-8") as f:
            text = f.read()
    return result, text


def capture_private_namespace(timeout: float = 60.0) -> tuple[dict[str, object], str]:
    """Run the built-in verify scenario in ``unshare -m --propagation private`` with tracefs
    mounted privately; return (the child's JSON result, the trace text)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise RealResourceUnavailable(errno.ENOENT, "unshare(1) not found")
    proc = subprocess.run(
        [unshare, "-m", "--propagation", "private", sys.executable, "-m", __name__, "--child"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RealResourceUnavailable(
            errno.EPERM, f"private trace capture failed: {proc.stderr.strip()[-400:]}"
        )
    doc = json.loads(proc.stdout)
    return doc["result"], doc["trace"]


def _child() -> int:
    """Inside a private mount namespace: mount tracefs on a temp dir, capture, print JSON."""
    from kvmclock.real.verify import run_real_scenarios  # runtime import: avoids a cycle

    with tempfile.TemporaryDirectory(prefix="kvmclock-tracefs-") as mnt:
        subprocess.run(["mount", "-t", "tracefs", "nodev", mnt], check=True)
        try:
            result, text = capture(lambda: run_real_scenarios().to_json(), root=mnt)
        finally:
            subprocess.run(["umount", mnt], check=False)
    json.dump({"result": result, "trace": text}, sys.stdout)
    return 0


if __name__ == "__main__":  # pragma: no cover - exercised through capture_private_namespace
    if sys.argv[1:] == ["--child"]:
        raise SystemExit(_child())
    raise SystemExit("usage: python -m kvmclock.real.tracefs --child (run via unshare)")
