"""Builds the director's service tree from its configuration."""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Any

from twisted.logger import ILogObserver, Logger

from dcvix import __version__
from dcvix.common.certfiles import ensure_self_signed
from dcvix.common.daemon import (
    DaemonService,
    SighupService,
    private_dir,
    tls_listener,
    tls_reload_job,
)
from dcvix.common.http import DcvixSite
from dcvix.common.pki import new_ec_key
from dcvix.common.tls import DIRECTOR_NAME, ReloadingServerTLS, ServerFiles
from dcvix.director.api import DirectorAPI
from dcvix.director.config import DirectorConfig

log = Logger()


def build_director(
    config: DirectorConfig, reactor: Any, observer: ILogObserver | None = None
) -> DaemonService:
    """The director: resources first, then work, then the listener.

    Raises:
        StartupError: when the data folder or certificate is unusable.
    """
    settings = config.director
    root = DaemonService("dcvix-director", observer)
    data_dir = private_dir(Path(settings.data_dir), "data_dir")
    files = ServerFiles(data_dir / "server.crt", data_dir / "server.key")
    ensure_self_signed(
        files.certificate,
        files.key,
        new_ec_key,
        DIRECTOR_NAME,
        [
            DIRECTOR_NAME,
            "localhost",
            socket.gethostname(),
            *[n for n in settings.server_names if not _is_ip(n)],
        ],
        ["127.0.0.1", *[n for n in settings.server_names if _is_ip(n)]],
        reactor,
    )
    tls = ReloadingServerTLS(files)
    sighup = SighupService(reactor)
    sighup.setServiceParent(root)
    tls_reload_job(tls, reactor, sighup).setServiceParent(root)
    api = DirectorAPI(settings.max_body_bytes)
    site = DcvixSite(api.app.resource(), body_limit=api.body_limit)
    tls_listener(
        reactor, settings.director_host, settings.director_port, tls, site
    ).setServiceParent(root)
    log.info(
        "dcvix-director {version} listening on {host}:{port}, data in {data}",
        version=__version__,
        host=settings.director_host,
        port=settings.director_port,
        data=str(data_dir),
    )
    return root


def _is_ip(name: str) -> bool:
    try:
        socket.inet_pton(socket.AF_INET6 if ":" in name else socket.AF_INET, name)
    except OSError:
        return False
    return True
