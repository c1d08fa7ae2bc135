"""Properties of the agent update parser (hypothesis).

Whatever JSON an agent sends to ``/v1/agent/update``, :func:`parse_report`
gives a :class:`ServerState` or a :class:`BadRequest`, never another
exception; the per-agent :class:`SessionsMemo` answers exactly what parsing
afresh answers, refusals included, whatever the agent sent before; and a
valid report comes back field for field.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from dcvix.common.errors import BadRequest
from dcvix.common.gotime import format_time
from dcvix.director.runtime import (
    MAX_TEXT,
    HostStats,
    ServerState,
    Session,
    SessionsMemo,
    parse_report,
    parse_sessions,
)

GUID = "5b0c7e1c-3f5e-4d2a-9d6b-1f2e3a4b5c6d"
NOW = dt.datetime(2026, 7, 1, 12, 0, 0, tzinfo=dt.UTC)
PEER = "192.0.2.10"
AGENT_PORT = 8446

REPORT_KEYS = [
    "sessions",
    "stats",
    "tags",
    "update_interval",
    "agent_port",
    "advertise_address",
    "version",
    "dcv_error",
]
SESSION_KEYS = [
    "id",
    "owner",
    "user",
    "type",
    "num-of-connections",
    "creation-time",
    "last-disconnection-time",
    "licensing-mode",
    "storage-root",
    "status",
    "x11-display",
    "x11-authority",
]
STATS_KEYS = [
    "hostname",
    "free_memory",
    "total_memory",
    "cores",
    "cpu_usage",
    "load1",
    "load5",
    "load15",
]

# Values that look alike to Python's == (1, 1.0 and True are equal) or to a
# careless parser, beside plausible ones.
TRICKY = st.sampled_from(
    [
        None,
        True,
        False,
        0,
        1,
        -1,
        0.0,
        -0.0,
        1.0,
        2**70,
        1e308,
        "",
        "1",
        "console",
        "VIRTUAL",
        "dcvix_1",
        "-x",
        "a\x00b",
        "\ud800",
        "2026-07-01T08:12:44.101203Z",
        "0001-01-01T00:00:00Z",
        "2026-13-01T00:00:00Z",
        "ws1:8446",
        "[::1]:1",
        "x" * (MAX_TEXT + 1),
    ]
)
SCALARS = (
    TRICKY
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=12)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(REPORT_KEYS + SESSION_KEYS + STATS_KEYS)
            | st.text(max_size=6),
            inner,
            max_size=5,
        )
    ),
    max_leaves=20,
)
SESSION_ENTRIES = st.dictionaries(st.sampled_from(SESSION_KEYS), SCALARS, max_size=12)
REPORTS = st.fixed_dictionaries(
    {},
    optional={
        "sessions": st.lists(SESSION_ENTRIES, max_size=4) | JSON_VALUES,
        "stats": st.dictionaries(st.sampled_from(STATS_KEYS), SCALARS, max_size=8)
        | JSON_VALUES,
        "tags": st.lists(SCALARS, max_size=4) | JSON_VALUES,
        "update_interval": SCALARS,
        "agent_port": SCALARS,
        "advertise_address": SCALARS,
        "version": SCALARS,
        "dcv_error": JSON_VALUES,
    },
)


def parse(payload: Any, memo: SessionsMemo | None = None) -> ServerState:
    return parse_report(GUID, "ws01", payload, PEER, NOW, AGENT_PORT, None, memo)


@settings(max_examples=120)
@given(payload=REPORTS | JSON_VALUES)
def test_any_json_is_a_server_state_or_a_bad_request(payload: Any) -> None:
    try:
        state = parse(payload)
    except BadRequest as error:
        assert error.status == 400
        assert error.message
        return
    assert isinstance(state, ServerState)
    assert state.hostname == "ws01"
    assert 0 < state.agent_port < 65536
    assert len(state.sessions) == len({s.id for s in state.sessions})
    # What was kept can be shown: it encodes as JSON.
    json.dumps([s.id for s in state.sessions] + list(state.tags))


def outcome(parser: Any, raw: Any) -> tuple[str, Any]:
    """What parsing ``raw`` gives: ("ok", sessions) or ("refused", message)."""
    try:
        return "ok", parser(raw)
    except BadRequest as error:
        return "refused", error.message


def session_with_count(count: Any) -> dict[str, Any]:
    return {"id": "s1", "type": "virtual", "num-of-connections": count}


# A small pool, so that an agent often sends a list equal (to Python) to one
# it sent before: 1, 1.0 and True are all == for num-of-connections.
POOLED_ENTRIES = st.fixed_dictionaries(
    {
        "id": st.sampled_from(["s1", "s2", "-bad"]),
        "type": st.sampled_from(["virtual", "console", 1]),
    },
    optional={
        "num-of-connections": st.sampled_from([0, 1, 1.0, True, False, -0.0, None]),
        "owner": st.sampled_from(["alice", "", None, 1, True]),
        "creation-time": st.sampled_from(["", None, 0, False, "2026-07-01T08:12:44Z"]),
    },
)
SESSION_LISTS: st.SearchStrategy[Any] = st.lists(
    POOLED_ENTRIES, max_size=2
) | st.sampled_from([None, [], {}, 0, False, "", [None]])


@settings(max_examples=150)
@given(sent=st.lists(SESSION_LISTS, min_size=1, max_size=6))
# Regressions: the memo took True after 1 (and -0.0 after 0), which parsing
# refuses, because the two lists are == to Python; and None (no sessions).
@example(sent=[[session_with_count(1)], [session_with_count(True)]])
@example(sent=[[session_with_count(0)], [session_with_count(-0.0)]])
@example(sent=[[session_with_count(2)], [session_with_count(2.0)]])
@example(sent=[None, None, [session_with_count(False)]])
def test_the_memo_answers_what_parsing_afresh_answers(sent: list[Any]) -> None:
    memo = SessionsMemo()
    for raw in sent:
        assert outcome(lambda r: memo.parse(GUID, r), raw) == outcome(
            parse_sessions, raw
        )


# ------------------------------------------------------------- valid reports

SESSION_IDS = st.from_regex(
    r"[A-Za-z0-9_.@:+=][A-Za-z0-9_.@:+=-]{0,40}", fullmatch=True
)
PRINTABLE = st.text(
    st.characters(blacklist_categories=["Cs"], min_codepoint=32).filter(
        lambda c: c != "\x7f"
    ),
    max_size=20,
)
MOMENTS = st.none() | st.datetimes(
    min_value=dt.datetime(1970, 1, 1),
    max_value=dt.datetime(9000, 1, 1),
    timezones=st.just(dt.UTC),
)
COUNTS = st.integers(min_value=0, max_value=2**62)
AMOUNTS = st.floats(min_value=0, max_value=1e12, allow_nan=False)


@st.composite
def sessions(draw: st.DrawFn) -> Session:
    return Session(
        id=draw(SESSION_IDS.filter(lambda s: s.strip("."))),
        owner=draw(PRINTABLE),
        user=draw(PRINTABLE),
        connections=draw(st.integers(min_value=0, max_value=10**6)),
        creation_time=draw(MOMENTS),
        last_disconnection_time=draw(MOMENTS),
        licensing_mode=draw(PRINTABLE),
        storage_root=draw(PRINTABLE),
        type=draw(st.sampled_from(["console", "virtual", ""])),
        status=draw(PRINTABLE),
        x11_display=draw(PRINTABLE),
        x11_authority=draw(PRINTABLE),
    )


def session_payload(session: Session, shout: bool) -> dict[str, Any]:
    """As an agent writes it (Go's keys; types in any case; Go's zero time)."""
    return {
        "id": session.id,
        "owner": session.owner,
        "user": session.user,
        "num-of-connections": session.connections,
        "creation-time": format_time(session.creation_time),
        "last-disconnection-time": format_time(session.last_disconnection_time),
        "licensing-mode": session.licensing_mode,
        "storage-root": session.storage_root,
        "type": session.type.upper() if shout else session.type,
        "status": session.status,
        "x11-display": session.x11_display,
        "x11-authority": session.x11_authority,
    }


@settings(max_examples=30)
@given(
    reported=st.lists(sessions(), max_size=4, unique_by=lambda s: s.id),
    stats=st.builds(
        HostStats, COUNTS, COUNTS, COUNTS, AMOUNTS, AMOUNTS, AMOUNTS, AMOUNTS
    ),
    tags=st.lists(PRINTABLE, max_size=5),
    interval=st.floats(min_value=0.001, max_value=600),
    port=st.integers(min_value=1, max_value=65535),
    version=PRINTABLE,
    shout=st.booleans(),
    through_json=st.booleans(),
)
def test_a_valid_report_comes_back_field_for_field(
    reported: list[Session],
    stats: HostStats,
    tags: list[str],
    interval: float,
    port: int,
    version: str,
    shout: bool,
    through_json: bool,
) -> None:
    payload: dict[str, Any] = {
        "sessions": [session_payload(s, shout) for s in reported],
        "stats": {"hostname": "ws01", **vars(stats)},
        "tags": tags,
        "update_interval": interval,
        "agent_port": port,
        "version": version,
    }
    if through_json:
        payload = json.loads(json.dumps(payload))
    expected = ServerState(
        guid=GUID,
        hostname="ws01",
        address=PEER,
        agent_port=port,
        update_interval=interval,
        last_seen=NOW,
        stats=stats,
        tags=tuple(tags),
        sessions=tuple(reported),
        version=version,
    )
    assert parse(payload) == expected
    memo = SessionsMemo()
    assert parse(payload, memo) == expected
    assert parse(payload, memo) == expected
