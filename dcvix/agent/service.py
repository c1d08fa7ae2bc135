"""Builds the agent's service tree from its configuration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.logger import ILogObserver, Logger

from dcvix import __version__
from dcvix.agent.api import AgentAPI
from dcvix.agent.config import AgentConfig
from dcvix.common.certfiles import ensure_self_signed
from dcvix.common.daemon import (
    DaemonService,
    SighupService,
    private_dir,
    tls_listener,
    tls_reload_job,
)
from dcvix.common.http import DcvixSite
from dcvix.common.pki import new_ed25519_key
from dcvix.common.tls import ReloadingServerTLS, ServerFiles

log = Logger()


def build_agent(
    config: AgentConfig, reactor: Any, observer: ILogObserver | None = None
) -> DaemonService:
    """The agent: resources first, then work, then the listener.

    Raises:
        StartupError: when the data folder or certificate is unusable.
    """
    settings = config.agent
    root = DaemonService("dcvix-agent", observer)
    data_dir = private_dir(Path(settings.data_dir), "data_dir")
    files = ServerFiles(data_dir / "agent.crt", data_dir / "agent.key")
    hostname = settings.effective_hostname
    ensure_self_signed(
        files.certificate,
        files.key,
        new_ed25519_key,
        "dcvix-agent",
        [hostname],
        ["127.0.0.1"],
        reactor,
    )
    tls = ReloadingServerTLS(files)
    sighup = SighupService(reactor)
    sighup.setServiceParent(root)
    tls_reload_job(tls, reactor, sighup).setServiceParent(root)
    site = DcvixSite(AgentAPI().app.resource())
    tls_listener(
        reactor, settings.bind_address, settings.agent_port, tls, site
    ).setServiceParent(root)
    log.info(
        "dcvix-agent {version} for {hostname} listening on {host}:{port}",
        version=__version__,
        hostname=hostname,
        host=settings.bind_address or "::",
        port=settings.agent_port,
    )
    return root
