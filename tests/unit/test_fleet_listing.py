"""The whole-fleet listings' shortcuts: none may change an answer, only its cost.

bench/scale.py found ``GET /v1/servers`` and ``/v1/sessions`` taking seconds at
10,000 servers: every registry record read and every dict rendered per request.

- ``FleetRenderer`` joins the answers from per-report JSON pieces; whatever the
  servers hold, the bytes must be those of ``json.dumps`` over
  :func:`server_json` / :func:`session_json`, as the routes answered before.
- ``SqliteRegistry.states`` keeps the agents' states in memory until anything
  is committed to ``agents.db`` (by the director or ``dcvixctl``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred

from dcvix.ctl import wait as resolve
from dcvix.director.api.render import (
    FleetRenderer,
    server_json,
    session_json,
)
from dcvix.director.registry import sql as engine
from dcvix.director.registry.engine import inline_runner
from dcvix.director.registry.sqlite import SqliteRegistry
from dcvix.director.runtime import HostStats, ServerState, Session

NOW = dt.datetime(2026, 12, 7, 12, 0, 0, 123400, tzinfo=dt.UTC)
A = "11111111-1111-4111-8111-111111111111"
B = "22222222-2222-4222-8222-222222222222"
R = TypeVar("R")
TEXT = st.text(max_size=12)


def session(number: int, owner: str = "alice", **changes: object) -> Session:
    made = Session(
        id=f"s{number}",
        owner=owner,
        user=owner,
        connections=number % 3,
        creation_time=NOW - dt.timedelta(hours=number),
        last_disconnection_time=None if number % 2 else NOW,
        licensing_mode="DEMO",
        storage_root="",
        type="virtual",
        status="running",
        x11_display=f":{number}",
        x11_authority="/run/user/1000/dcv/x.xauth",
    )
    return dataclasses.replace(made, **changes)  # type: ignore[arg-type]


def server(
    hostname: str, sessions: Sequence[Session] = (), **changes: object
) -> ServerState:
    made = ServerState(
        guid=f"guid-{hostname}",
        hostname=hostname,
        address="192.0.2.10",
        agent_port=8445,
        update_interval=30.0,
        last_seen=NOW,
        stats=HostStats(1, 2, 8, 12.5, 0.42, 0.37, 1e-7),
        tags=("bench", "os=linux"),
        sessions=tuple(sessions),
        version="0.1.0",
    )
    return dataclasses.replace(made, **changes)  # type: ignore[arg-type]


Row = tuple[ServerState, bool, str, Sequence[str]]


def listed_servers(renderer: FleetRenderer, rows: Sequence[Row]) -> bytes:
    return b"".join(renderer.servers(rows))


def listed_sessions(renderer: FleetRenderer, states: Sequence[ServerState]) -> bytes:
    return b"".join(renderer.sessions(states))


def expected_servers(rows: Sequence[Row]) -> bytes:
    return json.dumps([server_json(*row) for row in rows]).encode()


def expected_sessions(states: Sequence[ServerState]) -> bytes:
    found = [session_json(state, s) for state in states for s in state.sessions]
    found.sort(key=lambda s: (s["user"], s["uid"]))
    return json.dumps(found).encode()


def test_servers_are_the_dicts_bytes() -> None:
    rows: list[Row] = [
        (server("ws-b", [session(1), session(2, "bob")]), True, "registered", ()),
        (server("ws-a", [session(3)]), False, "revoked", ("lab", "gpu")),
        (server("ws-c", tags=(), dcv_error='dcv "list" failed\\'), True, "x", ()),
        (server("wś-ü", [session(4, "zoë", storage_root="/home/zoë")]), True, "y", ()),
    ]
    assert listed_servers(FleetRenderer(), rows) == expected_servers(rows)
    assert listed_servers(FleetRenderer(), []) == b"[]" == json.dumps([]).encode()


def test_a_change_of_flag_state_or_pools_shows_at_once() -> None:
    renderer = FleetRenderer()
    state = server("ws-a", [session(1), session(2)])
    for row in [
        (state, True, "registered", ()),
        (state, False, "registered", ()),
        (state, False, "revoked", ()),
        (state, True, "registered", ("lab",)),
        (state, True, "registered", ()),
    ]:
        assert listed_servers(renderer, [row]) == expected_servers([row])


def test_a_new_report_replaces_the_kept_pieces() -> None:
    renderer = FleetRenderer()
    first = server("ws-a", [session(1)])
    listed_servers(renderer, [(first, True, "registered", ())])
    later = dataclasses.replace(
        first, last_seen=NOW + dt.timedelta(seconds=30), sessions=(session(2),)
    )
    row: Row = (later, True, "registered", ())
    assert listed_servers(renderer, [row]) == expected_servers([row])
    assert listed_sessions(renderer, [later]) == expected_sessions([later])


def test_a_report_with_the_same_sessions_shows_its_own_last_seen() -> None:
    """The sessions' pieces outlive the report; the server's ``last-seen`` not."""
    renderer = FleetRenderer()
    first = server("ws-a", [session(1), session(2, "bob")])
    listed_servers(renderer, [(first, True, "registered", ())])
    later = dataclasses.replace(
        first,
        last_seen=NOW + dt.timedelta(seconds=30),
        stats=HostStats(9, 9, 9, 99.0, 9.0, 9.0, 9.0),
    )
    assert later.sessions is first.sessions
    row: Row = (later, True, "registered", ())
    assert listed_servers(renderer, [row]) == expected_servers([row])
    assert listed_sessions(renderer, [later]) == expected_sessions([later])


def test_sessions_sort_by_user_then_uid_as_before() -> None:
    states = [
        server("b", [session(2, "zed"), session(1, "amy")]),
        server("a", [session(1, "amy"), session(3, "bob")]),
        # "a-b" on "c" and "a" on "b-c" share the uid "a-b-c": order kept.
        server("c", [session(0, id="a-b")]),
        server("b-c", [session(0, id="a")]),
        server("empty"),
    ]
    renderer = FleetRenderer()
    assert listed_sessions(renderer, states) == expected_sessions(states)
    assert listed_sessions(renderer, []) == b"[]"


def test_servers_no_longer_listed_are_forgotten() -> None:
    renderer = FleetRenderer()
    kept, gone = server("kept"), server("gone")
    listed_servers(
        renderer, [(kept, True, "registered", ()), (gone, True, "registered", ())]
    )
    renderer.keep_only([kept])
    assert set(renderer._cache) == {"kept"}


def test_new_reports_are_rendered_ahead_of_the_next_listing() -> None:
    renderer = FleetRenderer()
    first = [server(f"ws-{n}", [session(n)]) for n in range(5)]
    assert renderer.warm(first) == 5
    later = [
        dataclasses.replace(s, last_seen=NOW + dt.timedelta(seconds=30)) for s in first
    ]
    assert renderer.warm(later, limit=3) == 3
    assert renderer.warm(later, limit=3) == 2
    assert renderer.warm(later) == 0  # all done: nothing twice
    kept = {h: e.state for h, e in renderer._cache.items()}
    assert list(kept.values()) == later
    # What was rendered ahead is what a listing answers.
    rows: list[Row] = [(s, True, "registered", ()) for s in later]
    assert listed_servers(renderer, rows) == expected_servers(rows)
    assert listed_sessions(renderer, later) == expected_sessions(later)


def test_the_last_keys_a_listing_will_likely_show_are_rendered_ahead() -> None:
    renderer = FleetRenderer()
    states = [server(f"ws-{n}", [session(n)]) for n in range(3)]
    likely = (True, "registered", ("pool-a",))
    assert renderer.warm(states, lambda _state: likely) == 3
    ready = {h: (e.tail_key, e.tail) for h, e in renderer._cache.items()}
    assert {key for key, _tail in ready.values()} == {likely}
    # A listing showing them so reuses them, and answers as the dicts would;
    # one shown otherwise (gone offline) gets its own.
    rows: list[Row] = [(s, *likely) for s in states]
    rows[2] = (states[2], False, "registered", ("pool-a",))
    assert listed_servers(renderer, rows) == expected_servers(rows)
    assert renderer._cache["ws-0"].tail is ready["ws-0"][1]
    assert renderer._cache["ws-2"].tail_key == (False, "registered", ("pool-a",))


SESSIONS = st.builds(
    session,
    st.integers(0, 5),
    TEXT,
    status=TEXT,
    x11_authority=TEXT,
    connections=st.integers(0, 2**40),
)


@given(
    st.lists(
        st.tuples(
            st.builds(
                server,
                TEXT,
                st.lists(SESSIONS, max_size=3),
                tags=st.lists(TEXT, max_size=3).map(tuple),
                dcv_error=TEXT,
                stats=st.builds(
                    HostStats,
                    st.integers(0, 2**63),
                    st.integers(0, 2**63),
                    st.integers(0, 512),
                    st.floats(0, 1e300),
                    st.floats(0, 1e9),
                    st.floats(0, 1e9),
                    st.floats(0, 1e9),
                ),
            ),
            st.booleans(),
            TEXT,
            st.lists(TEXT, max_size=2),
        ),
        max_size=4,
    )
)
def test_any_fleet_renders_as_the_dicts(rows: list[Row]) -> None:
    renderer = FleetRenderer()
    assert listed_servers(renderer, rows) == expected_servers(rows)
    assert listed_servers(renderer, rows) == expected_servers(rows)  # from the pieces
    states = [row[0] for row in rows]
    assert listed_sessions(renderer, states) == expected_sessions(states)


# ------------------------------------------------------------ registry states


def states(store: SqliteRegistry) -> dict[str, str]:
    found: Mapping[str, str] = resolve(store.states())
    return dict(found)


def test_states_are_read_once_while_nothing_changes(tmp_path: Path) -> None:
    store = SqliteRegistry(tmp_path / "agents.db", inline_runner)
    try:
        assert states(store) == {}
        assert resolve(store.create_registered(A, "ws1", "ab" * 32, "", NOW, "t"))
        assert resolve(store.create_pending(B, "ws2", "cd" * 32, "", NOW))
        first = resolve(store.states())
        assert dict(first) == {A: "registered", B: "pending"}
        assert resolve(store.states()) is first  # from memory
        resolve(store.revoke(A, "admin:alice", NOW))  # its own write
        assert states(store) == {A: "revoked", B: "pending"}
    finally:
        store.close()


def test_states_see_another_writers_commit_at_once(tmp_path: Path) -> None:
    """What ``dcvixctl`` or any SQLite client does: another connection writes."""
    store = SqliteRegistry(tmp_path / "agents.db", inline_runner)
    try:
        assert resolve(store.create_registered(A, "ws1", "ab" * 32, "", NOW, "t"))
        assert states(store) == {A: "registered"}
        with sqlite3.connect(tmp_path / "agents.db") as raw:
            raw.execute("UPDATE agents SET state = 'revoked' WHERE guid = ?", (A,))
        assert states(store) == {A: "revoked"}
    finally:
        store.close()


def test_states_do_not_keep_what_a_concurrent_commit_made_stale(
    tmp_path: Path,
) -> None:
    """A commit landing while the states are read: they are not kept."""
    racing = [True]

    def runner(call: Callable[..., R], function: Any, *args: Any) -> Deferred[R]:
        done = inline_runner(call, function, *args)
        if function is engine.states_txn and racing and racing.pop():
            with sqlite3.connect(tmp_path / "agents.db") as raw:  # after the read
                raw.execute("UPDATE agents SET state = 'revoked' WHERE guid = ?", (A,))
        return done

    store = SqliteRegistry(tmp_path / "agents.db", runner)
    try:
        assert resolve(store.create_registered(A, "ws1", "ab" * 32, "", NOW, "t"))
        assert states(store) == {A: "registered"}  # as read
        assert states(store) == {A: "revoked"}  # not the stale copy
    finally:
        store.close()
