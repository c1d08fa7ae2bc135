"""The agent's service tree: its metrics listener stays on loopback by default."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from twisted.internet.testing import MemoryReactorClock
from twisted.web.server import Site
from twisted.web.test.requesthelper import DummyRequest

from dcvix.agent.config import AgentConfig, AgentLogSection, AgentSection
from dcvix.agent.service import build_agent


def _config(tmp_path: Path, **metrics: str) -> AgentConfig:
    config = AgentConfig(
        agent=AgentSection(
            data_dir=str(tmp_path / "data"), hostname="ws1", agent_port=18446
        ),
        log=AgentLogSection(directory=str(tmp_path / "log")),
    )
    return dataclasses.replace(
        config, metrics=dataclasses.replace(config.metrics, **metrics)
    )


def _scrape(site: Site) -> tuple[int, str]:
    """``GET /metrics`` on the listener's resource tree, rendered in memory."""
    request = DummyRequest([b"metrics"])
    resource: Any = site.resource.getChildWithDefault(b"metrics", request)
    request.postpath = []
    rendered = resource.render(request)
    if isinstance(rendered, bytes):
        request.write(rendered)
    return request.responseCode or 200, b"".join(request.written).decode()


def test_metrics_listen_on_loopback_9446_by_default(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    root = build_agent(_config(tmp_path), reactor)
    root.privilegedStartService()
    root.startService()
    try:
        listening = [(port, host) for port, _f, _b, host in reactor.tcpServers]
        assert (9446, "127.0.0.1") in listening
        site = next(f for port, f, _b, _h in reactor.tcpServers if port == 9446)
        assert isinstance(site, Site)
        code, text = _scrape(site)
        assert code == 200
        assert 'dcvix_build_info{daemon="agent"' in text
        assert "dcvix_agent_memory_total_bytes" in text
        # Not enrolled: no certificate of the director's to report on.
        assert 'certificate="agent"' not in text
    finally:
        root.stopService()


def test_empty_listen_serves_no_metrics(tmp_path: Path) -> None:
    reactor = MemoryReactorClock()
    root = build_agent(_config(tmp_path, listen=""), reactor)
    root.privilegedStartService()
    root.startService()
    try:
        assert 9446 not in [port for port, *_ in reactor.tcpServers]
    finally:
        root.stopService()
