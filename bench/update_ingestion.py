"""Agent update ingestion end to end, beside a bare twisted.web mTLS endpoint.

Run: .venv/bin/python bench/update_ingestion.py [SECONDS] [--agents N]
     [--py-spy FILE]   (default 12 s per figure, 100 agents)

A real director (twistd, its own process, CPU 0, logging at the default
``info``) enrols N simulated agents through the real ``POST /v1/agent/register``
(``auto_approve = token``): each has its own Ed25519 key and the certificate the
director's CA issued. A bare twisted.web TLS server (its own process, CPU 0, the
director's certificate, asking for and verifying client certificates against
the same CA) answering ``200 {}`` is the baseline. A load generator (its own
process, CPU 1, asyncio, TLS 1.3, HTTP/1.1 keep-alive) then drives each in a
closed loop over 20 kept-alive mTLS connections, each connection one agent
posting ``/v1/agent/update`` with a realistic report (20 sessions, stats, tags,
as dcvix/agent/report.py builds it) as soon as the previous answer is in. The
targets take turns in rounds, each round with the next 20 agents.

Measured: updates/s sustained, the latency of every update (p50/p99/max), the
director's CPU (utime + stime over the director's slices, in % of one core) and
RSS at the end. Targets: at least 0.6 x the baseline's throughput, at least
1,500 updates/s, p99 under 50 ms. The table is printed and appended to
bench/RESULTS.md with the machine and the git commit. ``--py-spy FILE`` records
a py-spy profile (speedscope JSON) of the director during its slices.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import http.client
import json
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

if not __package__:  # run as a script: make ``bench`` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

from bench.common import (
    BIN,
    CLIENT_CPU,
    client_context,
    free_port,
    pinned,
    read_answer,
    record,
    run_loadgen,
    start_baseline,
    start_director,
    wait,
)
from dcvix.common.pki import AGENT_CN_PREFIX

SESSIONS = 20
CONNECTIONS = 20
ROUNDS = 3
JOIN = "bench-join-token-0123456789"
UPDATE = "/v1/agent/update"
BASELINE_MTLS = """
import sys
from twisted.internet import endpoints, reactor, ssl
from twisted.web import resource, server

class Ok(resource.Resource):
    isLeaf = True
    def render_POST(self, request):
        request.setHeader(b"content-type", b"application/json")
        return b"{}"

cert = open(sys.argv[2], "rb").read() + open(sys.argv[3], "rb").read()
ca = ssl.Certificate.loadPEM(open(sys.argv[4], "rb").read())
options = ssl.PrivateCertificate.loadPEM(cert).options(ca)
endpoints.SSL4ServerEndpoint(reactor, int(sys.argv[1]), options,
                             interface="127.0.0.1").listen(server.Site(Ok()))
reactor.run()
"""


# ------------------------------------------------------------------ agents


def report(hostname: str, count: int = SESSIONS) -> dict[str, Any]:
    """An update as dcvix/agent/report.py builds it: ``count`` sessions, stats, tags."""
    created = "2026-12-07T09:00:00.123456Z"
    sessions = [
        {
            "id": f"{hostname}-s{n:02d}",
            "owner": f"user{n:02d}",
            "user": f"user{n:02d}",
            "num-of-connections": n % 2,
            "creation-time": created,
            "last-disconnection-time": "" if n % 2 else created,
            "licensing-mode": "DEMO",
            "storage-root": "",
            "type": "virtual",
            "status": "running",
            "x11-display": f":{n + 1}",
            "x11-authority": f"/run/user/{2000 + n}/dcv/{hostname}-s{n:02d}.xauth",
        }
        for n in range(count)
    ]
    return {
        "sessions": sessions,
        "stats": {
            "hostname": hostname,
            "free_memory": 12_345_678_912,
            "total_memory": 33_554_432_000,
            "cores": 8,
            "cpu_usage": 12.5,
            "load1": 0.42,
            "load5": 0.37,
            "load15": 0.3,
        },
        "tags": ["bench", "os=linux"],
        "update_interval": 30,
        "agent_port": 8445,
        "version": "0.1.0",
    }


def update_request(hostname: str, sessions: int = SESSIONS) -> str:
    body = json.dumps(report(hostname, sessions), separators=(",", ":"))
    return (
        f"POST {UPDATE} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        "User-Agent: Go-http-client/1.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nAccept-Encoding: gzip\r\n\r\n{body}"
    )


def enrol(port: int, count: int, folder: Path, first: int = 0) -> list[dict[str, str]]:
    """``count`` agents registered through the real route, their files written.

    They are numbered from ``first`` (hostnames and files), so that several
    calls can enrol one fleet side by side.
    """
    context = client_context()
    link = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=30)
    agents = []
    for n in range(first, first + count):
        key = ed25519.Ed25519PrivateKey.generate()
        guid = str(uuid.uuid4())
        hostname = f"bench-ws{n:05d}"
        csr = (
            x509.CertificateSigningRequestBuilder()
            .subject_name(
                x509.Name(
                    [x509.NameAttribute(NameOID.COMMON_NAME, AGENT_CN_PREFIX + guid)]
                )
            )
            .sign(key, None)
        )
        body = json.dumps(
            {
                "csr": base64.b64encode(
                    csr.public_bytes(serialization.Encoding.DER)
                ).decode(),
                "guid": guid,
                "hostname": hostname,
                "registrationToken": JOIN,
            }
        )
        link.request("POST", "/v1/agent/register", body=body)
        response = link.getresponse()
        answer = response.read()
        if response.status != 200:
            raise SystemExit(f"register {hostname}: {response.status} {answer!r}")
        key_file, cert_file = folder / f"{n}.key", folder / f"{n}.crt"
        key_file.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        cert_file.write_text(json.loads(answer)["certificate"])
        agents.append({"key": str(key_file), "cert": str(cert_file), "host": hostname})
    link.close()
    return agents


# ------------------------------------------------------------ load generator


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def closed_loop(
    port: int, agents: list[dict[str, str]], seconds: float, sessions: int = SESSIONS
) -> dict[str, Any]:
    """CONNECTIONS agents, each on its own kept-alive mTLS connection."""
    links = []
    for agent in agents:
        context = client_context()
        context.load_cert_chain(agent["cert"], agent["key"])
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
        text = update_request(agent["host"], sessions)
        links.append((reader, writer, text.encode()))
    errors = 0
    for reader, writer, request in links:  # warm up: one update each
        writer.write(request)
        status, _ = await read_answer(reader)
        errors += status != 200
    latencies: list[float] = []
    stop = time.perf_counter() + seconds

    async def drive(reader: Any, writer: Any, request: bytes) -> None:
        nonlocal errors
        while time.perf_counter() < stop:
            sent = time.perf_counter()
            writer.write(request)
            status, _ = await read_answer(reader)
            latencies.append(time.perf_counter() - sent)
            errors += status != 200

    started = time.perf_counter()
    await asyncio.gather(*(drive(*link) for link in links))
    took = time.perf_counter() - started
    for _, writer, _ in links:
        writer.close()
    return {"latencies": latencies, "took": took, "errors": errors}


def loadgen(spec: dict[str, Any]) -> dict[str, Any]:
    """Every measurement of ``spec`` (run in its own process)."""
    slice_ = spec["seconds"] / ROUNDS
    agents = spec["agents"]
    pid = spec["director_pid"]
    results: dict[str, Any] = {}
    measured: dict[str, dict[str, Any]] = {
        name: {"latencies": [], "took": 0.0, "errors": 0, "cpu": 0.0}
        for name in spec["targets"]
    }
    for round_ in range(ROUNDS):
        start = (round_ * CONNECTIONS) % len(agents)
        chosen = (agents * 2)[start : start + CONNECTIONS]
        for name, port in spec["targets"].items():
            cpu = cpu_seconds(pid) if name == "director" else 0.0
            done = asyncio.run(closed_loop(port, chosen, slice_))
            if name == "director":
                measured[name]["cpu"] += cpu_seconds(pid) - cpu
            for key in ("latencies", "took", "errors"):
                measured[name][key] += done[key]
    for name, found in measured.items():
        latencies = sorted(found["latencies"])
        results[name] = {
            "ups": len(latencies) / found["took"],
            "p50_ms": 1000 * statistics.median(latencies),
            "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "max_ms": 1000 * latencies[-1],
            "errors": found["errors"],
            "cpu_pct": 100 * found["cpu"] / found["took"],
        }
    results["director"]["rss_mb"] = rss_mb(pid)
    return results


# ---------------------------------------------------------------- the run


def table(results: dict[str, Any]) -> str:
    base = results["baseline"]["ups"]
    rows = [
        f"| target | updates/s, {CONNECTIONS} mTLS connections | vs baseline | "
        "p50 / p99 / max | CPU, RSS | errors | "
        "targets (≥ 0.6 x, ≥ 1,500/s, p99 < 50 ms) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, label in (
        ("director", f"`POST {UPDATE}`, {SESSIONS} sessions"),
        ("baseline", "bare twisted.web mTLS"),
    ):
        found = results[name]
        ratio = found["ups"] / base
        met = "—"
        use = "—"
        if name == "director":
            ok = ratio >= 0.6 and found["ups"] >= 1500 and found["p99_ms"] < 50
            met = "met" if ok else "**missed**"
            use = f"{found['cpu_pct']:.0f} %, {found['rss_mb']:.0f} MB"
        rows.append(
            f"| {label} | {found['ups']:,.0f} | {ratio:.2f} | "
            f"{found['p50_ms']:.1f} / {found['p99_ms']:.1f} / "
            f"{found['max_ms']:.1f} ms | {use} | {found['errors']} | {met} |"
        )
    return "\n".join(rows)


def main() -> None:
    if sys.argv[1:2] == ["--loadgen"]:
        print(json.dumps(loadgen(json.loads(sys.stdin.read()))))
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("seconds", nargs="?", type=float, default=12.0)
    parser.add_argument("--agents", type=int, default=100)
    parser.add_argument("--py-spy", dest="py_spy", type=Path)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        port, data, director = start_director(
            folder / "director",
            {
                "registration_token": JOIN,
                "auto_approve": "token",
                "register_rate": "100000",
            },
        )
        baseline = profiler = None
        try:
            (folder / "agents").mkdir()
            agents = enrol(port, max(args.agents, CONNECTIONS), folder / "agents")
            bare = free_port()
            baseline = start_baseline(
                BASELINE_MTLS,
                str(bare),
                str(data / "server.crt"),
                str(data / "server.key"),
                str(data / "ca.pem"),
            )
            wait("the baseline", lambda: bare_answers(bare))
            if args.py_spy is not None:
                profiler = subprocess.Popen(
                    [
                        *(BIN / "py-spy", "record", "--nonblocking"),
                        *("-f", "speedscope", "-o", str(args.py_spy)),
                        *("-p", str(director.pid)),
                    ],
                    stdout=subprocess.DEVNULL,
                    preexec_fn=pinned(CLIENT_CPU),  # noqa: PLW1509
                )
            spec = {
                "seconds": args.seconds,
                "agents": agents,
                "director_pid": director.pid,
                "targets": {"director": port, "baseline": bare},
            }
            results = run_loadgen(__file__, spec)
        finally:
            if profiler is not None:
                profiler.send_signal(2)
                profiler.wait(60)
            director.terminate()
            director.wait(30)
            if baseline is not None:
                baseline.terminate()
                baseline.wait(30)
    record(
        "bench/update_ingestion.py",
        f"{args.seconds:g} s per figure, {len(agents)} agents, closed loop; "
        "director at log level info.",
        table(results),
    )


def bare_answers(port: int) -> bool:
    """Whether the baseline completes a TLS handshake (it wants a certificate)."""
    try:
        with (
            socket.create_connection(("127.0.0.1", port), 1) as raw,
            client_context().wrap_socket(raw),
        ):
            return True
    except (OSError, ssl.SSLError):
        return False


if __name__ == "__main__":
    main()
