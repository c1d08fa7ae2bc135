"""The director's whole HTTP API over real services, built in a folder.

Everything the routes reach is real (enrolment, logins, tokens, agent
administration, session control, the SQLite registry, the audit trail)
except what would leave the process: the login back end is a
:class:`~.fakes.PasswordAuthenticator` and the agent client a
:class:`~.fakes.RecordingAgentClient`. Time is a
:class:`~twisted.internet.task.Clock` set to :data:`NOW`, and the registry
runs its transactions inline, so every request through
:class:`treq.testing.StubTreq` completes before ``flush()`` returns.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, cast

from twisted.internet.task import Clock
from twisted.web.resource import IResource

from dcvix.common.metrics import MetricsPage
from dcvix.director.agent_admin import AgentAdmin
from dcvix.director.agent_client import AgentClient
from dcvix.director.api.admin import AdminRoutes
from dcvix.director.api.agents import AgentRoutes
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
from dcvix.director.ca import CertificateAuthority, new_authority
from dcvix.director.config import DirectorSection, HousekeeperSection
from dcvix.director.connections import ConnectionTokens
from dcvix.director.enrolment import Enrolment, EnrolmentPolicy
from dcvix.director.login import LoginService
from dcvix.director.metrics import DirectorMetrics
from dcvix.director.policy import PolicyHolder
from dcvix.director.portal import Portal
from dcvix.director.registry.engine import inline_runner
from dcvix.director.registry.sqlite import SqliteRegistry
from dcvix.director.resolver import SessionResolver
from dcvix.director.runtime import MemoryRuntimeStore
from dcvix.director.sessions import SessionControl
from dcvix.director.throttle import LoginThrottle
from dcvix.director.tokens import TokenService
from dcvix.testing.fakes import PasswordAuthenticator, RecordingAgentClient

NOW = dt.datetime(2026, 1, 15, 12, 0, 0, tzinfo=dt.UTC)
"""Where the harness's clock starts."""

USERS: tuple[dict[str, Any], ...] = ({"id": "alice", "admin": True}, {"id": "bob"})
"""``users.json``: ``alice`` is an admin, ``bob`` a plain user."""

PASSWORDS: Mapping[str, str] = {"alice": "alice-pw", "bob": "bob-pw"}
"""What the fake login back end accepts."""

TOKEN_KEY = bytes(range(32))
METRICS_TOKEN = "harness-scrape-token"  # noqa: S105 - [metrics] https on, in tests

_DEFAULTS = DirectorSection()


@dataclass
class DirectorHarness:
    """A director's API and the services behind it, for a test to drive and inspect.

    A context manager: leaving it closes ``agents.db``.
    """

    root: DirectorRoot
    clock: Clock
    authority: CertificateAuthority
    registry: SqliteRegistry
    runtime: MemoryRuntimeStore
    policy: PolicyHolder
    authenticator: PasswordAuthenticator
    agent_client: RecordingAgentClient
    tokens: TokenService
    logins: LoginService
    enrolment: Enrolment
    admin: AgentAdmin
    sessions: SessionControl
    connections: ConnectionTokens
    metrics: DirectorMetrics
    audit: Audit

    def resource(self) -> IResource:
        """The twisted.web resource serving every route."""
        return self.root.resource()

    def close(self) -> None:
        """Close ``agents.db``."""
        self.registry.close()

    def __enter__(self) -> DirectorHarness:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


def director_harness(
    folder: Path,
    *,
    max_body_bytes: int = _DEFAULTS.max_body_bytes,
    enrolment: EnrolmentPolicy | None = None,
    users: Sequence[Mapping[str, Any]] = USERS,
    pools: Sequence[Mapping[str, Any]] = (),
    passwords: Mapping[str, str] = PASSWORDS,
    own_names: frozenset[str] = frozenset(),
    now: dt.datetime = NOW,
    gateways: Sequence[str] = ("127.0.0.1",),
) -> DirectorHarness:
    """The director's API, wired as :func:`~dcvix.director.service.build_director`.

    Args:
        folder: an empty folder for ``agents.db`` and ``policydb/``.
        max_body_bytes: the request body cap (register keeps 16 KiB).
        enrolment: enrolment settings (default: 14-day certificates, no
            token, no auto-approval).
        users: the entries of ``users.json``.
        pools: the entries of ``pools.json``.
        passwords: what the login back end accepts.
        own_names: the director's host names, lower case.
        now: where the clock starts.
        gateways: ``[gateway] gateways_list``.
    """
    settings = _DEFAULTS
    clock = Clock()
    clock.advance(now.timestamp())
    authority = new_authority(now)
    registry = SqliteRegistry(folder / "agents.db", inline_runner)
    audit = Audit(registry, clock)
    enrolment_service = Enrolment(
        registry,
        authority,
        enrolment
        or EnrolmentPolicy(
            lifetime=dt.timedelta(seconds=settings.agent_cert_lifetime),
            own_names=own_names,
        ),
        audit,
        clock,
    )
    policydb = folder / "policydb"
    policydb.mkdir()
    (policydb / "users.json").write_text(json.dumps(list(users)), encoding="utf-8")
    (policydb / "pools.json").write_text(json.dumps(list(pools)), encoding="utf-8")
    policy = PolicyHolder(policydb)
    authenticator = PasswordAuthenticator(passwords)
    tokens = TokenService(TOKEN_KEY, clock)
    metrics = DirectorMetrics()
    logins = LoginService(
        authenticator,
        tokens,
        policy,
        registry,
        LoginThrottle(settings.login_max_failures, settings.login_lockout, clock),
        audit,
        metrics=metrics,
    )
    runtime = MemoryRuntimeStore()
    agent_client = RecordingAgentClient()
    sessions = SessionControl(
        runtime,
        registry,
        cast(AgentClient, agent_client),
        settings.config_allow,
        HousekeeperSection().max_age,
        clock,
        metrics,
    )
    admin = AgentAdmin(registry, audit, clock, own_names, sessions.forget)
    connections = ConnectionTokens(
        tokens,
        runtime,
        registry,
        settings.connection_token_ttl,
        settings.connection_token_single_use,
        HousekeeperSection().max_age,
        clock,
    )
    root = DirectorRoot(
        max_body_bytes,
        Gate(logins, enrolment_service, Gateways(gateways, clock)),
        [
            AgentRoutes(
                enrolment_service,
                runtime,
                settings.agent_port,
                clock,
                metrics=metrics,
                audit=audit,
            ),
            AuthRoutes(logins),
            AdminRoutes(admin, authority.pem),
            AuditRoutes(registry, clock),
            SessionRoutes(sessions, audit, policy, FleetRenderer()),
            DcvRoutes(
                connections,
                SessionResolver(
                    runtime, connections, HousekeeperSection().max_age, clock
                ),
                settings.dcv_port,
                metrics,
                audit,
            ),
            WebRoutes(web_root()),
            DocumentRoutes(lambda: root.routes),
            MetricsRoutes(MetricsPage(metrics.registry, METRICS_TOKEN)),
            UserRoutes(
                Portal(policy, sessions, connections, settings.dcv_port, metrics),
                audit,
            ),
        ],
    )
    return DirectorHarness(
        root=root,
        clock=clock,
        authority=authority,
        registry=registry,
        runtime=runtime,
        policy=policy,
        authenticator=authenticator,
        agent_client=agent_client,
        tokens=tokens,
        logins=logins,
        enrolment=enrolment_service,
        admin=admin,
        sessions=sessions,
        connections=connections,
        metrics=metrics,
        audit=audit,
    )
