"""Both daemons start, answer health over TLS and stop on SIGTERM."""

from __future__ import annotations

import json
import signal
import urllib.request
from pathlib import Path

import pytest

from daemons import DaemonProcess, free_port


@pytest.mark.parametrize("plugin", ["dcvix-director", "dcvix-agent"])
def test_health_over_tls_and_clean_stop(tmp_path: Path, daemons, plugin: str) -> None:
    daemon = DaemonProcess(plugin, tmp_path / plugin, free_port())
    daemons.append(daemon.start())
    with urllib.request.urlopen(
        daemon.url("/v1/health"), context=daemon.context(), timeout=5
    ) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"] == "application/json"
        assert json.loads(answer.read()) == {"status": "healthy"}
    assert daemon.stop() == -signal.SIGTERM
    assert "Server Shut Down." in daemon.output.read_text()
