"""A director and its agents as real twistd processes, driven like an admin would.

:class:`Fleet` starts daemons in a test's folder and stops every one of them at
the end; ``dcvixctl`` runs as a subprocess; HTTPS calls, served certificates and
log lines are read from the outside, as an operator would see them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509

from daemons import DaemonProcess, free_port
from dcvix.common.pki import load_certificates, load_private_key
from dcvix.director.registry import AgentRecord
from dcvix.director.registry.sql import get_txn, list_txn
from dcvix.director.registry.sqlite_schema import connect

DCVIXCTL = str(Path(sys.executable).parent / "dcvixctl")


def mode(path: Path) -> int:
    """The permission bits of ``path``."""
    return stat.S_IMODE(path.stat().st_mode)


def wait_for(what: str, condition: Callable[[], object], timeout: float = 15.0) -> Any:
    """Poll ``condition`` until it is truthy and return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not after {timeout} s: {what}")
        time.sleep(0.1)


def unverified_context() -> ssl.SSLContext:
    """A client context that checks nothing (to look at what a server serves)."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def served_certificate(port: int) -> x509.Certificate:
    """The certificate a TLS server on 127.0.0.1 hands a new connection."""
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        unverified_context().wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def certificate_file(path: Path) -> x509.Certificate:
    """The first certificate of a PEM file."""
    return load_certificates(path.read_bytes())[0]


def private_key_file(path: Path) -> Any:
    """The private key of a PEM file."""
    return load_private_key(path.read_bytes())


def https(
    port: int,
    path: str,
    *,
    cafile: Path | None = None,
    cert: Path | None = None,
    key: Path | None = None,
    method: str = "GET",
    body: object = None,
) -> tuple[int, Any]:
    """One request to ``https://127.0.0.1:<port><path>``: status and JSON body.

    With ``cafile`` the server must chain to it and carry the IP SAN 127.0.0.1;
    without, nothing is checked. ``cert``/``key`` are the client certificate.

    Raises:
        ssl.SSLError: the server refused the handshake (or the client certificate).
    """
    context = (
        ssl.create_default_context(cafile=str(cafile))
        if cafile
        else unverified_context()
    )
    if cert is not None:
        context.load_cert_chain(str(cert), str(key))
    connection = http.client.HTTPSConnection(
        "127.0.0.1", port, context=context, timeout=10
    )
    try:
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=data)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


class Daemon(DaemonProcess):
    """A :class:`DaemonProcess` with the log reading tests need."""

    def log_text(self) -> str:
        """Everything the daemon wrote to stdout and stderr, all starts together."""
        if not self.output.exists():
            return ""
        return self.output.read_text(errors="replace")

    def mark(self) -> int:
        """A position in the output; :meth:`log_since` reads what comes after."""
        return len(self.log_text())

    def log_since(self, mark: int) -> str:
        """The output written after ``mark``."""
        return self.log_text()[mark:]

    def wait_log(
        self, text: str, since: int = 0, count: int = 1, timeout: float = 15.0
    ) -> str:
        """Wait until ``text`` appears ``count`` times after ``since``."""
        wait_for(
            f"{count} x {text!r} in {self.plugin}'s output:\n{self.log_since(since)}",
            lambda: self.log_since(since).count(text) >= count,
            timeout,
        )
        return self.log_since(since)

    def restart(self) -> None:
        """Stop (SIGTERM, waited for) and start again with the same config."""
        self.stop()
        self.start()

    @property
    def pid(self) -> int:
        """The running process's id."""
        assert self.process is not None
        assert self.process.poll() is None, f"{self.plugin} is not running"
        return self.process.pid


class Director(Daemon):
    """The director: its CA files and ``dcvixctl`` against its config."""

    @property
    def ca_file(self) -> Path:
        """``ca.pem``."""
        return self.data_dir / "ca.pem"

    @property
    def server_crt(self) -> Path:
        """``server.crt``, also the director's client certificate."""
        return self.data_dir / "server.crt"

    @property
    def server_key(self) -> Path:
        """``server.key``."""
        return self.data_dir / "server.key"

    def ca_certificate(self) -> x509.Certificate:
        """The CA certificate."""
        return certificate_file(self.ca_file)

    def ctl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """``dcvixctl --conf <conf> <args>``; with ``check``, exit status 0."""
        done = subprocess.run(
            [DCVIXCTL, "--conf", str(self.conf), *args],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        if check:
            assert done.returncode == 0, (done.returncode, done.stdout, done.stderr)
        return done

    def listing(self, state: str | None = None) -> list[list[str]]:
        """``dcvixctl agents list [--state S]`` as rows of cells (header dropped)."""
        args = ["agents", "list"] + (["--state", state] if state else [])
        lines = self.ctl(*args).stdout.splitlines()
        if lines and lines[0].startswith("no "):
            return []
        assert lines[0].split()[:3] == ["GUID", "HOSTNAME", "STATE"], lines
        return [line.split() for line in lines[1:]]

    def listed(self, state: str | None = None) -> dict[str, str]:
        """GUID → hostname of the agents ``agents list`` shows (in ``state``)."""
        return {row[0]: row[1] for row in self.listing(state)}

    def record(self, guid: str) -> AgentRecord | None:
        """The agent's row in ``agents.db``, read directly."""
        with contextlib.closing(connect(self.data_dir / "agents.db")) as db:
            return get_txn(db, guid)

    def records(self) -> list[AgentRecord]:
        """Every row of ``agents.db``."""
        with contextlib.closing(connect(self.data_dir / "agents.db")) as db:
            return list_txn(db)


class Agent(Daemon):
    """An agent: its identity files, as the test reads them."""

    def context(self) -> ssl.SSLContext:
        """Health is open to anyone: do not check the certificate while waiting.

        (An agent with a pre-deployed ``ca.pem`` serves a self-signed certificate
        until it is enrolled.)
        """
        return unverified_context()

    @property
    def guid(self) -> str:
        """``agent.guid``."""
        return (self.data_dir / "agent.guid").read_text()

    @property
    def ca_file(self) -> Path:
        """The agent's copy of the director CA."""
        return self.data_dir / "ca.pem"

    def certificate_on_disk(self) -> x509.Certificate:
        """``agent.crt``."""
        return certificate_file(self.certificate)

    def served(self) -> x509.Certificate:
        """What the agent's listener serves now."""
        return served_certificate(self.port)


@dataclass
class Fleet:
    """Daemons of one test, all stopped by :meth:`stop_all`."""

    folder: Path

    def __post_init__(self) -> None:
        self.started: list[Daemon] = []

    def _start(self, daemon: Daemon, wait: bool) -> None:
        self.started.append(daemon)
        daemon.start(wait)

    def director(self, start: bool = True, **keys: str) -> Director:
        """A director on a free port, ``[director]`` keys as given."""
        director = Director(
            "dcvix-director",
            self.folder / "director",
            free_port(),
            extra={"director": dict(keys)},
        )
        if start:
            self._start(director, True)
        return director

    def agent(
        self,
        director: Director,
        name: str,
        *,
        hostname: str | None = None,
        predeploy_ca: bool = False,
        start: bool = True,
        **keys: str,
    ) -> Agent:
        """An agent in folder ``name``, registering with ``director``.

        ``hostname`` defaults to ``name``; None for the key left out (the OS host
        name). ``predeploy_ca`` copies the director's ``ca.pem`` into its
        ``data_dir`` before the first start.
        """
        settings = {
            "director_host": "127.0.0.1",
            "director_port": str(director.port),
            "hostname": name if hostname is None else hostname,
            **keys,
        }
        if not settings["hostname"]:
            del settings["hostname"]
        agent = Agent(
            "dcvix-agent", self.folder / name, free_port(), extra={"agent": settings}
        )
        if predeploy_ca:
            agent.data_dir.mkdir(parents=True, mode=0o700)
            shutil.copyfile(director.ca_file, agent.ca_file)
        if start:
            self._start(agent, True)
        return agent

    def start(self, *daemons: Daemon) -> None:
        """Start several daemons at once, then wait until each is healthy."""
        for daemon in daemons:
            self._start(daemon, False)
        for daemon in daemons:
            daemon.wait_healthy()

    def stop_all(self) -> None:
        """Stop every daemon started, agents first."""
        for daemon in reversed(self.started):
            with contextlib.suppress(Exception):
                daemon.stop()


def enrol(director: Director, *agents: Agent) -> None:
    """Pending → ``dcvixctl agents approve`` → restart (registers at once) → enrolled.

    A running agent polls every 30 s; a restart registers at once, which keeps
    the tests short.
    """
    for agent in agents:
        agent.wait_log("pending approval")
    director.ctl("agents", "approve", *(agent.guid for agent in agents))
    marks = [agent.mark() for agent in agents]
    for agent in agents:
        agent.stop()
    for agent in agents:
        agent.start()
    for agent, mark in zip(agents, marks, strict=True):
        agent.wait_log("registered as agent", since=mark)


def serials(certificates: Iterable[x509.Certificate]) -> list[int]:
    """Serial numbers, for messages."""
    return [c.serial_number for c in certificates]
