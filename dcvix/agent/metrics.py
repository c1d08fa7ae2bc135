"""What the agent counts for Prometheus (the page: :mod:`dcvix.common.metrics`).

Counters and histograms move where things happen: a ``dcv`` command ends, a
report reaches the director or does not, the reaper closes a session. The
sessions' gauges come from the last ``dcv list-sessions`` the agent ran
anyway (for its report or for the director), so a scrape never starts a
process. Host figures are read from ``/proc`` at each scrape (a few
microseconds), CPU time as counters for ``rate()``, as node_exporter does.

Label values are bounded sets (commands, outcomes, reasons, DCV's session
types and states), never session ids or user names.
"""

from __future__ import annotations

import datetime as dt
import os
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from dcvix.agent.dcv import Session

DCV_COMMANDS = ("list-sessions", "create-session", "close-session", "set-config")
DCV_OUTCOMES = ("ok", "failed", "timeout", "missing", "garbage")
SESSION_TYPES = ("console", "virtual")
# The states ``dcv list-sessions`` reports; anything else counts as "other".
SESSION_STATES = ("creating", "running", "closing", "deleted")
# dcv commands take tens of milliseconds to seconds; a report's round trip
# a few milliseconds on a LAN, up to UPDATE_TIMEOUT.
SLOW = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0)


class AgentMetrics:
    """Every metric of the agent, registered in one registry.

    Args:
        registry: where they are exposed (:func:`~dcvix.common.metrics.new_registry`).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        into = self.registry
        self.dcv_commands = Counter(
            "dcvix_agent_dcv_commands",
            "dcv commands run, by command and outcome: ok, failed (non-zero "
            "exit), timeout (dcv_timeout), missing (could not start), garbage "
            "(output not understood).",
            ["command", "outcome"],
            registry=into,
        )
        self.dcv_command_seconds = Histogram(
            "dcvix_agent_dcv_command_seconds",
            "How long a dcv command took, by command.",
            ["command"],
            buckets=SLOW,
            registry=into,
        )
        self.reports = Counter(
            "dcvix_agent_reports",
            "Reports sent to the director, by outcome: delivered, refused (the "
            "director answered an error), failed (no director answered in time).",
            ["outcome"],
            registry=into,
        )
        self.report_seconds = Histogram(
            "dcvix_agent_report_seconds",
            "How long sending a report took, until the director's answer.",
            buckets=SLOW,
            registry=into,
        )
        self.reaped = Counter(
            "dcvix_agent_reaped_sessions",
            "Sessions the idle reaper closed, by reason: disconnected (no client "
            "since the last one left), unused (no client ever connected).",
            ["reason"],
            registry=into,
        )
        self.reap_failures = Counter(
            "dcvix_agent_reap_failures",
            "Idle sessions the reaper tried to close and could not.",
            registry=into,
        )
        self.sessions = Gauge(
            "dcvix_agent_sessions",
            "DCV sessions by type and state, as the last dcv list-sessions saw them.",
            ["type", "state"],
            registry=into,
        )
        self.clients = Gauge(
            "dcvix_agent_session_clients",
            "Clients connected to this host's DCV sessions (last listing).",
            registry=into,
        )
        self.listed = Gauge(
            "dcvix_agent_sessions_listed_timestamp_seconds",
            "When dcv list-sessions last succeeded (Unix time; 0: never yet).",
            registry=into,
        )
        self.certificate_expiry = Gauge(
            "dcvix_agent_certificate_expiry_timestamp_seconds",
            "When a certificate the agent relies on expires (Unix time): agent "
            "(its own, from the director), ca (the earliest director CA it trusts).",
            ["certificate"],
            registry=into,
        )
        # Every series of a bounded set exists from the start: 0, not "no data".
        for command in DCV_COMMANDS:
            self.dcv_command_seconds.labels(command)
            for outcome in DCV_OUTCOMES:
                self.dcv_commands.labels(command, outcome)
        for outcome in ("delivered", "refused", "failed"):
            self.reports.labels(outcome)
        for reason in ("disconnected", "unused"):
            self.reaped.labels(reason)
        HostCollector(registry=into)

    def count_dcv(self, command: str, outcome: str, seconds: float) -> None:
        """One ``dcv`` command ended."""
        self.dcv_commands.labels(command, outcome).inc()
        self.dcv_command_seconds.labels(command).observe(seconds)

    def set_sessions(self, sessions: Sequence[Session], when: float) -> None:
        """The gauges of a successful listing made at ``when`` (Unix time)."""
        tally: Tally[tuple[str, str]] = Tally()
        for session in sessions:
            kind = session.type if session.type in SESSION_TYPES else "other"
            status = session.status.lower()
            tally[kind, status if status in SESSION_STATES else "other"] += 1
        for kind in (*SESSION_TYPES, "other"):
            for state in (*SESSION_STATES, "other"):
                self.sessions.labels(kind, state).set(tally[kind, state])
        self.clients.set(sum(session.connections for session in sessions))
        self.listed.set(when)

    def set_expiries(self, expiries: Mapping[str, dt.datetime]) -> None:
        """The certificates' expiry gauges (names absent now keep no sample)."""
        self.certificate_expiry.clear()
        for name, moment in expiries.items():
            self.certificate_expiry.labels(name).set(moment.timestamp())


class HostCollector(Collector):
    """Memory, CPU time and load of the host, read when scraped.

    Args:
        registry: where to register (None: nowhere, for tests).
        read: the source of figures (psutil's by default).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        read: Callable[[], HostFigures] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._read = read or read_host
        self._clock = clock
        self._last: tuple[float, HostFigures] | None = None
        if registry is not None:
            registry.register(self)

    def _figures(self) -> HostFigures:
        """A reading at most a second old: scrapes in a loop cost /proc nothing."""
        now = self._clock()
        if self._last is None or now - self._last[0] >= 1.0:
            self._last = (now, self._read())
        return self._last[1]

    def describe(self) -> list[Metric]:
        """No up-front description: the families are cheap to collect."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The host's families, from one reading."""
        figures = self._figures()
        yield GaugeMetricFamily(
            "dcvix_agent_memory_available_bytes",
            "Memory available to new work (MemAvailable), as reported to the director.",
            value=figures.memory_available,
        )
        yield GaugeMetricFamily(
            "dcvix_agent_memory_total_bytes",
            "Memory of the host.",
            value=figures.memory_total,
        )
        yield GaugeMetricFamily(
            "dcvix_agent_cpu_cores",
            "CPU cores of the host (physical, else logical).",
            value=figures.cores,
        )
        cpu = CounterMetricFamily(
            "dcvix_agent_cpu_seconds",
            "CPU time of the whole host by mode, summed over CPUs: rate() of it "
            "over all modes is the number of CPUs busy or not.",
            labels=["mode"],
        )
        for mode, seconds in figures.cpu_seconds.items():
            cpu.add_metric([mode], seconds)
        yield cpu
        for minutes, load in zip((1, 5, 15), figures.load, strict=True):
            yield GaugeMetricFamily(
                f"dcvix_agent_load{minutes}",
                f"The host's load average over {minutes} minute(s).",
                value=load,
            )


@dataclass(frozen=True)
class HostFigures:
    """One reading of the host (what :class:`HostCollector` exposes)."""

    memory_available: float
    memory_total: float
    cores: int
    cpu_seconds: Mapping[str, float]
    load: tuple[float, float, float]


def read_host() -> HostFigures:
    """The host's figures now, from psutil (never a sleeping sample)."""
    memory = psutil.virtual_memory()
    return HostFigures(
        memory_available=float(memory.available),
        memory_total=float(memory.total),
        cores=psutil.cpu_count(logical=False) or psutil.cpu_count() or 0,
        # Linux counts guest time inside user and nice already: left out, a
        # sum over modes is the CPUs' time.
        cpu_seconds={
            mode: seconds
            for mode, seconds in psutil.cpu_times()._asdict().items()
            if mode not in ("guest", "guest_nice")
        },
        load=os.getloadavg(),
    )
