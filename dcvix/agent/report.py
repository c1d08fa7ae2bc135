"""What the agent tells the director: sessions, stats, tags and how to reach it.

The same object answers ``GET /v1/stats`` and is the body of every
``POST /v1/agent/update``. A ``dcv`` failure does not stop the report: the
stats still go out, ``sessions`` is left out (so the director keeps what it
knew rather than believing every session ended) and ``dcv_error`` says why.

Sessions the idle reaper closed travel in ``reaped`` (id, owner, reason) until
a report carrying them is delivered, so the director's audit trail says why
they ended. At most :data:`MAX_REAPED` wait; older ones are dropped, and said.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from twisted.logger import Logger

from dcvix import __version__
from dcvix.agent.dcv import DcvError
from dcvix.agent.sessions import SessionManager
from dcvix.agent.stats import StatsCollector

log = Logger()

MAX_REAPED = 100  # the director takes this many per report


def os_tag() -> str:
    """Go's GOOS for this machine: ``linux``, ``windows``, ``darwin``..."""
    return (
        "windows"
        if sys.platform.startswith("win")
        else sys.platform.rstrip("0123456789")
    )


@dataclass(frozen=True)
class ReportSettings:
    """The top-level keys CONTRACT §3 adds to Go's update."""

    tags: Sequence[str]
    update_interval: float
    agent_port: int
    advertise_address: str = ""


class Reporter:
    """Builds the report; one place for the API route and the updater."""

    def __init__(
        self, sessions: SessionManager, stats: StatsCollector, settings: ReportSettings
    ) -> None:
        self._sessions = sessions
        self._stats = stats
        self._settings = settings
        self._reaped: list[dict[str, str]] = []

    def reaped(self, session_id: str, owner: str, reason: str) -> None:
        """A session the reaper closed, for the next delivered report."""
        if len(self._reaped) >= MAX_REAPED:
            dropped = self._reaped.pop(0)
            log.warn(
                "too many reaped sessions waiting for the director: {id} is "
                "left out of its audit trail",
                id=dropped["id"],
            )
        self._reaped.append({"id": session_id, "owner": owner, "reason": reason})

    def delivered(self, report: dict[str, Any]) -> None:
        """The director took ``report``: forget the reaped sessions it carried."""
        sent = report.get("reaped", [])
        self._reaped = [r for r in self._reaped if r not in sent]

    async def build(self) -> dict[str, Any]:
        """The report, in Go's key order, then ours."""
        report: dict[str, Any] = {}
        dcv_error = None
        try:
            before = self._sessions.created.snapshot()
            sessions = await self._sessions.list()
            report["sessions"] = [s.to_json() for s in sessions]
            self._sessions.created.forget_gone(before, {s.id for s in sessions})
        except DcvError as error:
            dcv_error = error.message
            log.warn("reporting without sessions: {error}", error=error.message)
        report["stats"] = self._stats.collect()
        report["tags"] = [*self._settings.tags, os_tag()]
        report["update_interval"] = self._settings.update_interval
        report["agent_port"] = self._settings.agent_port
        if self._settings.advertise_address:
            report["advertise_address"] = self._settings.advertise_address
        report["version"] = __version__
        if self._reaped:
            report["reaped"] = list(self._reaped)
        if dcv_error is not None:
            report["dcv_error"] = dcv_error
        return report
