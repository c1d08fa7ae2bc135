"""The audit trail: who did what, when, from where, and with what outcome.

Every admin action, login success or failure, enrolment decision and session
change goes through :class:`Audit`: one log line (namespace ``dcvix.audit``,
for log shippers), one row of the store's audit table, and one line to each
export ([audit] file, syslog). State changes of the registry write their row
inside their own transaction (so the trail and the change cannot disagree);
for those, :meth:`Audit.logged` writes the log line and the exports only.

Refusals that anyone can cause without credentials (a DCV server's token
check answered no, a Gateway asking for an unknown session, a registration
refused, a login while locked) go through :meth:`Audit.refused`: the first of
a kind from a source (an address, an IPv6 /64) for an actor is written at
once, the rest are counted, and one line a minute says how many there were;
past MAX_SOURCES_PER_KIND sources, refusals share one line. Nobody can fill
the disk, or the log, with them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections import Counter as Tally
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dcvix.common.clock import now_utc
from dcvix.common.gotime import format_time
from dcvix.common.ratelimit import LogBudget
from dcvix.director.registry import AuditEntry, AuditTrail, StoreError

if TYPE_CHECKING:
    from dcvix.director.audit_export import AuditSink

audit_log = Logger(namespace="dcvix.audit")
log = Logger()

DEFAULT_KEEP = 2160 * 3600.0  # [audit] keep: 90 days
REFUSAL_WINDOW = 60.0  # seconds: one trail line per source, kind and actor
# Sources (and actors) followed apart per action; past them, one shared line.
# A minute then holds at most 2 x this many lines of an action, plus one.
MAX_SOURCES_PER_KIND = 20
OTHER_SOURCES = "*"


def entry_json(entry: AuditEntry) -> dict[str, Any]:
    """An audit line as the API, the CSV export and the exports show it."""
    return {
        "time": format_time(entry.time),
        "actor": entry.actor,
        "action": entry.action,
        "target": entry.target,
        "address": entry.address,
        "outcome": entry.outcome,
        "detail": entry.detail,
    }


@dataclass
class _Refusals:
    """Refusals of one kind, source and actor since its window opened."""

    opened: float
    counted: int = 0
    last: AuditEntry | None = field(default=None)


class Audit:
    """Writes audit lines, timed by the injected clock.

    Args:
        trail: the store's audit table.
        clock: the reactor's.
        sinks: exports of every line ([audit] file, syslog).
    """

    def __init__(
        self,
        trail: AuditTrail,
        clock: IReactorTime,
        sinks: Sequence[AuditSink] = (),
    ) -> None:
        self._trail = trail
        self._clock = clock
        self._sinks = list(sinks)
        self._refusals: dict[tuple[str, str, str], _Refusals] = {}
        self._followed: Tally[str] = Tally()  # windows per action
        self._store_trouble = LogBudget(1, 60.0, clock)

    async def record(
        self,
        actor: str,
        action: str,
        target: str,
        detail: str = "",
        *,
        address: str = "",
        outcome: str = "ok",
    ) -> None:
        """One log line, one table row, one line to each export."""
        entry = self._now(actor, action, target, detail, address, outcome)
        self._log(entry)
        await self._trail.append(entry)
        self._export(entry)

    def logged(
        self,
        actor: str,
        action: str,
        target: str,
        detail: str = "",
        *,
        address: str = "",
        outcome: str = "ok",
    ) -> None:
        """The log line and the exports (the change's transaction wrote the row)."""
        self.exported([self._now(actor, action, target, detail, address, outcome)])

    def _now(self, *fields: str) -> AuditEntry:
        """A line at the clock's time (the fields in AuditEntry's order)."""
        return AuditEntry(now_utc(self._clock), *fields)

    def exported(self, entries: Sequence[AuditEntry]) -> None:
        """The log lines and exports of rows a registry change wrote itself."""
        for entry in entries:
            self._log(entry)
            self._export(entry)

    async def refused(
        self, actor: str, action: str, target: str, detail: str, *, address: str
    ) -> None:
        """A refusal anyone can cause: at most a line a minute per source and actor.

        The first from a source (an address; an IPv6 /64) for an actor is
        written at once (``count=1``); later ones within the minute are
        counted, and :meth:`flush_refusals` writes one line with their number
        when the minute is over. At most MAX_SOURCES_PER_KIND sources are
        followed per action: past them, refusals share one line, address and
        actor ``*``, so that rotating addresses cannot grow the store either.
        """
        entry = self._now(actor, action, target, detail, address, "refused")
        key = (source_of(address), action, actor)
        if key not in self._refusals and self._followed[action] >= MAX_SOURCES_PER_KIND:
            key = (OTHER_SOURCES, action, OTHER_SOURCES)
        window = self._refusals.get(key)
        if window is not None:
            window.counted += 1
            window.last = entry
            return
        self._refusals[key] = _Refusals(opened=self._clock.seconds())
        self._followed[action] += 1
        try:
            await self._write_refusal(key, entry, 1)
        except StoreError as error:
            # A refusal's answer never changes because the trail is away.
            if self._store_trouble.take() is not None:
                log.warn("refusal not in the audit table: {error}", error=str(error))

    async def flush_refusals(self) -> None:
        """Write the count of each window that ended with refusals in it.

        A window with refusals opens the next one (so a steady stream is one
        line a minute); a quiet window is forgotten. A store that fails keeps
        the counts for the next flush.
        """
        now = self._clock.seconds()
        for key, window in list(self._refusals.items()):
            if now - window.opened < REFUSAL_WINDOW:
                continue
            if window.last is None:
                del self._refusals[key]
                self._followed[key[1]] -= 1
                continue
            await self._write_refusal(key, window.last, window.counted)
            self._refusals[key] = _Refusals(opened=now)

    async def _write_refusal(
        self, key: tuple[str, str, str], entry: AuditEntry, count: int
    ) -> None:
        """One refusal line: a shared window's address and actor are ``*``."""
        shared = key[0] == OTHER_SOURCES
        await self.record(
            OTHER_SOURCES if shared else entry.actor,
            entry.action,
            entry.target,
            _counted(entry.detail, count),
            address=OTHER_SOURCES if shared else entry.address,
            outcome="refused",
        )

    async def vacuum(self, keep: float) -> int:
        """Forget lines older than ``keep`` seconds ([audit] keep); how many."""
        before = now_utc(self._clock) - dt.timedelta(seconds=keep)
        return await self._trail.vacuum_audit(before)

    def reopen(self) -> None:
        """Reopen the exports (SIGHUP, after logrotate)."""
        for sink in self._sinks:
            sink.reopen()

    def close(self) -> None:
        """Close the exports."""
        for sink in self._sinks:
            sink.close()

    def _log(self, entry: AuditEntry) -> None:
        # "bob login failed from 10.0.0.7 backend=ldap result=rejected": the
        # fields that are set, in the trail's order.
        parts = ["{actor}", "{action}"]
        parts += ["{target}"] if entry.target else []
        parts += ["from {address}"] if entry.address else []
        parts += ["{detail}"] if entry.detail else []
        audit_log.info(
            " ".join(parts),
            actor=entry.actor,
            action=entry.action,
            target=entry.target,
            address=entry.address,
            detail=entry.detail,
            outcome=entry.outcome,
        )

    def _export(self, entry: AuditEntry) -> None:
        if not self._sinks:
            return
        line = entry_json(entry)
        for sink in self._sinks:
            sink.write(line)


def source_of(address: str) -> str:
    """Where refusals are counted from: the address, or its IPv6 /64.

    One host may hold a whole /64: counted by address, it would be 2^64
    sources.
    """
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return address


def _counted(detail: str, count: int) -> str:
    return f"{detail} count={count}" if detail else f"count={count}"
