"""The director's picture of the fleet, built from agents' updates."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher

from dcvix.common.errors import BadRequest
from dcvix.director.runtime import Runtime, ServerState, server_json, session_json

UTC = dt.UTC
NOW = dt.datetime(2026, 7, 1, 12, 0, 0, tzinfo=UTC)
GUID = "5b0c7e1c-3f5e-4d2a-9d6b-1f2e3a4b5c6d"
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

GO_SESSION_STORED = {
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


@pytest.fixture
def runtime() -> Runtime:
    return Runtime(max_age=90, default_agent_port=8446)


@pytest.fixture
def events() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


# --------------------------------------------------------------------- record


def test_a_go_agent_update_is_stored_as_is(runtime: Runtime) -> None:
    state = runtime.record(GUID, "ws01", payload(), PEER, NOW)

    assert runtime.server("ws01") is state
    assert runtime.servers() == [state]
    assert state.guid == GUID
    assert state.hostname == "ws01"
    assert state.address == PEER
    assert state.agent_port == 8446
    assert state.update_interval == 30.0
    assert state.last_seen == NOW
    assert state.stats == {
        "hostname": "ws01",
        "free_memory": 54545088512,
        "total_memory": 66996871168,
        "cores": 8,
        "cpu_usage": 1.16,
        "load1": 0.11,
        "load5": 0.13,
        "load15": 0.15,
    }
    assert state.tags == ("gpu", "linux")
    assert state.sessions == (GO_SESSION_STORED,)
    assert list(state.sessions[0]) == list(GO_SESSION_STORED)
    assert state.version == ""
    assert state.dcv_error == ""


def test_the_registered_hostname_wins_over_stats_hostname(
    runtime: Runtime, events: EventLoggingObserver
) -> None:
    body = payload()
    body["stats"]["hostname"] = "ws99"
    state = runtime.record(GUID, "ws01", body, PEER, NOW)

    assert runtime.server("ws99") is None
    assert runtime.server("ws01") is state
    assert state.stats["hostname"] == "ws01"
    warned = [
        (e["guid"], e["reported"], e["hostname"], e["log_level"])
        for e in events
        if "reported hostname" in e.get("log_format", "")
    ]
    assert warned == [(GUID, "ws99", "ws01", LogLevel.warn)]


def test_a_matching_stats_hostname_is_not_logged(
    runtime: Runtime, events: EventLoggingObserver
) -> None:
    runtime.record(GUID, "ws01", payload(), PEER, NOW)
    assert [e for e in events if "reported hostname" in e.get("log_format", "")] == []


def test_sessions_are_replaced_wholesale_by_each_update(runtime: Runtime) -> None:
    runtime.record(
        GUID,
        "ws01",
        payload(sessions=[session("dcvix_a"), session("dcvix_b")]),
        PEER,
        NOW,
    )
    state = runtime.record(
        GUID, "ws01", payload(sessions=[session("dcvix_c")]), PEER, NOW
    )
    assert [s["id"] for s in state.sessions] == ["dcvix_c"]

    state = runtime.record(GUID, "ws01", payload(sessions=[]), PEER, NOW)
    assert state.sessions == ()


def test_an_update_without_sessions_keeps_the_previous_ones(runtime: Runtime) -> None:
    runtime.record(GUID, "ws01", payload(sessions=[session("dcvix_a")]), PEER, NOW)
    body = payload(dcv_error="dcv list-sessions took over 20 s")
    del body["sessions"]
    state = runtime.record(GUID, "ws01", body, PEER, later(30))

    assert [s["id"] for s in state.sessions] == ["dcvix_a"]
    assert state.dcv_error == "dcv list-sessions took over 20 s"
    assert state.last_seen == later(30)


def test_a_first_update_without_sessions_has_none(runtime: Runtime) -> None:
    body = payload()
    del body["sessions"]
    assert runtime.record(GUID, "ws01", body, PEER, NOW).sessions == ()


def test_dcv_error_with_control_characters_is_kept_readable(runtime: Runtime) -> None:
    body = payload(dcv_error="dcv list-sessions failed (exit 1): \x1b[31mno\tgood\n")
    state = runtime.record(GUID, "ws01", body, PEER, NOW)
    assert state.dcv_error == "dcv list-sessions failed (exit 1):  [31mno good "


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


INVALID: dict[str, Callable[[dict[str, Any]], None]] = {
    "sessions not a list": _set("sessions", "dcvix_a"),
    "sessions an object": _set("sessions", {"id": "dcvix_a"}),
    "501 sessions": _set("sessions", [session(f"dcvix_{n}") for n in range(501)]),
    "session not an object": _set("sessions", ["dcvix_a"]),
    "session id with a space": _set("sessions.0.id", "dcvix a"),
    "session id with a leading dash": _set("sessions.0.id", "-rf"),
    "session id empty": _set("sessions.0.id", ""),
    "session id a number": _set("sessions.0.id", 7),
    "session id with a slash": _set("sessions.0.id", "a/b"),
    "session id too long": _set("sessions.0.id", "x" * 257),
    "bad type": _set("sessions.0.type", "gpu"),
    "type a number": _set("sessions.0.type", 1),
    "connections a string": _set("sessions.0.num-of-connections", "1"),
    "connections a float": _set("sessions.0.num-of-connections", 1.5),
    "connections a bool": _set("sessions.0.num-of-connections", True),
    "bad creation-time": _set("sessions.0.creation-time", "yesterday"),
    "month 13": _set("sessions.0.last-disconnection-time", "2026-13-01T00:00:00Z"),
    "time a number": _set("sessions.0.creation-time", 1751357564),
    "time past year 9999": _set(
        "sessions.0.creation-time", "9999-12-31T23:59:59-01:00"
    ),
    "owner with a newline": _set("sessions.0.owner", "alice\n"),
    "owner too long": _set("sessions.0.owner", "a" * 1025),
    "owner a list": _set("sessions.0.owner", ["alice"]),
    "stats not an object": _set("stats", "ws01"),
    "stats missing": _drop("stats"),
    "free_memory a string": _set("stats.free_memory", "54545088512"),
    "free_memory empty string": _set("stats.free_memory", ""),
    "free_memory negative": _set("stats.free_memory", -1),
    "total_memory a float": _set("stats.total_memory", 1.5),
    "cores a bool": _set("stats.cores", True),
    "cores negative": _set("stats.cores", -8),
    "cpu_usage a string": _set("stats.cpu_usage", "1.16"),
    "cpu_usage negative": _set("stats.cpu_usage", -0.5),
    "cpu_usage infinite": _set("stats.cpu_usage", float("inf")),
    "cpu_usage not a number": _set("stats.cpu_usage", float("nan")),
    "load1 a list": _set("stats.load1", [0.11]),
    "load15 a bool": _set("stats.load15", False),
    "tags not a list": _set("tags", "gpu"),
    "65 tags": _set("tags", [f"t{n}" for n in range(65)]),
    "tag with a newline": _set("tags", ["gpu\nlinux"]),
    "tag a number": _set("tags", [1]),
    "tag too long": _set("tags", ["t" * 1025]),
    "version a number": _set("version", 1),
}


@pytest.mark.parametrize("change", INVALID.values(), ids=INVALID.keys())
def test_invalid_input_is_refused_and_nothing_changes(
    runtime: Runtime, change: Callable[[dict[str, Any]], None]
) -> None:
    before = runtime.record(GUID, "ws01", payload(), PEER, NOW)
    body = payload()
    change(body)

    with pytest.raises(BadRequest):
        runtime.record(GUID, "ws01", body, "198.51.100.7", later(30))

    assert runtime.server("ws01") is before
    assert runtime.servers() == [before]


@pytest.mark.parametrize("change", INVALID.values(), ids=INVALID.keys())
def test_invalid_first_update_stores_nothing(
    runtime: Runtime, change: Callable[[dict[str, Any]], None]
) -> None:
    body = payload()
    change(body)
    with pytest.raises(BadRequest):
        runtime.record(GUID, "ws01", body, PEER, NOW)
    assert runtime.servers() == []


@pytest.mark.parametrize("body", [[], "update", None, 42])
def test_a_body_that_is_not_an_object_is_refused(runtime: Runtime, body: Any) -> None:
    with pytest.raises(BadRequest, match="request body must be a JSON object"):
        runtime.record(GUID, "ws01", body, PEER, NOW)
    assert runtime.servers() == []


def test_limits_are_inclusive(runtime: Runtime) -> None:
    body = payload(
        sessions=[session(f"dcvix_{n}") for n in range(500)],
        tags=[f"t{n}" for n in range(64)],
    )
    state = runtime.record(GUID, "ws01", body, PEER, NOW)
    assert len(state.sessions) == 500
    assert len(state.tags) == 64


@pytest.mark.parametrize("empty", ["", None])
def test_empty_or_null_timestamps_are_no_time(runtime: Runtime, empty: Any) -> None:
    body = payload(
        sessions=[
            session(
                "dcvix_a", **{"creation-time": empty, "last-disconnection-time": empty}
            )
        ]
    )
    stored = runtime.record(GUID, "ws01", body, PEER, NOW).sessions[0]
    assert stored["creation-time"] == "0001-01-01T00:00:00Z"
    assert stored["last-disconnection-time"] == "0001-01-01T00:00:00Z"


def test_reported_values_are_normalised(runtime: Runtime) -> None:
    body = payload(
        sessions=[
            {
                "id": "console",
                "type": "Console",
                "num-of-connections": -1,
                "creation-time": "2026-07-01T10:00:00.500+02:00",
                "owner": None,
                "name": "ignored",
            }
        ],
        stats={"hostname": "ws01", "cores": None, "cpu_usage": 3},
    )
    state = runtime.record(GUID, "ws01", body, PEER, NOW)
    assert state.sessions == (
        {
            "id": "console",
            "owner": "",
            "user": "",
            "num-of-connections": 0,
            "creation-time": "2026-07-01T08:00:00.5Z",
            "last-disconnection-time": "0001-01-01T00:00:00Z",
            "licensing-mode": "",
            "storage-root": "",
            "type": "console",
            "status": "",
            "x11-display": "",
            "x11-authority": "",
        },
    )
    assert state.stats == {
        "hostname": "ws01",
        "free_memory": 0,
        "total_memory": 0,
        "cores": 0,
        "cpu_usage": 3.0,
        "load1": 0.0,
        "load5": 0.0,
        "load15": 0.0,
    }
    assert isinstance(state.stats["cpu_usage"], float)


def test_duplicate_session_ids_in_one_payload_keep_one(runtime: Runtime) -> None:
    body = payload(
        sessions=[
            session("dcvix_a", owner="alice"),
            session("dcvix_b", owner="bob"),
            session("dcvix_a", owner="mallory"),
        ]
    )
    state = runtime.record(GUID, "ws01", body, PEER, NOW)
    assert [(s["id"], s["owner"]) for s in state.sessions] == [
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
    ],
)
def test_advertise_address_gives_the_host_to_reach(
    runtime: Runtime, advertised: Any, address: str
) -> None:
    state = runtime.record(
        GUID, "ws01", payload(advertise_address=advertised), PEER, NOW
    )
    assert state.address == address


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
def test_agent_port_taken_when_valid(
    runtime: Runtime, port: Any, expected: int
) -> None:
    state = runtime.record(GUID, "ws01", payload(agent_port=port), PEER, NOW)
    assert state.agent_port == expected


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        (10, 10.0),
        (2.5, 2.5),
        (0, 30.0),
        (-5, 30.0),
        ("30", 30.0),
        (True, 30.0),
        (None, 30.0),
    ],
)
def test_update_interval_taken_when_valid(
    runtime: Runtime, interval: Any, expected: float
) -> None:
    state = runtime.record(GUID, "ws01", payload(update_interval=interval), PEER, NOW)
    assert state.update_interval == expected


def test_our_agents_top_level_keys_are_kept(runtime: Runtime) -> None:
    body = payload(
        update_interval=30,
        agent_port=8446,
        advertise_address="203.0.113.9",
        version="0.1.0",
    )
    state = runtime.record(GUID, "ws01", body, PEER, NOW)
    assert (state.address, state.agent_port, state.version) == (
        "203.0.113.9",
        8446,
        "0.1.0",
    )


# ----------------------------------------------------------- online / expire


@pytest.mark.parametrize(
    ("interval", "window"),
    [(30, 90), (10, 90), (60, 180), (45, 135)],
)
def test_online_within_max_of_max_age_and_three_intervals(
    runtime: Runtime, interval: int, window: int
) -> None:
    state = runtime.record(GUID, "ws01", payload(update_interval=interval), PEER, NOW)
    assert runtime.online(state, NOW)
    assert runtime.online(state, later(window))
    assert not runtime.online(state, later(window + 1))


def test_expire_drops_the_sessions_of_offline_servers_only(runtime: Runtime) -> None:
    runtime.record(GUID, "ws01", payload(sessions=[session("dcvix_a")]), PEER, NOW)
    runtime.record(
        "6c1f2d7e-0a4b-4c8e-9f31-2b7d5e9a1c44",
        "ws02",
        payload(sessions=[session("dcvix_b")]),
        "192.0.2.11",
        later(60),
    )
    runtime.record(
        "7d2e3f8a-1b5c-4d9e-8a42-3c8e6f0b2d55",
        "ws03",
        payload(sessions=[]),
        "192.0.2.12",
        NOW,
    )

    assert runtime.expire(later(90)) == []
    assert runtime.expire(later(91)) == ["ws01"]

    ws01, ws02, ws03 = (runtime.server(h) for h in ("ws01", "ws02", "ws03"))
    assert ws01 is not None
    assert ws02 is not None
    assert ws03 is not None
    assert ws01.sessions == ()
    assert ws01.stats["free_memory"] == 54545088512  # still listed, as it was
    assert [s["id"] for s in ws02.sessions] == ["dcvix_b"]
    assert {s.hostname for s in runtime.servers()} == {"ws01", "ws02", "ws03"}
    assert runtime.expire(later(91)) == []


def test_forget_drops_a_server(runtime: Runtime) -> None:
    runtime.record(GUID, "ws01", payload(), PEER, NOW)
    runtime.forget("ws01")
    assert runtime.server("ws01") is None
    assert runtime.servers() == []


# ------------------------------------------------------------------ JSON shape


def test_server_json_go_keys_first_then_ours(runtime: Runtime) -> None:
    state = runtime.record(GUID, "ws01", payload(version="0.1.0"), PEER, NOW)
    document = server_json(state, True, "registered")

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
                **GO_SESSION_STORED,
            }
        ],
        "guid": GUID,
        "agent_state": "registered",
        "online": True,
        "agent_port": 8446,
        "version": "0.1.0",
        "dcv_error": "",
    }


def test_server_json_tags_and_sessions_are_always_lists(runtime: Runtime) -> None:
    body = payload(sessions=[], tags=None)
    state = runtime.record(GUID, "ws01", body, PEER, later(0.25))
    document = server_json(state, False, "revoked")
    assert document["tags"] == []
    assert document["sessions"] == []
    assert document["online"] is False
    assert document["agent_state"] == "revoked"
    assert document["last-seen"] == "2026-07-01T12:00:00.25Z"


def test_session_json_go_keys_in_order(runtime: Runtime) -> None:
    state = runtime.record(GUID, "ws01", payload(), PEER, NOW)
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
    assert document["uid"] == f"{SESSION_ID}-ws01"
    assert document["server_id"] == "ws01"


def test_server_state_is_immutable(runtime: Runtime) -> None:
    state = runtime.record(GUID, "ws01", payload(), PEER, NOW)
    assert isinstance(state, ServerState)
    with pytest.raises(AttributeError):
        state.hostname = "ws02"  # type: ignore[misc]
