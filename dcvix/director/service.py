"""Builds the director's service tree from its configuration."""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from cryptography import x509
from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import ILogObserver, Logger

from dcvix import __version__
from dcvix.common.clock import now_utc
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
from dcvix.common.metrics import (
    MetricsPage,
    metrics_listener,
    metrics_token,
    new_registry,
)
from dcvix.common.networks import AddressList
from dcvix.common.ratelimit import LogBudget
from dcvix.common.threads import ThreadPoolService
from dcvix.common.tls import DIRECTOR_NAME, ReloadingServerTLS, ServerFiles
from dcvix.director.agent_admin import AgentAdmin
from dcvix.director.agent_client import AgentClient
from dcvix.director.api.admin import AdminRoutes
from dcvix.director.api.agents import (
    SUMMARY_SECONDS,
    UPDATE_PATH,
    AgentRoutes,
    UpdateTally,
)
from dcvix.director.api.audit import AuditRoutes
from dcvix.director.api.auth import AuthRoutes
from dcvix.director.api.authz import Gate, Gateways
from dcvix.director.api.dcv import DcvRoutes
from dcvix.director.api.document import DocumentRoutes
from dcvix.director.api.metrics import MetricsRoutes
from dcvix.director.api.render import FleetRenderer
from dcvix.director.api.root import DirectorRoot
from dcvix.director.api.sessions import SessionRoutes
from dcvix.director.api.user import UserRoutes
from dcvix.director.api.web import WebRoutes, web_root
from dcvix.director.audit import Audit
from dcvix.director.audit_export import open_sinks
from dcvix.director.auth import Authenticator
from dcvix.director.auth.admission import AdmissionBound, BoundedAuthenticator
from dcvix.director.auth.external import ExternalAuthenticator
from dcvix.director.auth.ldap import LdapAuthenticator
from dcvix.director.auth.otp import SecondFactor, with_second_factor
from dcvix.director.auth.pam import PamAuthenticator
from dcvix.director.auth.radius import RadiusAuthenticator
from dcvix.director.ca import (
    LOOPBACK,
    CertificateAuthority,
    ensure_server_certificate,
    load_or_create_authority,
)
from dcvix.director.config import DirectorConfig
from dcvix.director.connections import ConnectionTokens
from dcvix.director.datadir import DirectorFiles
from dcvix.director.enrolment import Enrolment, EnrolmentPolicy
from dcvix.director.exchange import ReportExchange
from dcvix.director.hostnames import own_host_names
from dcvix.director.housekeeper import Housekeeper
from dcvix.director.identity import check_identity, store_claim
from dcvix.director.leader import LeaderLease, Leadership, SoleDirector
from dcvix.director.login import LoginService
from dcvix.director.metrics import DirectorMetrics, FleetGauges
from dcvix.director.policy import PolicyError, PolicyHolder, ensure_policy_files
from dcvix.director.portal import Portal
from dcvix.director.readiness import Readiness
from dcvix.director.registry import StoreError
from dcvix.director.registry.engine import Runner, pool_runner
from dcvix.director.registry.postgres import PostgresEngine
from dcvix.director.registry.postgres_schema import AGENTS_CHANNEL, REPORTS_CHANNEL
from dcvix.director.registry.sql import SqlRegistry
from dcvix.director.registry.stores import (
    database_threads,
    director_files,
    is_postgres,
    open_registry,
)
from dcvix.director.resolver import SessionResolver
from dcvix.director.runtime import MemoryRuntimeStore
from dcvix.director.sessions import SessionControl
from dcvix.director.throttle import LoginThrottle
from dcvix.director.tokens import TokenService, load_token_key

log = Logger()
# With a shared store, how often the fleet is checked against the agents'
# states besides after each change notified (a safety net).
FORGET_UNREGISTERED_SECONDS = 60.0

TOKEN_VACUUM_SECONDS = 3600.0
# How often new reports are rendered ahead of the next fleet listing.
LISTING_WARM_SECONDS = 0.5
# How often refusals counted for the audit trail are written (once a minute
# per address and kind at most; see Audit.refused).
REFUSALS_FLUSH_SECONDS = 10.0
# How long a stop waits for login back-end calls (a PAM, LDAP or RADIUS call
# stuck in a server that never answers is abandoned after it).
AUTH_STOP_SECONDS = 5.0


@dataclass(frozen=True)
class Dependencies:
    """What the director takes from its machine, replaceable in tests.

    ``host_names``: the machine's host name and FQDN (a DNS lookup);
    ``authenticator``: the login back end for a config (PAM needs root);
    ``db_runner``: where registry transactions run, given the database pool
    (inline, a test can drive the whole director on a memory reactor).
    """

    host_names: Callable[[], list[str]] = own_host_names
    authenticator: Callable[[DirectorConfig, Any, ThreadPoolService], Authenticator] = (
        field(default_factory=lambda: _authenticator)
    )
    db_runner: Callable[[ThreadPoolService], Runner] = pool_runner


def _is_ip(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


class _Store(Service):
    """Follows other processes' changes once running; closes the store last.

    Added before the database pool, so it stops after the pool has: no call
    is running when the connections close.
    """

    def __init__(
        self, registry: SqlRegistry, reactor: Any, pool: ThreadPoolService
    ) -> None:
        self._registry = registry
        self._reactor = reactor
        self._pool = pool

    def startService(self) -> None:
        super().startService()
        engine = self._registry.engine
        if isinstance(engine, PostgresEngine):
            self._reactor.callWhenRunning(engine.listen, self._reactor, self._pool)

    def stopService(self) -> None:
        super().stopService()
        self._registry.close()


class _LdapCloser(Service):
    """Unbinds the LDAP service connection before the auth pool stops."""

    def __init__(self, backend: LdapAuthenticator, pool: ThreadPoolService) -> None:
        self._backend = backend
        self._pool = pool

    def stopService(self) -> Deferred[None]:
        super().stopService()
        # Behind logins stuck in a silent server it would never run.
        closing: Deferred[None] = self._pool.run(AUTH_STOP_SECONDS, self._backend.close)
        # A server that does not answer the unbind must not stop the stop.
        closing.addErrback(lambda _failure: None)
        return closing


def _policy(folder: Path, ignore_case: bool) -> PolicyHolder:
    try:
        ensure_policy_files(folder)
        return PolicyHolder(folder, ignore_case)
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
    if kind == "ldap":
        try:
            ldap = LdapAuthenticator(config.ldap_auth, pool)
        except ValueError as error:
            raise StartupError(f"[ldap_auth] {error}") from None
        return with_second_factor(ldap, config.ldap_auth, reactor)
    if kind == "radius":
        try:
            return RadiusAuthenticator(config.radius_auth, pool)
        except ValueError as error:
            raise StartupError(f"[radius_auth] {error}") from None
    raise StartupError(
        f"auth_type = {kind} is not available (use pam, ldap, radius or external)"
    )


def login_otp_field(config: DirectorConfig) -> str:
    """Whether the login form asks for an OTP (see :class:`AuthRoutes`)."""
    kind = config.director.auth_type
    if kind == "ldap" and config.ldap_auth.otp_type != "disabled":
        return "required"
    return "optional" if kind == "radius" else "none"


def _open_store(config: DirectorConfig, runner: Runner) -> SqlRegistry:
    try:
        return open_registry(config, runner)
    except StoreError as error:
        raise StartupError(str(error)) from None


def _exchange(
    registry: SqlRegistry,
    pool: ThreadPoolService,
    runtime: MemoryRuntimeStore,
    agent_port: int,
    reactor: Any,
    root: DaemonService,
) -> ReportExchange | None:
    """With a shared store, the reports passed between its directors."""
    engine = registry.engine
    if not isinstance(engine, PostgresEngine):
        return None
    exchange = ReportExchange(engine, pool, runtime, agent_port, reactor)
    engine.watch(REPORTS_CHANNEL, exchange.changed)
    exchange.setServiceParent(root)  # after the pool: it stops first
    return exchange


def _forget_both(
    control: SessionControl, exchange: ReportExchange
) -> Callable[[str, bool], Awaitable[None]]:
    """Forget an agent here and in the store's shared reports."""

    async def forget(guid: str, deleted: bool) -> None:
        await control.forget(guid, deleted)
        await exchange.forget(guid)

    return forget


def _leadership(
    registry: SqlRegistry, pool: ThreadPoolService, reactor: Any, root: DaemonService
) -> Leadership:
    """Who does the store's periodic work: this director alone, or the leader."""
    if not isinstance(registry.engine, PostgresEngine):
        return SoleDirector()
    lease = LeaderLease(registry.engine, pool, reactor)
    lease.setServiceParent(root)  # after the pool: it stops first
    return lease


def _identity(
    config: DirectorConfig, files: DirectorFiles, now: dt.datetime, runner: Runner
) -> tuple[SqlRegistry, CertificateAuthority, bytes]:
    """The store, the CA and the token key, each checked against the others.

    A shared store is opened first, and the CA made (or not) and checked under
    its start lock (see :mod:`~dcvix.director.identity`). ``agents.db`` is
    opened after the CA: the CA's absence decides whether it may be created.
    """
    data_dir = files.data_dir
    if not is_postgres(config.store):
        authority = load_or_create_authority(files, now)
        token_key = load_token_key(config.director.token_key, data_dir)
        return _open_store(config, runner), authority, token_key
    registry = _open_store(config, runner)
    engine = registry.engine
    assert isinstance(engine, PostgresEngine)
    try:
        with engine.start_lock():
            authority = load_or_create_authority(
                files, now, lambda: store_claim(engine)
            )
            token_key = load_token_key(config.director.token_key, data_dir)
            check_identity(engine, authority.fingerprint, token_key)
    except StoreError as error:
        registry.close()
        raise StartupError(str(error)) from None
    except StartupError:
        registry.close()
        raise
    return registry, authority, token_key


def _reload_policy(policy: PolicyHolder, audit: Audit) -> None:
    """SIGHUP: read the policy again, and say in the trail whether it took."""
    done = policy.reload()
    recorded = audit.record(
        "sighup",
        "policy reload",
        str(policy.folder),
        ""
        if done
        else f"refused, the last good one kept ({policy.reload_error})"[:500],
        outcome="ok" if done else "failed",
    )
    ensureDeferred(recorded).addErrback(
        lambda failure: log.failure("policy reload not audited", failure)
    )


class _Closing(Service):
    """Calls ``close`` when the daemon stops (the audit exports' files)."""

    def __init__(self, close: Callable[[], None]) -> None:
        self._close = close

    def stopService(self) -> None:
        super().stopService()
        self._close()


def _store_may_fail(
    name: str, job: Callable[[], Awaitable[object]], reactor: Any
) -> Callable[[], Awaitable[None]]:
    """``job``, where a database that is away is one line a minute, no traceback.

    The job runs again at its next time; the requests that need the database
    answer 503 meanwhile, and the engine reconnects by itself.
    """
    lines = LogBudget(1, 60.0, reactor)

    async def run() -> None:
        try:
            await job()
        except StoreError as error:
            skipped = lines.take()
            if skipped is not None:
                log.warn(
                    "{job} skipped: {error}{more}",
                    job=name,
                    error=str(error),
                    more=f" ({skipped} more skipped)" if skipped else "",
                )

    return run


def _expiries(ca: x509.Certificate, tls: ReloadingServerTLS) -> dict[str, dt.datetime]:
    """When the CA and the director's HTTPS certificate (as served now) expire."""
    found = {"ca": ca.not_valid_after_utc}
    served = tls.expires()
    if served is not None:
        found["director"] = served
    return found


def build_director(
    config: DirectorConfig,
    reactor: Any,
    observer: ILogObserver | None = None,
    deps: Dependencies | None = None,
) -> DaemonService:
    """The director: resources first, then work, then the listener.

    Raises:
        StartupError: when the data folder, the CA, the certificate or
            ``agents.db`` is unusable.
    """
    deps = deps or Dependencies()
    settings = config.director
    root = DaemonService("dcvix-director", observer)
    if settings.reuse_port and not is_postgres(config.store):
        # Processes sharing a port must share the fleet: only a shared store does.
        raise StartupError(
            "[director] reuse_port needs a PostgreSQL store ([store] url): "
            "director processes on one port must share their agents' reports"
        )
    try:
        metrics_secret = metrics_token(config.metrics)
    except ValueError as error:
        raise StartupError(str(error)) from None
    if config.metrics.https and not metrics_secret:
        raise StartupError(
            "[metrics] https needs [metrics] token_file: the director's port is "
            "open to its whole network"
        )
    metrics = DirectorMetrics(new_registry("director"))
    data_dir = private_dir(Path(settings.data_dir), "data_dir")
    files = director_files(config)
    now = now_utc(reactor)
    database = ThreadPoolService("db", database_threads(config.store), reactor)
    registry, authority, token_key = _identity(
        config, files, now, deps.db_runner(database)
    )
    own_names = deps.host_names()
    own_lower = frozenset(n.lower() for n in own_names)
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

    _Store(registry, reactor, database).setServiceParent(root)
    database.setServiceParent(root)
    try:
        sinks = open_sinks(
            config.audit.file,
            config.audit.syslog,
            config.audit.syslog_address,
            reactor,
        )
    except ValueError as error:
        raise StartupError(f"[audit] {error}") from None
    audit = Audit(registry, reactor, sinks)
    _Closing(audit.close).setServiceParent(root)
    PeriodicJob(
        "audit-refusals",
        REFUSALS_FLUSH_SECONDS,
        _store_may_fail("audit-refusals", audit.flush_refusals, reactor),
        reactor,
        REFUSALS_FLUSH_SECONDS,
    ).setServiceParent(root)
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
            own_names=own_lower,
        ),
        audit,
        reactor,
    )

    # LDAP matches ids in any case, and a Go users.json may spell them otherwise.
    policy = _policy(Path(settings.policydb_folder), settings.auth_type == "ldap")
    tokens = TokenService(token_key, reactor)
    # As many threads as back-end calls may run at once: the bound is the limit.
    auth_pool = ThreadPoolService(
        "auth", settings.auth_concurrency, reactor, stop_timeout=AUTH_STOP_SECONDS
    )
    auth_pool.setServiceParent(root)
    throttle = LoginThrottle(
        settings.login_max_failures, settings.login_lockout, reactor
    )
    throttle.on_lock = lambda kind: metrics.lockouts.labels(kind).inc()
    backend = deps.authenticator(config, reactor, auth_pool)
    first = backend.first if isinstance(backend, SecondFactor) else backend
    if isinstance(first, LdapAuthenticator):
        _LdapCloser(first, auth_pool).setServiceParent(root)
    logins = LoginService(
        BoundedAuthenticator(
            backend,
            AdmissionBound(settings.auth_concurrency, settings.auth_queue, reactor),
        ),
        tokens,
        policy,
        registry,
        throttle,
        audit,
        registry if isinstance(registry.engine, PostgresEngine) else None,
        metrics,
    )

    runtime = MemoryRuntimeStore()
    client = AgentClient(
        reactor,
        [authority.certificate],
        files.server_crt,
        files.server_key,
        settings.agent_write_timeout,
    )
    client.setServiceParent(root)
    control = SessionControl(
        runtime,
        registry,
        client,
        settings.config_allow,
        config.housekeeper.max_age,
        reactor,
        metrics,
    )
    exchange = _exchange(
        registry, database, runtime, settings.agent_port, reactor, root
    )
    if exchange is not None:
        # Agents revoked or deleted through another director leave here too.
        unregistered = PeriodicJob(
            "forget-unregistered",
            FORGET_UNREGISTERED_SECONDS,
            _store_may_fail(
                "forget-unregistered", control.forget_unregistered, reactor
            ),
            reactor,
            FORGET_UNREGISTERED_SECONDS,
        )
        unregistered.setServiceParent(root)
        assert isinstance(registry.engine, PostgresEngine)
        registry.engine.watch(AGENTS_CHANNEL, unregistered.trigger)
    admin = AgentAdmin(
        registry,
        audit,
        reactor,
        own_lower,
        control.forget if exchange is None else _forget_both(control, exchange),
    )
    connections = ConnectionTokens(
        tokens,
        runtime,
        registry,
        settings.connection_token_ttl,
        settings.connection_token_single_use,
        config.housekeeper.max_age,
        reactor,
    )
    if exchange is not None:
        connections.on_issue = exchange.share_grant
        exchange.grants_to = lambda grant: connections.adopt(
            grant.session_id, grant.server, grant.expires_at, grant.address
        )

    keeper = config.housekeeper
    housekeeper = Housekeeper(
        registry,
        control,
        throttle,
        connections,
        keeper.pending_max_age,
        reactor,
        _leadership(registry, database, reactor, root),
        audit,
        config.audit.keep,
    )
    PeriodicJob(
        "token-vacuum",
        TOKEN_VACUUM_SECONDS,
        _store_may_fail("token-vacuum", housekeeper.vacuum, reactor),
        reactor,
        60.0,
    ).setServiceParent(root)
    PeriodicJob(
        "housekeeper",
        keeper.housekeeper_frequency,
        _store_may_fail("housekeeper", housekeeper.sweep, reactor),
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
    expiries = partial(_expiries, authority.certificate, tls)
    sighup = SighupService(reactor)
    sighup.setServiceParent(root)
    tls_reload_job(tls, reactor, sighup).setServiceParent(root)
    # After the certificate: SIGHUP's first line stays the TLS reload.
    sighup.add(partial(_reload_policy, policy, audit))
    sighup.add(audit.reopen)
    tally = UpdateTally()
    PeriodicJob(
        "update-summary", SUMMARY_SECONDS, tally.summarize, reactor, SUMMARY_SECONDS
    ).setServiceParent(root)
    fleet = SessionRoutes(control, audit, policy, FleetRenderer())
    PeriodicJob(
        "listing-warm",
        LISTING_WARM_SECONDS,
        _store_may_fail("listing-warm", fleet.warm, reactor),
        reactor,
        0,
    ).setServiceParent(root)
    gauges = FleetGauges(metrics, registry, runtime, keeper.max_age, expiries, reactor)
    page = MetricsPage(metrics.registry, metrics_secret, gauges.refresh, reactor)
    api = DirectorRoot(
        settings.max_body_bytes,
        Gate(logins, enrolment, Gateways(config.gateway.gateways_list, reactor)),
        [
            AgentRoutes(
                enrolment,
                runtime,
                settings.agent_port,
                reactor,
                tally,
                exchange,
                metrics,
                audit,
            ),
            AuthRoutes(logins, login_otp_field(config)),
            AdminRoutes(admin, authority.pem),
            AuditRoutes(registry, reactor),
            fleet,
            DcvRoutes(
                connections,
                SessionResolver(runtime, connections, keeper.max_age, reactor),
                settings.dcv_port,
                metrics,
                audit,
            ),
            UserRoutes(
                Portal(policy, control, connections, settings.dcv_port, metrics),
                audit,
            ),
            WebRoutes(web_root()),
            DocumentRoutes(lambda: api.routes),
            MetricsRoutes(page if config.metrics.https else None),
        ],
        Readiness(registry, expiries, policy, reactor),
    )
    site = DcvixSite(
        api.resource(),
        body_limit=api.body_limit,
        quiet_paths=frozenset({UPDATE_PATH}),
        idle_timeout=settings.keepalive_timeout,
        request_timeout=settings.request_timeout,
    )
    tls_listener(
        reactor,
        settings.director_host,
        settings.director_port,
        tls,
        site,
        AddressList(settings.proxy_addresses),
        shared=settings.reuse_port,
    ).setServiceParent(root)
    if config.metrics.listen:
        metrics_listener(reactor, config.metrics.listen, page).setServiceParent(root)
    log.info(
        "dcvix-director {version} listening on {host}:{port}, data in {data}",
        version=__version__,
        host=settings.director_host,
        port=settings.director_port,
        data=str(data_dir),
    )
    return root
