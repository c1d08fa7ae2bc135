"""SessionManager's rules over dcv, the created-sessions record, and the report."""

from __future__ import annotations

import datetime as dt
import json
import pwd
import stat
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import DeferredLock, ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from dcvix import __version__
from dcvix.agent.dcv import DcvError, Session
from dcvix.agent.report import Reporter, ReportSettings
from dcvix.agent.sessions import CreatedSessions, SessionManager
from dcvix.agent.stats import StatsCollector
from dcvix.common.validate import InvalidInput, NotAllowed

UTC = dt.UTC
NEW_ID = "dcvix_6c1f2d7e-0a4b-4c8e-9f31-2b7d5e9a1c44"


class FakeDcv:
    """DcvCli's async methods, same names and signatures, recording each command."""

    def __init__(self, sessions: list[Session] | None = None) -> None:
        self.sessions = list(sessions or [])
        self.calls: list[tuple[Any, ...]] = []
        self.lock = DeferredLock()
        self.clock = Clock()
        self.list_error: DcvError | None = None

    async def list_sessions(self, limit: float | None = None) -> list[Session]:
        self.calls.append(("list-sessions",))
        if self.list_error is not None:
            raise self.list_error
        return list(self.sessions)

    async def create_session(
        self,
        owner: str,
        session_type: str,
        session_id: str,
        run_as: str | None,
        limit: float | None = None,
    ) -> None:
        self.calls.append(("create-session", owner, session_type, session_id, run_as))
        self.sessions.append(Session(session_id, owner=owner, type=session_type))

    async def close_session(self, session_id: str) -> None:
        self.calls.append(("close-session", session_id))
        self.sessions = [s for s in self.sessions if s.id != session_id]

    async def set_config(self, section: str, key: str, value: str) -> None:
        self.calls.append(("set-config", section, key, value))


def result(coroutine: Coroutine[Any, Any, Any]) -> Any:
    """The outcome of a coroutine that the fakes let finish at once."""
    done = ensureDeferred(coroutine)
    outcome: list[Any] = []
    done.addBoth(outcome.append)
    assert outcome, "the coroutine waited on something"
    return outcome[0]


def outcome_error(coroutine: Coroutine[Any, Any, Any]) -> BaseException:
    failure = result(coroutine)
    assert hasattr(failure, "value"), f"no error raised, got {failure!r}"
    error: BaseException = failure.value
    return error


@pytest.fixture
def local_user(monkeypatch: pytest.MonkeyPatch) -> str:
    """A local account with a uid in [1000, 60000], as ``getpwnam`` sees it.

    (Not ``nobody``, which virtual sessions may never run as.)
    """
    name = "dcvix-session-owner"
    real = pwd.getpwnam

    def getpwnam(asked: str) -> pwd.struct_passwd:
        if asked != name:
            return real(asked)
        return pwd.struct_passwd((name, "x", 1500, 1500, "", "/nonexistent", "/bin/sh"))

    monkeypatch.setattr(pwd, "getpwnam", getpwnam)
    return name


@pytest.fixture
def record_path(tmp_path: Path) -> Path:
    return tmp_path / "sessions.json"


@pytest.fixture
def dcv() -> FakeDcv:
    return FakeDcv()


@pytest.fixture
def manager(dcv: FakeDcv, record_path: Path) -> SessionManager:
    return SessionManager(
        dcv,  # type: ignore[arg-type]
        CreatedSessions(record_path),
        1000,
        ("display/quality",),
    )


# --------------------------------------------------------------------- create


def test_create_reuses_the_owners_session_of_that_type(
    dcv: FakeDcv, manager: SessionManager, local_user: str, record_path: Path
) -> None:
    dcv.sessions = [
        Session("dcvix_console", owner=local_user, type="console"),
        Session("dcvix_other", owner="alice", type="virtual"),
        Session("dcvix_mine", owner=local_user, type="virtual"),
    ]
    assert result(manager.create(local_user, "Virtual", NEW_ID)) == "dcvix_mine"
    assert dcv.calls == [("list-sessions",)]
    assert NEW_ID not in manager.created
    assert not record_path.exists()
    assert not dcv.lock.locked


def test_reuse_compares_types_in_lower_case(
    dcv: FakeDcv, manager: SessionManager
) -> None:
    dcv.sessions = [Session("console", owner="alice", type="console")]
    assert result(manager.create("alice", "CONSOLE", NEW_ID)) == "console"
    assert dcv.calls == [("list-sessions",)]


def test_create_virtual_runs_as_the_owner_and_is_remembered(
    dcv: FakeDcv, manager: SessionManager, local_user: str, record_path: Path
) -> None:
    dcv.sessions = [
        Session("console", owner=local_user, type="console"),
        Session("dcvix_x", owner="alice", type="virtual"),
    ]
    assert result(manager.create(local_user, "Virtual", NEW_ID)) == NEW_ID
    assert dcv.calls == [
        ("list-sessions",),
        ("create-session", local_user, "virtual", NEW_ID, local_user),
    ]
    assert NEW_ID in manager.created
    assert json.loads(record_path.read_text()) == [NEW_ID]
    assert stat.S_IMODE(record_path.stat().st_mode) == 0o600
    assert NEW_ID in CreatedSessions(record_path)
    assert not dcv.lock.locked


def test_create_console_has_no_user(
    dcv: FakeDcv, manager: SessionManager, record_path: Path
) -> None:
    dcv.sessions = [Session("dcvix_v", owner="alice", type="virtual")]
    # alice need not be a local account: a console session runs as whoever is
    # logged in at the console, never as root by our doing.
    assert result(manager.create("alice", "console", "my-console")) == "my-console"
    assert dcv.calls == [
        ("list-sessions",),
        ("create-session", "alice", "console", "my-console", None),
    ]
    assert "my-console" in CreatedSessions(record_path)


@pytest.mark.parametrize(
    ("owner", "session_type", "session_id", "message"),
    [
        ("", "console", NEW_ID, "invalid user id"),
        ("-alice", "console", NEW_ID, "invalid user id"),
        ("ali\nce", "console", NEW_ID, "invalid user id"),
        ("alice", "gpu", NEW_ID, "sessionType must be console or virtual"),
        ("alice", "", NEW_ID, "sessionType must be console or virtual"),
        ("alice", "console", "", "invalid session id"),
        ("alice", "console", "-rf", "invalid session id"),
        ("alice", "console", "a b", "invalid session id"),
        ("alice", "console", "../x", "invalid session id"),
        ("root", "virtual", NEW_ID, "root may not own a virtual session"),
        ("Root", "virtual", NEW_ID, "Root is not a local user"),
        ("dcvix-no-such-user-7f3a", "virtual", NEW_ID, "is not a local user"),
    ],
)
def test_create_refuses_bad_input_before_any_dcv_call(
    dcv: FakeDcv,
    manager: SessionManager,
    owner: str,
    session_type: str,
    session_id: str,
    message: str,
) -> None:
    error = outcome_error(manager.create(owner, session_type, session_id))
    assert isinstance(error, InvalidInput)
    assert message in str(error)
    assert dcv.calls == []


def test_create_with_dcv_failing_releases_the_lock(
    dcv: FakeDcv, manager: SessionManager
) -> None:
    dcv.list_error = DcvError("timeout", "dcv list-sessions took over 20 s")
    error = outcome_error(manager.create("alice", "console", NEW_ID))
    assert isinstance(error, DcvError)
    assert not dcv.lock.locked
    assert NEW_ID not in manager.created


# ---------------------------------------------------------------------- close


def test_close_an_unknown_id_is_false_without_close(
    dcv: FakeDcv, manager: SessionManager
) -> None:
    dcv.sessions = [Session("dcvix_a")]
    assert result(manager.close("dcvix_b")) is False
    assert dcv.calls == [("list-sessions",)]
    assert not dcv.lock.locked


def test_close_a_listed_session(dcv: FakeDcv, manager: SessionManager) -> None:
    dcv.sessions = [Session("dcvix_a"), Session("dcvix_b")]
    assert result(manager.close("dcvix_b")) is True
    assert dcv.calls == [("list-sessions",), ("close-session", "dcvix_b")]
    assert [s.id for s in dcv.sessions] == ["dcvix_a"]


def test_close_only_if_decides_on_the_fresh_listing(
    dcv: FakeDcv, manager: SessionManager
) -> None:
    dcv.sessions = [Session("dcvix_a", connections=1), Session("dcvix_b")]
    seen: list[Session] = []

    def idle(session: Session) -> bool:
        seen.append(session)
        return session.connections == 0

    assert result(manager.close("dcvix_a", idle)) is False
    assert result(manager.close("dcvix_b", idle)) is True
    assert seen == [Session("dcvix_a", connections=1), Session("dcvix_b")]
    assert dcv.calls == [
        ("list-sessions",),
        ("list-sessions",),
        ("close-session", "dcvix_b"),
    ]
    assert not dcv.lock.locked


@pytest.mark.parametrize("session_id", ["", "-a", "a b", "a/b", "x" * 257])
def test_close_refuses_a_bad_id_before_any_dcv_call(
    dcv: FakeDcv, manager: SessionManager, session_id: str
) -> None:
    assert isinstance(outcome_error(manager.close(session_id)), InvalidInput)
    assert dcv.calls == []


# ------------------------------------------------------------------ configure


def test_configure_sets_allowed_keys(dcv: FakeDcv, manager: SessionManager) -> None:
    entries = [
        {"section": "display", "key": "quality", "value": "(80, 100)"},
        {"section": "display", "key": "quality", "value": "(20, 90)"},
    ]
    assert result(manager.configure(entries)) is None
    assert dcv.calls == [
        ("set-config", "display", "quality", "(80, 100)"),
        ("set-config", "display", "quality", "(20, 90)"),
    ]
    assert not dcv.lock.locked


def test_configure_refuses_keys_outside_the_allow_list(
    dcv: FakeDcv, manager: SessionManager
) -> None:
    entries = [
        {"section": "display", "key": "quality", "value": "(80, 100)"},
        {
            "section": "security",
            "key": "auth-token-verifier",
            "value": "https://attacker.example/",
        },
    ]
    error = outcome_error(manager.configure(entries))
    assert isinstance(error, NotAllowed)
    assert str(error) == "security/auth-token-verifier is not an allowed setting"
    assert dcv.calls == []


@pytest.mark.parametrize(
    "bad",
    [
        {"section": "display", "key": "quality", "value": "-x"},
        {"section": "display", "key": "quality", "value": "a\nb"},
        {"section": "display", "key": "quality", "value": "v" * 257},
        {"section": "display", "key": "quality", "value": ""},
        {"section": "display", "key": "quality", "value": 80},
        {"section": "display", "key": "quality"},
        {"section": "display", "key": None, "value": "80"},
        ["display", "quality", "80"],
        "display/quality=80",
        None,
    ],
)
def test_configure_checks_every_entry_before_running_any(
    dcv: FakeDcv, manager: SessionManager, bad: Any
) -> None:
    entries = [
        {"section": "display", "key": "quality", "value": "(80, 100)"},
        bad,
        {"section": "display", "key": "quality", "value": "(20, 90)"},
    ]
    assert isinstance(outcome_error(manager.configure(entries)), InvalidInput)
    assert dcv.calls == []


# ------------------------------------------------------------ CreatedSessions


def test_created_sessions_survive_a_restart(record_path: Path) -> None:
    created = CreatedSessions(record_path)
    created.add("dcvix_a")
    created.add("desk")
    created.add("dcvix_a")
    reloaded = CreatedSessions(record_path)
    assert "dcvix_a" in reloaded
    assert "desk" in reloaded
    assert "dcvix_b" not in reloaded
    assert json.loads(record_path.read_text()) == ["dcvix_a", "desk"]


def test_forget_gone_forgets_vanished_ids(record_path: Path) -> None:
    created = CreatedSessions(record_path)
    for session_id in ("dcvix_a", "dcvix_b", "desk"):
        created.add(session_id)
    created.forget_gone(created.snapshot(), {"dcvix_b", "desk", "console"})
    assert "dcvix_a" not in created
    assert "dcvix_b" in created
    assert "console" not in created
    reloaded = CreatedSessions(record_path)
    assert "dcvix_a" not in reloaded
    assert json.loads(record_path.read_text()) == ["dcvix_b", "desk"]


@pytest.mark.parametrize("content", ["", "not json", '{"ids": ["a"]}', "null"])
def test_an_unreadable_record_starts_empty(record_path: Path, content: str) -> None:
    record_path.write_text(content)
    created = CreatedSessions(record_path)
    assert "a" not in created
    created.add("dcvix_a")
    assert json.loads(record_path.read_text()) == ["dcvix_a"]


def test_a_missing_record_starts_empty(record_path: Path) -> None:
    created = CreatedSessions(record_path)
    assert "dcvix_a" not in created
    created.forget_gone(created.snapshot(), set())
    assert not record_path.exists()


def test_an_id_added_during_a_listing_is_kept(record_path: Path) -> None:
    created = CreatedSessions(record_path)
    created.add("old")
    before = created.snapshot()
    created.add("made-while-listing")  # the listing began before it existed
    created.forget_gone(before, set())
    assert "old" not in created
    assert "made-while-listing" in created


# ------------------------------------------------------------------- Reporter


@pytest.fixture
def events() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


@pytest.fixture
def stats() -> StatsCollector:
    return StatsCollector("ws01")


def check_stats(document: dict[str, Any]) -> None:
    assert list(document) == [
        "hostname",
        "free_memory",
        "total_memory",
        "cores",
        "cpu_usage",
        "load1",
        "load5",
        "load15",
    ]
    assert document["hostname"] == "ws01"
    for key in ("free_memory", "total_memory", "cores"):
        assert type(document[key]) is int, key
        assert document[key] >= 0, key
    assert document["total_memory"] > 0
    assert document["free_memory"] <= document["total_memory"]
    for key in ("cpu_usage", "load1", "load5", "load15"):
        assert type(document[key]) is float, key
        assert document[key] >= 0, key
    assert document["cpu_usage"] <= 100


def test_report_keys_in_order(
    dcv: FakeDcv, manager: SessionManager, stats: StatsCollector
) -> None:
    created_at = dt.datetime(2026, 7, 1, 8, 12, 44, 101203, tzinfo=UTC)
    dcv.sessions = [
        Session("dcvix_a", owner="alice", type="virtual", created=created_at)
    ]
    reporter = Reporter(manager, stats, ReportSettings(("gpu",), 30.0, 8446))
    report = result(reporter.build())

    assert list(report) == [
        "sessions",
        "stats",
        "tags",
        "update_interval",
        "agent_port",
        "version",
    ]
    assert report["sessions"] == [
        {
            "id": "dcvix_a",
            "owner": "alice",
            "user": "",
            "num-of-connections": 0,
            "creation-time": "2026-07-01T08:12:44.101203Z",
            "last-disconnection-time": "0001-01-01T00:00:00Z",
            "licensing-mode": "",
            "storage-root": "",
            "type": "virtual",
            "status": "",
            "x11-display": "",
            "x11-authority": "",
        }
    ]
    check_stats(report["stats"])
    assert report["tags"] == ["gpu", "linux"]
    assert report["update_interval"] == 30.0
    assert report["agent_port"] == 8446
    assert report["version"] == __version__
    json.dumps(report, allow_nan=False)  # what the updater sends


def test_report_with_advertise_address(
    manager: SessionManager, stats: StatsCollector
) -> None:
    settings = ReportSettings((), 10.0, 9446, "203.0.113.9:9446")
    report = result(Reporter(manager, stats, settings).build())
    assert list(report) == [
        "sessions",
        "stats",
        "tags",
        "update_interval",
        "agent_port",
        "advertise_address",
        "version",
    ]
    assert report["sessions"] == []
    assert report["tags"] == ["linux"]
    assert report["advertise_address"] == "203.0.113.9:9446"
    assert (report["update_interval"], report["agent_port"]) == (10.0, 9446)


def test_report_forgets_created_sessions_that_are_gone(
    dcv: FakeDcv, manager: SessionManager, stats: StatsCollector
) -> None:
    manager.created.add("dcvix_a")
    manager.created.add("dcvix_gone")
    dcv.sessions = [Session("dcvix_a")]
    result(Reporter(manager, stats, ReportSettings((), 30.0, 8446)).build())
    assert "dcvix_a" in manager.created
    assert "dcvix_gone" not in manager.created


def test_report_with_dcv_failing_still_has_stats(
    dcv: FakeDcv,
    manager: SessionManager,
    stats: StatsCollector,
    events: EventLoggingObserver,
) -> None:
    manager.created.add("dcvix_a")
    dcv.list_error = DcvError(
        "missing", "dcv list-sessions: no such file: /usr/bin/dcv"
    )
    report = result(
        Reporter(manager, stats, ReportSettings(("gpu",), 30.0, 8446)).build()
    )

    assert "sessions" not in report
    assert list(report) == [
        "stats",
        "tags",
        "update_interval",
        "agent_port",
        "version",
        "dcv_error",
    ]
    assert report["dcv_error"] == "dcv list-sessions: no such file: /usr/bin/dcv"
    check_stats(report["stats"])
    assert report["tags"] == ["gpu", "linux"]
    assert "dcvix_a" in manager.created  # not forgotten because dcv failed
    warned = [
        e["error"] for e in events if "without sessions" in e.get("log_format", "")
    ]
    assert warned == ["dcv list-sessions: no such file: /usr/bin/dcv"]


def test_a_create_waiting_for_a_busy_dcv_gives_up_within_25_seconds(
    dcv: FakeDcv, manager: SessionManager
) -> None:
    held = dcv.lock.acquire()  # another mutation holds dcv
    assert held.called
    waiting = ensureDeferred(manager.create("alice", "console", NEW_ID))
    dcv.clock.advance(24.9)
    assert not waiting.called
    dcv.clock.advance(0.2)
    failure = result_of(waiting)
    assert isinstance(failure.value, DcvError)
    assert failure.value.kind == "timeout"
    assert dcv.calls == []
    dcv.lock.release()


def result_of(deferred: Any) -> Any:
    outcome: list[Any] = []
    deferred.addBoth(outcome.append)
    assert outcome
    return outcome[0]


def test_a_disk_that_refuses_the_record_loses_nothing(
    record_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    created = CreatedSessions(record_path)
    created.add("dcvix_a")

    def full(*_args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("dcvix.agent.sessions.atomic_write", full)
    created.add("dcvix_b")  # no exception: the session exists all the same
    assert "dcvix_b" in created
    assert json.loads(record_path.read_text()) == ["dcvix_a"]  # whole, not torn
    monkeypatch.undo()
    created.add("dcvix_c")
    assert json.loads(record_path.read_text()) == ["dcvix_a", "dcvix_b", "dcvix_c"]


def test_reaped_sessions_ride_reports_until_one_is_delivered(
    manager: SessionManager, stats: StatsCollector
) -> None:
    reporter = Reporter(manager, stats, ReportSettings((), 30.0, 8446))
    assert "reaped" not in result(reporter.build())
    reporter.reaped("dcvix_a", "alice", "no client for 1900 s")
    first = result(reporter.build())
    assert first["reaped"] == [
        {"id": "dcvix_a", "owner": "alice", "reason": "no client for 1900 s"}
    ]
    # Not delivered: the next report carries it again, with the newer one.
    reporter.reaped("dcvix_b", "bob", "no client for 2000 s")
    second = result(reporter.build())
    assert [r["id"] for r in second["reaped"]] == ["dcvix_a", "dcvix_b"]
    # Delivered: gone, but one reaped after the report was built stays.
    reporter.reaped("dcvix_c", "carol", "no client for 2100 s")
    reporter.delivered(second)
    assert [r["id"] for r in result(reporter.build())["reaped"]] == ["dcvix_c"]


def test_at_most_a_hundred_reaped_sessions_wait(
    manager: SessionManager, stats: StatsCollector
) -> None:
    reporter = Reporter(manager, stats, ReportSettings((), 30.0, 8446))
    for n in range(105):
        reporter.reaped(f"dcvix_{n}", "alice", "idle")
    waiting = result(reporter.build())["reaped"]
    assert [r["id"] for r in waiting] == [f"dcvix_{n}" for n in range(5, 105)]
