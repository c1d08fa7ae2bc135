"""What the director counts for Prometheus (the page: :mod:`dcvix.common.metrics`).

Counters and histograms move where things happen (an update accepted, a
login refused). The fleet's gauges (agents by state, servers online, sessions
and their clients, certificate expiry) are computed when a scrape comes, from
the director's memory and its store, at most once a second however often
scrapes come: Prometheus scrapes every 15 to 60 s, and a listing of 10,000
servers costs tens of milliseconds.

Label values are bounded sets (outcomes, back ends, session types and DCV's
states), never user names, session ids or host names.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter as Tally
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dcvix.common.ratelimit import LogBudget
from dcvix.director.registry import AgentRegistry, StoreError
from dcvix.director.runtime import RuntimeStore, is_online

log = Logger()

AGENT_STATES = ("pending", "registered", "denied", "revoked")
SESSION_TYPES = ("console", "virtual")
# The states ``dcv list-sessions`` reports; anything else counts as "other".
SESSION_STATES = ("creating", "running", "closing", "deleted")
# Answers from memory take well under a millisecond; calls to agents seconds.
QUICK = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# An agent's reports come every update_interval, late by a network's delays
# when all is well, by minutes when an agent or a link struggles.
LAG = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
SLOW = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0)


class DirectorMetrics:
    """Every metric of the director, registered in one registry.

    Args:
        registry: where they are exposed (:func:`~dcvix.common.metrics.new_registry`).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        into = self.registry
        self.updates = Counter(
            "dcvix_updates_received",
            "Agents' reports (POST /v1/agent/update) by outcome: accepted, or "
            "refused for a body that does not validate.",
            ["outcome"],
            registry=into,
        )
        self.update_lag = Histogram(
            "dcvix_update_lag_seconds",
            "How late each accepted report came: the time since the same agent's "
            "previous report, less the update_interval it announced (0 when on "
            "time; not observed for an agent's first report to this director).",
            buckets=LAG,
            registry=into,
        )
        self.registrations = Counter(
            "dcvix_registrations",
            "Registration requests by outcome: registered, pending, refused "
            "(a bad or unknown request, a denied agent, a conflict), limited "
            "(register_rate or a full queue).",
            ["outcome"],
            registry=into,
        )
        self.renewals = Counter(
            "dcvix_renewals",
            "Certificate renewals by outcome: renewed, refused, limited (too many at "
            "once).",
            ["outcome"],
            registry=into,
        )
        self.logins = Counter(
            "dcvix_logins",
            "Logins (admin and user) by back end and outcome: ok, rejected, "
            "locked, unavailable (the back end could not decide), invalid, "
            "abandoned (the client hung up while its back end decided).",
            ["backend", "outcome"],
            registry=into,
        )
        self.lockouts = Counter(
            "dcvix_login_lockouts",
            "Locks set after too many failed logins, by what was locked: a user "
            "or an address.",
            ["kind"],
            registry=into,
        )
        self.verifications = Counter(
            "dcvix_dcv_verifications",
            "DCV servers' connection token checks (POST /v1/user/authtokenverify) "
            "by result: yes, no, error.",
            ["result"],
            registry=into,
        )
        self.verification_seconds = Histogram(
            "dcvix_dcv_verification_seconds",
            "How long a connection token check took.",
            buckets=QUICK,
            registry=into,
        )
        self.resolutions = Counter(
            "dcvix_gateway_resolutions",
            "DCV Connection Gateway requests (POST /resolveSession) by result: "
            "found, not_found, invalid.",
            ["result"],
            registry=into,
        )
        self.resolution_seconds = Histogram(
            "dcvix_gateway_resolution_seconds",
            "How long a session resolution took.",
            buckets=QUICK,
            registry=into,
        )
        self.placements = Counter(
            "dcvix_placements",
            "Pool placements by outcome: placed, none_online, full, refused (not "
            "the user's pool).",
            ["outcome"],
            registry=into,
        )
        self.placement_seconds = Histogram(
            "dcvix_placement_seconds",
            "How long choosing a server of a pool took.",
            buckets=QUICK,
            registry=into,
        )
        self.agent_calls = Counter(
            "dcvix_calls_to_agents",
            "Calls of the director to agents by route and outcome: ok, refused "
            "(the agent answered an error), timeout, unreachable.",
            ["route", "outcome"],
            registry=into,
        )
        self.agent_call_seconds = Histogram(
            "dcvix_call_to_agent_seconds",
            "How long a call to an agent took, by route.",
            ["route"],
            buckets=SLOW,
            registry=into,
        )
        # Every series of a bounded set exists from the start: 0, not "no data".
        for counter, outcomes in (
            (self.updates, ("accepted", "refused")),
            (self.registrations, ("registered", "pending", "refused", "limited")),
            (self.renewals, ("renewed", "refused", "limited")),
            (self.verifications, ("yes", "no", "error")),
            (self.resolutions, ("found", "not_found", "invalid")),
            (self.placements, ("placed", "none_online", "full", "refused")),
        ):
            for outcome in outcomes:
                counter.labels(outcome)
        self.agents = Gauge(
            "dcvix_agents", "Agents in the store by state.", ["state"], registry=into
        )
        self.servers = Gauge(
            "dcvix_servers",
            "Servers that reported since the director started, online or offline "
            "([housekeeper] max_age).",
            ["status"],
            registry=into,
        )
        self.sessions = Gauge(
            "dcvix_sessions",
            "DCV sessions on online servers, by type and state.",
            ["type", "state"],
            registry=into,
        )
        self.clients = Gauge(
            "dcvix_session_clients",
            "Clients connected to DCV sessions on online servers.",
            registry=into,
        )
        self.certificate_expiry = Gauge(
            "dcvix_certificate_expiry_timestamp_seconds",
            "When a certificate of the director expires (Unix time): its CA, "
            "and its own HTTPS certificate.",
            ["certificate"],
            registry=into,
        )


class FleetGauges:
    """Sets the fleet's gauges from memory and the store, when scraped.

    Args:
        metrics: whose gauges.
        registry: the agents' records (their states).
        runtime: the servers and their sessions.
        max_age: [housekeeper] max_age, as listings judge online.
        expiries: when each certificate expires, by name (read at each refresh:
            the director's own certificate can be replaced while it runs).
        clock: the reactor's.
    """

    def __init__(
        self,
        metrics: DirectorMetrics,
        registry: AgentRegistry,
        runtime: RuntimeStore,
        max_age: float,
        expiries: Callable[[], Mapping[str, dt.datetime]],
        clock: IReactorTime,
    ) -> None:
        self._metrics = metrics
        self._registry = registry
        self._runtime = runtime
        self._max_age = max_age
        self._expiries = expiries
        self._clock = clock
        self._trouble = LogBudget(1, 60.0, clock)

    async def refresh(self) -> None:
        """Compute the gauges (the page calls it at most once a second)."""
        now = self._clock.seconds()
        metrics = self._metrics
        try:
            states = Tally((await self._registry.states()).values())
        except StoreError as error:
            # The agents' gauges keep their last values; the rest is memory.
            skipped = self._trouble.take()
            if skipped is not None:
                log.warn("metrics: agents by state not read: {error}", error=str(error))
        else:
            for state in AGENT_STATES:
                metrics.agents.labels(state).set(states.get(state, 0))
        online = offline = clients = 0
        sessions: Tally[tuple[str, str]] = Tally()
        for server in await self._runtime.servers():
            if not is_online(server, now, self._max_age):
                offline += 1
                continue
            online += 1
            for session in server.sessions:
                kind = session.type if session.type in SESSION_TYPES else "other"
                status = session.status.lower()
                state = status if status in SESSION_STATES else "other"
                sessions[kind, state] += 1
                clients += session.connections
        metrics.servers.labels("online").set(online)
        metrics.servers.labels("offline").set(offline)
        for kind in (*SESSION_TYPES, "other"):
            for state in (*SESSION_STATES, "other"):
                metrics.sessions.labels(kind, state).set(sessions[kind, state])
        metrics.clients.set(clients)
        for name, moment in self._expiries().items():
            metrics.certificate_expiry.labels(name).set(moment.timestamp())
