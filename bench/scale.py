"""The director at fleet scale: memory, listings and ingestion with N agents.

Run: .venv/bin/python bench/scale.py [--agents N] [--seconds S] [--quick]
     [--py-spy FILE [--profile listing|ingestion]]
     (default 10,000 agents, 18 s of ingestion per target)

Two real directors (twistd, each its own process, CPU 0, ``auto_approve =
token``, a high ``register_rate``, log level ``info``, admins logging in
through an external command) are filled by a load process (CPU 1): N agents on
the first, 100 on the second, each enrolled through the real ``POST
/v1/agent/register`` (its own Ed25519 key, made by the loader; a few
registrations at a time) and then posting one report with 3 sessions over its
own mTLS connection (30,000 sessions for 10,000 agents). ``[housekeeper]
max_age`` is an hour so that no server goes offline while the run lasts.

Measured, from the load process:

- the director's RSS once every report is in, and at the end (VmRSS, with
  VmHWM, the peak); target under 250 MB with 10,000 agents and 30,000 sessions;
- ``GET /v1/servers`` (Go's full array), a page of it (``limit=50``), a
  filtered one (``online=true&q=ws0001``) and ``GET /v1/sessions`` (Go's full
  array), each 8 times on one kept-alive TLS connection with an admin login,
  to the last byte read: the first (nothing rendered yet), then median and
  max of the other 7; target under 300 ms;
- a Prometheus scrape of each director, ``GET /metrics`` on its HTTPS port
  (``[metrics] https``, with the bearer token) and on its plain loopback
  listener, 8 times each 1.1 s apart (the fleet's gauges are computed at most
  once a second, so each scrape computes them, as Prometheus's every 15 s
  would): first, then median and max; target under 100 ms;
- ingestion as bench/update_ingestion.py measures it (its closed loop: 20
  agents, each on its own kept-alive mTLS connection, posting its 3-session
  report again as soon as the answer is in) on the big director with agents
  picked across the whole fleet, on the 100-agent one, and on the bare
  twisted.web mTLS baseline, taking turns in ROUNDS rounds; target: the big
  fleet's updates/s within 10 % of the small one's.

The table is printed and appended to bench/RESULTS.md with the machine and the
git commit (``--quick``, 500 agents and 3 s, only prints it). ``--py-spy
FILE`` records the big director (speedscope JSON) during the listings, or the
ingestion with ``--profile ingestion``.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import signal
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.approvals_e2e import AUTH, login
from bench.common import (
    BIN,
    connection,
    free_port,
    read_answer,
    record,
    run_loadgen,
    start_baseline,
    wait,
)
from bench.common import start_director as common_start_director
from bench.update_ingestion import (
    BASELINE_MTLS,
    CONNECTIONS,
    JOIN,
    bare_answers,
    closed_loop,
    cpu_seconds,
    enrol,
    update_request,
)

SESSIONS = 3
SMALL = 100
ENROLLERS = 4  # registrations in flight at once (one process each)
REPORTERS = 16  # first reports in flight at once
CONNECT_TRIES = 5
REPEATS = 8  # the first, then 7
REFRESH_GAP = 1.1  # seconds between scrapes: the gauges are reused for 1 s
SCRAPE_TOKEN = "bench-scrape-token"  # noqa: S105 - a throwaway bench
ROUNDS = 6
LISTINGS = {
    "servers": "/v1/servers",
    "page": "/v1/servers?limit=50",
    "filtered": "/v1/servers?online=true&q=ws0001",
    "sessions": "/v1/sessions",
}


# ------------------------------------------------------------------ fleet


def enrol_fleet(port: int, count: int, folder: Path) -> list[dict[str, str]]:
    """``count`` agents enrolled by ENROLLERS processes side by side."""
    folder.mkdir()
    share = -(-count // ENROLLERS)
    with ProcessPoolExecutor(ENROLLERS) as pool:
        parts = [
            pool.submit(enrol, port, min(share, count - first), folder, first)
            for first in range(0, count, share)
        ]
        return [agent for part in parts for agent in part.result()]


async def first_reports(port: int, agents: list[dict[str, str]]) -> int:
    """Each agent's first report over its own mTLS connection; the failures."""
    gate = asyncio.Semaphore(REPORTERS)
    failures = 0

    async def one(agent: dict[str, str]) -> None:
        nonlocal failures
        # Not client_context(): loading the system's CAs, needless here, took
        # most of the loader's time per agent.
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        context.load_cert_chain(agent["cert"], agent["key"])
        async with gate:
            for attempt in range(CONNECT_TRIES):
                try:
                    reader, writer = await asyncio.open_connection(
                        "127.0.0.1", port, ssl=context
                    )
                    break
                except ConnectionResetError:
                    # Seen once in 10,000 on a loaded machine: a loopback
                    # port reused while the director still held its last use.
                    if attempt == CONNECT_TRIES - 1:
                        raise
                    await asyncio.sleep(0.1)
            writer.write(update_request(agent["host"], SESSIONS).encode())
            status, _ = await read_answer(reader)
            writer.close()
        failures += status != 200

    await asyncio.gather(*(one(agent) for agent in agents))
    return failures


def memory(pid: int) -> dict[str, float]:
    """VmRSS and VmHWM of a process, in MB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            found[name] = int(value.split()[0]) / 1024
    return found


# ---------------------------------------------------------------- listings


def timed_gets(port: int, cookie: str, path: str) -> dict[str, Any]:
    """REPEATS GETs of ``path`` on one kept-alive connection, to the last byte.

    The first of a kind is kept apart: it finds nothing rendered yet (as the
    first listing after a start, or after every server reported anew).
    """
    link = connection(port)
    headers = {"Cookie": f"dcvix_session={cookie}"}
    timings, body = [], b""
    for _ in range(REPEATS):
        start = time.perf_counter()
        link.request("GET", path, headers=headers)
        response = link.getresponse()
        body = response.read()
        timings.append((time.perf_counter() - start) * 1000)
        if response.status != 200:
            raise SystemExit(f"GET {path}: {response.status} {body[:200]!r}")
    link.close()
    answer = json.loads(body)
    items = answer["servers"] if isinstance(answer, dict) else answer
    return {
        "first_ms": timings[0],
        "median_ms": statistics.median(timings[1:]),
        "max_ms": max(timings[1:]),
        "items": len(items),
        "mb": len(body) / 1e6,
    }


# ---------------------------------------------------------------- scrapes


def timed_scrapes(port: int, tls: bool) -> dict[str, Any]:
    """REPEATS scrapes of ``/metrics``, REFRESH_GAP apart, to the last byte."""
    link = (
        connection(port)
        if tls
        else http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    )
    headers = {"Authorization": f"Bearer {SCRAPE_TOKEN}"}
    timings, body = [], b""
    for number in range(REPEATS):
        if number:
            time.sleep(REFRESH_GAP)  # past the gauges' once-a-second reuse
        start = time.perf_counter()
        link.request("GET", "/metrics", headers=headers)
        response = link.getresponse()
        body = response.read()
        timings.append((time.perf_counter() - start) * 1000)
        if response.status != 200:
            raise SystemExit(f"GET /metrics: {response.status} {body[:200]!r}")
    link.close()
    return {
        "first_ms": timings[0],
        "median_ms": statistics.median(timings[1:]),
        "max_ms": max(timings[1:]),
        "items": body.count(b"\n"),
        "mb": len(body) / 1e6,
    }


# --------------------------------------------------------------- ingestion


def spread(agents: list[dict[str, str]], round_: int) -> list[dict[str, str]]:
    """CONNECTIONS agents picked across the whole fleet, others each round."""
    step = max(len(agents) // CONNECTIONS, 1)
    return [
        agents[(k * step + round_ * (step // ROUNDS or 1)) % len(agents)]
        for k in range(CONNECTIONS)
    ]


def ingestion(
    targets: dict[str, tuple[int, list[dict[str, str]], int | None]], seconds: float
) -> dict[str, Any]:
    """Closed-loop updates on each target, taking turns ROUNDS times."""
    measured: dict[str, dict[str, Any]] = {
        name: {"latencies": [], "took": 0.0, "errors": 0, "cpu": 0.0}
        for name in targets
    }
    names = list(targets)
    for round_ in range(ROUNDS):
        # Each target goes first in one round: an order effect (caches, the
        # loader's own state) cannot favour one.
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            port, agents, pid = targets[name]
            cpu = cpu_seconds(pid) if pid else 0.0
            done = asyncio.run(
                closed_loop(port, spread(agents, round_), seconds / ROUNDS, SESSIONS)
            )
            if pid:
                measured[name]["cpu"] += cpu_seconds(pid) - cpu
            for key in ("latencies", "took", "errors"):
                measured[name][key] += done[key]
    results = {}
    for name, found in measured.items():
        latencies = sorted(found["latencies"])
        results[name] = {
            "ups": len(latencies) / found["took"],
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "errors": found["errors"],
            "cpu_pct": 100 * found["cpu"] / found["took"],
        }
    return results


# ------------------------------------------------------------ load process


def profiler(spec: dict[str, Any], pid: int) -> subprocess.Popen[bytes] | None:
    """py-spy on the big director, when asked for."""
    if not spec["py_spy"]:
        return None
    return subprocess.Popen(
        [
            *(BIN / "py-spy", "record", "--nonblocking"),
            *("-f", "speedscope", "-o", spec["py_spy"], "-p", str(pid)),
        ],
        stdout=subprocess.DEVNULL,
    )


def stop_profiler(process: subprocess.Popen[bytes] | None) -> None:
    if process is not None:
        process.send_signal(signal.SIGINT)
        process.wait(60)


def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """Fill both directors, then measure them (run in its own process, CPU 1)."""
    results: dict[str, Any] = {"fill": {}}
    fleets = {}
    for name, director in spec["directors"].items():
        started = time.perf_counter()
        agents = enrol_fleet(
            director["port"], director["agents"], Path(spec["folder"]) / name / "agents"
        )
        enrolled = time.perf_counter()
        failures = asyncio.run(first_reports(director["port"], agents))
        results["fill"][name] = {
            "enrol_s": enrolled - started,
            "report_s": time.perf_counter() - enrolled,
            "failures": failures,
        }
        fleets[name] = agents
    big = spec["directors"]["big"]
    results["rss_filled"] = {
        name: memory(d["pid"]) for name, d in spec["directors"].items()
    }
    spy = profiler(spec, big["pid"]) if spec["profile"] == "listing" else None
    for name, director in spec["directors"].items():
        cookie = login(director["port"])
        results[name] = {
            what: timed_gets(director["port"], cookie, path)
            for what, path in LISTINGS.items()
        }
        results[name]["scrape_tls"] = timed_scrapes(director["port"], True)
        results[name]["scrape"] = timed_scrapes(director["metrics"], False)
    stop_profiler(spy)
    spy = profiler(spec, big["pid"]) if spec["profile"] == "ingestion" else None
    results["ingestion"] = ingestion(
        {
            "big": (big["port"], fleets["big"], big["pid"]),
            "small": (
                spec["directors"]["small"]["port"],
                fleets["small"],
                spec["directors"]["small"]["pid"],
            ),
            "baseline": (spec["baseline"], fleets["big"], None),
        },
        spec["seconds"],
    )
    stop_profiler(spy)
    results["rss_end"] = {
        name: memory(d["pid"]) for name, d in spec["directors"].items()
    }
    return results


# ---------------------------------------------------------------- the run


@dataclass
class Director:
    port: int
    data: Path
    process: subprocess.Popen[bytes]
    metrics: int


def start_director(folder: Path) -> Director:
    """A director with auto-approval, admin ``admin``/``bench-pw``, long max_age.

    Its metrics listen on a free loopback port and on its HTTPS port, behind
    SCRAPE_TOKEN.
    """
    folder.mkdir(parents=True)
    token = folder / "scrape-token"
    token.write_text(SCRAPE_TOKEN)
    token.chmod(0o600)
    metrics = free_port()
    policy = folder / "policydb"
    policy.mkdir(parents=True)
    (policy / "users.json").write_text('[{"id": "admin", "admin": true}]')
    auth = folder / "auth.sh"
    auth.write_text(AUTH)
    auth.chmod(0o700)
    port, data, process = common_start_director(
        folder,
        {
            "registration_token": JOIN,
            "auto_approve": "token",
            "register_rate": "1000000",
            "auth_type": "external",
        },
        {
            "external_auth": {"external_command": str(auth)},
            "housekeeper": {"max_age": "3600"},
            "metrics": {
                "listen": f"127.0.0.1:{metrics}",
                "token_file": str(token),
                "https": "true",
            },
        },
    )
    return Director(port, data, process, metrics)


def start_bare(data: Path) -> tuple[int, subprocess.Popen[bytes]]:
    """The bare twisted.web mTLS server, trusting the big director's agents."""
    port = free_port()
    process = start_baseline(
        BASELINE_MTLS,
        str(port),
        str(data / "server.crt"),
        str(data / "server.key"),
        str(data / "ca.pem"),
    )
    wait("the baseline", lambda: bare_answers(port))
    return port, process


def run(args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    """Start the servers, run the load process, stop them; its results."""
    processes: list[subprocess.Popen[bytes]] = []
    try:
        big = start_director(folder / "big")
        processes.append(big.process)
        small = start_director(folder / "small")
        processes.append(small.process)
        baseline, bare = start_bare(big.data)
        processes.append(bare)
        spec = {
            "folder": str(folder),
            "seconds": args.seconds,
            "py_spy": str(args.py_spy) if args.py_spy else "",
            "profile": args.profile,
            "baseline": baseline,
            "directors": {
                "big": {
                    "port": big.port,
                    "metrics": big.metrics,
                    "pid": big.process.pid,
                    "agents": args.agents,
                },
                "small": {
                    "port": small.port,
                    "metrics": small.metrics,
                    "pid": small.process.pid,
                    "agents": min(SMALL, args.agents),
                },
            },
        }
        try:
            results: dict[str, Any] = run_loadgen(__file__, spec)
        except subprocess.CalledProcessError as error:
            tail = error.stderr[-3000:]
            raise SystemExit(f"the load process failed:\n{tail}") from None
        return results
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(30)


# ------------------------------------------------------------------ report


def listing_row(label: str, small: dict[str, Any], big: dict[str, Any]) -> str:
    def cell(found: dict[str, Any]) -> str:
        return (
            f"{found['first_ms']:.0f}; {found['median_ms']:.0f} / "
            f"{found['max_ms']:.0f} ms ({found['items']:,} items, "
            f"{found['mb']:.2f} MB)"
        )

    return f"| {label} | {cell(small)} | {cell(big)} |"


def table(results: dict[str, Any], agents: int) -> str:
    small_n = min(SMALL, agents)
    rows = [
        f"| measure | {small_n:,} agents | {agents:,} agents | target "
        f"(at 10,000 agents) |",
        "|---|---|---|---|",
    ]

    def rss(key: str, name: str) -> str:
        found = results[key][name]
        return f"{found['VmRSS']:.0f} MB (peak {found['VmHWM']:.0f} MB)"

    big_rss = results["rss_end"]["big"]["VmRSS"]
    rows.append(
        f"| director RSS, all reports in | {rss('rss_filled', 'small')} | "
        f"{rss('rss_filled', 'big')} | |"
    )
    rows.append(
        f"| director RSS, at the end | {rss('rss_end', 'small')} | "
        f"{rss('rss_end', 'big')} | < 250 MB: {verdict(big_rss < 250)} |"
    )
    for what, path in LISTINGS.items():
        small, big = results["small"][what], results["big"][what]
        target = ""
        if what in ("servers", "sessions"):
            first = f"{verdict(big['first_ms'] < 300)} on the first"
            target = f"< 300 ms: {verdict(big['max_ms'] < 300)}; {first}"
        row = listing_row(f"`GET {path}`, first; then median / max", small, big)
        rows.append(f"{row} {target} |")
    for what, label in (
        ("scrape_tls", "`GET /metrics` on the HTTPS port"),
        ("scrape", "`GET /metrics` on the loopback listener"),
    ):
        small, big = results["small"][what], results["big"][what]
        row = listing_row(f"{label}, first; then median / max", small, big)
        rows.append(f"{row} < 100 ms: {verdict(big['max_ms'] < 100)} |")
    flow = results["ingestion"]
    base = flow["baseline"]["ups"]

    def ingest(found: dict[str, Any]) -> str:
        return (
            f"{found['ups']:,.0f}/s ({found['ups'] / base:.2f} x bare), "
            f"p50 {found['p50_ms']:.1f} / p99 {found['p99_ms']:.1f} ms, "
            f"CPU {found['cpu_pct']:.0f} %, {found['errors']} errors"
        )

    ratio = flow["big"]["ups"] / flow["small"]["ups"]
    rows.append(
        f"| `POST /v1/agent/update`, {SESSIONS} sessions, {CONNECTIONS} mTLS "
        f"connections | {ingest(flow['small'])} | {ingest(flow['big'])} | "
        f"≥ 0.9 x the small fleet: {ratio:.2f} x, {verdict(ratio >= 0.9)} |"
    )
    bare = flow["baseline"]
    rows.append(
        f"| bare twisted.web mTLS, same clients | | {bare['ups']:,.0f}/s, "
        f"p50 {bare['p50_ms']:.1f} / p99 {bare['p99_ms']:.1f} ms, "
        f"{bare['errors']} errors | — |"
    )
    return "\n".join(rows)


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def fill_text(results: dict[str, Any]) -> str:
    parts = []
    for name, found in results["fill"].items():
        parts.append(
            f"{name}: enrolled in {found['enrol_s']:.0f} s, first reports in "
            f"{found['report_s']:.0f} s, {found['failures']} failed"
        )
    return "; ".join(parts)


def main() -> None:
    if sys.argv[1:2] == ["--loadgen"]:
        print(json.dumps(loadgen(json.loads(sys.stdin.read()))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--agents", type=int, default=0, help="default 10,000")
    parser.add_argument("--seconds", type=float, default=0.0, help="default 18")
    parser.add_argument("--quick", action="store_true", help="500 agents, 3 s")
    parser.add_argument("--py-spy", dest="py_spy", type=Path)
    parser.add_argument(
        "--profile", choices=("listing", "ingestion"), default="listing"
    )
    parser.add_argument("--note", default="", help="a sentence for RESULTS.md")
    args = parser.parse_args()
    args.agents = args.agents or (500 if args.quick else 10_000)
    args.seconds = args.seconds or (3.0 if args.quick else 18.0)
    if args.agents < CONNECTIONS:
        parser.error(f"--agents must be at least {CONNECTIONS}")
    with tempfile.TemporaryDirectory() as name:
        results = run(args, Path(name))
    text = table(results, args.agents)
    details = (
        f"{args.agents:,} agents with {SESSIONS} sessions each; {args.seconds:g} s "
        f"of ingestion per target; listings {REPEATS} times each (the first "
        f"apart); directors at log level info. {fill_text(results)}."
    )
    if args.quick:  # a smoke run: not a figure to keep
        print(f"{details}\n\n{text}")
        return
    record("bench/scale.py", f"{details} {args.note}".strip(), text)


if __name__ == "__main__":
    main()
