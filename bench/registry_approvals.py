"""What one approval costs as the fleet grows: agents.db with N registered agents.

Run: .venv/bin/python bench/registry_approvals.py [N ...]   (default 10 10000)

For each fleet size N, the registry holds N registered agents and 200 pending
ones; each pending agent is approved through ``SqliteRegistry.approve`` on the
director's one-thread database pool, as ``POST /v1/admin/agents/{guid}/approve``
and ``dcvixctl agents approve`` do (hostname check, state change and audit row
in one transaction, on a WAL file with synchronous=NORMAL). Before the registry
interface, approve read every registered agent, so it grew with N (~60 ms at
2,000); the hostname check is now one indexed lookup and a partial unique index.
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads

from dcvix.common.threads import ThreadPoolService
from dcvix.director.registry.engine import pool_runner, to_db_time
from dcvix.director.registry.sqlite import SqliteRegistry
from dcvix.director.registry.sqlite_schema import connect

PENDING = 200

# guid, hostname, state, created_at, registered_at, key_fingerprint
Row = tuple[str, str, str, str | None, str | None, str]


def populate(path: Path, registered: int) -> list[str]:
    """N registered agents and PENDING pending ones, written in one go."""
    now = to_db_time(dt.datetime.now(dt.UTC))
    connection = connect(path)
    rows: list[Row] = [
        (str(uuid.uuid4()), f"ws{n:06d}", "registered", now, now, "ab" * 32)
        for n in range(registered)
    ]
    waiting: list[Row] = [
        (str(uuid.uuid4()), f"new{n:06d}", "pending", now, None, "cd" * 32)
        for n in range(PENDING)
    ]
    connection.executemany(
        "INSERT INTO agents (guid, hostname, state, created_at, registered_at, "
        "key_fingerprint, cert_serial, tags) VALUES (?, ?, ?, ?, ?, ?, '', '')",
        rows + waiting,
    )
    connection.close()
    return [row[0] for row in waiting]


async def approve_all(registry: SqliteRegistry, guids: list[str]) -> list[float]:
    now = dt.datetime.now(dt.UTC)
    timings = []
    for guid in guids:
        start = time.perf_counter()
        await registry.approve(guid, "bench", now)
        timings.append((time.perf_counter() - start) * 1000)
    return timings


async def run(sizes: list[int]) -> None:
    pool = ThreadPoolService("db", 1, IReactorFromThreads(reactor))
    pool.startService()
    try:
        for size in sizes:
            with tempfile.TemporaryDirectory() as folder:
                path = Path(folder) / "agents.db"
                guids = populate(path, size)
                registry = SqliteRegistry(path, pool_runner(pool))
                timings = await approve_all(registry, guids)
                registry.close()
            print(
                f"approve with {size:>6,} registered agents: "
                f"median {statistics.median(timings):.2f} ms, "
                f"p95 {statistics.quantiles(timings, n=20)[18]:.2f} ms "
                f"({len(timings)} approvals)"
            )
    finally:
        pool.stopService()
    print(f"(SQLite {sqlite3.sqlite_version})")


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10, 10_000]
    task.react(lambda _reactor: Deferred.fromCoroutine(run(sizes)))


if __name__ == "__main__":
    main()
