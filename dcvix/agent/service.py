"""Builds the agent's service tree from its configuration."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

from twisted.internet.ssl import CertificateOptions, TLSVersion
from twisted.logger import ILogObserver, Logger

from dcvix import __version__
from dcvix.agent.api import AgentAPI
from dcvix.agent.config import AgentConfig
from dcvix.agent.dcv import DcvCli
from dcvix.agent.directors import Directors, parse_directors
from dcvix.agent.enrolment import AgentEnrolment, EnrolmentSettings
from dcvix.agent.identity import (
    AgentFiles,
    SignerKey,
    certificate_state,
    load_cas,
    load_or_create_identity,
)
from dcvix.agent.metrics import AgentMetrics
from dcvix.agent.reaper import Reaper
from dcvix.agent.report import Reporter, ReportSettings
from dcvix.agent.sessions import CreatedSessions, SessionManager
from dcvix.agent.stats import StatsCollector
from dcvix.agent.updater import Updater, first_delay
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
from dcvix.common.pki import (
    AGENT_CN_PREFIX,
    public_key_fingerprint,
    self_signed_certificate,
)
from dcvix.common.tls import ReloadingServerTLS, ServerFiles, server_options
from dcvix.common.validate import split_host_port

log = Logger()


def listener_options(
    files: AgentFiles, key: SignerKey, guid: str, hostname: str, clock: Any
) -> Any:
    """How the agent's listener builds its TLS options, each time files change.

    With a usable certificate from the director: that certificate, and client
    certificates checked against ``ca.pem``. Before the first enrolment: a
    self-signed certificate made in memory, so that ``/v1/health`` answers;
    nothing else can be reached without the director's client certificate,
    which cannot be checked yet. Later, unusable new files are refused, so the
    certificate in service stays (see :class:`ReloadingServerTLS`).
    """
    serving = False

    def load(server_files: ServerFiles) -> CertificateOptions:
        nonlocal serving
        now = dt.datetime.fromtimestamp(clock.seconds(), dt.UTC)
        state = certificate_state(files, key, guid, hostname, now)
        if state.usable:
            serving = True
            return server_options(server_files)
        if serving:
            raise ValueError(f"agent.crt: {state.problem}")
        log.info(
            "not enrolled yet ({problem}): serving a self-signed certificate",
            problem=state.problem,
        )
        certificate = self_signed_certificate(
            key,
            AGENT_CN_PREFIX + guid,
            [hostname],
            ["127.0.0.1"],
            now,
            dt.timedelta(days=1),
        )
        return CertificateOptions(
            privateKey=key,  # type: ignore[arg-type]
            certificate=certificate,  # type: ignore[arg-type]
            raiseMinimumTo=TLSVersion.TLSv1_2,
        )

    return load


def _reachable_port(advertise_address: str, agent_port: int) -> int:
    """The port the director must dial: the advertised one (NAT), else ours."""
    if advertise_address:
        _, port = split_host_port(advertise_address)
        if port is not None:
            return port
    return agent_port


def _expiries(
    files: AgentFiles, tls: ReloadingServerTLS, enrolled: bool
) -> dict[str, dt.datetime]:
    """When the agent's certificate (once enrolled) and its earliest CA expire."""
    expiries = {}
    served = tls.expires()
    if enrolled and served is not None:
        expiries["agent"] = served
    cas = load_cas(files)
    if cas:
        expiries["ca"] = min(ca.not_valid_after_utc for ca in cas)
    return expiries


def build_agent(
    config: AgentConfig, reactor: Any, observer: ILogObserver | None = None
) -> DaemonService:
    """The agent: identity, enrolment, then the listener.

    Raises:
        StartupError: when the data folder or the identity files are unusable.
    """
    settings = config.agent
    root = DaemonService("dcvix-agent", observer)
    try:
        metrics_secret = metrics_token(config.metrics)
    except ValueError as error:
        raise StartupError(str(error)) from None
    metrics = AgentMetrics(new_registry("agent"))
    data_dir = private_dir(Path(settings.data_dir), "data_dir")
    files = AgentFiles(data_dir)
    key, guid = load_or_create_identity(files)
    hostname = settings.effective_hostname

    tls = ReloadingServerTLS(
        ServerFiles(files.certificate, files.key, client_cas=files.ca),
        listener_options(files, key, guid, hostname, reactor),
    )
    directors = Directors(
        parse_directors(settings.director_host, settings.director_port),
        reactor,
        settings.director_failback,
    )
    enrolment = AgentEnrolment(
        files,
        key,
        guid,
        EnrolmentSettings(
            director_host=settings.director_host,
            director_port=settings.director_port,
            hostname=hostname,
            renew_interval=settings.renew_interval,
            ca_fingerprint=settings.ca_fingerprint,
            registration_token=settings.registration_token,
        ),
        reactor,
        on_certificate=tls.reload,
        directors=directors,
    )
    enrolment.setServiceParent(root)
    sighup = SighupService(reactor)
    sighup.add(enrolment.poke)
    sighup.setServiceParent(root)
    tls_reload_job(tls, reactor, sighup).setServiceParent(root)
    dcv = DcvCli(reactor, settings.dcv_path, settings.dcv_timeout, metrics)
    sessions = SessionManager(
        dcv,
        CreatedSessions(data_dir / "sessions.json"),
        settings.min_session_uid,
        settings.config_allow,
        settings.max_session_uid,
    )
    reporter = Reporter(
        sessions,
        StatsCollector(hostname),
        ReportSettings(
            settings.tags,
            settings.update_interval,
            _reachable_port(settings.advertise_address, settings.agent_port),
            settings.advertise_address,
        ),
    )
    if settings.update_interval > 0:
        updater = Updater(
            files,
            key,
            reporter,
            directors,
            reactor,
            lambda: enrolment.enrolled,
            metrics,
        )
        PeriodicJob(
            "update",
            settings.update_interval,
            updater.send,
            reactor,
            first_delay(settings.update_interval),
        ).setServiceParent(root)
    else:
        log.info("updates to the director are off (update_interval = 0)")
    if settings.reap_interval > 0:
        reaper = Reaper(
            sessions,
            settings.idle_timeout,
            settings.reap_all_sessions,
            reactor,
            metrics,
            # Reaped sessions ride the reports: none without reports.
            reporter.reaped if settings.update_interval > 0 else None,
        )
        PeriodicJob(
            "reaper",
            settings.reap_interval,
            reaper.reap_once,
            reactor,
            settings.reap_interval,
        ).setServiceParent(root)
    else:
        log.info("the idle-session reaper is off (reap_interval = 0)")
    api = AgentAPI(hostname, lambda: load_cas(files), sessions, reporter)
    tls_listener(
        reactor,
        settings.bind_address,
        settings.agent_port,
        tls,
        DcvixSite(
            api.app.resource(),
            idle_timeout=settings.keepalive_timeout,
            request_timeout=settings.request_timeout,
        ),
    ).setServiceParent(root)
    if config.metrics.listen:

        async def refresh() -> None:
            metrics.set_expiries(_expiries(files, tls, enrolment.enrolled))

        page = MetricsPage(metrics.registry, metrics_secret, refresh, reactor)
        metrics_listener(reactor, config.metrics.listen, page).setServiceParent(root)
    log.info(
        "dcvix-agent {version} {guid} for {hostname} listening on {host}:{port}, "
        "key fingerprint {fingerprint}",
        version=__version__,
        guid=guid,
        hostname=hostname,
        host=settings.bind_address or "::",
        port=settings.agent_port,
        # What the admin console shows beside a pending agent: compared out
        # of band, it proves the approval is for this machine.
        fingerprint=public_key_fingerprint(key.public_key()),
    )
    return root
