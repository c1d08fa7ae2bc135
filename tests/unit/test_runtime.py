"""The director's picture of the fleet, built from agents' updates."""

from __future__ import annotations

import copy
import dataclasses
import datetime as dt
import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher

from dcvix.common.errors import BadRequest
from dcvix.director.api.render import server_json, session_json
from dcvix.director.runtime import (
    HostStats,
    MemoryRuntimeStore,
    RuntimeStore,
    ServerState,
    Session,
    SessionsMemo,
    is_online,
    parse_report,
)

UTC = dt.UTC
NOW = dt.datetime(2026, 7, 1, 12, 0, 0, tzinfo=UTC)
GUID = "5b0c7e1c-3f5e-4d2a-9d6b-1f2e3a4b5c6d"
GUID2 = "6c1f2d7e-0a4b-4c8e-9f31-2b7d5e9a1c44"
GUID3 = "7d2e3f8a-1b5c-4d9e-8a42-3c8e6f0b2d55"
PEER = "192.0.2.10"
SESSION_ID = "dcvix_0b6f2c1e-8d3a-4f5b-9c7d-1e2f3a4b5c6d"

# The Go agent's update, reference/original-agent.md §10.3 (its "…" elisions
# filled in with a whole uuid, which a session id must be).
GO_PAYLOAD: dict[str, Any] = {
    "sessions": [
        {
            "id": SESSION_ID,
            "owner": "alice",
            "user": "",
            "num-of-connections": 1,
            "creation-time": "2026-07-01T08:12:44.101203Z",
            "last-disconnection-time": "0001-01-01T00:00:00Z",
            "licensing-mode": "DEMO",
            "storage-root": "",
            "type": "virtual",
            "status": "",
            "x11-display": ":1",
            "x11-authority": f"/run/user/1001/dcv/{SESSION_ID}.xauth",
        }
    ],
    "stats": {
        "hostname": "ws01",
        "free_memory": 54545088512,
        "total_memory": 66996871168,
        "cores": 8,
        "cpu_usage": 1.16,
        "load1": 0.11,
        "load5": 0.13,
        "load15": 0.15,
    },
    "tags": ["gpu", "linux"],
}

GO_SESSION = Session(
    id=SESSION_ID,
    owner="alice",
    user="",
    connections=1,
    creation_time=dt.datetime(2026, 7, 1, 8, 12, 44, 101203, tzinfo=UTC),
    last_disconnection_time=None,
    licensing_mode="DEMO",
    storage_root="",
    type="virtual",
    status="",
    x11_display=":1",
    x11_authority=f"/run/user/1001/dcv/{SESSION_ID}.xauth",
)

GO_STATS = HostStats(
    free_memory=54545088512,
    total_memory=66996871168,
    cores=8,
    cpu_usage=1.16,
    load1=0.11,
    load5=0.13,
    load15=0.15,
)

# The session as the Go agent sent it is what GET /v1/sessions shows.
GO_SESSION_JSON = {
    "id": SESSION_ID,
    "owner": "alice",
    "user": "",
    "num-of-connections": 1,
    "creation-time": "2026-07-01T08:12:44.101203Z",
    "last-disconnection-time": "0001-01-01T00:00:00Z",
    "licensing-mode": "DEMO",
    "storage-root": "",
    "type": "virtual",
    "status": "",
    "x11-display": ":1",
    "x11-authority": f"/run/user/1001/dcv/{SESSION_ID}.xauth",
}


def payload(**changes: Any) -> dict[str, Any]:
    body = copy.deepcopy(GO_PAYLOAD)
    body.update(changes)
    return body


def session(session_id: str, **fields: Any) -> dict[str, Any]:
    return {"id": session_id, "type": "virtual", **fields}


def later(seconds: float) -> dt.datetime:
    return NOW + dt.timedelta(seconds=seconds)


def parse(
    body: Any,
    now: dt.datetime = NOW,
    previous: ServerState | None = None,
    guid: str = GUID,
    hostname: str = "ws01",
    address: str = PEER,
) -> ServerState:
    return parse_report(guid, hostname, body, address, now, 8446, previous)


def refusal(body: Any, previous: ServerState | None = None) -> str:
    """The message of the BadRequest that ``body`` gets."""
    with pytest.raises(BadRequest) as caught:
        parse(body, previous=previous)
    return str(caught.value)


def ids(state: ServerState | None) -> list[str]:
    assert state is not None
    return [s.id for s in state.sessions]


@pytest.fixture
def store() -> RuntimeStore:
    return MemoryRuntimeStore()


@pytest.fixture
def events() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


# --------------------------------------------------------------- SessionsMemo


def test_an_agents_unchanged_session_list_is_not_parsed_again() -> None:
    memo = SessionsMemo()
    first = memo.parse(GUID, copy.deepcopy(GO_PAYLOAD["sessions"]))
    again = memo.parse(GUID, copy.deepcopy(GO_PAYLOAD["sessions"]))
    assert first == (GO_SESSION,)
    assert again is first


def test_a_changed_session_list_is_parsed() -> None:
    memo = SessionsMemo()
    memo.parse(GUID, GO_PAYLOAD["sessions"])
    changed = copy.deepcopy(GO_PAYLOAD["sessions"])
    changed[0]["num-of-connections"] = 2
    assert memo.parse(GUID, changed) == (
        dataclasses.replace(GO_SESSION, connections=2),
    )


def test_the_memo_is_per_agent() -> None:
    memo = SessionsMemo()
    memo.parse(GUID, GO_PAYLOAD["sessions"])
    other = [session(SESSION_ID.replace("0b6f", "1b6f"))]
    assert [s.id for s in memo.parse(GUID2, other)] == [other[0]["id"]]
    assert memo.parse(GUID, GO_PAYLOAD["sessions"]) == (GO_SESSION,)


def test_a_refused_list_leaves_the_memo_as_it_was() -> None:
    memo = SessionsMemo()
    first = memo.parse(GUID, GO_PAYLOAD["sessions"])
    bad = copy.deepcopy(GO_PAYLOAD["sessions"])
    bad[0]["type"] = "neither"
    with pytest.raises(BadRequest):
        memo.parse(GUID, bad)
    with pytest.raises(BadRequest):
        memo.parse(GUID, bad)  # refused again, not taken from the memo
    assert memo.parse(GUID, GO_PAYLOAD["sessions"]) is first


def test_a_list_with_keys_nothing_reads_is_not_kept() -> None:
    # An agent could pad its sessions with keys up to the body cap: the memo
    # would keep that for as long as the director runs.
    memo = SessionsMemo()
    padded = copy.deepcopy(GO_PAYLOAD["sessions"])
    padded[0]["pad"] = [[]] * 1000
    assert memo.parse(GUID, padded) == (GO_SESSION,)
    assert memo._last == {}
    first = memo.parse(GUID, GO_PAYLOAD["sessions"])
    assert memo.parse(GUID, padded) == (GO_SESSION,)
    assert GUID not in memo._last
    assert memo.parse(GUID, GO_PAYLOAD["sessions"]) is not first


def test_a_new_agent_on_a_hostname_does_not_inherit_the_old_ones_sessions() -> None:
    # A replaced workstation's new agent whose dcv fails (no "sessions" key).
    old = parse(payload())
    body = payload()
    del body["sessions"]
    assert parse(body, previous=old).sessions == old.sessions
    assert parse(body, previous=old, guid=GUID2).sessions == ()


def test_parse_report_with_a_memo_gives_what_it_gives_without() -> None:
    memo = SessionsMemo()
    with_memo = parse_report(GUID, "ws01", payload(), PEER, NOW, 8446, None, memo)
    assert with_memo == parse(payload())
    again = parse_report(GUID, "ws01", payload(), PEER, NOW, 8446, None, memo)
    assert again.sessions is with_memo.sessions


# --------------------------------------------------------------- parse_report


def test_a_go_agent_update_is_parsed_as_is() -> None:
    assert parse(payload()) == ServerState(
        guid=GUID,
        hostname="ws01",
        address=PEER,
        agent_port=8446,
        update_interval=30.0,
        last_seen=NOW,
        stats=GO_STATS,
        tags=("gpu", "linux"),
        sessions=(GO_SESSION,),
        version="",
        dcv_error="",
    )


def test_the_registered_hostname_wins_over_stats_hostname(
    events: EventLoggingObserver,
) -> None:
    body = payload()
    body["stats"]["hostname"] = "ws99"
    state = parse(body)

    assert state.hostname == "ws01"
    warned = [
        (e["guid"], e["reported"], e["hostname"], e["log_level"])
        for e in events
        if "reported hostname" in e.get("log_format", "")
    ]
    assert warned == [(GUID, "ws99", "ws01", LogLevel.warn)]


def test_a_matching_stats_hostname_is_not_logged(events: EventLoggingObserver) -> None:
    parse(payload())
    assert [e for e in events if "reported hostname" in e.get("log_format", "")] == []


def test_each_update_brings_all_of_a_servers_sessions() -> None:
    first = parse(payload(sessions=[session("dcvix_a"), session("dcvix_b")]))
    state = parse(payload(sessions=[session("dcvix_c")]), previous=first)
    assert ids(state) == ["dcvix_c"]

    assert parse(payload(sessions=[]), previous=state).sessions == ()
    assert parse(payload(sessions=None), previous=first).sessions == ()


def test_an_update_without_sessions_keeps_the_previous_ones() -> None:
    previous = parse(payload(sessions=[session("dcvix_a")]))
    body = payload(dcv_error="dcv list-sessions took over 20 s")
    del body["sessions"]
    state = parse(body, now=later(30), previous=previous)

    assert ids(state) == ["dcvix_a"]
    assert state.dcv_error == "dcv list-sessions took over 20 s"
    assert state.last_seen == later(30)


def test_a_first_update_without_sessions_has_none() -> None:
    body = payload()
    del body["sessions"]
    assert parse(body).sessions == ()


def test_dcv_error_with_control_characters_is_kept_readable() -> None:
    body = payload(dcv_error="dcv list-sessions failed (exit 1): \x1b[31mno\tgood\n")
    assert parse(body).dcv_error == "dcv list-sessions failed (exit 1):  [31mno good "


def deep(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = [value]
    return value


def test_free_text_that_is_not_text_is_dropped_not_walked() -> None:
    # str() of a value nested this deep reaches Python's recursion limit.
    body = payload(dcv_error=deep(5000))
    body["stats"]["hostname"] = deep(5000)
    assert parse(body).dcv_error == ""
    assert parse(payload(dcv_error=42)).dcv_error == ""


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    """A change to a payload at ``a.b`` or ``sessions.0.key``."""

    def change(body: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target: Any = body
        for part in parents:
            target = target[int(part)] if part.isdigit() else target[part]
        target[last] = value

    return change


def _drop(key: str) -> Callable[[dict[str, Any]], None]:
    def change(body: dict[str, Any]) -> None:
        del body[key]

    return change


_S = f"session {SESSION_ID}:"
_SESSIONS = "sessions must be a list of at most 500"
_ID = "a session id is invalid"
_TYPE = f"{_S} type must be console or virtual"
_CONNECTIONS = f"{_S} num-of-connections must be an integer"
_OWNER_TEXT = f"{_S} owner must be a string of at most 1024 characters"
_STATS = "stats must be an object"
_TAGS = "tags must be a list of at most 64 strings"
_TAG_TEXT = "a tag must be a string of at most 1024 characters"


def _int(key: str) -> str:
    return f"stats.{key} must be a non-negative integer"


def _number(key: str) -> str:
    return f"stats.{key} must be a non-negative number"


INVALID: dict[str, tuple[Callable[[dict[str, Any]], None], str]] = {
    "sessions not a list": (_set("sessions", "dcvix_a"), _SESSIONS),
    "sessions an object": (_set("sessions", {"id": "dcvix_a"}), _SESSIONS),
    "501 sessions": (
        _set("sessions", [session(f"dcvix_{n}") for n in range(501)]),
        _SESSIONS,
    ),
    "session not an object": (
        _set("sessions", ["dcvix_a"]),
        "each session must be an object",
    ),
    "session id with a space": (_set("sessions.0.id", "dcvix a"), _ID),
    "session id with a leading dash": (_set("sessions.0.id", "-rf"), _ID),
    "session id empty": (_set("sessions.0.id", ""), _ID),
    "session id a number": (_set("sessions.0.id", 7), _ID),
    "session id with a slash": (_set("sessions.0.id", "a/b"), _ID),
    "session id too long": (_set("sessions.0.id", "x" * 257), _ID),
    "session id a dot": (_set("sessions.0.id", "."), _ID),
    "session id two dots": (_set("sessions.0.id", ".."), _ID),
    "session id only dots": (_set("sessions.0.id", "..."), _ID),
    "bad type": (_set("sessions.0.type", "gpu"), _TYPE),
    "type a number": (_set("sessions.0.type", 1), _TYPE),
    "type missing": (_set("sessions.0.type", None), _TYPE),
    "connections a string": (_set("sessions.0.num-of-connections", "1"), _CONNECTIONS),
    "connections a float": (_set("sessions.0.num-of-connections", 1.5), _CONNECTIONS),
    "connections a bool": (_set("sessions.0.num-of-connections", True), _CONNECTIONS),
    "bad creation-time": (
        _set("sessions.0.creation-time", "yesterday"),
        f"{_S} creation-time is not a timestamp",
    ),
    "month 13": (
        _set("sessions.0.last-disconnection-time", "2026-13-01T00:00:00Z"),
        f"{_S} last-disconnection-time is not a timestamp",
    ),
    "time a number": (
        _set("sessions.0.creation-time", 1751357564),
        f"{_S} creation-time is not a timestamp",
    ),
    "time past year 9999": (
        _set("sessions.0.creation-time", "9999-12-31T23:59:59-01:00"),
        f"{_S} creation-time is not a timestamp",
    ),
    "owner with a newline": (
        _set("sessions.0.owner", "alice\n"),
        f"{_S} owner holds a control character",
    ),
    "owner too long": (_set("sessions.0.owner", "a" * 1025), _OWNER_TEXT),
    "owner a list": (_set("sessions.0.owner", ["alice"]), _OWNER_TEXT),
    "x11-authority with a tab": (
        _set("sessions.0.x11-authority", "/run/a\tb"),
        f"{_S} x11-authority holds a control character",
    ),
    "stats not an object": (_set("stats", "ws01"), _STATS),
    "stats missing": (_drop("stats"), _STATS),
    "free_memory a string": (
        _set("stats.free_memory", "54545088512"),
        _int("free_memory"),
    ),
    "free_memory empty string": (_set("stats.free_memory", ""), _int("free_memory")),
    "free_memory negative": (_set("stats.free_memory", -1), _int("free_memory")),
    "total_memory a float": (_set("stats.total_memory", 1.5), _int("total_memory")),
    "cores a bool": (_set("stats.cores", True), _int("cores")),
    "cores negative": (_set("stats.cores", -8), _int("cores")),
    "cpu_usage a string": (_set("stats.cpu_usage", "1.16"), _number("cpu_usage")),
    "cpu_usage negative": (_set("stats.cpu_usage", -0.5), _number("cpu_usage")),
    "cpu_usage infinite": (
        _set("stats.cpu_usage", float("inf")),
        _number("cpu_usage"),
    ),
    "cpu_usage not a number": (
        _set("stats.cpu_usage", float("nan")),
        _number("cpu_usage"),
    ),
    "load1 a list": (_set("stats.load1", [0.11]), _number("load1")),
    "load15 a bool": (_set("stats.load15", False), _number("load15")),
    "tags not a list": (_set("tags", "gpu"), _TAGS),
    "65 tags": (_set("tags", [f"t{n}" for n in range(65)]), _TAGS),
    "tag with a newline": (
        _set("tags", ["gpu\nlinux"]),
        "a tag holds a control character",
    ),
    "tag a number": (_set("tags", [1]), _TAG_TEXT),
    "tag too long": (_set("tags", ["t" * 1025]), _TAG_TEXT),
    "version a number": (
        _set("version", 1),
        "version must be a string of at most 1024 characters",
    ),
}


@pytest.mark.parametrize(("change", "message"), INVALID.values(), ids=INVALID.keys())
@pytest.mark.parametrize("known", [False, True], ids=["first", "after-one"])
def test_invalid_input_is_refused_with_its_reason(
    change: Callable[[dict[str, Any]], None], message: str, known: bool
) -> None:
    body = payload()
    change(body)
    previous = parse(payload()) if known else None
    assert refusal(body, previous) == message


@pytest.mark.parametrize("body", [[], "update", None, 42])
def test_a_body_that_is_not_an_object_is_refused(body: Any) -> None:
    assert refusal(body) == "request body must be a JSON object"


def test_a_huge_integer_in_the_stats_is_a_400_not_a_crash() -> None:
    body = {"stats": {"hostname": "ws01", "cpu_usage": 10**400}, "tags": []}
    assert refusal(body) == "stats.cpu_usage is out of range"


def test_the_first_bad_session_field_is_the_one_named() -> None:
    timed = session("dcvix_a", owner="\n", **{"creation-time": "soon"})
    assert refusal(payload(sessions=[timed])) == (
        "session dcvix_a: creation-time is not a timestamp"
    )
    typed = {"id": "dcvix a", "type": "gpu"}
    assert refusal(payload(sessions=[typed])) == "a session id is invalid"


def test_limits_are_inclusive() -> None:
    body = payload(
        sessions=[session(f"dcvix_{n}") for n in range(500)],
        tags=[f"t{n}" for n in range(64)],
    )
    state = parse(body)
    assert len(state.sessions) == 500
    assert len(state.tags) == 64


@pytest.mark.parametrize(
    "session_id",
    ["console", "a.b", "..a", "user@host:1+2=3", "A_b-C", "x" * 256, "dcvix_-1"],
)
def test_session_ids_dcv_accepts_are_kept(session_id: str) -> None:
    assert ids(parse(payload(sessions=[session(session_id)]))) == [session_id]


@pytest.mark.parametrize("empty", ["", None, "0001-01-01T00:00:00Z"])
def test_empty_null_or_zero_timestamps_are_no_time(empty: Any) -> None:
    times = {"creation-time": empty, "last-disconnection-time": empty}
    parsed = parse(payload(sessions=[session("dcvix_a", **times)])).sessions[0]
    assert parsed.creation_time is None
    assert parsed.last_disconnection_time is None


def test_reported_values_are_normalised() -> None:
    body = payload(
        sessions=[
            {
                "id": "console",
                "type": "Console",
                "num-of-connections": -1,
                "creation-time": "2026-07-01T10:00:00.500+02:00",
                "last-disconnection-time": "2026-07-01T09:30:00.123456789Z",
                "owner": None,
                "name": "ignored",
            }
        ],
        stats={"hostname": "ws01", "cores": None, "cpu_usage": 3},
    )
    state = parse(body)
    assert state.sessions == (
        Session(
            id="console",
            owner="",
            user="",
            connections=0,
            creation_time=dt.datetime(2026, 7, 1, 8, 0, 0, 500000, tzinfo=UTC),
            last_disconnection_time=dt.datetime(
                2026, 7, 1, 9, 30, 0, 123456, tzinfo=UTC
            ),
            licensing_mode="",
            storage_root="",
            type="console",
            status="",
            x11_display="",
            x11_authority="",
        ),
    )
    assert state.stats == HostStats(
        free_memory=0,
        total_memory=0,
        cores=0,
        cpu_usage=3.0,
        load1=0.0,
        load5=0.0,
        load15=0.0,
    )
    assert isinstance(state.stats.cpu_usage, float)


def test_duplicate_session_ids_in_one_payload_keep_the_last_in_first_place() -> None:
    body = payload(
        sessions=[
            session("dcvix_a", owner="alice"),
            session("dcvix_b", owner="bob"),
            session("dcvix_a", owner="mallory"),
        ]
    )
    assert [(s.id, s.owner) for s in parse(body).sessions] == [
        ("dcvix_a", "mallory"),
        ("dcvix_b", "bob"),
    ]


@pytest.mark.parametrize(
    ("advertised", "address"),
    [
        ("10.0.0.5:9446", "10.0.0.5"),
        ("10.0.0.5", "10.0.0.5"),
        ("ws01.example.com:9446", "ws01.example.com"),
        ("ws01.example.com", "ws01.example.com"),
        ("[fd00::5]:9446", "fd00::5"),
        ("[fd00::5]", "fd00::5"),
        ("fd00::5", "fd00::5"),
        ("", PEER),
        (None, PEER),
        (42, PEER),
        ("not a host", PEER),
        ("https://10.0.0.5:9446/", PEER),
        ("10.0.0.5:99999", PEER),
        ("10.0.0.5/path", PEER),
        ("fe80::1%x\r\nproxyhost=evil.example", PEER),  # a zone holding lines
        ("[fe80::1%eth0]:8446", "fe80::1%eth0"),
    ],
)
def test_advertise_address_gives_the_host_to_reach(
    advertised: Any, address: str
) -> None:
    assert parse(payload(advertise_address=advertised)).address == address


def test_an_invalid_advertise_address_is_logged(events: EventLoggingObserver) -> None:
    parse(payload(advertise_address="not a host"))
    warned = [
        e["value"] for e in events if "advertise_address" in e.get("log_format", "")
    ]
    assert warned == ["not a host"]


@pytest.mark.parametrize(
    ("port", "expected"),
    [
        (9446, 9446),
        (1, 1),
        (65535, 65535),
        (0, 8446),
        (65536, 8446),
        (-1, 8446),
        ("9446", 8446),
        (True, 8446),
        (9446.0, 8446),
        (None, 8446),
    ],
)
def test_agent_port_taken_when_valid(port: Any, expected: int) -> None:
    assert parse(payload(agent_port=port)).agent_port == expected


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        (10, 10.0),
        (2.5, 2.5),
        (600, 600.0),
        (601, 30.0),  # past the cap: Go's default
        (0, 30.0),
        (-5, 30.0),
        ("30", 30.0),
        (True, 30.0),
        (None, 30.0),
    ],
)
def test_update_interval_taken_when_valid(interval: Any, expected: float) -> None:
    assert parse(payload(update_interval=interval)).update_interval == expected


@pytest.mark.parametrize("interval", [10**400, 86401, 1e300, 0, -5])
def test_an_absurd_update_interval_falls_back_to_30_seconds(interval: object) -> None:
    assert parse(payload(update_interval=interval)).update_interval == 30.0


def test_our_agents_top_level_keys_are_kept() -> None:
    body = payload(
        update_interval=30,
        agent_port=8446,
        advertise_address="203.0.113.9",
        version="0.1.0",
    )
    state = parse(body)
    assert (state.address, state.agent_port, state.version) == (
        "203.0.113.9",
        8446,
        "0.1.0",
    )


def test_parsed_values_are_immutable() -> None:
    state = parse(payload())
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.hostname = "ws02"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.sessions[0].owner = "mallory"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        state.stats.cores = 1  # type: ignore[misc]


# ------------------------------------------------------------------ is_online


@pytest.mark.parametrize(
    ("max_age", "interval", "window"),
    [(90, 30, 90), (90, 10, 90), (90, 60, 180), (90, 45, 135), (200, 30, 200)],
)
def test_online_within_max_of_max_age_and_three_intervals(
    max_age: float, interval: int, window: int
) -> None:
    state = parse(payload(update_interval=interval))
    assert is_online(state, NOW.timestamp(), max_age)
    assert is_online(state, later(window).timestamp(), max_age)
    assert not is_online(state, later(window + 1).timestamp(), max_age)


# ---------------------------------------------------------- MemoryRuntimeStore


@pytest_twisted.ensureDeferred
async def test_a_stored_state_is_found_by_hostname(store: RuntimeStore) -> None:
    assert await store.server("ws01") is None
    assert await store.servers() == []

    state = parse(payload())
    await store.put(state)

    assert await store.server("ws01") is state
    assert await store.server("ws99") is None
    assert await store.servers() == [state]


@pytest_twisted.ensureDeferred
async def test_a_put_replaces_the_servers_state_and_sessions_whole(
    store: RuntimeStore,
) -> None:
    await store.put(parse(payload(sessions=[session("dcvix_a"), session("dcvix_b")])))
    previous = await store.server("ws01")
    await store.put(parse(payload(sessions=[session("dcvix_c")]), later(30), previous))

    assert ids(await store.server("ws01")) == ["dcvix_c"]
    assert [s.last_seen for s in await store.servers()] == [later(30)]


@pytest_twisted.ensureDeferred
async def test_servers_are_listed_in_the_order_first_seen(store: RuntimeStore) -> None:
    await store.put(parse(payload(), guid=GUID2, hostname="ws02"))
    await store.put(parse(payload()))
    await store.put(parse(payload(), now=later(5), guid=GUID2, hostname="ws02"))

    assert [s.hostname for s in await store.servers()] == ["ws02", "ws01"]


@pytest_twisted.ensureDeferred
async def test_the_listing_is_a_copy(store: RuntimeStore) -> None:
    await store.put(parse(payload()))
    (await store.servers()).clear()
    assert len(await store.servers()) == 1


@pytest_twisted.ensureDeferred
async def test_drop_sessions_keeps_the_server_listed(store: RuntimeStore) -> None:
    state = parse(payload())
    await store.put(state)
    await store.drop_sessions("ws01")
    await store.drop_sessions("ws99")

    assert await store.servers() == [dataclasses.replace(state, sessions=())]


@pytest_twisted.ensureDeferred
async def test_offline_servers_lose_their_sessions_but_stay_listed(
    store: RuntimeStore,
) -> None:
    await store.put(parse(payload(sessions=[session("dcvix_a")])))
    await store.put(
        parse(
            payload(sessions=[session("dcvix_b")]),
            now=later(60),
            guid=GUID2,
            hostname="ws02",
        )
    )
    await store.put(parse(payload(sessions=[]), guid=GUID3, hostname="ws03"))

    for state in await store.servers():
        if not is_online(state, later(91).timestamp(), 90):
            await store.drop_sessions(state.hostname)

    assert {s.hostname: ids(s) for s in await store.servers()} == {
        "ws01": [],
        "ws02": ["dcvix_b"],
        "ws03": [],
    }
    ws01 = await store.server("ws01")
    assert ws01 is not None
    assert ws01.stats == GO_STATS  # still listed, as it was


@pytest_twisted.ensureDeferred
async def test_forget_guid_drops_only_that_agents_server(store: RuntimeStore) -> None:
    await store.put(parse(payload()))
    await store.put(parse(payload(), guid=GUID2, hostname="ws02"))

    await store.forget_guid(GUID)
    await store.forget_guid(GUID3)

    assert await store.server("ws01") is None
    assert [s.hostname for s in await store.servers()] == ["ws02"]


@pytest_twisted.ensureDeferred
async def test_two_stores_share_nothing() -> None:
    first, second = MemoryRuntimeStore(), MemoryRuntimeStore()
    await first.put(parse(payload()))
    assert await second.servers() == []


# ------------------------------------------------------------------ JSON shape


def test_server_json_go_keys_first_then_ours() -> None:
    document = server_json(parse(payload(version="0.1.0")), True, "registered")

    assert list(document) == [
        "last-seen",
        "hostname",
        "agent_ip",
        "free_memory",
        "total_memory",
        "cores",
        "cpu_usage",
        "load1",
        "load5",
        "load15",
        "tags",
        "sessions",
        "guid",
        "agent_state",
        "online",
        "agent_port",
        "version",
        "dcv_error",
        "pools",
    ]
    assert document == {
        "last-seen": "2026-07-01T12:00:00Z",
        "hostname": "ws01",
        "agent_ip": PEER,
        "free_memory": 54545088512,
        "total_memory": 66996871168,
        "cores": 8,
        "cpu_usage": 1.16,
        "load1": 0.11,
        "load5": 0.13,
        "load15": 0.15,
        "tags": ["gpu", "linux"],
        "sessions": [
            {
                "uid": f"{SESSION_ID}-ws01",
                "server_id": "ws01",
                "last-seen": "2026-07-01T12:00:00Z",
                **GO_SESSION_JSON,
            }
        ],
        "guid": GUID,
        "agent_state": "registered",
        "online": True,
        "agent_port": 8446,
        "version": "0.1.0",
        "dcv_error": "",
        "pools": [],
    }


def test_server_json_tags_and_sessions_are_always_lists() -> None:
    state = parse(payload(sessions=[], tags=None), now=later(0.25))
    document = server_json(state, False, "revoked")
    assert document["tags"] == []
    assert document["sessions"] == []
    assert document["online"] is False
    assert document["agent_state"] == "revoked"
    assert document["last-seen"] == "2026-07-01T12:00:00.25Z"


def test_an_offline_servers_sessions_are_not_shown() -> None:
    state = parse(payload())
    assert state.sessions
    assert server_json(state, False, "registered")["sessions"] == []


def test_server_json_numbers_encode_as_before() -> None:
    body = payload(stats={"free_memory": 1, "cpu_usage": 3, "load1": 0})
    document = server_json(parse(body), True, "registered")
    encoded = json.dumps(
        {k: document[k] for k in ("free_memory", "cores", "cpu_usage")}
    )
    assert encoded == '{"free_memory": 1, "cores": 0, "cpu_usage": 3.0}'
    assert json.dumps(document["load1"]) == "0.0"


def test_session_json_go_keys_in_order() -> None:
    state = parse(payload())
    document = session_json(state, state.sessions[0])
    assert list(document) == [
        "uid",
        "server_id",
        "last-seen",
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
        "uid": f"{SESSION_ID}-ws01",
        "server_id": "ws01",
        "last-seen": "2026-07-01T12:00:00Z",
        **GO_SESSION_JSON,
    }


@pytest.mark.parametrize(
    ("reported", "shown"),
    [
        ("2026-07-01T10:00:00.500+02:00", "2026-07-01T08:00:00.5Z"),
        ("2026-07-01T08:00:00.000000Z", "2026-07-01T08:00:00Z"),
        ("2026-07-01T08:00:00.262880Z", "2026-07-01T08:00:00.26288Z"),
        ("2026-07-01T08:00:00.123456789Z", "2026-07-01T08:00:00.123456Z"),
        ("0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
        ("", "0001-01-01T00:00:00Z"),
        (None, "0001-01-01T00:00:00Z"),
    ],
)
def test_session_times_are_shown_as_go_writes_them(
    reported: str | None, shown: str
) -> None:
    times = {"creation-time": reported, "last-disconnection-time": reported}
    state = parse(payload(sessions=[session("dcvix_a", **times)]))
    document = session_json(state, state.sessions[0])
    assert document["creation-time"] == shown
    assert document["last-disconnection-time"] == shown
