"""A sliding-window rate limiter on an injected clock."""

from __future__ import annotations

from collections import defaultdict, deque

from twisted.internet.interfaces import IReactorTime


class RateLimiter:
    """At most ``limit`` events per ``window`` seconds per key.

    Keys with no event in the window are dropped when next looked at, so a
    limiter keyed by client address does not keep every address forever.
    """

    def __init__(self, limit: int, window: float, clock: IReactorTime) -> None:
        self._limit = limit
        self._window = window
        self._clock = clock
        self._events: dict[str, deque[float]] = defaultdict(deque)

    def _recent(self, key: str) -> deque[float]:
        events = self._events[key]
        horizon = self._clock.seconds() - self._window
        while events and events[0] <= horizon:
            events.popleft()
        if not events:
            del self._events[key]
            return deque()
        return events

    def allowed(self, key: str) -> bool:
        """Whether one more event for ``key`` fits now."""
        return len(self._recent(key)) < self._limit

    def record(self, key: str) -> None:
        """Count one event for ``key`` now."""
        self._recent(key)
        self._events[key].append(self._clock.seconds())

    def take(self, key: str) -> bool:
        """Count one event for ``key`` if it fits; whether it did."""
        if not self.allowed(key):
            return False
        self.record(key)
        return True


class LogBudget:
    """At most ``limit`` lines of one kind per ``window`` seconds.

    For lines anyone can cause (a refused token, a caller that is not a
    gateway): they must not flood the log, and what was left out is counted
    so that the next line kept can say how many.
    """

    def __init__(self, limit: int, window: float, clock: IReactorTime) -> None:
        self._limiter = RateLimiter(limit, window, clock)
        self._skipped = 0

    def take(self) -> int | None:
        """None: leave this line out; else how many were left out before it."""
        if not self._limiter.take(""):
            self._skipped += 1
            return None
        skipped, self._skipped = self._skipped, 0
        return skipped
