"""Real twistd processes for integration tests."""

from __future__ import annotations

import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

TWISTD = str(Path(sys.executable).parent / "twistd")


def free_port() -> int:
    """A TCP port nobody listens on right now (on 127.0.0.1)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


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
            }
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
                twistd_argv(self.plugin, self.conf),
                cwd=self.folder,
                stdout=output,
                stderr=subprocess.STDOUT,
                preexec_fn=self.preexec,  # noqa: PLW1509 - tests only
            )
        if wait:
            self.wait_healthy()
        return self

    def context(self) -> ssl.SSLContext:
        """Trusts the daemon's current (self-signed) certificate."""
        return ssl.create_default_context(cafile=str(self.certificate))

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
            if self.certificate.exists():
                try:
                    with urllib.request.urlopen(
                        self.url("/v1/health"), context=self.context(), timeout=2
                    ) as answer:
                        if answer.status == 200:
                            return
                except (OSError, ssl.SSLError):
                    pass
            time.sleep(0.1)
        raise AssertionError(f"{self.plugin} not healthy after {timeout} s")

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
