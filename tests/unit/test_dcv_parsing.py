"""Reading what ``dcv`` prints, writing Go's times, and the checks before ``dcv``."""

from __future__ import annotations

import datetime as dt
import json
import os
import pwd
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from dcvix.agent import dcv as dcv_module
from dcvix.agent.dcv import (
    DcvCli,
    DcvError,
    Session,
    check_local_user,
    check_owner,
    check_session_type,
    parse_session,
    parse_sessions,
)
from dcvix.agent.metrics import AgentMetrics
from dcvix.common.gotime import format_time, parse_time
from dcvix.common.process import CommandError, CommandResult
from dcvix.common.validate import (
    InvalidInput,
    NotAllowed,
    check_config,
    check_session_id,
)

UTC = dt.UTC

# reference/original-agent.md §18.3, verbatim.
SAMPLE_18_3 = b"""[
  {
    "id" : "dcvix_6c1f2d7e-0a4b-4c8e-9f31-2b7d5e9a1c44",
    "owner" : "alice",
    "name" : "dcvix_6c1f2d7e-0a4b-4c8e-9f31-2b7d5e9a1c44",
    "num-of-connections" : 0,
    "creation-time" : "2026-07-01T08:12:44.101203Z",
    "last-disconnection-time" : "",
    "licensing-mode" : "DEMO",
    "licenses" : [
      { "product" : "dcv", "status" : "LICENSED", "check-timestamp" : "2026-07-01T08:12:45Z", "expiration-date" : "2026-07-31T00:00:00Z" }
    ],
    "storage-root" : "",
    "type" : "virtual",
    "x11-display" : ":1",
    "x11-authority" : "/run/user/1001/dcv/dcvix_6c1f2d7e-0a4b-4c8e-9f31-2b7d5e9a1c44.xauth",
    "display-layout" : [ { "width" : 1920, "height" : 1080, "x" : 0, "y" : 0 } ]
  },
  {
    "id" : "console",
    "owner" : "bob",
    "name" : "console",
    "num-of-connections" : 1,
    "creation-time" : "2026-06-30T17:03:10Z",
    "last-disconnection-time" : "2026-07-01T07:55:02.998001Z",
    "storage-root" : "",
    "type" : "console"
  }
]
"""  # noqa: E501

ALICE = Session(
    id="dcvix_6c1f2d7e-0a4b-4c8e-9f31-2b7d5e9a1c44",
    owner="alice",
    user="",
    connections=0,
    created=dt.datetime(2026, 7, 1, 8, 12, 44, 101203, tzinfo=UTC),
    last_disconnected=None,
    licensing_mode="DEMO",
    storage_root="",
    type="virtual",
    status="",
    x11_display=":1",
    x11_authority="/run/user/1001/dcv/dcvix_6c1f2d7e-0a4b-4c8e-9f31-2b7d5e9a1c44.xauth",
)
BOB = Session(
    id="console",
    owner="bob",
    connections=1,
    created=dt.datetime(2026, 6, 30, 17, 3, 10, tzinfo=UTC),
    last_disconnected=dt.datetime(2026, 7, 1, 7, 55, 2, 998001, tzinfo=UTC),
    type="console",
)


# ----------------------------------------------------------------- parse_time


@pytest.mark.parametrize(
    ("text", "micro"),
    [
        ("2026-07-01T08:12:44Z", 0),
        ("2026-07-01T08:12:44.1Z", 100000),
        ("2026-07-01T08:12:44.12Z", 120000),
        ("2026-07-01T08:12:44.123Z", 123000),
        ("2026-07-01T08:12:44.1234Z", 123400),
        ("2026-07-01T08:12:44.12345Z", 123450),
        ("2026-07-01T08:12:44.123456Z", 123456),
        ("2026-07-01T08:12:44.1234567Z", 123456),
        ("2026-07-01T08:12:44.12345678Z", 123456),
        ("2026-07-01T08:12:44.123456789Z", 123456),
        ("2026-07-01T08:12:44.999999999Z", 999999),  # truncated, never rounded up
        ("2026-07-01T08:12:44.000000Z", 0),
    ],
)
def test_parse_time_takes_0_to_9_fractional_digits(text: str, micro: int) -> None:
    parsed = parse_time(text)
    assert parsed == dt.datetime(2026, 7, 1, 8, 12, 44, micro, tzinfo=UTC)
    assert parsed is not None
    assert parsed.utcoffset() == dt.timedelta(0)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-07-01T08:12:44Z", dt.datetime(2026, 7, 1, 8, 12, 44, tzinfo=UTC)),
        ("2026-07-01T08:12:44z", dt.datetime(2026, 7, 1, 8, 12, 44, tzinfo=UTC)),
        ("2026-07-01 08:12:44Z", dt.datetime(2026, 7, 1, 8, 12, 44, tzinfo=UTC)),
        ("2026-07-01t08:12:44Z", dt.datetime(2026, 7, 1, 8, 12, 44, tzinfo=UTC)),
        ("2026-07-01T08:12:44+00:00", dt.datetime(2026, 7, 1, 8, 12, 44, tzinfo=UTC)),
        ("2026-07-01T08:12:44+02:00", dt.datetime(2026, 7, 1, 6, 12, 44, tzinfo=UTC)),
        ("2026-07-01T08:12:44-0530", dt.datetime(2026, 7, 1, 13, 42, 44, tzinfo=UTC)),
        (
            "2026-07-01T23:30:00.5-01:00",
            dt.datetime(2026, 7, 2, 0, 30, 0, 500000, tzinfo=UTC),
        ),
        ("2020-03-02T16:08:50Z", dt.datetime(2020, 3, 2, 16, 8, 50, tzinfo=UTC)),
    ],
)
def test_parse_time_zones_and_separators(text: str, expected: dt.datetime) -> None:
    parsed = parse_time(text)
    assert parsed == expected
    assert parsed is not None
    assert parsed.utcoffset() == dt.timedelta(0)
    assert (parsed.hour, parsed.day) == (expected.hour, expected.day)


@pytest.mark.parametrize(
    "value",
    [
        "",
        None,
        "0001-01-01T00:00:00Z",
        "0001-01-01T00:00:00.000000Z",
        "0001-01-01T00:00:00+00:00",
    ],
)
def test_parse_time_no_time(value: Any) -> None:
    assert parse_time(value) is None


@pytest.mark.parametrize(
    "value",
    [
        "2026-13-01T08:12:44Z",  # month 13
        "2026-02-30T08:12:44Z",
        "2026-07-01T24:00:00Z",
        "2026-07-01T08:12:44+24:00",
        "9999-12-31T23:59:59-01:00",  # past year 9999 once in UTC
        "yesterday",
        "2026-07-01",
        "2026-07-01T08:12:44",  # no zone
        "2026-07-01T08:12:44.Z",
        "2026-07-01T08:12:44.1234567890Z",  # 10 digits
        "2026-07-01T08:12:44 Z",
        "1751357564",
        5,
        1751357564.5,
        True,
        [],
        {},
        b"2026-07-01T08:12:44Z",
    ],
)
def test_parse_time_refuses_junk_with_value_error(value: Any) -> None:
    with pytest.raises(ValueError, match="not a timestamp"):
        parse_time(value)


# ---------------------------------------------------------------- format_time


@pytest.mark.parametrize(
    ("moment", "text"),
    [
        (
            dt.datetime(2026, 7, 1, 13, 21, 19, 262880, tzinfo=UTC),
            "2026-07-01T13:21:19.26288Z",
        ),
        (
            dt.datetime(2026, 7, 1, 13, 21, 19, 262883, tzinfo=UTC),
            "2026-07-01T13:21:19.262883Z",
        ),
        (dt.datetime(2026, 7, 1, 13, 21, 19, 0, tzinfo=UTC), "2026-07-01T13:21:19Z"),
        (
            dt.datetime(2026, 7, 1, 13, 21, 19, 1, tzinfo=UTC),
            "2026-07-01T13:21:19.000001Z",
        ),
        (
            dt.datetime(2026, 7, 1, 13, 21, 19, 500000, tzinfo=UTC),
            "2026-07-01T13:21:19.5Z",
        ),
        (
            dt.datetime(2026, 7, 1, 1, 0, 0, tzinfo=dt.timezone(dt.timedelta(hours=2))),
            "2026-06-30T23:00:00Z",
        ),
        (dt.datetime(2, 1, 1, tzinfo=UTC), "0002-01-01T00:00:00Z"),
        (None, "0001-01-01T00:00:00Z"),
    ],
)
def test_format_time_as_go_writes_it(moment: dt.datetime | None, text: str) -> None:
    assert format_time(moment) == text


def test_format_time_of_a_parsed_dcv_time() -> None:
    assert format_time(parse_time("2026-07-01T13:21:19.262880Z")) == (
        "2026-07-01T13:21:19.26288Z"
    )
    assert format_time(parse_time("2026-07-01T13:21:19.000000Z")) == (
        "2026-07-01T13:21:19Z"
    )
    assert format_time(parse_time("")) == "0001-01-01T00:00:00Z"


_OFFSETS = st.integers(min_value=-(23 * 60 + 59), max_value=23 * 60 + 59).map(
    lambda minutes: dt.timezone(dt.timedelta(minutes=minutes))
)


@given(
    st.datetimes(
        min_value=dt.datetime(1970, 1, 2),
        max_value=dt.datetime(2100, 12, 30),
        timezones=_OFFSETS,
    )
)
def test_format_then_parse_gives_the_moment_back_in_utc(moment: dt.datetime) -> None:
    text = format_time(moment)
    assert text.endswith("Z")
    assert text != ""
    back = parse_time(text)
    assert back == moment
    assert back is not None
    assert back.utcoffset() == dt.timedelta(0)
    assert back.replace(tzinfo=None) == moment.astimezone(UTC).replace(tzinfo=None)


# ------------------------------------------------------------- parse_sessions


def test_parse_sessions_reads_the_pretty_printed_sample_of_the_reference() -> None:
    sessions, problems = parse_sessions(SAMPLE_18_3)
    assert sessions == [ALICE, BOB]
    assert problems == []


def test_parse_sessions_reads_compact_json() -> None:
    compact = json.dumps(json.loads(SAMPLE_18_3), separators=(",", ":")).encode()
    assert b" : " not in compact
    assert parse_sessions(compact) == ([ALICE, BOB], [])


@pytest.mark.parametrize("empty", [b"[]", b"[ ]", b"[\n]\n", b"  []  "])
def test_parse_sessions_empty_list(empty: bytes) -> None:
    assert parse_sessions(empty) == ([], [])


def test_parse_sessions_ignores_unknown_keys() -> None:
    stdout = json.dumps(
        [
            {
                "id": "s1",
                "owner": "alice",
                "type": "console",
                "gpu": {"vendor": "nvidia"},
                "name": "desk",
                "max-concurrent-clients": 4,
            }
        ]
    ).encode()
    assert parse_sessions(stdout) == (
        [Session(id="s1", owner="alice", type="console")],
        [],
    )


def test_missing_keys_become_empty_or_zero() -> None:
    sessions, problems = parse_sessions(b'[{"id": "s1"}]')
    assert problems == []
    assert sessions == [Session(id="s1")]
    assert sessions[0].to_json() == {
        "id": "s1",
        "owner": "",
        "user": "",
        "num-of-connections": 0,
        "creation-time": "0001-01-01T00:00:00Z",
        "last-disconnection-time": "0001-01-01T00:00:00Z",
        "licensing-mode": "",
        "storage-root": "",
        "type": "",
        "status": "",
        "x11-display": "",
        "x11-authority": "",
    }


def test_null_values_become_empty_or_zero() -> None:
    keys = (
        "owner",
        "user",
        "num-of-connections",
        "creation-time",
        "last-disconnection-time",
        "licensing-mode",
        "storage-root",
        "type",
        "status",
        "x11-display",
        "x11-authority",
    )
    entry: dict[str, Any] = dict.fromkeys(keys)
    entry["id"] = "s1"
    assert parse_sessions(json.dumps([entry]).encode()) == ([Session(id="s1")], [])


def test_type_is_lower_cased_and_negative_connections_are_zero() -> None:
    session = parse_session({"id": "s1", "type": "Virtual", "num-of-connections": -2})
    assert session.type == "virtual"
    assert session.connections == 0


def test_one_bad_entry_is_skipped_and_reported_the_others_kept() -> None:
    stdout = json.dumps(
        [
            {"id": "good1", "owner": "alice", "num-of-connections": 2},
            "not an object",
            {"owner": "nobody-knows-the-id"},
            {"id": "", "owner": "empty-id"},
            {"id": 7},
            {"id": "bad-count", "num-of-connections": "1"},
            {"id": "bool-count", "num-of-connections": True},
            {"id": "float-count", "num-of-connections": 1.5},
            {"id": "bad-time", "creation-time": "yesterday"},
            {"id": "bad-month", "last-disconnection-time": "2026-13-01T00:00:00Z"},
            {"id": "bad-owner", "owner": ["alice"]},
            None,
            {"id": "good2", "type": "console"},
        ]
    ).encode()
    sessions, problems = parse_sessions(stdout)
    assert sessions == [
        Session(id="good1", owner="alice", connections=2),
        Session(id="good2", type="console"),
    ]
    assert problems == [
        "entry 2: entry is not an object",
        "entry 3: entry has no id",
        "entry 4: entry has no id",
        "entry 5: id is not a string",
        "entry 6: num-of-connections is not an integer",
        "entry 7: num-of-connections is not an integer",
        "entry 8: num-of-connections is not an integer",
        "entry 9: not a timestamp: 'yesterday'",
        "entry 10: not a timestamp: '2026-13-01T00:00:00Z'",
        "entry 11: owner is not a string",
        "entry 12: entry is not an object",
    ]


@pytest.mark.parametrize(
    "stdout",
    [
        b"",
        b"garbage",
        b"Session: console (owner:bob type:console name:'console')\n",
        b"\xff\xfe[]",
        b"[{",
        b'{"id": "s1"}',
        b'"s1"',
        b"null",
        b"42",
        b"[" * 100_000 + b"]" * 100_000,  # deeper than Python's recursion limit
    ],
)
def test_parse_sessions_refuses_output_that_is_not_a_json_array(
    stdout: bytes,
) -> None:
    with pytest.raises(ValueError, match="list-sessions did not print"):
        parse_sessions(stdout)


def test_session_json_has_the_twelve_go_keys_in_order() -> None:
    document = ALICE.to_json()
    assert list(document) == [
        "id",
        "owner",
        "user",
        "num-of-connections",
        "creation-time",
        "last-disconnection-time",
        "licensing-mode",
        "storage-root",
        "type",
        "status",
        "x11-display",
        "x11-authority",
    ]
    assert document == {
        "id": "dcvix_6c1f2d7e-0a4b-4c8e-9f31-2b7d5e9a1c44",
        "owner": "alice",
        "user": "",
        "num-of-connections": 0,
        "creation-time": "2026-07-01T08:12:44.101203Z",
        "last-disconnection-time": "0001-01-01T00:00:00Z",
        "licensing-mode": "DEMO",
        "storage-root": "",
        "type": "virtual",
        "status": "",
        "x11-display": ":1",
        "x11-authority": (
            "/run/user/1001/dcv/dcvix_6c1f2d7e-0a4b-4c8e-9f31-2b7d5e9a1c44.xauth"
        ),
    }
    assert BOB.to_json()["creation-time"] == "2026-06-30T17:03:10Z"
    assert BOB.to_json()["last-disconnection-time"] == "2026-07-01T07:55:02.998001Z"


# ------------------------------------------- DcvCli.list_sessions reports skips


@pytest.fixture
def events() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def _fake_run(
    stdout: bytes, exit_code: int | None = 0, timed_out: bool = False, took: float = 0.0
) -> Any:
    async def run_command(reactor: Any, argv: list[str], **kwargs: Any) -> Any:
        reactor.advance(took)
        return CommandResult(stdout, b"", exit_code, None, timed_out, False)

    return run_command


async def _cannot_start(reactor: Any, argv: list[str], **kwargs: Any) -> Any:
    raise CommandError(f"{argv[0]}: no such file")


@pytest.mark.parametrize(
    ("runner", "outcome"),
    [
        (_fake_run(b"[]", took=0.3), "ok"),
        (_fake_run(b"", exit_code=1, took=0.3), "failed"),
        (_fake_run(b"", exit_code=None, timed_out=True, took=0.3), "timeout"),
        (_fake_run(b"Segmentation fault", took=0.3), "garbage"),
        (_cannot_start, "missing"),
    ],
)
def test_each_command_is_counted_by_outcome_with_its_time(
    monkeypatch: pytest.MonkeyPatch, runner: Any, outcome: str
) -> None:
    monkeypatch.setattr(dcv_module, "run_command", runner)
    metrics = AgentMetrics()
    cli = DcvCli(Clock(), "/usr/bin/dcv", 20, metrics)
    ensureDeferred(cli.list_sessions()).addErrback(lambda failure: None)
    registry = metrics.registry
    labels = {"command": "list-sessions", "outcome": outcome}
    assert registry.get_sample_value("dcvix_agent_dcv_commands_total", labels) == 1
    took = registry.get_sample_value(
        "dcvix_agent_dcv_command_seconds_sum", {"command": "list-sessions"}
    )
    assert took == (0.0 if outcome == "missing" else 0.3)
    listed = registry.get_sample_value("dcvix_agent_sessions_listed_timestamp_seconds")
    assert listed == (0.3 if outcome == "ok" else 0.0)


def test_list_sessions_logs_each_skipped_entry(
    monkeypatch: pytest.MonkeyPatch, events: EventLoggingObserver
) -> None:
    stdout = b'[{"id": "s1"}, {"id": "s2", "creation-time": "noon"}, 3]'
    monkeypatch.setattr(dcv_module, "run_command", _fake_run(stdout))
    done = ensureDeferred(DcvCli(Clock(), "/usr/bin/dcv", 20).list_sessions())
    assert done.called
    assert done.result == [Session(id="s1")]
    skipped = [
        e["problem"] for e in events if e.get("log_format", "").startswith("skipped")
    ]
    assert skipped == [
        "entry 2: not a timestamp: 'noon'",
        "entry 3: entry is not an object",
    ]


def test_list_sessions_garbage_is_a_dcv_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(dcv_module, "run_command", _fake_run(b"Segmentation fault"))
    errors: list[Any] = []
    ensureDeferred(DcvCli(Clock(), "/usr/bin/dcv", 20).list_sessions()).addErrback(
        errors.append
    )
    assert len(errors) == 1
    assert isinstance(errors[0].value, DcvError)
    assert errors[0].value.kind == "garbage"
    assert errors[0].value.message == "list-sessions did not print JSON"


# ---------------------------------------------------------------- input checks


@pytest.mark.parametrize(
    "value",
    [
        "dcvix_6c1f2d7e-0a4b-4c8e-9f31-2b7d5e9a1c44",
        "console",
        "a",
        "my.session@host:1+2=3",
        "x" * 256,
        "a..b",
        "a-",
    ],
)
def test_check_session_id_accepts(value: str) -> None:
    assert check_session_id(value) == value


@pytest.mark.parametrize(
    "value",
    [
        "",
        "-rf",
        "--help",
        "a b",
        " console",
        "console\n",
        "a/b",
        ".",  # a URL path segment of its own once sent to the agent
        "..",
        "../etc",
        "a\\b",
        "a\x00b",
        "x" * 257,
        "séance",
        "a;b",
        "$(id)",
    ],
)
def test_check_session_id_refuses(value: str) -> None:
    with pytest.raises(InvalidInput, match="invalid session id"):
        check_session_id(value)


@pytest.mark.parametrize(
    "value", ["alice", "DOMAIN\\alice", "alice@example.com", "Alice Smith", "x" * 256]
)
def test_check_owner_accepts(value: str) -> None:
    assert check_owner(value) == value


@pytest.mark.parametrize(
    "value", ["", "-alice", "--user=root", "ali\nce", "a\tb", "a\x7f", "x" * 257]
)
def test_check_owner_refuses(value: str) -> None:
    with pytest.raises(InvalidInput, match="invalid user id"):
        check_owner(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("console", "console"),
        ("virtual", "virtual"),
        ("Virtual", "virtual"),
        ("CONSOLE", "console"),
        ("vIrTuAl", "virtual"),
    ],
)
def test_check_session_type_any_case(value: str, expected: str) -> None:
    assert check_session_type(value) == expected


@pytest.mark.parametrize("value", ["gpu", "", " virtual", "virtual ", "consoles"])
def test_check_session_type_refuses(value: str) -> None:
    with pytest.raises(InvalidInput, match="sessionType must be console or virtual"):
        check_session_type(value)


def test_check_local_user_refuses_root_under_min_uid_1000() -> None:
    with pytest.raises(InvalidInput, match=r"root may not own a virtual session"):
        check_local_user("root", 1000)


def test_check_local_user_refuses_an_unknown_user() -> None:
    with pytest.raises(InvalidInput, match="is not a local user"):
        check_local_user("dcvix-no-such-user-7f3a", 1000)


@pytest.fixture
def local_user() -> Iterator[pwd.struct_passwd]:
    """A throwaway local account, made by the system's own useradd."""
    if os.geteuid() != 0:
        pytest.skip("creating a local user needs root")
    name = f"dcvixt{os.getpid() % 1_000_000}"
    for attempt in range(20):  # /etc/passwd may be locked by another test
        made = subprocess.run(
            ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            capture_output=True,
            check=False,
        )
        if made.returncode == 0:
            break
        if attempt == 19 or b"lock" not in made.stderr:
            pytest.fail(f"useradd failed: {made.stderr.decode(errors='replace')}")
        time.sleep(0.1)
    try:
        yield pwd.getpwnam(name)
    finally:
        subprocess.run(["userdel", name], capture_output=True, check=False)


def test_check_local_user_accepts_a_real_user_at_or_above_min_uid(
    local_user: pwd.struct_passwd,
) -> None:
    uid = local_user.pw_uid
    assert uid >= 1000  # useradd's UID_MIN
    assert check_local_user(local_user.pw_name, 1000) == local_user.pw_name
    assert check_local_user(local_user.pw_name, uid) == local_user.pw_name
    with pytest.raises(InvalidInput, match="may not own a virtual session"):
        check_local_user(local_user.pw_name, uid + 1)


ALLOWED = ("display/quality", "display/target-fps")


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("display", "quality", "(80, 100)"),
        ("display", "target-fps", "30"),
        ("display", "quality", "x" * 256),
        ("display", "quality", "a-b"),
    ],
)
def test_check_config_accepts_allowed_keys(section: str, key: str, value: str) -> None:
    assert check_config(section, key, value, ALLOWED) == (section, key, value)


@pytest.mark.parametrize(
    ("section", "key"),
    [
        ("security", "auth-token-verifier"),
        ("display", "target-fps-max"),
        ("connectivity", "web-port"),
        ("display/quality", "x"),
    ],
)
def test_check_config_refuses_keys_outside_the_allow_list(
    section: str, key: str
) -> None:
    with pytest.raises(NotAllowed, match="is not an allowed setting"):
        check_config(section, key, "https://attacker.example/", ALLOWED)


def test_check_config_default_allow_list_is_quality_only() -> None:
    assert check_config("display", "quality", "(1, 90)", ("display/quality",)) == (
        "display",
        "quality",
        "(1, 90)",
    )
    with pytest.raises(NotAllowed):
        check_config("display", "target-fps", "30", ("display/quality",))


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("", "quality", "80"),
        ("display", "", "80"),
        ("display", "quality", ""),
        ("display", "quality", "-80"),
        ("display", "quality", "--help"),
        ("display", "quality", "80\n[security]"),
        ("display", "quality", "80\r"),
        ("display", "quality", "\x00"),
        ("display", "quality", "a\tb"),
        ("display", "quality", "\x1b[31m"),
        ("display", "quality", "a\x7f"),
        ("display", "quality", "x" * 257),
    ],
)
def test_check_config_refuses_bad_values(section: str, key: str, value: str) -> None:
    with pytest.raises(InvalidInput):
        check_config(section, key, value, ALLOWED)
