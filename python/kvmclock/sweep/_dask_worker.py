"""A Dask worker preload of ``kvmclock sweep --dask local`` (kvmclock.sweep.execute): the
worker process ignores SIGINT, so Ctrl-C at the terminal (sent to the whole process group)
stops only the sweep's own process, which then closes the cluster quietly, instead of
every worker printing its tracebacks."""

from __future__ import annotations

import signal
import threading
from typing import Any


def dask_setup(worker: Any) -> None:
    """Ignore SIGINT in this worker process (when this is its main thread)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
