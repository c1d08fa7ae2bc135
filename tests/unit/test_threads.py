"""ThreadPoolService on the real reactor."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import TimeoutError, gatherResults
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher

from dcvix.common.threads import ThreadPoolService

PoolFactory = Callable[[str, int], ThreadPoolService]


@pytest.fixture
def pool() -> Iterator[PoolFactory]:
    """Starts pools for a test and stops them (joining their threads) after it."""
    started: list[ThreadPoolService] = []

    def start(name: str, max_threads: int) -> ThreadPoolService:
        service = ThreadPoolService(name, max_threads, IReactorFromThreads(reactor))
        service.startService()
        started.append(service)
        return service

    yield start
    for service in started:
        service.stopService()
        assert [thread for thread in service.pool.threads if thread.is_alive()] == []


@pytest.fixture
def events() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


class Concurrency:
    """Counts how many calls run at the same time."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._now = 0
        self.most = 0

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self._now += 1
            self.most = max(self.most, self._now)
        time.sleep(seconds)
        with self._lock:
            self._now -= 1


@pytest_twisted.ensureDeferred
async def test_runs_in_a_thread_named_after_the_pool(pool: PoolFactory) -> None:
    auth = pool("auth", 2)
    name = await auth.run(None, lambda: threading.current_thread().name)
    assert name.startswith("PoolThread-auth-")
    assert name != threading.current_thread().name


@pytest_twisted.ensureDeferred
async def test_returns_the_result(pool: PoolFactory) -> None:
    db = pool("db", 1)
    assert await db.run(5, divmod, 17, 5) == (3, 2)
    assert await db.run(None, sorted, [3, 1, 2], reverse=True) == [3, 2, 1]


@pytest_twisted.ensureDeferred
async def test_propagates_the_exception(pool: PoolFactory) -> None:
    auth = pool("auth", 1)

    def fail() -> None:
        raise PermissionError("pam said no")

    with pytest.raises(PermissionError, match="pam said no"):
        await auth.run(5, fail)


@pytest_twisted.ensureDeferred
async def test_work_over_its_timeout_fails_with_timeout_error(
    pool: PoolFactory, events: EventLoggingObserver
) -> None:
    auth = pool("auth", 1)
    release = threading.Event()
    started = time.monotonic()
    try:
        with pytest.raises(TimeoutError):
            await auth.run(0.2, release.wait, 10)
        assert 0.2 <= time.monotonic() - started < 1.0
    finally:
        release.set()
    # One thread: this runs after the late result of the timed-out call arrived.
    assert await auth.run(5, lambda: "still serving") == "still serving"
    assert [event for event in events if event["log_level"] >= LogLevel.error] == []


@pytest_twisted.ensureDeferred
async def test_pool_is_bounded(pool: PoolFactory) -> None:
    stats = pool("stats", 1)
    counter = Concurrency()
    started = time.monotonic()
    await gatherResults([stats.run(5, counter.sleep, 0.3) for _ in range(2)])
    assert time.monotonic() - started >= 0.6
    assert counter.most == 1


@pytest_twisted.ensureDeferred
async def test_pool_runs_up_to_max_threads_at_once(pool: PoolFactory) -> None:
    stats = pool("stats", 2)
    counter = Concurrency()
    started = time.monotonic()
    await gatherResults([stats.run(5, counter.sleep, 0.3) for _ in range(4)])
    assert time.monotonic() - started >= 0.6
    assert counter.most == 2


@pytest_twisted.ensureDeferred
async def test_a_stop_timeout_abandons_a_stuck_thread(
    events: EventLoggingObserver,
) -> None:
    """A call that never returns (a silent server) cannot hold the stop."""
    auth = ThreadPoolService("auth", 2, IReactorFromThreads(reactor), stop_timeout=0.5)
    auth.startService()
    release = threading.Event()
    try:
        stuck = auth.run(None, release.wait, 60)
        assert await auth.run(5, lambda: "done") == "done"
        started = time.monotonic()
        stopping = auth.stopService()
        assert stopping is not None
        await stopping
        assert 0.5 <= time.monotonic() - started < 30
        alive = [thread for thread in auth.pool.threads if thread.is_alive()]
        # Daemon threads: the process may exit with it still stuck.
        assert [thread.daemon for thread in alive] == [True]
        warnings = [e for e in events if e["log_level"] == LogLevel.warn]
        assert [e["busy"] for e in warnings] == [1]
        assert not stuck.called
    finally:
        release.set()


@pytest_twisted.ensureDeferred
async def test_a_stop_timeout_still_waits_for_work_that_ends(
    events: EventLoggingObserver,
) -> None:
    auth = ThreadPoolService("auth", 1, IReactorFromThreads(reactor), stop_timeout=30)
    auth.startService()
    counter = Concurrency()
    running = auth.run(None, counter.sleep, 0.3)
    stopping = auth.stopService()
    assert stopping is not None
    await stopping
    assert running.called
    assert [thread for thread in auth.pool.threads if thread.is_alive()] == []
    assert [e for e in events if e["log_level"] >= LogLevel.warn] == []
