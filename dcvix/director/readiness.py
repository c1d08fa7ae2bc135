"""``GET /v1/health?ready=1``: may a load balancer send this director traffic?

Plain ``/v1/health`` stays Go's answer (the process is up). The readiness form
also checks what a request needs: the store answers, and the CA and the
director's own certificate are within their validity. The policy is always
loaded (a director does not start without one, and a bad reload keeps the
last good one), so it is reported, never a reason to refuse: a broken
``users.json`` saved on every director must not take them all out.

Anyone may ask, so a finding is reused for :data:`REUSE_FOR` seconds and
callers arriving while a check runs wait for that one: however many ask, the
store sees at most one read a second from here.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure

from dcvix.common.clock import now_utc
from dcvix.director.policy import PolicyHolder
from dcvix.director.registry import REGISTERED, AgentRegistry, StoreError

REUSE_FOR = 1.0
Finding = tuple[bool, dict[str, str]]


class Readiness:
    """The checks behind ``/v1/health?ready=1``.

    Args:
        registry: the store (one small read).
        expiries: when each certificate expires, by name.
        policy: the policy in force.
        clock: the reactor's.
    """

    def __init__(
        self,
        registry: AgentRegistry,
        expiries: Callable[[], Mapping[str, dt.datetime]],
        policy: PolicyHolder,
        clock: IReactorTime,
    ) -> None:
        self._registry = registry
        self._expiries = expiries
        self._policy = policy
        self._clock = clock
        self._last: tuple[float, Finding] | None = None
        self._running: list[Deferred[Finding]] | None = None

    async def check(self) -> Finding:
        """Whether the director is ready, and each check's finding (maybe reused)."""
        now = self._clock.seconds()
        if self._last is not None and now - self._last[0] < REUSE_FOR:
            return self._last[1]
        if self._running is not None:
            waiting: Deferred[Finding] = Deferred()
            self._running.append(waiting)
            return await waiting
        waiters: list[Deferred[Finding]] = []
        self._running = waiters
        try:
            found = await self._check()
        except Exception:
            failure = Failure()
            self._running = None
            for waiting in waiters:
                waiting.errback(failure)
            raise
        self._running = None
        self._last = (self._clock.seconds(), found)
        for waiting in waiters:
            waiting.callback(found)
        return found

    async def _check(self) -> Finding:
        checks: dict[str, str] = {}
        ready = True
        try:
            await self._registry.count(REGISTERED)
            checks["database"] = "ok"
        except StoreError as error:
            checks["database"] = f"unreachable: {error}"
            ready = False
        now = now_utc(self._clock)
        expired = [name for name, until in self._expiries().items() if until <= now]
        if expired:
            checks["certificates"] = "expired: " + ", ".join(sorted(expired))
            ready = False
        else:
            checks["certificates"] = "ok"
        failed = self._policy.reload_error
        checks["policy"] = (
            "ok" if not failed else f"ok (the last reload failed: {failed})"
        )
        return ready, checks
