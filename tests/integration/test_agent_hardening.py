"""The agent's start-up hardening, as real ``twistd`` processes (CONTRACT §3).

- a ``hostname`` the director would refuse stops the agent at start with one
  line and exit status 1, before it makes any file (rather than a 400 at every
  registration, forever);
- an ``agent.key`` readable by others is tightened to 0600, with a warning.
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from daemons import DaemonProcess, free_port, twistd_argv


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not after {timeout} s: {what}")
        time.sleep(0.05)


@pytest.mark.parametrize(
    ("hostname", "problem"),
    [
        ("192.0.2.7", "'192.0.2.7' is an IP address; the director needs a host name"),
        ("fe80::1", "'fe80::1' is an IP address; the director needs a host name"),
        ("localhost", "'localhost' is reserved: the director refuses it"),
        (
            "*.corp.example",
            "'*.corp.example' is a wildcard; the director needs one name",
        ),
        ("ws_7", "'ws_7' is not a host name or IP address"),
    ],
)
def test_a_hostname_the_director_refuses_stops_the_agent_at_start(
    tmp_path: Path, hostname: str, problem: str
) -> None:
    conf = tmp_path / "dcvix-agent.conf"
    conf.write_text(
        f"[agent]\ndata_dir = {tmp_path / 'data'}\nhostname = {hostname}\n"
        f"director_port = 1\n[log]\ndirectory = {tmp_path / 'log'}\n"
    )
    # Today's bound for a config error: well under the time a started agent
    # would take to be noticed (it would run until killed).
    done = subprocess.run(
        twistd_argv("dcvix-agent", conf),
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 1
    assert done.stderr == f"{conf}: [agent] hostname: {problem}\n"
    assert done.stdout == ""
    # Stopped before it made anything: no data_dir, no log folder, no key.
    assert sorted(p.name for p in tmp_path.iterdir()) == [conf.name]


def test_a_world_readable_agent_key_is_tightened_at_start(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    agent = DaemonProcess(
        "dcvix-agent",
        tmp_path / "agent",
        free_port(),
        extra={"agent": {"hostname": "ws-key"}},
    )
    daemons.append(agent)
    agent.start()
    assert agent.stop() == -signal.SIGTERM
    key = agent.key.read_bytes()
    guid = agent.guid
    os.chmod(agent.key, 0o644)
    log = agent.log_dir / "dcvix-agent.log"
    before = len(log.read_text())

    agent.start()

    assert mode(agent.key) == 0o600
    # The same key and identity: tightened, not replaced.
    assert agent.key.read_bytes() == key
    assert agent.guid == guid
    warning = f"{agent.key} was readable by other users (mode 0644): tightened to 0600"
    wait_for(warning, lambda: warning in log.read_text()[before:])
    lines = log.read_text()[before:].splitlines()
    line = next(text for text in lines if warning in text)
    assert line.startswith("WARNING "), line
