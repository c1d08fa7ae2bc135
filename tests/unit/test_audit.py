"""Audit: one log line in ``dcvix.audit`` and one row, timed by the injected clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.task import Clock
from twisted.logger import (
    ILogObserver,
    LogEvent,
    LogLevel,
    formatEvent,
    globalLogPublisher,
)

from dcvix.ctl import wait as resolve
from dcvix.director import audit as audit_module
from dcvix.director.audit import Audit
from dcvix.director.registry import AuditEntry, AuditQuery, StoredAudit, StoreError
from dcvix.director.registry import sql as sql_module
from dcvix.director.registry.engine import inline_runner
from dcvix.director.registry.sqlite import SqliteRegistry

NOW = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)


class Trail:
    """An AuditTrail in memory."""

    def __init__(self) -> None:
        self.entries: list[AuditEntry] = []

    async def append(self, entry: AuditEntry) -> None:
        self.entries.append(entry)

    async def latest(self, limit: int = 100) -> list[AuditEntry]:
        return self.entries[::-1][:limit]

    async def audit_query(self, query: AuditQuery) -> list[StoredAudit]:
        lines = [StoredAudit(n, e) for n, e in enumerate(self.entries, start=1)]
        return lines[::-1][: query.limit]

    async def vacuum_audit(self, before: dt.datetime) -> int:
        kept = [e for e in self.entries if e.time is None or e.time >= before]
        dropped, self.entries = len(self.entries) - len(kept), kept
        return dropped


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(NOW.timestamp())
    return clock


@pytest.fixture
def events() -> Iterator[list[LogEvent]]:
    """The events logged in the ``dcvix.audit`` namespace during the test."""
    seen: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "dcvix.audit":
            seen.append(event)

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[SqliteRegistry]:
    registry = SqliteRegistry(tmp_path / "agents.db", inline_runner)
    yield registry
    registry.close()


def test_record_writes_a_row_at_the_clocks_time(
    registry: SqliteRegistry, clock: Clock, events: list[LogEvent]
) -> None:
    audit = Audit(registry, clock)
    clock.advance(1.5)

    resolve(audit.record("alice", "login", "10.0.0.7", "backend=fake result=ok"))
    clock.advance(60)
    resolve(audit.record("alice", "logout", "10.0.0.7"))

    assert resolve(registry.latest()) == [
        AuditEntry(NOW + dt.timedelta(seconds=61.5), "alice", "logout", "10.0.0.7"),
        AuditEntry(
            NOW + dt.timedelta(seconds=1.5),
            "alice",
            "login",
            "10.0.0.7",
            "backend=fake result=ok",
        ),
    ]
    assert formatEvent(events[0]) == "alice login 10.0.0.7 backend=fake result=ok"
    assert len(events) == 2


def test_record_logs_structured_fields_for_log_shippers(
    clock: Clock, events: list[LogEvent]
) -> None:
    trail = Trail()

    resolve(Audit(trail, clock).record("admin:alice", "approve", "guid-1", "x=1"))

    assert trail.entries == [AuditEntry(NOW, "admin:alice", "approve", "guid-1", "x=1")]
    assert [
        (e["log_level"], e["actor"], e["action"], e["target"], e["detail"])
        for e in events
    ] == [(LogLevel.info, "admin:alice", "approve", "guid-1", "x=1")]


def test_logged_writes_the_line_and_no_row(
    registry: SqliteRegistry, clock: Clock, events: list[LogEvent]
) -> None:
    Audit(registry, clock).logged(
        "bob", "login refused", "10.0.0.7", "backend=fake result=locked"
    )

    assert resolve(registry.latest()) == []
    assert [formatEvent(e) for e in events] == [
        "bob login refused 10.0.0.7 backend=fake result=locked"
    ]


class ListSink:
    """An export that keeps what it is given."""

    def __init__(self) -> None:
        self.lines: list[Mapping[str, Any]] = []
        self.reopened = 0

    def write(self, entry: Mapping[str, Any]) -> None:
        self.lines.append(entry)

    def reopen(self) -> None:
        self.reopened += 1

    def close(self) -> None:
        pass


def test_every_line_goes_to_the_exports_as_stored(
    registry: SqliteRegistry, clock: Clock
) -> None:
    sink = ListSink()
    audit = Audit(registry, clock, [sink])

    resolve(
        audit.record(
            "bob",
            "login failed",
            "",
            "backend=ldap result=rejected",
            address="10.0.0.8",
            outcome="failed",
        )
    )
    audit.exported([AuditEntry(NOW, "admin:alice", "approve", "guid-1", "x=1")])
    audit.reopen()

    assert sink.lines == [
        {
            "time": "2025-03-01T12:00:00Z",
            "actor": "bob",
            "action": "login failed",
            "target": "",
            "address": "10.0.0.8",
            "outcome": "failed",
            "detail": "backend=ldap result=rejected",
        },
        {
            "time": "2025-03-01T12:00:00Z",
            "actor": "admin:alice",
            "action": "approve",
            "target": "guid-1",
            "address": "",
            "outcome": "ok",
            "detail": "x=1",
        },
    ]
    assert sink.reopened == 1
    # exported() writes no row: its change's transaction did.
    assert [e.action for e in resolve(registry.latest())] == ["login failed"]


def _refused(audit: Audit, address: str, action: str = "dcv token refused") -> None:
    resolve(audit.refused("dcv server", action, "s-1", "result=no", address=address))


def _details(registry: SqliteRegistry) -> list[tuple[str, str, str]]:
    return [
        (e.address, e.action, e.detail)
        for e in reversed(resolve(registry.latest(100_000)))
    ]


def test_refusals_are_one_line_a_minute_per_address_and_kind(
    registry: SqliteRegistry, clock: Clock, events: list[LogEvent]
) -> None:
    audit = Audit(registry, clock)
    for _ in range(5):
        _refused(audit, "10.0.0.7")
    _refused(audit, "10.0.0.8")
    _refused(audit, "10.0.0.7", "resolve refused")
    # The first of each at once; the rest wait for the minute's end.
    assert _details(registry) == [
        ("10.0.0.7", "dcv token refused", "result=no count=1"),
        ("10.0.0.8", "dcv token refused", "result=no count=1"),
        ("10.0.0.7", "resolve refused", "result=no count=1"),
    ]
    clock.advance(59)
    resolve(audit.flush_refusals())
    assert len(_details(registry)) == 3

    clock.advance(1)
    resolve(audit.flush_refusals())
    assert _details(registry)[3:] == [
        ("10.0.0.7", "dcv token refused", "result=no count=4")
    ]
    # A steady stream stays one line a minute: the next window is open.
    _refused(audit, "10.0.0.7")
    clock.advance(60)
    resolve(audit.flush_refusals())
    assert _details(registry)[4:] == [
        ("10.0.0.7", "dcv token refused", "result=no count=1")
    ]
    # Quiet windows are forgotten: the next refusal is written at once.
    clock.advance(60)
    resolve(audit.flush_refusals())
    assert len(_details(registry)) == 5
    _refused(audit, "10.0.0.7")
    assert len(_details(registry)) == 6
    assert all(e.outcome == "refused" for e in resolve(registry.latest()))
    # The log has the same lines, not one per refusal.
    assert len(events) == 6


def test_rotating_addresses_cannot_grow_the_trail(
    registry: SqliteRegistry, clock: Clock
) -> None:
    audit = Audit(registry, clock)
    cap = audit_module.MAX_SOURCES_PER_KIND
    # A flood from 1,000 addresses, for ten minutes.
    for _minute in range(10):
        for n in range(1000):
            _refused(audit, f"10.0.{n // 250}.{n % 250}")
        clock.advance(60)
        resolve(audit.flush_refusals())
    lines = _details(registry)
    # Each minute: at most the followed sources' lines, and one shared line.
    assert len(lines) <= 10 * (2 * cap + 1)
    shared = [detail for address, _, detail in lines if address == "*"]
    assert shared[0] == "result=no count=1"
    assert shared[1] == f"result=no count={1000 - cap - 1}"


def test_an_ipv6_64_is_one_source(registry: SqliteRegistry, clock: Clock) -> None:
    audit = Audit(registry, clock)
    for n in range(1, 6):
        _refused(audit, f"2001:db8:1:2::{n:x}")
    _refused(audit, "2001:db8:1:3::1")
    _refused(audit, "::ffff:10.0.0.7")
    assert [address for address, _, _ in _details(registry)] == [
        "2001:db8:1:2::1",
        "2001:db8:1:3::1",
        "::ffff:10.0.0.7",
    ]


def test_each_actor_has_its_count(registry: SqliteRegistry, clock: Clock) -> None:
    audit = Audit(registry, clock)
    for actor in ["bob"] * 49 + ["alice"]:
        resolve(
            audit.refused(
                actor, "login refused", "", "result=locked", address="10.0.0.7"
            )
        )
    clock.advance(60)
    resolve(audit.flush_refusals())
    lines = [(e.actor, e.detail) for e in reversed(resolve(registry.latest()))]
    assert lines == [
        ("bob", "result=locked count=1"),
        ("alice", "result=locked count=1"),
        ("bob", "result=locked count=48"),
    ]


def test_counts_wait_for_a_store_that_comes_back(clock: Clock) -> None:
    trail = Trail()
    audit = Audit(trail, clock)
    _refused(audit, "10.0.0.7")
    _refused(audit, "10.0.0.7")
    clock.advance(60)
    away = trail.append
    trail.append = _failing  # type: ignore[method-assign]
    with pytest.raises(StoreError):
        resolve(audit.flush_refusals())
    trail.append = away  # type: ignore[method-assign]
    clock.advance(10)
    resolve(audit.flush_refusals())
    assert [e.detail for e in trail.entries] == [
        "result=no count=1",
        "result=no count=1",
    ]


async def _failing(entry: AuditEntry) -> None:
    raise StoreError("database unreachable")


def test_a_refusal_is_answered_while_the_store_is_away(
    clock: Clock, events: list[LogEvent]
) -> None:
    class AwayTrail(Trail):
        async def append(self, entry: AuditEntry) -> None:
            raise StoreError("database unreachable")

    audit = Audit(AwayTrail(), clock)
    _refused(audit, "10.0.0.7")  # does not raise


def test_vacuum_forgets_lines_older_than_keep(clock: Clock) -> None:
    trail = Trail()
    audit = Audit(trail, clock)
    resolve(audit.record("alice", "login", ""))
    clock.advance(3600)
    resolve(audit.record("alice", "logout", ""))

    assert resolve(audit.vacuum(1800)) == 1
    assert [e.action for e in trail.entries] == ["logout"]


def test_the_store_vacuums_in_batches(
    registry: SqliteRegistry, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sql_module, "AUDIT_VACUUM_BATCH", 2)
    audit = Audit(registry, clock)
    for n in range(5):
        resolve(audit.record(f"user{n}", "login", ""))
    clock.advance(3600)
    resolve(audit.record("alice", "logout", ""))
    assert resolve(audit.vacuum(1800)) == 5
    assert [e.action for e in resolve(registry.latest())] == ["logout"]
