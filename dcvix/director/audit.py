"""The audit trail: who did what, when, from where.

Every admin action, login success or failure, enrolment decision and session
change goes through :class:`Audit`: one log line (namespace ``dcvix.audit``,
for log shippers) and one row of the store's audit table. State changes of the
registry write their row inside their own transaction (so the trail and the
change cannot disagree); for those, :meth:`Audit.logged` writes the log line
only.
"""

from __future__ import annotations

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dcvix.common.clock import now_utc
from dcvix.director.registry import AuditEntry, AuditTrail

audit_log = Logger(namespace="dcvix.audit")


class Audit:
    """Writes audit lines, timed by the injected clock."""

    def __init__(self, trail: AuditTrail, clock: IReactorTime) -> None:
        self._trail = trail
        self._clock = clock

    async def record(
        self, actor: str, action: str, target: str, detail: str = ""
    ) -> None:
        """One log line and one table row."""
        self.logged(actor, action, target, detail)
        await self._trail.append(
            AuditEntry(now_utc(self._clock), actor, action, target, detail)
        )

    def logged(self, actor: str, action: str, target: str, detail: str = "") -> None:
        """The log line only: the row is written elsewhere, or must not be.

        For registry changes that wrote their row in their transaction, and
        for refusals kept out of the table (a locked account being hammered
        must not grow it).
        """
        audit_log.info(
            "{actor} {action} {target} {detail}"
            if detail
            else "{actor} {action} {target}",
            actor=actor,
            action=action,
            target=target,
            detail=detail,
        )
