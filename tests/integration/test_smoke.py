"""Both daemons start, answer health over TLS and stop on SIGTERM."""

from __future__ import annotations

import json
import signal
import ssl
import urllib.request
from pathlib import Path

import pytest

import certs
from daemons import DaemonProcess, free_port, seed_agent


@pytest.mark.parametrize(
    ("plugin", "verified"),
    [
        pytest.param("dcvix-director", True, id="director"),
        # Not enrolled: a certificate made in memory, which nothing can verify.
        pytest.param("dcvix-agent", False, id="agent"),
        # Enrolled (a usable certificate on disk at start): verified by ca.pem.
        pytest.param("dcvix-agent", True, id="enrolled-agent"),
    ],
)
def test_health_over_tls_and_clean_stop(
    tmp_path: Path, daemons: list[DaemonProcess], plugin: str, verified: bool
) -> None:
    daemon = DaemonProcess(plugin, tmp_path / plugin, free_port())
    if plugin == "dcvix-agent" and verified:
        daemon.extra = {"agent": {"hostname": "ws-smoke"}}
        seed_agent(daemon, certs.CA.create(), "ws-smoke")
    daemons.append(daemon.start())
    context = daemon.context()
    # Verified means the CA of data_dir/ca.pem and the IP SAN 127.0.0.1.
    assert context.verify_mode == (ssl.CERT_REQUIRED if verified else ssl.CERT_NONE)
    assert context.check_hostname is verified
    with urllib.request.urlopen(
        daemon.url("/v1/health"), context=context, timeout=5
    ) as answer:
        assert answer.status == 200
        assert answer.headers["Content-Type"] == "application/json"
        assert json.loads(answer.read()) == {"status": "healthy"}
    assert daemon.stop() == -signal.SIGTERM
    assert "Server Shut Down." in daemon.output.read_text()
