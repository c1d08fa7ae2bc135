"""The reaper: which sessions it closes, when, and what it says about it."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import DeferredLock, ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher

from dcvix.agent.dcv import DcvError, Session
from dcvix.agent.reaper import Reaper, reap_reason
from dcvix.agent.sessions import CreatedSessions, SessionManager

UTC = dt.UTC
NOW = dt.datetime(2026, 7, 1, 12, 0, 0, tzinfo=UTC)
IDLE = 1800.0


def ago(seconds: float) -> dt.datetime:
    return NOW - dt.timedelta(seconds=seconds)


def reason(session: Session, ours: bool = False, reap_all: bool = False) -> str | None:
    return reap_reason(session, NOW, IDLE, ours, reap_all)


# ---------------------------------------------------------------- reap_reason


def test_connected_sessions_are_kept_whatever_else_holds() -> None:
    session = Session(
        "dcvix_a", connections=1, created=ago(86400), last_disconnected=ago(86400)
    )
    assert reason(session) is None
    assert reason(session, ours=True, reap_all=True) is None


def test_an_idle_dcvix_session_is_reaped() -> None:
    session = Session("dcvix_a", owner="alice", created=ago(7200))
    assert reason(session) == (
        "no client for 7200 s since its creation, unused (idle_timeout 1800 s)"
    )


def test_a_session_dcvix_did_not_make_is_kept() -> None:
    console = Session("console", owner="bob", created=ago(86400))
    assert reason(console) is None
    assert reason(Session("my-desk", created=ago(86400))) is None
    assert reason(Session("xdcvix_a", created=ago(86400))) is None


def test_a_session_the_agent_created_is_reaped_whatever_its_id() -> None:
    session = Session("my-desk", created=ago(86400))
    assert reason(session, ours=True) == (
        "no client for 86400 s since its creation, unused (idle_timeout 1800 s)"
    )


def test_reap_all_reaps_sessions_dcvix_did_not_make() -> None:
    console = Session("console", owner="bob", created=ago(86400))
    assert reason(console, reap_all=True) == (
        "no client for 86400 s since its creation, unused (idle_timeout 1800 s)"
    )


def test_idle_is_measured_from_the_last_disconnection() -> None:
    recently_left = Session(
        "dcvix_a", created=ago(86400), last_disconnected=ago(IDLE - 60)
    )
    assert reason(recently_left) is None
    long_gone = Session("dcvix_a", created=ago(86400), last_disconnected=ago(3600))
    assert reason(long_gone) == (
        "no client for 3600 s since its last disconnection (idle_timeout 1800 s)"
    )


def test_idle_is_measured_from_creation_when_never_connected() -> None:
    assert reason(Session("dcvix_a", created=ago(IDLE - 60))) is None
    assert reason(Session("dcvix_a", created=ago(IDLE + 60))) == (
        "no client for 1860 s since its creation, unused (idle_timeout 1800 s)"
    )


def test_exactly_at_the_threshold_is_reaped_one_second_less_is_kept() -> None:
    assert reason(Session("dcvix_a", last_disconnected=ago(1800))) == (
        "no client for 1800 s since its last disconnection (idle_timeout 1800 s)"
    )
    assert reason(Session("dcvix_a", last_disconnected=ago(1799))) is None
    assert reason(Session("dcvix_a", last_disconnected=ago(1799.999))) is None
    assert reason(Session("dcvix_a", created=ago(1800))) == (
        "no client for 1800 s since its creation, unused (idle_timeout 1800 s)"
    )
    assert reason(Session("dcvix_a", created=ago(1799))) is None


def test_unknown_times_are_kept() -> None:
    unknown = Session("dcvix_a")
    assert reason(unknown) is None
    assert reason(unknown, ours=True, reap_all=True) is None


def test_times_in_the_future_are_kept() -> None:
    skewed = Session("dcvix_a", created=NOW + dt.timedelta(hours=1))
    assert reason(skewed) is None


def test_idle_timeout_comes_from_the_caller() -> None:
    session = Session("dcvix_a", last_disconnected=ago(120))
    assert reap_reason(session, NOW, 60, False, False) == (
        "no client for 120 s since its last disconnection (idle_timeout 60 s)"
    )
    assert reap_reason(session, NOW, 121, False, False) is None


# --------------------------------------------------------------------- Reaper


class FakeSessions:
    """Stands in for SessionManager: list(), close() and the created record."""

    def __init__(self, sessions: list[Session]) -> None:
        self.sessions = sessions
        self.created: set[str] = set()
        self.closed: list[str] = []
        self.list_error: DcvError | None = None
        self.close_errors: dict[str, DcvError] = {}

    async def list(self) -> list[Session]:
        if self.list_error is not None:
            raise self.list_error
        return list(self.sessions)

    async def close(
        self, session_id: str, only_if: Callable[[Session], bool] | None = None
    ) -> bool:
        if session_id in self.close_errors:
            raise self.close_errors[session_id]
        found = [s for s in self.sessions if s.id == session_id]
        if not found or (only_if is not None and not only_if(found[0])):
            return False
        self.closed.append(session_id)
        self.sessions = [s for s in self.sessions if s.id != session_id]
        return True


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(NOW.timestamp())
    return clock


@pytest.fixture
def events() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def run(reaper: Reaper) -> list[str]:
    done = ensureDeferred(reaper.reap_once())
    assert done.called
    result = done.result  # typed object: it could be a Failure
    assert isinstance(result, list)
    return result


def logged(events: EventLoggingObserver, start: str) -> list[dict[str, Any]]:
    return [e for e in events if e.get("log_format", "").startswith(start)]


def test_reap_once_closes_exactly_the_idle_ones_and_logs_why(
    clock: Clock, events: EventLoggingObserver
) -> None:
    sessions = FakeSessions(
        [
            Session("dcvix_idle", owner="alice", created=ago(7200)),
            Session("dcvix_busy", owner="bob", connections=2, created=ago(7200)),
            Session("dcvix_new", owner="carol", created=ago(60)),
            Session("console", owner="dave", created=ago(86400)),
            Session("hand-made", owner="erin", created=ago(86400)),
            Session("ours", owner="frank", last_disconnected=ago(1800)),
            Session("dcvix_left", owner="gina", last_disconnected=ago(600)),
        ]
    )
    sessions.created = {"ours"}
    reaper = Reaper(sessions, IDLE, False, clock)  # type: ignore[arg-type]

    assert run(reaper) == ["dcvix_idle", "ours"]
    assert sessions.closed == ["dcvix_idle", "ours"]
    reaps = [
        (e["id"], e["owner"], e["reason"], e["log_level"])
        for e in logged(events, "reaped session")
    ]
    assert reaps == [
        (
            "dcvix_idle",
            "alice",
            "no client for 7200 s since its creation, unused (idle_timeout 1800 s)",
            LogLevel.info,
        ),
        (
            "ours",
            "frank",
            "no client for 1800 s since its last disconnection (idle_timeout 1800 s)",
            LogLevel.info,
        ),
    ]


def test_reap_once_follows_the_injected_clock(clock: Clock) -> None:
    sessions = FakeSessions([Session("dcvix_a", last_disconnected=ago(0))])
    reaper = Reaper(sessions, IDLE, False, clock)  # type: ignore[arg-type]

    assert run(reaper) == []
    clock.advance(1799)
    assert run(reaper) == []
    clock.advance(1)
    assert run(reaper) == ["dcvix_a"]
    assert run(reaper) == []
    assert sessions.closed == ["dcvix_a"]


def test_reap_all_sessions_reaps_foreign_sessions_too(clock: Clock) -> None:
    sessions = FakeSessions(
        [
            Session("console", created=ago(86400)),
            Session("console-busy", connections=1, created=ago(86400)),
        ]
    )
    reaper = Reaper(sessions, IDLE, True, clock)  # type: ignore[arg-type]
    assert run(reaper) == ["console"]


def test_a_dcv_failure_on_list_skips_the_pass(
    clock: Clock, events: EventLoggingObserver
) -> None:
    sessions = FakeSessions([Session("dcvix_a", created=ago(7200))])
    sessions.list_error = DcvError("timeout", "dcv list-sessions took over 20 s")
    reaper = Reaper(sessions, IDLE, False, clock)  # type: ignore[arg-type]

    assert run(reaper) == []
    assert sessions.closed == []
    skipped = logged(events, "reaper skipped a pass")
    assert [(e["error"], e["log_level"]) for e in skipped] == [
        ("dcv list-sessions took over 20 s", LogLevel.warn)
    ]

    sessions.list_error = None
    assert run(reaper) == ["dcvix_a"]


def test_a_failure_closing_one_session_does_not_stop_the_others(
    clock: Clock, events: EventLoggingObserver
) -> None:
    sessions = FakeSessions(
        [
            Session("dcvix_a", created=ago(7200)),
            Session("dcvix_b", created=ago(7200)),
            Session("dcvix_c", created=ago(7200)),
        ]
    )
    sessions.close_errors["dcvix_b"] = DcvError(
        "failed", "dcv close-session failed (exit 1): session is busy"
    )
    reaper = Reaper(sessions, IDLE, False, clock)  # type: ignore[arg-type]

    assert run(reaper) == ["dcvix_a", "dcvix_c"]
    failed = logged(events, "could not reap session")
    assert [(e["id"], e["error"], e["log_level"]) for e in failed] == [
        (
            "dcvix_b",
            "dcv close-session failed (exit 1): session is busy",
            LogLevel.warn,
        )
    ]
    assert [e["id"] for e in logged(events, "reaped session")] == [
        "dcvix_a",
        "dcvix_c",
    ]


def test_a_session_gone_before_its_close_is_not_counted(clock: Clock) -> None:
    class Vanishing(FakeSessions):
        async def close(
            self, session_id: str, only_if: Callable[[Session], bool] | None = None
        ) -> bool:
            return False

    sessions = Vanishing([Session("dcvix_a", created=ago(7200))])
    reaper = Reaper(sessions, IDLE, False, clock)  # type: ignore[arg-type]
    assert run(reaper) == []


# ------------------------------------------- over the real SessionManager


class FakeDcv:
    """The DcvCli methods the manager calls, recording each command."""

    def __init__(self, sessions: list[Session]) -> None:
        self.sessions = sessions
        self.calls: list[tuple[str, ...]] = []
        self.lock = DeferredLock()
        self.fail_close: set[str] = set()

    async def list_sessions(self) -> list[Session]:
        self.calls.append(("list-sessions",))
        return list(self.sessions)

    async def close_session(self, session_id: str) -> None:
        self.calls.append(("close-session", session_id))
        if session_id in self.fail_close:
            raise DcvError("failed", f"dcv close-session failed (exit 1): {session_id}")
        self.sessions = [s for s in self.sessions if s.id != session_id]


def test_reaper_over_the_session_manager(
    clock: Clock, tmp_path: Path, events: EventLoggingObserver
) -> None:
    dcv = FakeDcv(
        [
            Session("dcvix_a", created=ago(7200)),
            Session("desk", created=ago(7200)),  # created by this agent
            Session("console", created=ago(7200)),
            Session("odd id", created=ago(7200)),  # dcv listed it; close() refuses
            Session("dcvix_b", created=ago(7200)),
            Session("dcvix_c", created=ago(7200)),
        ]
    )
    dcv.fail_close.add("dcvix_b")
    created = CreatedSessions(tmp_path / "sessions.json")
    created.add("desk")
    manager = SessionManager(dcv, created, 1000, ("display/quality",))  # type: ignore[arg-type]

    assert run(Reaper(manager, IDLE, False, clock)) == ["dcvix_a", "desk", "dcvix_c"]
    assert [c for c in dcv.calls if c[0] == "close-session"] == [
        ("close-session", "dcvix_a"),
        ("close-session", "desk"),
        ("close-session", "dcvix_b"),
        ("close-session", "dcvix_c"),
    ]
    assert [s.id for s in dcv.sessions] == ["console", "odd id", "dcvix_b"]
    assert not dcv.lock.locked

    dcv.calls.clear()
    assert run(Reaper(manager, IDLE, True, clock)) == ["console"]
    failed = [(e["id"], e["error"]) for e in logged(events, "could not reap session")]
    assert failed == [
        ("dcvix_b", "dcv close-session failed (exit 1): dcvix_b"),
        ("odd id", "invalid session id"),
        ("dcvix_b", "dcv close-session failed (exit 1): dcvix_b"),
    ]


def test_a_client_connecting_after_the_listing_keeps_the_session(
    clock: Clock, tmp_path: Path, events: EventLoggingObserver
) -> None:
    class Connecting(FakeDcv):
        """The second listing (close's, under the lock) shows a client."""

        async def list_sessions(self) -> list[Session]:
            listed = await super().list_sessions()
            if len(self.calls) == 1:
                return listed
            return [replace(s, connections=1) for s in listed]

    dcv = Connecting([Session("dcvix_a", created=ago(7200))])
    manager = SessionManager(
        dcv,  # type: ignore[arg-type]
        CreatedSessions(tmp_path / "sessions.json"),
        1000,
        ("display/quality",),
    )

    assert run(Reaper(manager, IDLE, False, clock)) == []
    assert dcv.calls == [("list-sessions",), ("list-sessions",)]
    assert logged(events, "reaped session") == []


def test_the_recheck_sees_a_fresh_disconnection(clock: Clock) -> None:
    class Reconnected(FakeSessions):
        async def close(
            self, session_id: str, only_if: Callable[[Session], bool] | None = None
        ) -> bool:
            assert only_if is not None
            fresh = Session("dcvix_a", created=ago(7200), last_disconnected=ago(5))
            assert not only_if(fresh)
            assert only_if(Session("dcvix_a", created=ago(7200)))
            return await super().close(session_id, only_if)

    sessions = Reconnected([Session("dcvix_a", created=ago(7200))])
    reaper = Reaper(sessions, IDLE, False, clock)  # type: ignore[arg-type]
    assert run(reaper) == ["dcvix_a"]
