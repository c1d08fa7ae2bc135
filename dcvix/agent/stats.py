"""Host statistics in the Go agent's fields and units (reference §12.6).

``free_memory`` is the memory available to new work (``MemAvailable``), not
Go's ``MemFree``: free memory alone looks near zero on any busy Linux host,
whose page cache is reclaimable. The CPU figure is the usage since the previous
call, so it never waits (the first call primes it).
"""

from __future__ import annotations

import os
from typing import Any

import psutil


class StatsCollector:
    """Collects stats without blocking: no sleeping CPU sample."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        psutil.cpu_percent(interval=None)  # prime the non-blocking sampler

    def collect(self) -> dict[str, Any]:
        """The ``stats`` object of an update, in Go's key order."""
        memory = psutil.virtual_memory()
        load1, load5, load15 = os.getloadavg()
        return {
            "hostname": self.hostname,
            "free_memory": int(memory.available),
            "total_memory": int(memory.total),
            "cores": psutil.cpu_count(logical=False) or psutil.cpu_count() or 0,
            "cpu_usage": float(psutil.cpu_percent(interval=None)),
            "load1": round(load1, 2),
            "load5": round(load5, 2),
            "load15": round(load15, 2),
        }
