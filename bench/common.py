"""What the end-to-end benchmarks share.

Free ports and waiting, the bare twisted.web TLS baseline, daemons and load
generators pinned to their own CPU, a raw HTTP/1.1 answer reader, and the
RESULTS.md record (machine details and git commit above each table).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import http.client
import json
import os
import platform
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

BIN = Path(sys.executable).parent
ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "RESULTS.md"
RESULTS_INTRO = "Runs of the benchmarks that record them here, newest last."
# A bare twisted.web TLS server answering ``200 {}`` to any GET or POST.
# Arguments: port, certificate file, key file.
BASELINE = """
import sys
from twisted.internet import endpoints, reactor, ssl
from twisted.web import resource, server

class Ok(resource.Resource):
    isLeaf = True
    def render_POST(self, request):
        request.setHeader(b"content-type", b"application/json")
        return b"{}"
    render_GET = render_POST

cert = open(sys.argv[2], "rb").read() + open(sys.argv[3], "rb").read()
options = ssl.PrivateCertificate.loadPEM(cert).options()
endpoints.SSL4ServerEndpoint(reactor, int(sys.argv[1]), options,
                             interface="127.0.0.1").listen(server.Site(Ok()))
reactor.run()
"""
SERVER_CPU, CLIENT_CPU = 0, 1


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def wait(what: str, ready: Callable[[], bool], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: not ready after {timeout} s")
        time.sleep(0.1)


def client_context() -> ssl.SSLContext:
    """Checks nothing: the benchmarks measure, the tests check."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def connection(port: int) -> http.client.HTTPSConnection:
    return http.client.HTTPSConnection(
        "127.0.0.1", port, context=client_context(), timeout=30
    )


def answers(port: int) -> bool:
    """Whether ``GET /v1/health`` is answered (any status)."""
    try:
        link = connection(port)
        link.request("GET", "/v1/health")
        link.getresponse().read()
        link.close()
    except OSError:
        return False
    return True


def pinned(cpu: int) -> Any:
    """A preexec_fn keeping a process on one CPU: servers on one, clients on another.

    With two CPUs or more, the director (or the baseline) and the load generator
    never compete for one; the director is one reactor thread anyway.
    """
    cpus = os.cpu_count() or 1

    def pin() -> None:
        if cpus > 1:
            os.sched_setaffinity(0, {cpu % cpus})

    return pin


def run_daemon(
    plugin: str, conf: Path, log: Path, cpu: int | None
) -> subprocess.Popen[bytes]:
    """``twistd -n <plugin> --conf <conf>``, output to ``log``, on ``cpu``."""
    with log.open("ab") as output:
        return subprocess.Popen(
            [BIN / "twistd", "-n", "--pidfile=", plugin, "--conf", conf],
            cwd=conf.parent,
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=None if cpu is None else pinned(cpu),  # noqa: PLW1509
        )


def write_conf(path: Path, sections: dict[str, dict[str, str]]) -> None:
    lines = []
    for name, keys in sections.items():
        lines.append(f"[{name}]")
        lines += [f"{key} = {value}" for key, value in keys.items()]
    path.write_text("\n".join(lines) + "\n")
    path.chmod(0o600)


def start_baseline(script: str, *args: str) -> subprocess.Popen[bytes]:
    """A baseline server (``script``, Python source) on the servers' CPU."""
    return subprocess.Popen(
        [sys.executable, "-c", script, *args],
        preexec_fn=pinned(SERVER_CPU),  # noqa: PLW1509 - a benchmark
    )


def run_loadgen(script: str, spec: dict[str, Any], *args: str) -> Any:
    """``script --loadgen ARGS`` on the clients' CPU: ``spec`` in, JSON out."""
    done = subprocess.run(
        [sys.executable, script, "--loadgen", *args],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        check=True,
        preexec_fn=pinned(CLIENT_CPU),
    )
    return json.loads(done.stdout)


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    """Status and body of one HTTP/1.1 answer (Content-Length or chunked)."""
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    headers = head.lower()
    marker = headers.find(b"\r\ncontent-length:")
    if marker >= 0:
        end = headers.index(b"\r\n", marker + 2)
        return status, await reader.readexactly(int(headers[marker + 17 : end]))
    body = b""
    while True:
        size = int((await reader.readuntil(b"\r\n")).strip(), 16)
        chunk = await reader.readexactly(size + 2)
        if size == 0:
            return status, body
        body += chunk[:-2]


def machine() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (
        f"{platform.node()}: {cpu}, {os.cpu_count()} CPUs, "
        f"Python {platform.python_version()}, {platform.system()} "
        f"{platform.release()}"
    )


def commit() -> str:
    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=ROOT, capture_output=True, text=True, check=False
        )
        return done.stdout.strip()

    dirty = " (with uncommitted changes)" if git("status", "--porcelain") else ""
    return (git("rev-parse", "--short", "HEAD") or "unknown") + dirty


def record(bench: str, details: str, table: str) -> None:
    """Print ``table`` under a heading and append both to bench/RESULTS.md.

    The heading names ``bench`` (``bench/x.py``) and the time; the line under it
    the machine, the git commit and ``details``.
    """
    when = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    header = f"## {bench}, {when}\n\n{machine()}; commit {commit()}; {details}\n"
    print(header)
    print(table)
    with RESULTS.open("a", encoding="utf-8") as out:
        if out.tell() == 0:
            out.write(f"# Benchmark results\n\n{RESULTS_INTRO}\n")
        out.write(f"\n{header}\n{table}\n")


def start_director(
    home: Path,
    keys: Mapping[str, str] | None = None,
    sections: Mapping[str, Mapping[str, str]] | None = None,
    cpu: int = SERVER_CPU,
) -> tuple[int, Path, subprocess.Popen[bytes]]:
    """A director (twistd, on ``cpu``, logging at info) living in ``home``.

    ``keys`` go to ``[director]`` beside its address and folders, ``sections``
    are more sections. Returns once it answers: its port, its ``data_dir`` and
    the process.
    """
    port, data, policy = free_port(), home / "data", home / "policydb"
    policy.mkdir(parents=True, exist_ok=True)
    conf = home / "dcvix-director.conf"
    director = {
        "director_host": "127.0.0.1",
        "director_port": str(port),
        "data_dir": str(data),
        "policydb_folder": str(policy),
        **(keys or {}),
    }
    written = {"director": director} | {k: dict(v) for k, v in (sections or {}).items()}
    written["log"] = {"directory": str(home / "log"), "level": "info"}
    written.setdefault("metrics", {"listen": ""})  # several directors at once
    write_conf(conf, written)
    process = run_daemon("dcvix-director", conf, home / "director.out", cpu)
    wait("the director", lambda: answers(port))
    return port, data, process
