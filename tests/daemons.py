"""Real twistd processes for integration tests."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import certs

TWISTD = str(Path(sys.executable).parent / "twistd")
# Where agents look for a director unless a test says otherwise: a privileged
# port nothing in the tests listens on, so registration is refused at once and
# an agent never gets a certificate from a director by accident.
NO_DIRECTOR_PORT = 1


def free_port() -> int:
    """A TCP port nobody listens on right now (on 127.0.0.1)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def unverified_context() -> ssl.SSLContext:
    """Trusts anything: for tests that look at the served certificate themselves."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def twistd_argv(plugin: str, conf: Path | None) -> list[str]:
    """``twistd -n dcvix-<x> --conf FILE`` with no pid file."""
    argv = [TWISTD, "-n", "--pidfile=", plugin]
    return argv + (["--conf", str(conf)] if conf is not None else [])


@dataclass
class DaemonProcess:
    """One running daemon and the folder it lives in."""

    plugin: str
    folder: Path
    port: int
    process: subprocess.Popen[bytes] | None = None
    extra: dict[str, dict[str, str]] = field(default_factory=dict)
    # Runs in the child before twistd starts (e.g. to lower a limit).
    preexec: Callable[[], None] | None = None
    # A command line twistd's is appended to, which must exec it (e.g.
    # ``unshare`` and a shell that mounts a file system first).
    wrapper: list[str] = field(default_factory=list)

    @property
    def conf(self) -> Path:
        return self.folder / f"{self.plugin}.conf"

    @property
    def data_dir(self) -> Path:
        return self.folder / "data"

    @property
    def log_dir(self) -> Path:
        return self.folder / "log"

    @property
    def output(self) -> Path:
        return self.folder / "stdout.log"

    @property
    def certificate(self) -> Path:
        name = "server.crt" if self.plugin == "dcvix-director" else "agent.crt"
        return self.data_dir / name

    @property
    def key(self) -> Path:
        name = "server.key" if self.plugin == "dcvix-director" else "agent.key"
        return self.data_dir / name

    def write_conf(self) -> None:
        section = "director" if self.plugin == "dcvix-director" else "agent"
        sections: dict[str, dict[str, str]] = {
            section: {"data_dir": str(self.data_dir)},
            "log": {"directory": str(self.log_dir), "level": "debug"},
        }
        if section == "director":
            sections[section] |= {
                "director_host": "127.0.0.1",
                "director_port": str(self.port),
            }
        else:
            sections[section] |= {
                "bind_address": "127.0.0.1",
                "agent_port": str(self.port),
                "director_host": "127.0.0.1",
                "director_port": str(NO_DIRECTOR_PORT),
            }
        # Several daemons run at once in most tests: no shared default port
        # (tests that scrape give theirs a free one).
        sections["metrics"] = {"listen": ""}
        for name, values in self.extra.items():
            sections.setdefault(name, {}).update(values)
        lines = []
        for name, values in sections.items():
            lines.append(f"[{name}]")
            lines += [f"{key} = {value}" for key, value in values.items()]
        self.folder.mkdir(parents=True, exist_ok=True)
        self.conf.write_text("\n".join(lines) + "\n")

    def start(self, wait: bool = True) -> DaemonProcess:
        self.write_conf()
        with self.output.open("ab") as output:
            self.process = subprocess.Popen(
                [*self.wrapper, *twistd_argv(self.plugin, self.conf)],
                cwd=self.folder,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=self.preexec,  # noqa: PLW1509 - tests only
            )
        if wait:
            self.wait_healthy()
        return self

    @property
    def ca(self) -> Path:
        """The CA the daemon's certificate chains to (the director's ``ca.pem``)."""
        return self.data_dir / "ca.pem"

    @property
    def guid(self) -> str:
        """An agent's ``agent.guid`` (a UUID, no newline)."""
        return (self.data_dir / "agent.guid").read_text()

    def context(self) -> ssl.SSLContext:
        """Trusts the daemon's CA, or anything for an agent not enrolled yet."""
        if self.ca.exists():
            return ssl.create_default_context(cafile=str(self.ca))
        return unverified_context()

    def url(self, path: str) -> str:
        return f"https://127.0.0.1:{self.port}{path}"

    def wait_healthy(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.plugin} exited {self.process.returncode}:\n"
                    + self.output.read_text(errors="replace")
                )
            if self.plugin == "dcvix-agent" or self.ca.exists():
                try:
                    with urllib.request.urlopen(
                        self.url("/v1/health"), context=self._probe(), timeout=2
                    ) as answer:
                        if answer.status == 200:
                            return
                except (OSError, ssl.SSLError):
                    pass
            time.sleep(0.1)
        raise AssertionError(f"{self.plugin} not healthy after {timeout} s")

    def _probe(self) -> ssl.SSLContext:
        """For :meth:`wait_healthy`: is it up? Tests check certificates themselves.

        An agent with a ``ca.pem`` (its own test CA, or the director's) serves a
        self-signed certificate until it holds a usable one, so it is not verified.
        """
        if self.plugin == "dcvix-agent":
            return unverified_context()
        return self.context()

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; twistd re-raises the signal after an orderly stop,
        so a clean stop returns ``-SIGTERM`` (systemd counts that as success)."""
        if self.process is None:
            return 0
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode


def agent_certificate(
    agent: DaemonProcess,
    ca: certs.CA,
    hostname: str,
    key: certs.PrivateKey | None = None,
) -> certs.Leaf:
    """A certificate as the director issues it to ``agent``, signed by ``ca``.

    CN ``dcvix-agent-<its guid>``, DNS SAN ``hostname`` (the agent's configured
    one), IP SAN 127.0.0.1, for the agent's own ``agent.key`` unless ``key``.
    """
    key = key or certs.load_key(agent.data_dir / "agent.key")
    return ca.issue(f"dcvix-agent-{agent.guid}", [hostname], ["127.0.0.1"], key=key)


def seed_agent(agent: DaemonProcess, ca: certs.CA, hostname: str) -> certs.Leaf:
    """Before an agent's first start: a key, a GUID and a usable certificate.

    The ``data_dir`` of an agent enrolled with a director whose CA is ``ca``
    (``agent.key`` Ed25519 0600, ``agent.guid``, ``ca.pem``, ``agent.crt``).
    """
    agent.data_dir.mkdir(parents=True, mode=0o700)
    key = certs.new_key("ed25519")
    (agent.data_dir / "agent.key").write_bytes(certs.key_pem(key))
    (agent.data_dir / "agent.key").chmod(0o600)
    (agent.data_dir / "agent.guid").write_text(str(uuid.uuid4()))
    ca.write(agent.data_dir)
    leaf = agent_certificate(agent, ca, hostname, key)
    (agent.data_dir / "agent.crt").write_bytes(leaf.cert_pem())
    return leaf
