"""Named, bounded thread pools for blocking libraries (PAM, LDAP, RADIUS, SQLite)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ParamSpec, TypeVar

from twisted.application.service import Service
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.threads import deferToThreadPool
from twisted.python.threadpool import ThreadPool

P = ParamSpec("P")
R = TypeVar("R")


class ThreadPoolService(Service):
    """A thread pool that lives as long as the daemon's service tree.

    Each kind of blocking work gets its own pool so that, say, ten slow PAM
    failures cannot starve the database or DNS of threads. Work that may hang
    gets ``timeout`` seconds; after it the caller gets a ``TimeoutError`` while
    the thread finishes on its own (the library's own timeout bounds it).
    """

    def __init__(self, name: str, max_threads: int, reactor: IReactorFromThreads):
        self.name = name
        self._reactor = reactor
        self.pool = ThreadPool(minthreads=0, maxthreads=max_threads, name=name)

    def startService(self) -> None:
        """Start the pool's threads."""
        super().startService()
        self.pool.start()

    def stopService(self) -> None:
        """Stop the pool, waiting for running work."""
        super().stopService()
        self.pool.stop()

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
