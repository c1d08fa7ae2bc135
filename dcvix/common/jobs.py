"""Periodic work on an injected clock: one helper for every timer in dcvix."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from twisted.application.service import Service
from twisted.internet.defer import Deferred, ensureDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger


class PeriodicJob(Service):
    """Run an async job every ``interval`` seconds of an injected clock.

    Why not a bare ``LoopingCall``: an exception would stop it for good, runs
    could overlap, and stopping would not wait for a run in flight. Here a
    failure is logged and the next run still comes, a run never starts before
    the previous one ended, :meth:`trigger` asks for a run now (a run asked for
    while one is going happens right after it), and ``stopService`` fires once
    the run in flight has finished.

    Args:
        name: for logs.
        interval: seconds between the start of one run and the next.
        job: the coroutine function to run.
        clock: where time comes from.
        first_delay: seconds before the first run (0: at start).
    """

    log = Logger()

    def __init__(
        self,
        name: str,
        interval: float,
        job: Callable[[], Awaitable[object]],
        clock: IReactorTime,
        first_delay: float = 0.0,
    ) -> None:
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.name = name
        self.interval = interval
        self._job = job
        self._clock = clock
        self._first_delay = first_delay
        self._call: IDelayedCall | None = None
        self._in_flight: Deferred[None] | None = None
        self._again = False
        self.runs = 0
        self.failures = 0

    def startService(self) -> None:
        """Schedule the first run."""
        super().startService()
        self._schedule(self._first_delay)

    def stopService(self) -> Deferred[None]:
        """Stop scheduling; fire when a run in flight has finished."""
        super().stopService()
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        if self._in_flight is None:
            return succeed(None)
        done: Deferred[None] = Deferred()
        self._in_flight.addBoth(lambda _: done.callback(None))
        return done

    def trigger(self) -> None:
        """Run as soon as possible (after the run in flight, if any)."""
        if not self.running:
            return
        if self._in_flight is not None:
            self._again = True
            return
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._schedule(0)

    def _schedule(self, delay: float) -> None:
        self._call = self._clock.callLater(max(delay, 0.0), self._run)

    def _run(self) -> None:
        self._call = None
        started = self._clock.seconds()
        # In flight before the job starts: a job that finishes without waiting
        # may call trigger() or stopService() before ensureDeferred returns.
        in_flight: Deferred[None] = Deferred()
        self._in_flight = in_flight
        in_flight.addBoth(lambda _: self._finished(started))
        ensureDeferred(self._tick()).chainDeferred(in_flight)

    async def _tick(self) -> None:
        self.runs += 1
        try:
            await self._job()
        except Exception:
            self.failures += 1
            self.log.failure("periodic job {job} failed", job=self.name)

    def _finished(self, started: float) -> None:
        self._in_flight = None
        if not self.running:
            return
        if self._again:
            self._again = False
            self._schedule(0)
            return
        elapsed = self._clock.seconds() - started
        self._schedule(self.interval - elapsed)
