"""Figures for the director's per-request work, in process (no network).

Run: .venv/bin/python bench/director_hot_paths.py

- update ingestion: runtime.parse_report of one agent report with 20 sessions,
  the work behind every POST /v1/agent/update (a 2,000-agent fleet reporting
  every 30 s sends about 67 a second);
- token check: TokenService.check of a login token, done on every API call;
- agent registry read: registry get_txn on a 2,000-agent agents.db, done on every
  mTLS request (register, renew, update).
"""

from __future__ import annotations

import datetime as dt
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from twisted.internet.task import Clock

from dcvix.director.registry.sql import create_registered_txn, get_txn
from dcvix.director.registry.sqlite_schema import connect
from dcvix.director.runtime import parse_report
from dcvix.director.tokens import TokenService


def per_second(work: Callable[[], object], seconds: float = 1.0) -> float:
    done, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        work()
        done += 1
    return done / (time.perf_counter() - start)


def report(sessions: int) -> dict[str, object]:
    return {
        "sessions": [
            {
                "id": f"dcvix_{uuid.uuid4()}",
                "owner": f"user{n}",
                "user": "",
                "num-of-connections": n % 2,
                "creation-time": "2026-07-01T08:12:44.101203Z",
                "last-disconnection-time": "0001-01-01T00:00:00Z",
                "licensing-mode": "DEMO",
                "storage-root": "",
                "type": "virtual",
                "status": "",
                "x11-display": f":{n}",
                "x11-authority": f"/run/user/1001/dcv/s{n}.xauth",
            }
            for n in range(sessions)
        ],
        "stats": {
            "hostname": "ws01",
            "free_memory": 54545088512,
            "total_memory": 66996871168,
            "cores": 8,
            "cpu_usage": 1.16,
            "load1": 0.11,
            "load5": 0.13,
            "load15": 0.15,
        },
        "tags": ["gpu", "linux"],
        "update_interval": 30,
        "agent_port": 8446,
        "version": "bench",
    }


def main() -> None:
    now = dt.datetime.now(dt.UTC)
    body = report(20)
    rate = per_second(
        lambda: parse_report("g", "ws01", body, "10.0.0.1", now, 8446, None)
    )
    print(f"update ingestion (20 sessions): {rate:,.0f} reports/s")

    tokens = TokenService(b"k" * 32, Clock())
    token, _ = tokens.issue("alice", "admin")
    rate = per_second(lambda: tokens.check(token))
    print(f"login token check:              {rate:,.0f} /s")

    with tempfile.TemporaryDirectory() as folder:
        connection = connect(Path(folder) / "agents.db")
        guids = [str(uuid.uuid4()) for _ in range(2000)]
        for n, guid in enumerate(guids):
            create_registered_txn(connection, guid, f"ws{n}", "ab" * 32, "", now, "b")
        rate = per_second(lambda: get_txn(connection, guids[1000]))
        print(f"registry read (2,000 agents):   {rate:,.0f} /s")
        connection.close()
    print(f"(SQLite {sqlite3.sqlite_version}, one core)")


if __name__ == "__main__":
    main()
