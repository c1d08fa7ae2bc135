"""Named, bounded thread pools for blocking libraries (PAM, LDAP, RADIUS, SQLite)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, ParamSpec, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

log = Logger()

P = ParamSpec("P")
R = TypeVar("R")


class ThreadPoolService(Service):
    """A thread pool that lives as long as the daemon's service tree.

    Each kind of blocking work gets its own pool so that, say, ten slow PAM
    failures cannot starve the database or DNS of threads. Work that may hang
    gets ``timeout`` seconds; after it the caller gets a ``TimeoutError`` while
    the thread finishes on its own (the library's own timeout bounds it).

    With ``stop_timeout``, stopping waits that long at most: a thread stuck in
    a call that never returns (a server that accepts and stays silent) is
    abandoned, and its threads are daemons so it cannot keep the process alive.
    Without, stopping waits for running work (the database's must finish).
    """

    def __init__(
        self,
        name: str,
        max_threads: int,
        reactor: IReactorFromThreads,
        stop_timeout: float | None = None,
    ):
        self.name = name
        self._reactor = reactor
        self._stop_timeout = stop_timeout
        self.pool = ThreadPool(minthreads=0, maxthreads=max_threads, name=name)
        if stop_timeout is not None:
            self.pool.threadFactory = _DaemonThread

    def startService(self) -> None:
        """Start the pool's threads."""
        super().startService()
        self.pool.start()

    def stopService(self) -> Deferred[None] | None:
        """Stop the pool, waiting for running work (see ``stop_timeout``)."""
        super().stopService()
        idle = not any(thread.is_alive() for thread in self.pool.threads)
        if self._stop_timeout is None or idle:
            self.pool.stop()
            return None
        return self._stop_within(self._stop_timeout)

    def _stop_within(self, seconds: float) -> Deferred[None]:
        """Join the pool from a helper thread; give up after ``seconds``.

        The join runs off the reactor so that the other services keep stopping
        meanwhile.
        """
        joined: Deferred[None] = Deferred()

        def fire() -> None:
            if not joined.called:
                joined.callback(None)

        def join() -> None:
            self.pool.stop()
            self._reactor.callFromThread(fire)

        threading.Thread(target=join, name=f"{self.name}-stop", daemon=True).start()
        assert IReactorTime.providedBy(self._reactor)
        joined.addTimeout(seconds, self._reactor)
        joined.addErrback(self._abandoned, seconds)
        return joined

    def _abandoned(self, failure: Failure, seconds: float) -> None:
        failure.trap(DeferredTimeout)
        busy = sum(thread.is_alive() for thread in self.pool.threads)
        log.warn(
            "{name} pool: {busy} thread(s) still busy {seconds} s after the stop "
            "began; not waiting for them",
            name=self.name,
            busy=busy,
            seconds=seconds,
        )

    def run(
        self,
        timeout: float | None,
        function: Callable[P, R],
        *args: P.args,
        **kwargs: P.kwargs,
    ) -> Deferred[R]:
        """Run ``function`` in the pool; ``TimeoutError`` after ``timeout`` s."""
        result = deferToThreadPool(self._reactor, self.pool, function, *args, **kwargs)
        if timeout is not None:
            assert IReactorTime.providedBy(self._reactor)
            result.addTimeout(timeout, self._reactor)
        return result


class _DaemonThread(threading.Thread):
    """A pool thread that does not keep the process alive once the reactor stops."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.daemon = True
