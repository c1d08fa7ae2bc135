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
    StartupError,
    private_dir,
    tls_listener,
    tls_reload_job,
)
from dcvix.common.http import DcvixSite
from dcvix.common.jobs import PeriodicJob
from dcvix.common.pki import load_certificates, load_private_key
from dcvix.common.threads import ThreadPoolService
from dcvix.common.tls import DIRECTOR_NAME, ReloadingServerTLS, ServerFiles
from dcvix.director import store
from dcvix.director.agent_client import AgentClient
from dcvix.director.api import DirectorAPI
from dcvix.director.auth import Authenticator
from dcvix.director.auth.external import ExternalAuthenticator
from dcvix.director.auth.pam import PamAuthenticator
from dcvix.director.ca import (
    LOOPBACK,
    DirectorFiles,
    ensure_server_certificate,
    load_or_create_authority,
    own_host_names,
)
from dcvix.director.config import DirectorConfig
from dcvix.director.enrolment import Enrolment, EnrolmentPolicy
from dcvix.director.login import LoginService
from dcvix.director.policy import PolicyError, PolicyHolder, ensure_policy_files
from dcvix.director.runtime import Runtime
from dcvix.director.sessions import SessionControl
from dcvix.director.store import AgentStore
from dcvix.director.throttle import LoginThrottle
from dcvix.director.tokens import TokenService, load_token_key

log = Logger()

AUTH_THREADS = 4
TOKEN_VACUUM_SECONDS = 3600.0


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


def _policy(folder: Path) -> PolicyHolder:
    try:
        ensure_policy_files(folder)
        return PolicyHolder(folder)
    except PolicyError as error:
        raise StartupError(str(error)) from None
    except OSError as error:
        raise StartupError(f"policydb_folder {folder}: {error.strerror}") from None


def _authenticator(
    config: DirectorConfig, reactor: Any, pool: ThreadPoolService
) -> Authenticator:
    kind = config.director.auth_type
    if kind == "pam":
        return PamAuthenticator(config.pam_auth.pam_service_name, pool)
    if kind == "external":
        return ExternalAuthenticator(
            reactor, config.external_auth.external_command, config.external_auth.args
        )
    raise StartupError(
        f"auth_type = {kind} is not available in this version yet (use pam or external)"
    )


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

    policy = _policy(Path(settings.policydb_folder))
    tokens = TokenService(load_token_key(settings.token_key, data_dir), reactor)
    auth_pool = ThreadPoolService("auth", AUTH_THREADS, reactor)
    auth_pool.setServiceParent(root)
    throttle = LoginThrottle(
        settings.login_max_failures, settings.login_lockout, reactor
    )
    logins = LoginService(
        _authenticator(config, reactor, auth_pool), tokens, policy, registry, throttle
    )

    async def vacuum_tokens() -> None:
        throttle.prune()
        dropped = await registry.run(store.vacuum_tokens_txn, tokens.now())
        if dropped:
            log.info("forgot {count} expired logged-out tokens", count=dropped)

    PeriodicJob(
        "token-vacuum", TOKEN_VACUUM_SECONDS, vacuum_tokens, reactor, 60.0
    ).setServiceParent(root)

    runtime = Runtime(config.housekeeper.max_age, settings.agent_port)
    keeper = config.housekeeper

    async def housekeeping() -> None:
        now = tokens.now()
        for hostname in runtime.expire(now):
            log.info("server {hostname} went quiet: offline", hostname=hostname)
        cutoff = now - dt.timedelta(seconds=keeper.pending_max_age)
        for guid in await registry.run(store.purge_pending_txn, cutoff):
            log.info("purged agent {guid}: pending too long", guid=guid)

    PeriodicJob(
        "housekeeper",
        keeper.housekeeper_frequency,
        housekeeping,
        reactor,
        keeper.housekeeper_frequency,
    ).setServiceParent(root)

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
    # After the certificate: SIGHUP's first line stays the TLS reload.
    sighup.add(policy.reload)
    api = DirectorAPI(
        settings.max_body_bytes,
        enrolment,
        logins,
        registry,
        authority.pem,
        frozenset(n.lower() for n in own_names),
        reactor,
        runtime,
        SessionControl(
            runtime,
            registry,
            AgentClient(
                reactor,
                [authority.certificate],
                load_certificates(files.server_crt.read_bytes())[0],
                load_private_key(files.server_key.read_bytes()),
            ),
            settings.config_allow,
            tokens.now,
        ),
    )
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
