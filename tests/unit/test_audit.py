"""Audit: one log line in ``dcvix.audit`` and one row, timed by the injected clock."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path
from typing import cast

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
from dcvix.director.audit import Audit
from dcvix.director.registry import AuditEntry
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
