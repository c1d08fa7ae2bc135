"""What agents call: register (no certificate yet), renew and update (mTLS)."""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest

from dcvix.common.clock import now_utc
from dcvix.common.errors import ApiError, ServiceUnavailable, TooManyRequests
from dcvix.common.http import (
    access_log,
    client_address,
    json_response,
    parse_json,
    read_json,
)
from dcvix.common.jsonfields import decode
from dcvix.common.ratelimit import RateLimiter
from dcvix.director.api.authz import Role, authorized
from dcvix.director.audit import Audit
from dcvix.director.enrolment import Enrolment, PeerIdentity, PendingApproval
from dcvix.director.exchange import ReportExchange
from dcvix.director.metrics import DirectorMetrics
from dcvix.director.registry import AgentRecord, StoreError
from dcvix.director.requests import RegisterRequest, RenewRequest
from dcvix.director.runtime import (
    Reaped,
    RuntimeStore,
    ServerState,
    SessionsMemo,
    parse_reaped,
    parse_report,
)

log = Logger()

UPDATE_PATH = b"/v1/agent/update"
REAPED_PER_MINUTE = 60  # reap lines an agent may add to the trail
SUMMARY_SECONDS = 60.0


class UpdateTally:
    """Agent updates counted for the access log's periodic summary.

    Each update goes to the access log at ``debug`` only; every
    :data:`SUMMARY_SECONDS` :meth:`summarize` writes one ``info`` line with how
    many updates came from how many agents (none when there were none).
    """

    def __init__(self) -> None:
        self.updates = 0
        self._agents: set[str] = set()

    def count(self, guid: str) -> None:
        """One update stored for agent ``guid``."""
        self.updates += 1
        self._agents.add(guid)

    async def summarize(self) -> None:
        """Log and reset the counts."""
        updates, agents = self.updates, len(self._agents)
        self.updates = 0
        self._agents = set()
        if updates:
            access_log.info(
                "{updates} agent updates from {agents} agents in the last "
                "{minutes:g} min",
                updates=updates,
                agents=agents,
                minutes=SUMMARY_SECONDS / 60,
            )


class AgentRoutes:
    """``/v1/agent/*``.

    Args:
        enrolment: registration and renewal decisions.
        runtime: where reports are kept.
        default_agent_port: the port of agents that do not report theirs.
        clock: the time of each report.
        tally: where stored updates are counted (for the log's summary).
        exchange: where accepted reports go for the other directors of a
            shared store (none with one director).
        metrics: where updates, registrations and renewals are counted.
        audit: where refused registrations are recorded (rate-limited).
    """

    def __init__(
        self,
        enrolment: Enrolment,
        runtime: RuntimeStore,
        default_agent_port: int,
        clock: IReactorTime,
        tally: UpdateTally | None = None,
        exchange: ReportExchange | None = None,
        metrics: DirectorMetrics | None = None,
        audit: Audit | None = None,
    ) -> None:
        self._enrolment = enrolment
        self._audit = audit
        self._runtime = runtime
        self._default_port = default_agent_port
        self._clock = clock
        self.tally = tally if tally is not None else UpdateTally()
        self._sessions = SessionsMemo()
        self._exchange = exchange
        self._metrics = metrics if metrics is not None else DirectorMetrics()
        # Bound once: the update route is the director's hottest path.
        self._accepted = self._metrics.updates.labels("accepted")
        self._refused = self._metrics.updates.labels("refused")
        self._lag = self._metrics.update_lag
        self._reaped_lines = RateLimiter(REAPED_PER_MINUTE, 60.0, clock)

    @authorized("POST", "/v1/agent/register", role=Role.PUBLIC)
    async def register(self, request: IRequest) -> bytes:
        """Enrol an agent (trust on first use: no certificate yet).

        Body ``{"csr", "guid", "hostname", "registrationToken"?}``. 200 with
        ``{"certificate", "ca", "agentId", "renewalIntervalSeconds"}``; 403
        ``pending approval`` or ``agent denied``; 400, 401, 409, 413, 429.
        """
        address = client_address(request)
        try:
            body = decode(RegisterRequest, read_json(request))
            answer = await self._enrolment.register(body, address)
        except ApiError as error:
            outcome = _outcome(error)
            self._metrics.registrations.labels(outcome).inc()
            # A key mismatch has its own line (once a minute per agent).
            if outcome != "pending" and error.message != "key mismatch":
                await self._audit_refusal(error, address)
            raise
        self._metrics.registrations.labels("registered").inc()
        return json_response(request, 200, answer)

    @authorized("POST", "/v1/agent/renew", role=Role.AGENT_CERTIFICATE)
    async def renew(self, request: IRequest, peer: PeerIdentity) -> bytes:
        """A new certificate for the same key.

        Body ``{"csr"}``. 200 with ``{"certificate", "renewalIntervalSeconds"}``;
        403 while pending; 401 when revoked, denied or unknown; 409 key mismatch.
        """
        try:
            body = decode(RenewRequest, read_json(request))
            answer = await self._enrolment.renew(peer, body, client_address(request))
        except ApiError as error:
            self._metrics.renewals.labels(_outcome(error)).inc()
            raise
        self._metrics.renewals.labels("renewed").inc()
        return json_response(request, 200, answer)

    @authorized("POST", "/v1/agent/update", role=Role.AGENT)
    async def update(self, request: IRequest, agent: AgentRecord) -> bytes:
        """Sessions, stats and tags, stored under the agent's registered hostname.

        200 ``{}``; 400 for a body that does not validate (nothing is stored).
        """
        previous = await self._runtime.server(agent.hostname)
        raw = request.content.read() if request.content is not None else b""
        peer = client_address(request)
        try:
            payload = parse_json(raw)
            reaped = parse_reaped(payload)
            state = parse_report(
                agent.guid,
                agent.hostname,
                payload,
                peer,
                now_utc(self._clock),
                self._default_port,
                previous,
                self._sessions,
            )
        except ApiError:
            self._refused.inc()
            raise
        await self._runtime.put(state)
        if (
            previous is not None
            and previous.guid == agent.guid
            and state.update_interval
        ):
            late = state.seen_at - previous.seen_at - state.update_interval
            self._lag.observe(max(late, 0.0))
        if self._exchange is not None:
            self._exchange.share(agent.guid, agent.hostname, peer, state, payload)
        self.tally.count(agent.guid)
        self._accepted.inc()
        if reaped and self._audit is not None:
            await self._audit_reaped(agent, reaped, previous, state, peer)
        return json_response(request, 200, {})

    async def _audit_reaped(
        self,
        agent: AgentRecord,
        reaped: list[Reaped],
        previous: ServerState | None,
        state: ServerState,
        peer: str,
    ) -> None:
        """A line per session the agent reaped, that it had reported and no more.

        Only sessions of the agent's previous report that this one lacks, at
        most REAPED_PER_MINUTE an agent: an agent cannot grow the trail with
        sessions it never had, and a report sent again writes nothing twice.
        A store that fails loses the lines, never the report.
        """
        assert self._audit is not None
        had = (
            {s.id for s in previous.sessions}
            if previous is not None and previous.guid == agent.guid
            else set()
        )
        has = {s.id for s in state.sessions}
        for session in reaped:
            if session.id not in had or session.id in has:
                continue
            if not self._reaped_lines.take(agent.guid):
                log.warn(
                    "agent {guid} reaped more than {limit} sessions in a minute: "
                    "not all are in the audit trail",
                    guid=agent.guid,
                    limit=REAPED_PER_MINUTE,
                )
                return
            try:
                await self._audit.record(
                    f"agent {agent.hostname}",
                    "reap session",
                    session.id,
                    f"owner={session.owner} {session.reason}".strip(),
                    address=peer,
                )
            except StoreError as error:
                log.warn("reaped session not audited: {error}", error=str(error))
                return

    async def _audit_refusal(self, error: ApiError, address: str) -> None:
        if self._audit is not None:
            await self._audit.refused(
                f"address {address}",
                "register refused",
                "",
                f"{error.status} {error.message}"[:300],
                address=address,
            )


def _outcome(error: ApiError) -> str:
    """A refused registration or renewal, as the metrics count it."""
    if isinstance(error, PendingApproval):
        return "pending"
    if isinstance(error, TooManyRequests | ServiceUnavailable):
        return "limited"
    return "refused"
