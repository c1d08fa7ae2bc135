"""Health latency under 500 idle/slowloris connections and 200 stalled handshakes.

Run: .venv/bin/python bench/slow_clients.py [SECONDS]   (default 10 s per figure)

A real director (twistd, its own process, CPU 0, its defaults:
``request_timeout`` 30 s, ``keepalive_timeout`` 2 min, log level info) and a
bare twisted.web TLS server (its own process, CPU 0, the director's
certificate, Twisted's defaults: 12 h of silence before a close, no request
timeout) take turns, ROUNDS times. For each, without and then with the hostile
load, a probe (its own process, CPU 1) opens a new TLS connection for each
``GET /v1/health`` at RATE a second for SECONDS (open loop: each latency is
counted from the time the request was scheduled, so a stall counts).

The hostile load is ``tests/hostile_clients.py`` (its own process, CPU 1):
250 TCP connections that send nothing, 250 slowloris connections (TLS, then a
request header one byte every 2 s) and 200 half ClientHellos, each reopened
when the server closes it. It is all open before the probe starts, and how
many of its connections are open when the probe ends is reported.

Measured: p50 / p99 / max of the health requests, their errors (a refused or
failed connection, a status other than 200, 30 s without an answer) and the
server's CPU during the slice. Printed and appended to bench/RESULTS.md.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (
    BASELINE,
    CLIENT_CPU,
    ROOT,
    answers,
    free_port,
    pinned,
    read_answer,
    record,
    run_loadgen,
    start_baseline,
    start_director,
    wait,
)
from bench.update_ingestion import cpu_seconds

HOSTILE = ROOT / "tests" / "hostile_clients.py"
LOAD = {"idle": 250, "slowloris": 250, "stalled": 200}
TRICKLE = 2.0
RATE = 20.0
ROUNDS = 2
HEALTH = b"GET /v1/health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


# ------------------------------------------------------------------- probe


async def probe(port: int, rate: float, seconds: float) -> dict[str, Any]:
    """Health requests on new TLS connections, on a fixed schedule."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # no CA store to load
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    errors = 0

    async def one(due: float) -> None:
        nonlocal errors
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port, ssl=context), 30
            )
            try:
                writer.write(HEALTH)
                status, _ = await asyncio.wait_for(read_answer(reader), 30)
            finally:
                writer.close()
        except (TimeoutError, OSError, ssl.SSLError, asyncio.IncompleteReadError):
            errors += 1
            return
        if status != 200:
            errors += 1
            return
        latencies.append(loop.time() - due)

    start = loop.time() + 0.05
    tasks = []
    for n in range(int(seconds * rate)):
        due = start + n / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(due)))
    await asyncio.gather(*tasks)
    return {"latencies": latencies, "errors": errors}


# ------------------------------------------------------------ hostile load


class Hostile:
    """``tests/hostile_clients.py`` holding its load against ``port``."""

    def __init__(self, port: int, folder: Path) -> None:
        self.status_file = folder / f"hostile-{port}.json"
        self.status_file.unlink(missing_ok=True)
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(HOSTILE),
                str(port),
                *(f"--{kind}={count}" for kind, count in LOAD.items()),
                f"--trickle={TRICKLE:g}",
                "--reconnect",
                f"--status={self.status_file}",
                "--limit=600",  # it stops by itself, whatever happens here
            ],
            stdout=subprocess.DEVNULL,
            preexec_fn=pinned(CLIENT_CPU),  # noqa: PLW1509 - a benchmark
        )
        wait(
            "the hostile load", lambda: self.status().get("all_open_after") is not None
        )

    def status(self) -> dict[str, Any]:
        try:
            status: dict[str, Any] = json.loads(self.status_file.read_text())
        except FileNotFoundError:
            return {}
        return status

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(30)


# ---------------------------------------------------------------- the run


def measure(
    name: str, port: int, pid: int, folder: Path, seconds: float, loaded: bool
) -> dict[str, Any]:
    """One slice: the probe against ``port``, with or without the load."""
    hostile = Hostile(port, folder) if loaded else None
    try:
        cpu, began = cpu_seconds(pid), time.monotonic()
        spec = {"port": port, "rate": RATE, "seconds": seconds}
        found: dict[str, Any] = run_loadgen(__file__, spec)
        found["cpu"] = cpu_seconds(pid) - cpu
        found["took"] = time.monotonic() - began
        found["held"] = hostile.status()["open"] if hostile else 0
    finally:
        if hostile is not None:
            hostile.stop()
    print(
        f"{name}, {'hostile load' if loaded else 'quiet'}: "
        f"{len(found['latencies'])} answered, {found['errors']} errors",
        file=sys.stderr,
    )
    return found


def table(results: dict[tuple[str, bool], list[dict[str, Any]]]) -> str:
    rows = [
        "| target | hostile connections held | `GET /v1/health` p50 / p99 / max, "
        f"new TLS connection each, {RATE:.0f}/s | answered | errors | server CPU |",
        "|---|---|---|---|---|---|",
    ]
    labels = {"director": "dcvix-director", "baseline": "bare twisted.web TLS"}
    for (name, loaded), slices in results.items():
        latencies = sorted(x for s in slices for x in s["latencies"])
        errors = sum(s["errors"] for s in slices)
        cpu = 100 * sum(s["cpu"] for s in slices) / sum(s["took"] for s in slices)
        held = "none"
        if loaded:
            at_end = min(s["held"] for s in slices)
            held = f"{sum(LOAD.values())} (at the end: ≥ {at_end})"
        figures = "—"
        if latencies:
            p50 = 1000 * statistics.median(latencies)
            p99 = 1000 * latencies[int(0.99 * (len(latencies) - 1))]
            figures = f"{p50:.1f} / {p99:.1f} / {1000 * latencies[-1]:.1f} ms"
        rows.append(
            f"| {labels[name]} | {held} | {figures} | {len(latencies)} | "
            f"{errors} | {cpu:.0f} % |"
        )
    return "\n".join(rows)


def main() -> None:
    if sys.argv[1:2] == ["--loadgen"]:
        spec = json.loads(sys.stdin.read())
        found = asyncio.run(probe(spec["port"], spec["rate"], spec["seconds"]))
        print(json.dumps(found))
        return
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    load_before = os.getloadavg()[0]
    results: dict[tuple[str, bool], list[dict[str, Any]]] = {
        (name, loaded): []
        for name in ("director", "baseline")
        for loaded in (False, True)
    }
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        port, data, director = start_director(folder / "director")
        baseline = None
        try:
            bare = free_port()
            baseline = start_baseline(
                BASELINE, str(bare), str(data / "server.crt"), str(data / "server.key")
            )
            wait("the baseline", lambda: answers(bare))
            targets = {
                "director": (port, director.pid),
                "baseline": (bare, baseline.pid),
            }
            for _round in range(ROUNDS):
                for target, (where, pid) in targets.items():
                    for loaded in (False, True):
                        results[target, loaded].append(
                            measure(target, where, pid, folder, seconds, loaded)
                        )
        finally:
            director.terminate()
            director.wait(30)
            if baseline is not None:
                baseline.terminate()
                baseline.wait(30)
    record(
        "bench/slow_clients.py",
        f"{seconds:g} s per figure, {ROUNDS} rounds; hostile load "
        f"{LOAD['idle']} idle + {LOAD['slowloris']} slowloris (a byte every "
        f"{TRICKLE:g} s) + {LOAD['stalled']} half ClientHellos, reopened when "
        "closed; director at its defaults (request_timeout 30 s, log level info); "
        f"machine load average {load_before:.1f} before, {os.getloadavg()[0]:.1f} "
        "after.",
        table(results),
    )


if __name__ == "__main__":
    main()
