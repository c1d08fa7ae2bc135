"""Reports one director accepts reach the other directors of a PostgreSQL store."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from postgres import Postgres, postgres_fixture  # noqa: F401
from twisted.internet import reactor
from twisted.internet.interfaces import IReactorFromThreads, IReactorTime
from twisted.internet.task import deferLater

from dcvix.common.threads import ThreadPoolService
from dcvix.director import exchange as exchange_module
from dcvix.director.exchange import ReportExchange
from dcvix.director.registry.engine import Connection
from dcvix.director.registry.postgres import PostgresEngine
from dcvix.director.registry.postgres_schema import REPORTS_CHANNEL
from dcvix.director.registry.sql import (
    SharedGrant,
    SharedReport,
    put_shared_txn,
    shared_since_txn,
)
from dcvix.director.runtime import MemoryRuntimeStore, SessionsMemo, parse_report

GUID = "11111111-1111-4111-8111-111111111111"
BOUND = 60.0


def report(session: str, load: float = 0.5) -> bytes:
    return json.dumps(
        {
            "sessions": [{"id": session, "owner": "alice", "type": "virtual"}],
            "stats": {"cores": 8, "load1": load, "total_memory": 1, "free_memory": 1},
            "tags": ["gpu"],
        }
    ).encode()


async def until(what: str, condition: Callable[[], bool]) -> None:
    clock = IReactorTime(reactor)
    deadline = clock.seconds() + BOUND
    while not condition():
        assert clock.seconds() < deadline, f"timed out waiting for {what}"
        await deferLater(clock, 0.02, lambda: None)


class Director:
    """What a director of a shared store has: an engine, a pool, its memory."""

    def __init__(self, url: str, password: str) -> None:
        self.engine = PostgresEngine(url, password, 2)
        self.pool = ThreadPoolService("db", 2, IReactorFromThreads(reactor))
        self.runtime = MemoryRuntimeStore()
        self.memo = SessionsMemo()  # the update route's
        clock = IReactorTime(reactor)
        self.exchange = ReportExchange(
            self.engine, self.pool, self.runtime, 8446, clock
        )
        self.engine.watch(REPORTS_CHANNEL, self.exchange.changed)

    def start(self) -> None:
        self.pool.startService()
        self.engine.listen(reactor, self.pool)
        self.exchange.startService()

    def stop(self) -> None:
        if self.exchange.running:
            self.exchange.stopService()
        self.pool.stopService()
        self.engine.close()

    async def accept(self, at: float, raw: bytes) -> None:
        """What the update route does with a report from agent GUID (ws1)."""
        previous = await self.runtime.server("ws1")
        received = dt.datetime.fromtimestamp(at, dt.UTC)
        payload = json.loads(raw)
        state = parse_report(
            GUID, "ws1", payload, "10.0.0.1", received, 8446, previous, self.memo
        )
        await self.runtime.put(state)
        self.exchange.share(GUID, "ws1", "10.0.0.1", state, payload)

    def sessions(self, hostname: str = "ws1") -> list[str]:
        state = self.runtime._servers.get(hostname)
        return [] if state is None else [s.id for s in state.sessions]


@pytest.fixture
def pair(
    postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Director, Director]]:
    # Only notifications bring reports in: the periodic read is a safety net.
    monkeypatch.setattr(exchange_module, "PULL_EVERY", 3600.0)
    url = postgres.database()
    directors = Director(url, postgres.password), Director(url, postgres.password)
    yield directors
    for director in directors:
        director.stop()


@pytest_twisted.ensureDeferred
async def test_a_report_accepted_by_one_director_is_kept_by_the_other(
    pair: tuple[Director, Director],
) -> None:
    first, second = pair
    first.start()
    second.start()
    await until(
        "both listening",
        lambda: (
            first.exchange.taken == 0
            and all(
                d.engine._listener is not None and d.engine._listener.listening
                for d in pair
            )
        ),
    )
    now = IReactorTime(reactor).seconds()

    await first.accept(now, report("s1"))

    await until("the second to keep it", lambda: second.sessions() == ["s1"])
    state = second.runtime._servers["ws1"]
    assert (state.guid, state.address) == (GUID, "10.0.0.1")
    assert state.seen_at == pytest.approx(now, abs=1e-5)  # kept to the microsecond
    assert first.exchange.taken == 0  # its own report is not taken again

    # The agent moves to the second director: its newer report wins on both,
    # and an older one arriving late changes nothing.
    await second.accept(now + 2, report("s2"))
    await until("the first to keep the newer", lambda: first.sessions() == ["s2"])
    taken = second.exchange.taken
    old = json.loads(report("s-old"))
    moment = dt.datetime.fromtimestamp(now + 1, dt.UTC)
    late = parse_report(GUID, "ws1", old, "10.0.0.1", moment, 8446, None)
    first.exchange.share(GUID, "ws1", "10.0.0.1", late, old)
    await until("the old one read", lambda: second.exchange._cursor >= 3)
    assert second.sessions() == ["s2"]
    assert second.exchange.taken == taken


@pytest_twisted.ensureDeferred
async def test_a_director_starting_later_reads_every_shared_report(
    pair: tuple[Director, Director],
) -> None:
    first, second = pair
    first.start()
    now = IReactorTime(reactor).seconds()
    await first.accept(now, report("s1"))
    await until(
        "written", lambda: len(first.engine.call(shared_since_txn, 0, 0).reports) == 1
    )

    second.start()

    await until("the late director to keep it", lambda: second.sessions() == ["s1"])


@pytest_twisted.ensureDeferred
async def test_a_connection_grant_reaches_the_other_directors_resolver(
    pair: tuple[Director, Director],
) -> None:
    first, second = pair
    adopted: list[SharedGrant] = []
    second.exchange.grants_to = adopted.append
    first.exchange.grants_to = adopted.append  # never its own
    first.start()
    second.start()
    expires = IReactorTime(reactor).seconds() + 60

    first.exchange.share_grant("console", "ws1", expires, "192.0.2.7")

    await until("the grant adopted", lambda: bool(adopted))
    assert [(g.session_id, g.server, g.address, g.origin) for g in adopted] == [
        ("console", "ws1", "192.0.2.7", first.exchange.origin)
    ]
    assert adopted[0].expires_at == pytest.approx(expires)


@pytest_twisted.ensureDeferred
async def test_a_failed_write_is_tried_again(
    pair: tuple[Director, Director], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = pair
    monkeypatch.setattr(exchange_module, "PULL_EVERY", 0.1)  # the retry's delay
    failed: list[str] = []
    put = put_shared_txn

    def flaky(connection: Connection, origin: str, reports: Any, *args: Any) -> Any:
        if reports and not failed:  # the first write of a report
            failed.append(origin)
            connection.execute("SELECT 1 FROM no_such_table")  # a database error
        return put(connection, origin, reports, *args)

    monkeypatch.setattr(exchange_module, "put_shared_txn", flaky)
    first.start()
    second.start()
    now = IReactorTime(reactor).seconds()

    await first.accept(now, report("s1"))

    await until("the second to keep it", lambda: second.sessions() == ["s1"])
    assert failed == [first.exchange.origin]
    assert len(first.engine.call(shared_since_txn, 0, 0).reports) == 1


def report_without_sessions(load: float) -> bytes:
    body = json.loads(report("unused", load))
    del body["sessions"]
    return json.dumps(body).encode()


@pytest_twisted.ensureDeferred
async def test_an_unchanged_session_list_is_parsed_once_by_the_other(
    pair: tuple[Director, Director],
) -> None:
    first, second = pair
    first.start()
    second.start()
    now = IReactorTime(reactor).seconds()
    await first.accept(now, report("s1", load=0.5))
    await until("the second to keep it", lambda: second.sessions() == ["s1"])
    sessions = second.runtime._servers["ws1"].sessions

    await first.accept(now + 1, report("s1", load=3.0))  # new stats, same sessions

    await until(
        "the new stats", lambda: second.runtime._servers["ws1"].stats.load1 == 3.0
    )
    assert second.runtime._servers["ws1"].sessions is sessions  # not parsed again
    await first.accept(now + 2, report_without_sessions(4.0))  # dcv failed
    await until(
        "the next stats", lambda: second.runtime._servers["ws1"].stats.load1 == 4.0
    )
    assert second.sessions() == ["s1"]  # kept, as the receiving director keeps them
    await first.accept(now + 3, report("s2", load=5.0))
    await until("the new list", lambda: second.sessions() == ["s2"])
    assert first.sessions() == ["s2"]


@pytest_twisted.ensureDeferred
async def test_a_report_shared_by_a_schema_5_director_is_taken_in(
    pair: tuple[Director, Director],
) -> None:
    # Before schema 6 a report was shared whole, its sessions within.
    first, second = pair
    second.start()
    now = IReactorTime(reactor).seconds()
    whole = SharedReport(GUID, "ws1", "10.0.0.1", now, report("s1").decode())

    first.engine.call(put_shared_txn, "an older director", [whole])

    await until("the second to keep it", lambda: second.sessions() == ["s1"])


@pytest_twisted.ensureDeferred
async def test_a_director_whose_writes_fail_still_reads(
    pair: tuple[Director, Director], monkeypatch: pytest.MonkeyPatch
) -> None:
    first, second = pair
    put = put_shared_txn

    def stuck(connection: Connection, origin: str, *args: Any) -> Any:
        if origin == first.exchange.origin:  # say, behind a long lock
            connection.execute("SELECT 1 FROM no_such_table")
        return put(connection, origin, *args)

    monkeypatch.setattr(exchange_module, "put_shared_txn", stuck)
    first.start()
    second.start()
    now = IReactorTime(reactor).seconds()
    await first.accept(now, report("mine"))  # queued for ever

    await second.accept(now, report("theirs"))

    await until("the first to take it in", lambda: first.sessions() == ["theirs"])


@pytest_twisted.ensureDeferred
async def test_sessions_inside_a_report_win_over_the_column(
    pair: tuple[Director, Director],
) -> None:
    # A director of schema 5 updating a row a schema 6 director wrote leaves
    # the column as it was: the list inside its report is the newer.
    first, second = pair
    second.start()
    now = IReactorTime(reactor).seconds()
    column = json.dumps(json.loads(report("stale"))["sessions"])
    row = SharedReport(GUID, "ws1", "10.0.0.1", now, report("new").decode(), column)

    first.engine.call(put_shared_txn, "an older director", [row])

    await until("the second to keep it", lambda: second.sessions() == ["new"])
