"""One director of a PostgreSQL store leads its periodic work; another takes over."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import pytest_twisted
from postgres import Postgres, postgres_fixture  # noqa: F401
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.task import deferLater

from dcvix.common.threads import ThreadPoolService
from dcvix.director.leader import LeaderLease
from dcvix.director.registry.postgres import PostgresEngine

CHECK = 0.2
BOUND = 60.0  # generous: a loaded machine is slow, never wrong


async def until(what: str, condition: Callable[[], bool]) -> None:
    clock = IReactorTime(reactor)
    deadline = clock.seconds() + BOUND
    while not condition():
        assert clock.seconds() < deadline, f"timed out waiting for {what}"
        await deferLater(clock, 0.05, lambda: None)


class Director:
    """A lease with its own pool, as each director has."""

    def __init__(self, engine: PostgresEngine) -> None:
        self.pool = ThreadPoolService("db", 1, IReactorFromThreads(reactor))
        self.lease = LeaderLease(engine, self.pool, IReactorTime(reactor), CHECK)

    def start(self) -> None:
        self.pool.startService()
        self.lease.startService()

    def stop(self) -> None:
        if self.lease.running:
            self.lease.stopService()
        if self.pool.running:
            self.pool.stopService()

    def session_pid(self) -> int:
        connection = self.lease._connection
        assert connection is not None
        return int(connection.info.backend_pid)


@pytest.fixture
def pair(postgres: Postgres) -> Iterator[tuple[Director, Director]]:
    engine = PostgresEngine(postgres.database(), postgres.password, 1)
    first, second = Director(engine), Director(engine)
    yield first, second
    first.stop()
    second.stop()
    engine.close()


@pytest_twisted.ensureDeferred
async def test_one_leads_and_the_other_takes_over_when_it_goes(
    postgres: Postgres, pair: tuple[Director, Director]
) -> None:
    first, second = pair
    first.start()
    await until("the first to lead", first.lease.leads)
    second.start()
    seen = second.lease.checks
    await until("three checks of the second", lambda: second.lease.checks > seen + 3)
    assert first.lease.leads() and not second.lease.leads()

    # The first director's session ends as when it is killed or cut off.
    postgres.admin(f"SELECT pg_terminate_backend({first.session_pid()})")

    await until("the second to take over", second.lease.leads)
    await until("the first to notice", lambda: not first.lease.leads())
    seen = first.lease.checks
    await until("three checks of the first", lambda: first.lease.checks > seen + 3)
    assert second.lease.leads() and not first.lease.leads()

    # A director that stops frees the lock at once.
    second.stop()
    assert not second.lease.leads()
    await until("the first to lead again", first.lease.leads)
