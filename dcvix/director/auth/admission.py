"""One global bound on login back-end calls, whatever the back end.

An unauthenticated client can start a login, so logins are bounded for the
whole director, not only per user and per address (CONTRACT §3 "Hardening"):
at most ``concurrency`` back-end calls (PAM threads, LDAP or RADIUS exchanges,
external processes) run at once, at most ``queue`` logins wait behind them,
and any further login is answered 503 at once, never queued without end.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from dcvix.common.errors import ServiceUnavailable
from dcvix.common.ratelimit import RateLimiter
from dcvix.director.auth import Authenticator, AuthUnavailable

log = Logger()

T = TypeVar("T")
BUSY = "too many logins at once; try again shortly"


class AdmissionBound:
    """``concurrency`` calls at once, ``queue`` waiting, 503 beyond.

    Waiting calls are started in arrival order; a finished call hands its slot
    to the next on the next reactor turn (never by recursion, however long the
    queue). A slot is held until the *work* ends, not until its caller does: a
    client that hangs up cannot free a slot while its PAM thread or external
    process still runs, and one that hangs up while queued leaves the queue.
    """

    def __init__(self, concurrency: int, queue: int, clock: IReactorTime) -> None:
        self._free = concurrency
        self._queue = queue
        self._clock = clock
        self._waiting: deque[Deferred[None]] = deque()
        self._warnings = RateLimiter(1, 60.0, clock)

    @property
    def waiting(self) -> int:
        """Calls waiting for a slot."""
        return len(self._waiting)

    async def run(self, call: Callable[[], Coroutine[Any, Any, T]]) -> T:
        """``call()`` once a slot is free.

        Raises:
            ServiceUnavailable: every slot is busy and the queue is full.
        """
        await self._admit()
        work: Deferred[T] = Deferred.fromCoroutine(call())
        answer: Deferred[T] = Deferred()

        def done(result: T | Failure) -> None:
            self._release()
            if answer.called:  # the caller went away; the work is over now
                if isinstance(result, Failure):
                    _log_orphan(result)
                return
            if isinstance(result, Failure):
                answer.errback(result)
            else:
                answer.callback(result)

        work.addBoth(done)
        return await answer

    async def _admit(self) -> None:
        if self._free > 0:
            self._free -= 1
            return
        if len(self._waiting) >= self._queue:
            if self._warnings.take("busy"):
                log.warn(
                    "login back ends are saturated ({waiting} logins waiting): "
                    "answering 503",
                    waiting=len(self._waiting),
                )
            raise ServiceUnavailable(BUSY)
        turn: Deferred[None] = Deferred(self._leave)
        self._waiting.append(turn)
        await turn  # the slot is handed over by the call that ends

    def _leave(self, turn: Deferred[None]) -> None:
        """A waiting caller went away: it gives up its place in the queue."""
        if turn in self._waiting:
            self._waiting.remove(turn)

    def _release(self) -> None:
        if self._waiting:
            turn = self._waiting.popleft()
            self._clock.callLater(0, self._hand_over, turn)
        else:
            self._free += 1

    def _hand_over(self, turn: Deferred[None]) -> None:
        if turn.called:  # cancelled between its turn and now: pass it on
            self._release()
        else:
            turn.callback(None)


def _log_orphan(failure: Failure) -> None:
    """A back end that could not decide for a caller who left: one line.

    A back end killed while the director stops ends this way, which is no
    crash; anything else is unexpected and keeps its traceback.
    """
    if failure.check(AuthUnavailable):
        log.warn(
            "a login back end could not decide after its caller left: {error}",
            error=str(failure.value),
        )
    else:
        log.failure("a login back end failed after its caller left", failure)


class BoundedAuthenticator:
    """A back end whose every call goes through one :class:`AdmissionBound`."""

    def __init__(self, inner: Authenticator, bound: AdmissionBound) -> None:
        self._inner = inner
        self._bound = bound
        self.name = inner.name

    async def authenticate(self, user: str, password: str, otp: str) -> str | None:
        """The inner back end's answer, once admitted.

        Raises:
            ServiceUnavailable: no slot and no room to wait.
        """
        return await self._bound.run(
            lambda: self._inner.authenticate(user, password, otp)
        )
