"""The director's periodic chores: stale servers, stale pending agents, old tokens."""

from __future__ import annotations

import datetime as dt

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dcvix.common.clock import now_utc
from dcvix.director.audit import DEFAULT_KEEP, Audit
from dcvix.director.connections import ConnectionTokens
from dcvix.director.leader import Leadership, SoleDirector
from dcvix.director.registry import AgentRegistry
from dcvix.director.sessions import SessionControl
from dcvix.director.throttle import LoginThrottle

log = Logger()


class Housekeeper:
    """What the ``housekeeper`` and ``token-vacuum`` jobs do.

    Args:
        registry: the agent registry (pending agents, revoked tokens).
        control: the fleet (servers gone quiet).
        throttle: the login throttle (forgets old failures).
        connections: connection tokens (forgets expired ones).
        pending_max_age: seconds after which a pending agent is purged.
        clock: the time.
        leadership: whether this director does the store's share (the
            purge, the vacuum of revoked tokens and of the audit trail); its
            memory's share is always its own.
        audit: records purged agents, and keeps ``audit_keep`` seconds of it.
    """

    def __init__(
        self,
        registry: AgentRegistry,
        control: SessionControl,
        throttle: LoginThrottle,
        connections: ConnectionTokens,
        pending_max_age: float,
        clock: IReactorTime,
        leadership: Leadership | None = None,
        audit: Audit | None = None,
        audit_keep: float = DEFAULT_KEEP,
    ) -> None:
        self._registry = registry
        self._control = control
        self._throttle = throttle
        self._connections = connections
        self._pending_max_age = dt.timedelta(seconds=pending_max_age)
        self._clock = clock
        self._leadership = leadership or SoleDirector()
        self._audit = audit
        self._audit_keep = audit_keep

    async def sweep(self) -> None:
        """Drop the sessions of servers gone quiet; purge stale pending agents."""
        for hostname in await self._control.expire():
            log.info("server {hostname} went quiet: offline", hostname=hostname)
        if not self._leadership.leads():
            return
        cutoff = now_utc(self._clock) - self._pending_max_age
        for guid in await self._registry.purge_pending(cutoff):
            log.info("purged agent {guid}: pending too long", guid=guid)
            if self._audit is not None:
                await self._audit.record(
                    "housekeeper",
                    "purge pending",
                    guid,
                    f"pending over {int(self._pending_max_age.total_seconds())} s",
                )

    async def vacuum(self) -> None:
        """Forget expired logged-out tokens and old login failures."""
        self._throttle.prune()
        self._connections.vacuum()
        if not self._leadership.leads():
            return
        await self._registry.vacuum_login_failures(self._throttle.horizon())
        dropped = await self._registry.vacuum_tokens(now_utc(self._clock))
        if dropped:
            log.info("forgot {count} expired logged-out tokens", count=dropped)
        if self._audit is not None:
            lines = await self._audit.vacuum(self._audit_keep)
            if lines:
                log.info("forgot {count} audit lines past [audit] keep", count=lines)
