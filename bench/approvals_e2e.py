"""Approving agents end to end, beside a bare twisted.web TLS endpoint.

Run: .venv/bin/python bench/approvals_e2e.py [N ...]   (default 10 10000)

For each fleet size N a real director (twistd, its own process) starts on an
agents.db holding N registered agents and 200 pending ones; this script, in its
own process, logs in as an admin and approves the 200 one by one over one
kept-alive TLS connection (``POST /v1/admin/agents/{guid}/approve``), timing
each request. The baseline is a bare twisted.web TLS server (its own process,
the same certificate) answering the same POSTs with ``200 {}``, measured the
same way in the same run: what the director adds is the difference.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

if not __package__:  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import BASELINE, BIN, answers, connection, free_port, wait

PENDING = 200
AUTH = '#!/bin/sh\nread user\nread password\n[ "$password" = bench-pw ]\n'


class Director:
    """A director in ``folder`` with external logins (admin / bench-pw)."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.port = free_port()
        self.data = folder / "data"
        self.conf = folder / "dcvix-director.conf"
        policy = folder / "policydb"
        policy.mkdir(parents=True)
        (policy / "users.json").write_text('[{"id": "admin", "admin": true}]')
        auth = folder / "auth.sh"
        auth.write_text(AUTH)
        auth.chmod(0o700)
        self.conf.write_text(
            f"[director]\ndirector_host = 127.0.0.1\ndirector_port = {self.port}\n"
            f"data_dir = {self.data}\npolicydb_folder = {policy}\n"
            "auth_type = external\n"
            f"[external_auth]\nexternal_command = {auth}\n"
            f"[log]\ndirectory = {folder / 'log'}\nlevel = warning\n"
        )
        self.conf.chmod(0o600)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(
            [BIN / "twistd", "-n", "--pidfile=", "dcvix-director", "--conf", self.conf],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait("the director", lambda: answers(self.port))

    def stop(self) -> None:
        assert self.process is not None
        self.process.terminate()
        self.process.wait(30)


def populate(database: Path, registered: int) -> list[str]:
    """N registered agents and PENDING pending ones, written in one go."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M:%S.%f+00:00")
    Row = tuple[str, str, str, str, str | None, str]
    rows: list[Row] = [
        (str(uuid.uuid4()), f"ws{n:06d}", "registered", now, now, "ab" * 32)
        for n in range(registered)
    ]
    waiting: list[Row] = [
        (str(uuid.uuid4()), f"new{n:06d}", "pending", now, None, "cd" * 32)
        for n in range(PENDING)
    ]
    with sqlite3.connect(database) as db:
        db.executemany(
            "INSERT INTO agents (guid, hostname, state, created_at, registered_at, "
            "key_fingerprint, cert_serial, tags) VALUES (?, ?, ?, ?, ?, ?, '', '')",
            rows + waiting,
        )
    return [row[0] for row in waiting]


def timed_posts(port: int, paths: list[str], cookie: str = "") -> list[float]:
    """Milliseconds of each POST, in order, on one kept-alive connection."""
    link = connection(port)
    headers = {"Cookie": f"dcvix_session={cookie}"} if cookie else {}
    timings = []
    for path in paths:
        start = time.perf_counter()
        link.request("POST", path, headers=headers)
        response = link.getresponse()
        body = response.read()
        timings.append((time.perf_counter() - start) * 1000)
        if response.status != 200:
            raise SystemExit(f"{path}: {response.status} {body!r}")
    link.close()
    return timings


def login(port: int) -> str:
    link = connection(port)
    body = json.dumps({"userID": "admin", "password": "bench-pw"})
    link.request("POST", "/v1/admin/login", body=body)
    response = link.getresponse()
    response.read()
    cookie = response.getheader("Set-Cookie") or ""
    link.close()
    return cookie.split(";")[0].split("=", 1)[1]


def summary(timings: list[float]) -> str:
    p95 = statistics.quantiles(timings, n=20)[18]
    return f"median {statistics.median(timings):.2f} ms, p95 {p95:.2f} ms"


def run(size: int, folder: Path) -> None:
    director = Director(folder / f"director-{size}")
    director.start()  # a fresh install: the CA and agents.db
    director.stop()
    guids = populate(director.data / "agents.db", size)
    director.start()
    baseline = None
    try:
        cookie = login(director.port)
        approvals = timed_posts(
            director.port,
            [f"/v1/admin/agents/{guid}/approve" for guid in guids],
            cookie,
        )
        port = free_port()
        baseline = subprocess.Popen(
            [
                sys.executable,
                "-c",
                BASELINE,
                str(port),
                str(director.data / "server.crt"),
                str(director.data / "server.key"),
            ]
        )
        wait("the baseline", lambda: answers(port))
        bare = timed_posts(port, [f"/approve/{n}" for n in range(PENDING)])
    finally:
        director.stop()
        if baseline is not None:
            baseline.terminate()
            baseline.wait(30)
    print(
        f"{size:>6,} registered agents: approve {summary(approvals)}; "
        f"bare twisted.web TLS {summary(bare)}"
    )


def main() -> None:
    sizes = [int(a) for a in sys.argv[1:]] or [10, 10_000]
    with tempfile.TemporaryDirectory() as folder:
        for size in sizes:
            run(size, Path(folder))


if __name__ == "__main__":
    main()
