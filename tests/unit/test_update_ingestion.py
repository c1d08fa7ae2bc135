"""The update path's shortcuts: none may change an answer, only its cost.

The registry view (``current``), remembered certificate checks, the access log
of agent updates at debug with a summary at info, and the report checks'
fast paths.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import sqlite3
from pathlib import Path
from typing import Any, cast

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import globalLogPublisher
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from dcvix.common.errors import BadRequest, Unauthorized
from dcvix.common.http import DcvixSite, read_json
from dcvix.common.logging import make_observer
from dcvix.ctl import wait as resolve
from dcvix.director import ca
from dcvix.director.api.agents import AgentRoutes, UpdateTally
from dcvix.director.audit import Audit
from dcvix.director.enrolment import Enrolment, EnrolmentPolicy
from dcvix.director.registry import AgentRecord
from dcvix.director.registry.engine import inline_runner
from dcvix.director.registry.sqlite import SqliteRegistry
from dcvix.director.runtime import (
    MemoryRuntimeStore,
    Reaped,
    parse_reaped,
    parse_session,
)

NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
A = "11111111-1111-4111-8111-111111111111"


class CountingRegistry(SqliteRegistry):
    """Counts the reads that reach the database."""

    reads = 0

    async def get(self, guid: str) -> AgentRecord | None:
        self.reads += 1
        return await super().get(guid)


@pytest.fixture
def registry(tmp_path: Path) -> Any:
    store = CountingRegistry(tmp_path / "agents.db", inline_runner)
    assert resolve(store.create_registered(A, "ws1", "ab" * 32, "", NOW, "test"))
    yield store
    store.close()


def current(store: SqliteRegistry, guid: str = A) -> AgentRecord | None:
    found: AgentRecord | None = resolve(store.current(guid))
    return found


# ------------------------------------------------------------ registry view


def test_current_reads_the_database_once_while_nothing_changes(
    registry: CountingRegistry,
) -> None:
    first = current(registry)
    assert first is not None
    assert first.state == "registered"
    for _ in range(5):
        assert current(registry) == first
    assert registry.reads == 1


def test_current_sees_its_own_writes_at_once(registry: CountingRegistry) -> None:
    assert current(registry) is not None
    resolve(registry.revoke(A, "admin:alice", NOW))
    record = current(registry)
    assert record is not None
    assert record.state == "revoked"


def test_current_sees_another_writers_commit_at_once(
    registry: CountingRegistry, tmp_path: Path
) -> None:
    """What ``dcvixctl`` does: another connection (process) changes the row."""
    assert current(registry) is not None
    other = SqliteRegistry(tmp_path / "agents.db", inline_runner)
    try:
        resolve(other.revoke(A, "admin:alice", NOW))
    finally:
        other.close()
    record = current(registry)
    assert record is not None
    assert record.state == "revoked"
    # A raw write, as any SQLite client could make.
    with sqlite3.connect(tmp_path / "agents.db") as raw:
        raw.execute("UPDATE agents SET state = 'registered' WHERE guid = ?", (A,))
    record = current(registry)
    assert record is not None
    assert record.state == "registered"


def test_current_does_not_keep_what_a_concurrent_commit_made_stale(
    tmp_path: Path,
) -> None:
    """A commit landing while a record is read: that record is not kept."""

    class Racing(SqliteRegistry):
        async def get(self, guid: str) -> AgentRecord | None:
            found = await super().get(guid)
            with sqlite3.connect(self.path) as raw:  # lands after the read
                raw.execute("UPDATE agents SET state = 'revoked' WHERE guid = ?", (A,))
            return found

    store = Racing(tmp_path / "agents.db", inline_runner)
    try:
        resolve(store.create_registered(A, "ws1", "ab" * 32, "", NOW, "test"))
        first = current(store)
        assert first is not None
        assert first.state == "registered"  # what was read, but not kept
        assert store._view == {}
    finally:
        store.close()


def test_current_of_an_unknown_agent_is_none(registry: CountingRegistry) -> None:
    assert current(registry, "22222222-2222-4222-8222-222222222222") is None


# ------------------------------------------------------ certificate checks


class CountingAuthority:
    """A CA that counts its signature checks."""

    def __init__(self, authority: ca.CertificateAuthority) -> None:
        self.authority = authority
        self.checks = 0

    def issued(self, certificate: Any) -> bool:
        self.checks += 1
        return self.authority.issued(certificate)


def test_identify_checks_a_certificate_once_but_its_validity_every_time(
    tmp_path: Path,
) -> None:
    clock = Clock()
    clock.advance(NOW.timestamp())
    authority = ca.new_authority(NOW - dt.timedelta(days=1))
    counting = CountingAuthority(authority)
    registry = SqliteRegistry(tmp_path / "agents.db", inline_runner)
    enrolment = Enrolment(
        registry,
        counting,  # type: ignore[arg-type]
        EnrolmentPolicy(lifetime=dt.timedelta(days=1)),
        Audit(registry, clock),
        clock,
    )
    key = ed25519.Ed25519PrivateKey.generate()
    certificate = authority.sign_agent(
        key.public_key(), A, "ws1", NOW, dt.timedelta(hours=1)
    )
    try:
        first = enrolment.identify(certificate)
        assert first.guid == A
        for _ in range(3):
            assert enrolment.identify(certificate) == first
        assert counting.checks == 1
        clock.advance(3600)
        with pytest.raises(Unauthorized, match="client certificate expired"):
            enrolment.identify(certificate)
        # A certificate another CA signed is still refused, every time.
        other = ca.new_authority(NOW - dt.timedelta(days=1)).sign_agent(
            key.public_key(), A, "ws1", NOW, dt.timedelta(hours=1)
        )
        for _ in range(2):
            with pytest.raises(Unauthorized, match="invalid client certificate"):
                enrolment.identify(other)
    finally:
        registry.close()


# ------------------------------------------------------------- access log


def logged(site: DcvixSite, path: bytes, code: int, level: str) -> str:
    output = io.StringIO()
    observer = make_observer(level, "text", [output])
    globalLogPublisher.addObserver(observer)
    request = Request(DummyChannel())
    request.method = b"POST"
    request.uri = path
    request.code = code
    try:
        site.startFactory()
        site.log(request)
    finally:
        site.stopFactory()
        globalLogPublisher.removeObserver(observer)
    return output.getvalue()


@pytest.fixture
def site() -> DcvixSite:
    return DcvixSite(Resource(), quiet_paths=frozenset({b"/v1/agent/update"}))


def test_an_agent_update_is_logged_at_debug_only(site: DcvixSite) -> None:
    assert logged(site, b"/v1/agent/update", 200, "info") == ""
    line = logged(site, b"/v1/agent/update?x=1", 200, "debug")
    assert '"POST /v1/agent/update" 200' in line
    assert "DEBUG" in line


def test_other_requests_and_refused_updates_stay_at_info(site: DcvixSite) -> None:
    assert '"POST /v1/agent/update" 401' in logged(
        site, b"/v1/agent/update", 401, "info"
    )
    assert '"POST /v1/agent/register" 200' in logged(
        site, b"/v1/agent/register", 200, "info"
    )


def test_the_update_summary_counts_updates_and_agents() -> None:
    output = io.StringIO()
    observer = make_observer("info", "text", [output])
    globalLogPublisher.addObserver(observer)
    tally = UpdateTally()
    try:
        resolve(tally.summarize())
        assert output.getvalue() == ""  # nothing to say
        for guid in ("a", "b", "a", "a"):
            tally.count(guid)
        resolve(tally.summarize())
        assert "4 agent updates from 2 agents in the last 1 min" in output.getvalue()
        assert (tally.updates, output.getvalue().count("\n")) == (0, 1)
    finally:
        globalLogPublisher.removeObserver(observer)


# ---------------------------------------------------------- report checks


SESSION = {
    "id": "s1",
    "owner": "alice",
    "user": "alice",
    "num-of-connections": 1,
    "creation-time": "2026-03-01T12:00:00.5Z",
    "last-disconnection-time": "",
    "licensing-mode": "DEMO",
    "storage-root": "",
    "type": "virtual",
    "status": "running",
    "x11-display": ":1",
    "x11-authority": "/run/user/1000/dcv/s1.xauth",
}


def test_a_clean_session_is_read_as_before() -> None:
    session = parse_session(SESSION)
    assert (session.owner, session.status, session.x11_display) == (
        "alice",
        "running",
        ":1",
    )
    assert session.creation_time == dt.datetime(2026, 3, 1, 12, 0, 0, 500000, dt.UTC)
    assert parse_session(SESSION) == session  # the cached time: same answer


@pytest.mark.parametrize(
    ("key", "value", "error"),
    [
        ("status", "run\x7fning", "session s1: status holds a control character"),
        ("owner", "\x00", "session s1: owner holds a control character"),
        ("user", 5, "session s1: user must be a string of at most 1024 characters"),
    ],
)
def test_a_bad_session_text_names_its_field(key: str, value: Any, error: str) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_session({**SESSION, key: value})
    assert raised.value.message == error


def test_a_missing_session_text_reads_as_empty() -> None:
    session = parse_session({**SESSION, "owner": None, "storage-root": None})
    assert (session.owner, session.storage_root) == ("", "")


class Body:
    def __init__(self, raw: bytes) -> None:
        self.content = io.BytesIO(raw)


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b'{"a": "\\ud83d\\ude00"}', {"a": "\U0001f600"}),  # a pair: text
        (b'{"a": "\\\\ud800"}', {"a": "\\ud800"}),  # an escaped backslash
        ('{"a": "\u00e9"}'.encode(), {"a": "\u00e9"}),
    ],
)
def test_read_json_accepts_what_is_text(raw: bytes, value: Any) -> None:
    assert read_json(Body(raw)) == value  # type: ignore[arg-type]


def test_read_json_still_refuses_a_lone_surrogate_in_a_key() -> None:
    with pytest.raises(BadRequest, match="invalid"):
        read_json(Body(b'{"\\uDc00": 1}'))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reaped", "error"),
    [
        ("x", "reaped must be a list of at most 100 objects"),
        ([{"id": "s"}] * 101, "reaped must be a list of at most 100 objects"),
        ([{"owner": "bob"}], "each reaped entry must be an object with an id"),
        (["s"], "each reaped entry must be an object with an id"),
        ([{"id": "s\x1b[2J"}], "a reaped session id holds a control character"),
        ([{"id": "s", "reason": 5}], "a reaped session reason must be a string"),
    ],
)
def test_a_bad_reaped_list_is_refused(reaped: Any, error: str) -> None:
    with pytest.raises(BadRequest) as raised:
        parse_reaped({"stats": {}, "reaped": reaped})
    assert raised.value.message.startswith(error)


def test_reaped_sessions_are_read() -> None:
    assert parse_reaped({"stats": {}}) == []
    assert parse_reaped({"reaped": [{"id": "s", "owner": "bob", "reason": "r"}]}) == [
        Reaped("s", "bob", "r")
    ]


# ----------------------------------------------------- reaped sessions audited


def _update(routes: AgentRoutes, agent: AgentRecord, body: dict[str, Any]) -> int:
    request = DummyRequest([b"v1", b"agent", b"update"])
    request.method = b"POST"
    request.content = io.BytesIO(json.dumps(body).encode())  # type: ignore[attr-defined]
    request.client = IPv4Address("TCP", "10.0.0.9", 40000)
    resolve(routes.update(cast(IRequest, request), agent))
    return request.responseCode or 200


def test_reaped_sessions_the_agent_had_are_audited_once(tmp_path: Path) -> None:
    clock = Clock()
    clock.advance(NOW.timestamp())
    registry = SqliteRegistry(tmp_path / "agents.db", inline_runner)
    runtime = MemoryRuntimeStore()
    audit = Audit(registry, clock)
    routes = AgentRoutes(cast(Any, None), runtime, 8446, clock, audit=audit)
    agent = AgentRecord(
        A, "ws1", "registered", None, None, None, "1", None, "k", "10.0.0.9", None
    )
    old = {"id": "dcvix_old", "owner": "bob", "type": "virtual"}
    assert _update(routes, agent, {"stats": {}, "sessions": [old]}) == 200
    reaped = [
        {"id": "dcvix_old", "owner": "bob", "reason": "no client for 1900 s"},
        {"id": "dcvix_never", "owner": "eve", "reason": "invented"},
    ]
    body = {"stats": {}, "sessions": [], "reaped": reaped}
    assert _update(routes, agent, body) == 200
    assert _update(routes, agent, body) == 200  # sent again: nothing twice
    lines = [
        (e.actor, e.action, e.target, e.address, e.detail)
        for e in resolve(registry.latest())
    ]
    assert lines == [
        (
            "agent ws1",
            "reap session",
            "dcvix_old",
            "10.0.0.9",
            "owner=bob no client for 1900 s",
        )
    ]
    registry.close()
