"""The DCV endpoints end to end, beside a bare twisted.web TLS endpoint.

Run: .venv/bin/python bench/dcv_endpoints.py [SECONDS]   (default 10 per figure)

A real director (twistd, its own process) enrols a real agent (twistd, its own
process, ``auto_approve = token``) whose ``dcv`` is the shipped simulator
holding 20 sessions, so the runtime is filled by real ``/v1/agent/update``
calls. A bare twisted.web TLS server (its own process, the director's
certificate) is the baseline. A load generator (its own process, asyncio,
TLS 1.3, HTTP/1.1 keep-alive) then measures, for the token verifier
(``POST /v1/user/authtokenverify``, a valid connection token, form body), the
resolver (``POST /resolveSession?sessionId=…``, the Gateway's form) and the
baseline (a POST answered ``200 {}``):

- throughput: 50 kept-alive connections, each sending its next request as soon
  as the answer is in (closed loop);
- latency: requests sent on a fixed schedule of 300 a second over a pool of
  kept-alive connections (open loop), each latency counted from the time the
  request was *scheduled*, so waiting for a free connection counts.

Targets: throughput at least 0.6 x the baseline's; p99 under 10 ms at 300/s.
The table is printed and appended to bench/RESULTS.md with the machine and the
git commit. Connection tokens are minted with the director's ``token.key``, as
``GET /v1/user/connectiontoken`` mints them; the verifier's path is the same.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import http.client
import json
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from twisted.internet.task import Clock

from bench.common import (
    BASELINE,
    BIN,
    SERVER_CPU,
    answers,
    client_context,
    free_port,
    read_answer,
    record,
    run_daemon,
    run_loadgen,
    start_baseline,
    wait,
    write_conf,
)
from dcvix.director.tokens import CONNECTION, USER, TokenService

SESSIONS = 20
OWNER = "benchuser"
HOSTNAME = "bench-ws"
JOIN = "bench-join-token-0123456789"
CONNECTIONS = 50
RATE = 300.0
OPEN_POOL = 32
ROUNDS = 3
YES = f'<auth result="yes"><username>{OWNER}</username></auth>'.encode()


def simulator(folder: Path) -> Path:
    """The shipped dcv simulator behind a wrapper, holding SESSIONS sessions."""
    state = folder / "dcv-state.json"
    wrapper = folder / "dcv"
    wrapper.write_text(
        f"#!/bin/sh\nexec '{BIN / 'dcvix-dcv-simulator'}' --state '{state}' \"$@\"\n"
    )
    wrapper.chmod(0o755)
    for n in range(SESSIONS):
        name = f"bench-{n:02d}"
        create = ["create-session", "--type", "virtual", "--owner", OWNER, name]
        subprocess.run([str(wrapper), *create], check=True, capture_output=True)
    return wrapper


@dataclass
class Fleet:
    director_port: int
    data: Path
    processes: list[subprocess.Popen[bytes]]

    def stop(self) -> None:
        for process in reversed(self.processes):
            process.terminate()
        for process in self.processes:
            process.wait(30)


def start_fleet(folder: Path, director_log: str = "warning") -> Fleet:
    port, data = free_port(), folder / "director" / "data"
    (folder / "director").mkdir(parents=True)
    policy = folder / "director" / "policydb"
    policy.mkdir()
    conf = folder / "director" / "dcvix-director.conf"
    write_conf(
        conf,
        {
            "director": {
                "director_host": "127.0.0.1",
                "director_port": str(port),
                "data_dir": str(data),
                "policydb_folder": str(policy),
                "registration_token": JOIN,
                "auto_approve": "token",
            },
            "gateway": {"gateways_list": "127.0.0.1"},
            # As bench/approvals_e2e.py: at info, each verification is a line.
            "log": {
                "directory": str(folder / "director" / "log"),
                "level": director_log,
            },
        },
    )
    fleet = Fleet(port, data, [])
    fleet.processes.append(
        run_daemon("dcvix-director", conf, folder / "director.out", SERVER_CPU)
    )
    wait("the director", lambda: answers(port))

    agent = folder / "agent"
    (agent / "data").mkdir(parents=True, mode=0o700)
    (agent / "data" / "ca.pem").write_bytes((data / "ca.pem").read_bytes())
    agent_conf = agent / "dcvix-agent.conf"
    write_conf(
        agent_conf,
        {
            "agent": {
                "director_host": "127.0.0.1",
                "director_port": str(port),
                "bind_address": "127.0.0.1",
                "agent_port": str(free_port()),
                "hostname": HOSTNAME,
                "data_dir": str(agent / "data"),
                "dcv_path": str(simulator(agent)),
                "registration_token": JOIN,
            },
            "log": {"directory": str(agent / "log")},
        },
    )
    # Not pinned: its dcv runs (every 30 s) go to whichever CPU is idler.
    fleet.processes.append(
        run_daemon("dcvix-agent", agent_conf, folder / "agent.out", None)
    )
    return fleet


def connection_token(data: Path, session_id: str) -> str:
    key = base64.b64decode((data / "token.key").read_text())
    clock = Clock()
    clock.advance(time.time())
    token, _ = TokenService(key, clock).issue(
        OWNER,
        USER,
        CONNECTION,
        dt.timedelta(hours=1),
        serverId=HOSTNAME,
        sessionId=session_id,
    )
    return token


# ------------------------------------------------------------ load generator


def request_text(path: str, body: str, content_type: str) -> str:
    """One HTTP/1.1 POST, as text (ASCII) to pass to the load generator."""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Content-Type: {content_type}\r\nContent-Length: {len(body)}\r\n\r\n"
        f"{body}"
    )


class Link:
    """One kept-alive TLS connection sending the target's requests in turn."""

    def __init__(self, target: dict[str, Any]) -> None:
        self._requests = [r.encode("ascii") for r in target["requests"]]
        self._expected = target["expect"].encode()
        self._index = 0
        self.errors = 0

    async def open(self, port: int) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context()
        )

    async def send(self) -> None:
        self.writer.write(self._requests[self._index % len(self._requests)])
        self._index += 1
        status, body = await read_answer(self.reader)
        if status != 200 or (self._expected and body != self._expected):
            self.errors += 1


async def closed_loop(port: int, target: dict[str, Any], seconds: float) -> Any:
    links = [Link(target) for _ in range(CONNECTIONS)]
    await asyncio.gather(*(link.open(port) for link in links))
    for link in links:  # warm up: one request each
        await link.send()
    done = 0
    stop = time.perf_counter() + seconds

    async def drive(link: Link) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            await link.send()
            done += 1

    started = time.perf_counter()
    await asyncio.gather(*(drive(link) for link in links))
    took = time.perf_counter() - started
    for link in links:
        link.writer.close()
    return {"done": done, "took": took, "errors": sum(link.errors for link in links)}


async def open_loop(port: int, target: dict[str, Any], seconds: float) -> Any:
    links = [Link(target) for _ in range(OPEN_POOL)]
    await asyncio.gather(*(link.open(port) for link in links))
    for link in links:
        await link.send()
    idle: asyncio.Queue[Link] = asyncio.Queue()
    for link in links:
        idle.put_nowait(link)
    latencies: list[float] = []
    loop = asyncio.get_running_loop()

    async def one(due: float) -> None:
        link = await idle.get()
        try:
            await link.send()
        finally:
            idle.put_nowait(link)
        latencies.append(loop.time() - due)

    start = loop.time() + 0.05
    count = int(seconds * RATE)
    tasks = []
    for n in range(count):
        due = start + n / RATE
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(due)))
    await asyncio.gather(*tasks)
    for link in links:
        link.writer.close()
    return {"latencies": latencies, "errors": sum(link.errors for link in links)}


def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """Every measurement of ``spec`` (run in its own process).

    The targets take turns, ROUNDS times, so that whatever else the machine
    does weighs on each of them alike.
    """
    slice_ = spec["seconds"] / ROUNDS
    done = dict.fromkeys(spec["targets"], 0)
    took = dict.fromkeys(spec["targets"], 0.0)
    errors = dict.fromkeys(spec["targets"], 0)
    latencies: dict[str, list[float]] = {name: [] for name in spec["targets"]}
    for _round in range(ROUNDS):
        for name, target in spec["targets"].items():
            closed = asyncio.run(closed_loop(target["port"], target, slice_))
            done[name] += closed["done"]
            took[name] += closed["took"]
            opened = asyncio.run(open_loop(target["port"], target, slice_))
            latencies[name] += opened["latencies"]
            errors[name] += closed["errors"] + opened["errors"]
    results: dict[str, Any] = {}
    for name, measured in latencies.items():
        measured.sort()
        results[name] = {
            "rps": done[name] / took[name],
            "p50_ms": 1000 * statistics.median(measured),
            "p99_ms": 1000 * measured[int(0.99 * (len(measured) - 1))],
            "max_ms": 1000 * measured[-1],
            "errors": errors[name],
        }
    return results


# ---------------------------------------------------------------- the run


def targets(fleet: Fleet, baseline: int) -> dict[str, Any]:
    ids = [f"bench-{n:02d}" for n in range(SESSIONS)]
    form = "application/x-www-form-urlencoded"
    verifier = [
        request_text(
            "/v1/user/authtokenverify",
            urllib.parse.urlencode(
                {
                    "sessionId": i,
                    "authenticationToken": connection_token(fleet.data, i),
                    "clientAddress": "192.0.2.10",
                }
            ),
            form,
        )
        for i in ids
    ]
    resolver = [
        request_text(
            f"/resolveSession?sessionId={i}&transport=HTTP&clientIpAddress=192.0.2.10",
            "",
            form,
        )
        for i in ids
    ]
    bare = [request_text("/verify", "sessionId=x&authenticationToken=y", form)]
    director = fleet.director_port
    return {
        "verifier": {"port": director, "requests": verifier, "expect": YES.decode()},
        "resolver": {"port": director, "requests": resolver, "expect": ""},
        "baseline": {"port": baseline, "requests": bare, "expect": ""},
    }


def resolvable(port: int) -> bool:
    context = client_context()
    try:
        link = http.client.HTTPSConnection("127.0.0.1", port, context=context)
        link.request("POST", f"/resolveSession?sessionId=bench-{SESSIONS - 1:02d}")
        status = link.getresponse().status
        link.close()
    except OSError:
        return False
    return status == 200


def table(results: dict[str, Any]) -> str:
    base = results["baseline"]["rps"]
    rows = [
        "| endpoint | req/s, 50 connections | vs baseline | p50 / p99 / max at "
        f"{RATE:.0f}/s | errors | targets (≥ 0.6 x, p99 < 10 ms) |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in (
        ("verifier", "`POST /v1/user/authtokenverify`"),
        ("resolver", "`POST /resolveSession`"),
        ("baseline", "bare twisted.web TLS"),
    ):
        found = results[name]
        ratio = found["rps"] / base
        met = "—"
        if name != "baseline":
            ok = ratio >= 0.6 and found["p99_ms"] < 10
            met = "met" if ok else "**missed**"
        rows.append(
            f"| {label} | {found['rps']:,.0f} | {ratio:.2f} | "
            f"{found['p50_ms']:.1f} / {found['p99_ms']:.1f} / "
            f"{found['max_ms']:.1f} ms | {found['errors']} | {met} |"
        )
    return "\n".join(rows)


def main() -> None:
    if sys.argv[1:2] == ["--loadgen"]:
        print(json.dumps(loadgen(json.loads(sys.stdin.read()))))
        return
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 10.0
    with tempfile.TemporaryDirectory() as folder:
        fleet = start_fleet(Path(folder))
        baseline = None
        try:
            wait("the agent's sessions", lambda: resolvable(fleet.director_port))
            port = free_port()
            baseline = start_baseline(
                BASELINE,
                str(port),
                str(fleet.data / "server.crt"),
                str(fleet.data / "server.key"),
            )
            wait("the baseline", lambda: answers(port))
            spec = {"seconds": seconds, "targets": targets(fleet, port)}
            results = run_loadgen(__file__, spec)
        finally:
            fleet.stop()
            if baseline is not None:
                baseline.terminate()
                baseline.wait(30)
    record("bench/dcv_endpoints.py", f"{seconds:g} s per figure.", table(results))


if __name__ == "__main__":
    main()
