"""Builds the director's service tree from its configuration."""

from __future__ import annotations

import datetime as dt
import ipaddress
from pathlib import Path
from typing import Any

from twisted.application.service import Service
from twisted.logger import ILogObserver, Logger

from dcvix import __version__
from dcvix.common.daemon import (
    DaemonService,
    SighupService,
    private_dir,
    tls_listener,
    tls_reload_job,
)
from dcvix.common.http import DcvixSite
from dcvix.common.threads import ThreadPoolService
from dcvix.common.tls import DIRECTOR_NAME, ReloadingServerTLS, ServerFiles
from dcvix.director.api import DirectorAPI
from dcvix.director.ca import (
    LOOPBACK,
    DirectorFiles,
    ensure_server_certificate,
    load_or_create_authority,
    own_host_names,
)
from dcvix.director.config import DirectorConfig
from dcvix.director.enrolment import Enrolment, EnrolmentPolicy
from dcvix.director.store import AgentStore

log = Logger()


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class _StoreCloser(Service):
    """Closes the database once everything that uses it has stopped."""

    def __init__(self, registry: AgentStore) -> None:
        self._registry = registry

    def stopService(self) -> None:
        super().stopService()
        self._registry.close()


def build_director(
    config: DirectorConfig, reactor: Any, observer: ILogObserver | None = None
) -> DaemonService:
    """The director: resources first, then work, then the listener.

    Raises:
        StartupError: when the data folder, the CA or the certificate is unusable.
    """
    settings = config.director
    root = DaemonService("dcvix-director", observer)
    data_dir = private_dir(Path(settings.data_dir), "data_dir")
    files = DirectorFiles(data_dir)
    now = dt.datetime.fromtimestamp(reactor.seconds(), dt.UTC)
    authority = load_or_create_authority(files, now)
    own_names = own_host_names()
    extra_dns = [n for n in settings.server_names if not _is_ip(n)]
    extra_ips = [n for n in settings.server_names if _is_ip(n)]
    ensure_server_certificate(
        authority,
        files,
        [DIRECTOR_NAME, "localhost", *own_names, *extra_dns],
        [LOOPBACK, *extra_ips],
        now,
    )
    log.info(
        "CA fingerprint (SHA-256): {fingerprint}", fingerprint=authority.fingerprint
    )

    database = ThreadPoolService("db", 1, reactor)
    registry = AgentStore(files.agents_db, database)
    _StoreCloser(registry).setServiceParent(root)
    database.setServiceParent(root)
    enrolment = Enrolment(
        registry,
        authority,
        EnrolmentPolicy(
            lifetime=dt.timedelta(seconds=settings.agent_cert_lifetime),
            registration_token=settings.registration_token,
            auto_approve=settings.auto_approve == "token",
            register_rate=settings.register_rate,
            max_pending=settings.max_pending,
            reserved_names=frozenset(
                n.lower() for n in (DIRECTOR_NAME, "localhost", *settings.server_names)
            ),
            own_names=frozenset(n.lower() for n in own_names),
        ),
        reactor,
    )

    tls = ReloadingServerTLS(
        ServerFiles(
            files.server_crt,
            files.server_key,
            chain=files.ca_pem,
            client_cas=files.ca_pem,
        )
    )
    sighup = SighupService(reactor)
    sighup.setServiceParent(root)
    tls_reload_job(tls, reactor, sighup).setServiceParent(root)
    api = DirectorAPI(settings.max_body_bytes, enrolment)
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
