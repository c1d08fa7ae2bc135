"""ConnectionTokens and SessionResolver: what DCV servers and the Gateway are told.

A real TokenService on a task.Clock, a MemoryRuntimeStore filled with server
states as reports would leave them, and a SqliteRegistry (inline) keeping
consumed single-use tokens. Every coroutine completes at once.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import pytest
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher

from dcvix.ctl import wait as resolve
from dcvix.director.connections import REFUSALS_LOGGED, ConnectionTokens
from dcvix.director.registry.engine import inline_runner
from dcvix.director.registry.sqlite import SqliteRegistry
from dcvix.director.resolver import SessionResolver
from dcvix.director.runtime import MemoryRuntimeStore, ServerState, Session
from dcvix.director.tokens import CONNECTION, LOGIN, USER, TokenService, token_hash
from dcvix.testing import reports
from dcvix.testing.reports import session

KEY = bytes(range(32))
NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
TTL = 600.0
MAX_AGE = 90.0
DCV = "10.0.0.9"  # the DCV server asking


def server(hostname: str, seen: dt.datetime, *sessions: Session) -> ServerState:
    return reports.server(hostname, *sessions, seen=seen, address="192.0.2.1")


@dataclass
class World:
    clock: Clock
    tokens: TokenService
    runtime: MemoryRuntimeStore
    registry: SqliteRegistry
    lines: list[str] = field(default_factory=list)

    def connections(self, single_use: bool = False) -> ConnectionTokens:
        return ConnectionTokens(
            self.tokens,
            self.runtime,
            self.registry,
            TTL,
            single_use,
            MAX_AGE,
            self.clock,
        )

    def put(self, state: ServerState) -> None:
        resolve(self.runtime.put(state))

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @property
    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock.seconds(), dt.UTC)


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock = Clock()
    clock.advance(NOW.timestamp())
    registry = SqliteRegistry(tmp_path / "agents.db", inline_runner)
    made = World(clock, TokenService(KEY, clock), MemoryRuntimeStore(), registry)
    made.put(server("ws-1", NOW, session("s-bob", "bob"), session("s-ann", "ann")))

    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "dcvix.director.connections":
            made.lines.append(formatEvent(event))

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    yield made
    globalLogPublisher.removeObserver(observer)
    registry.close()


def verify(
    connections: ConnectionTokens, token: str, session_id: str = "s-bob"
) -> str | None:
    return resolve(connections.verify(token, session_id, DCV))


# ------------------------------------------------------------------ verify


def test_a_connection_token_lets_its_user_into_its_session(world: World) -> None:
    connections = world.connections()
    issued = connections.issue("bob", "ws-1", "s-bob")

    assert issued.server == "ws-1"
    assert issued.session == "s-bob"
    assert issued.expires == NOW + dt.timedelta(seconds=TTL)
    claims = world.tokens.check(issued.token, CONNECTION)
    assert (claims.user, claims.category, claims.server, claims.session) == (
        "bob",
        USER,
        "ws-1",
        "s-bob",
    )
    assert verify(connections, issued.token) == "bob"
    # Not single use: a DCV client that reconnects is let in again.
    assert verify(connections, issued.token) == "bob"
    assert (
        world.lines
        == ["DCV connection of bob to s-bob on ws-1 verified (asked by 10.0.0.9)"] * 2
    )


def test_refusals_say_why_in_the_log_only(world: World) -> None:
    connections = world.connections()
    bob = connections.issue("bob", "ws-1", "s-bob").token
    login, _ = world.tokens.issue("bob", USER, LOGIN)
    not_his = connections.issue("bob", "ws-1", "s-ann").token

    assert verify(connections, login) is None
    assert verify(connections, bob, "s-ann") is None
    assert verify(connections, not_his, "s-ann") is None
    assert verify(connections, "", "s-bob") is None
    assert verify(connections, bob, "") is None
    assert verify(connections, bob + "x") is None
    assert world.lines == [
        "DCV connection to 's-bob' refused (asked by 10.0.0.9): token does not decrypt",
        "DCV connection to 's-ann' refused (asked by 10.0.0.9): "
        "token is for another session",
        "DCV connection to 's-ann' refused (asked by 10.0.0.9): "
        "the session is not the token user's",
        "DCV connection to 's-bob' refused (asked by 10.0.0.9): a field is missing",
        "DCV connection to '' refused (asked by 10.0.0.9): a field is missing",
        "DCV connection to 's-bob' refused (asked by 10.0.0.9): "
        "token is not in canonical form",
    ]
    # None of it used the token up.
    assert verify(world.connections(single_use=True), bob) == "bob"


def test_an_expired_token_is_refused(world: World) -> None:
    connections = world.connections()
    token = connections.issue("bob", "ws-1", "s-bob").token
    world.advance(TTL - 1)
    world.put(server("ws-1", world.now, session("s-bob", "bob")))
    assert verify(connections, token) == "bob"

    world.advance(1)
    assert verify(connections, token) is None
    assert world.lines[-1].endswith(": token expired")


def test_a_session_gone_or_a_server_offline_refuses_the_token(world: World) -> None:
    connections = world.connections()
    token = connections.issue("bob", "ws-1", "s-bob").token

    world.advance(MAX_AGE + 1)
    assert verify(connections, token) is None
    assert world.lines[-1].endswith(": its server is not online")

    world.put(server("ws-1", world.now, session("s-ann", "ann")))
    assert verify(connections, token) is None
    assert world.lines[-1].endswith(": the session is not the token user's")

    # The same id, now another user's session: still not bob's.
    world.put(server("ws-1", world.now, session("s-bob", "carol")))
    assert verify(connections, token) is None

    world.put(server("ws-1", world.now, session("s-bob", "bob")))
    assert verify(connections, token) == "bob"


def test_single_use_tokens_are_consumed_by_the_first_yes(world: World) -> None:
    connections = world.connections(single_use=True)
    token = connections.issue("bob", "ws-1", "s-bob").token
    other = connections.issue("bob", "ws-1", "s-bob").token

    assert verify(connections, token) == "bob"
    assert verify(connections, token) is None
    assert world.lines[-1].endswith(": token already used")
    assert resolve(world.registry.token_revoked(token_hash(token)))
    # Another token of the same session is untouched.
    assert verify(connections, other) == "bob"

    # A restart (a new service on the same registry) does not make it good again.
    assert verify(world.connections(single_use=True), token) is None


def test_vacuum_forgets_what_expired_tokens_left(world: World) -> None:
    connections = world.connections(single_use=True)
    token = connections.issue("bob", "ws-1", "s-bob").token
    assert verify(connections, token) == "bob"
    assert connections.server_for("s-bob") == "ws-1"

    assert connections.vacuum() == 0
    world.advance(TTL)
    assert connections.server_for("s-bob") is None
    assert connections.vacuum() == 2
    assert connections.vacuum() == 0


def test_refusal_lines_are_rationed(world: World) -> None:
    connections = world.connections()
    for _ in range(REFUSALS_LOGGED + 5):
        assert verify(connections, "v4.local.nonsense") is None
    assert len(world.lines) == REFUSALS_LOGGED

    world.advance(60)
    assert verify(connections, "v4.local.nonsense") is None
    assert world.lines[-1] == (
        "DCV connection to 's-bob' refused (asked by 10.0.0.9): "
        "token does not decrypt (5 more refusals not logged)"
    )


def test_a_refused_session_id_is_logged_escaped_and_cut(world: World) -> None:
    connections = world.connections()
    assert verify(connections, "x", "evil\n" + "a" * 300) is None
    (line,) = world.lines
    assert "\n" not in line
    assert line.startswith("DCV connection to 'evil\\naaaa")
    # The first 100 characters: "evil", the newline and 95 more.
    assert "\\n" + "a" * 95 + "' refused" in line


# ---------------------------------------------------------------- server_for


def test_server_for_names_the_latest_unexpired_token(world: World) -> None:
    connections = world.connections()
    assert connections.server_for("s-x") is None
    connections.issue("bob", "ws-1", "s-x")
    world.advance(10)
    connections.issue("bob", "ws-2", "s-x")
    assert connections.server_for("s-x") == "ws-2"
    world.advance(TTL - 10)
    assert connections.server_for("s-x") == "ws-2"
    world.advance(10)
    assert connections.server_for("s-x") is None


# ------------------------------------------------------------------ resolver


def locate(world: World, connections: ConnectionTokens, session_id: str) -> str | None:
    resolver = SessionResolver(world.runtime, connections, MAX_AGE, world.clock)
    found = resolve(resolver.locate(session_id))
    return None if found is None else found.hostname


def test_the_resolver_finds_the_one_online_server(world: World) -> None:
    connections = world.connections()
    world.put(server("ws-2", NOW, session("s-carl", "carl")))

    assert locate(world, connections, "s-bob") == "ws-1"
    assert locate(world, connections, "s-carl") == "ws-2"
    assert locate(world, connections, "s-nobody") is None

    world.advance(MAX_AGE + 1)
    world.put(server("ws-2", world.now, session("s-carl", "carl")))
    assert locate(world, connections, "s-bob") is None  # ws-1 went quiet
    assert locate(world, connections, "s-carl") == "ws-2"


def test_a_duplicate_session_id_needs_a_token_to_decide(world: World) -> None:
    connections = world.connections()
    world.put(server("ws-2", NOW, session("s-bob", "bob")))
    world.put(server("ws-3", NOW, session("s-bob", "bob")))
    lines: list[str] = []

    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "dcvix.director.resolver":
            lines.append(formatEvent(event))

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    try:
        assert locate(world, connections, "s-bob") is None
        connections.issue("bob", "ws-3", "s-bob")
        assert locate(world, connections, "s-bob") == "ws-3"
        # A token naming a server that no longer holds it decides nothing.
        connections.issue("bob", "ws-9", "s-bob")
        assert locate(world, connections, "s-bob") is None
        world.advance(MAX_AGE + 1)
        world.put(server("ws-2", world.now, session("s-bob", "bob")))
        assert locate(world, connections, "s-bob") == "ws-2"  # the others went quiet
    finally:
        globalLogPublisher.removeObserver(observer)
    assert (
        lines
        == [
            "session s-bob is on ws-1, ws-2, ws-3 and no unexpired connection token "
            "says which: not resolved"
        ]
        * 2
    )


def test_another_server_cannot_use_a_token_for_the_same_session_id(
    world: World,
) -> None:
    """ws-2 holds a session of the same id: a token for ws-1 is no good there."""
    other = dataclasses.replace(
        server("ws-2", NOW, session("s-bob", "bob")), address="192.0.2.2"
    )
    world.put(other)
    connections = world.connections()
    issued = connections.issue("bob", "ws-1", "s-bob")
    assert resolve(connections.verify(issued.token, "s-bob", "192.0.2.2")) is None
    assert world.lines[-1].endswith("token is for ws-1")
    # From ws-1's own address, or one no server reports from (NAT): yes.
    assert resolve(connections.verify(issued.token, "s-bob", "192.0.2.1")) == "bob"
    assert resolve(connections.verify(issued.token, "s-bob", "198.51.100.7")) == "bob"


def test_the_resolver_prefers_the_token_issued_to_the_same_client(
    world: World,
) -> None:
    """dave fetching a token for the shared id "console" cannot steer bob."""
    world.put(server("ws-1", NOW, session("console", "bob")))
    world.put(server("ws-3", NOW, session("console", "dave")))
    connections = world.connections()
    connections.issue("bob", "ws-1", "console", "198.51.100.1")
    connections.issue("dave", "ws-3", "console", "198.51.100.2")
    assert connections.server_for("console", "198.51.100.1") == "ws-1"
    assert connections.server_for("console", "198.51.100.2") == "ws-3"
    # A client no token went to: the latest token decides, as before.
    assert connections.server_for("console", "203.0.113.9") == "ws-3"
    assert connections.server_for("console") == "ws-3"
    world.advance(TTL)
    assert connections.server_for("console", "198.51.100.1") is None
    assert connections.vacuum() == 2
