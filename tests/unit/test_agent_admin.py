"""AgentAdmin: the admin lifecycle of agents, as the admin API and dcvixctl run it.

A real SqliteRegistry on tmp_path run inline (every coroutine completes at once),
Audit on a task.Clock, and a recording ``forget``. The audit log lines are read
from twisted.logger's global publisher, the audit rows from the registry.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher

from dcvix.common.errors import ApiError, BadRequest, Conflict, NotFound
from dcvix.ctl import wait as resolve
from dcvix.director.agent_admin import AgentAdmin, Outcome, forget_nothing
from dcvix.director.audit import Audit
from dcvix.director.registry import AgentRecord
from dcvix.director.registry.engine import inline_runner
from dcvix.director.registry.sqlite import SqliteRegistry
from dcvix.director.registry.sqlite_schema import SqliteConnection, connect

NOW = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
LATER = NOW + dt.timedelta(minutes=1)
A = "11111111-1111-4111-8111-111111111111"
B = "22222222-2222-4222-8222-222222222222"
C = "33333333-3333-4333-8333-333333333333"
UNKNOWN = "99999999-9999-4999-8999-999999999999"
KEY_A = "a1" * 32
KEY_B = "b2" * 32
KEY_C = "c3" * 32
OWN_NAMES = frozenset({"director1", "director1.example.org"})
ACTOR = "admin:alice"
ACTIONS_MESSAGE = "action must be one of approve, deny, revoke, reactivate, delete"


class Forgetter:
    """A ``forget`` that records its calls."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, bool]] = []

    async def __call__(self, guid: str, deleted: bool) -> None:
        self.calls.append((guid, deleted))


@dataclass
class World:
    """An AgentAdmin on a fresh registry; what it forgot and logged."""

    admin: AgentAdmin
    registry: SqliteRegistry
    clock: Clock
    db: SqliteConnection
    forgotten: list[tuple[str, bool]]
    lines: list[str] = field(default_factory=list)
    setup_rows: int = 0

    def add(self, guid: str, hostname: str, state: str, key: str = KEY_A) -> None:
        """An agent in ``state``, put there by the registry (not by AgentAdmin)."""
        now = self.now()
        if state == "registered":
            assert resolve(
                self.registry.create_registered(
                    guid, hostname, key, "10.0.0.5", now, "setup"
                )
            )
            return
        assert resolve(
            self.registry.create_pending(guid, hostname, key, "10.0.0.5", now)
        )
        if state == "denied":
            resolve(self.registry.deny(guid, "setup", now))
        elif state == "revoked":
            resolve(self.registry.approve(guid, "setup", now))
            resolve(self.registry.revoke(guid, "setup", now))

    def adopt(self, guid: str, hostname: str, duplicate: bool = False) -> None:
        """A registered row as a Go director left it: no key."""
        self.db.execute(
            "INSERT INTO agents (guid, hostname, state, created_at, registered_at, "
            "adopted_duplicate) VALUES (?, ?, 'registered', "
            "'2025-01-10 09:00:00+00:00', '2025-01-10 09:00:00+00:00', ?)",
            (guid, hostname, int(duplicate)),
        )

    def settled(self) -> None:
        """The set-up is done: from now on, rows and time are the test's."""
        self.setup_rows = len(self.all_rows())
        self.clock.advance((LATER - self.now()).total_seconds())

    def act(
        self, action: str, guid: str, replace: bool = False, claimed_key: str = ""
    ) -> Outcome:
        outcome: Outcome = resolve(
            self.admin.act(action, guid, ACTOR, replace, claimed_key)
        )
        return outcome

    def get(self, guid: str) -> AgentRecord | None:
        record: AgentRecord | None = resolve(self.registry.get(guid))
        return record

    def state(self, guid: str) -> str | None:
        record = self.get(guid)
        return record.state if record else None

    def all_rows(self) -> list[tuple[str, str, str, str]]:
        entries = reversed(resolve(self.registry.latest(1000)))
        return [(e.actor, e.action, e.target, e.detail) for e in entries]

    def row_lines(self) -> list[str]:
        """The rows written since :meth:`settled`, as their audit log lines."""
        return [" ".join(part for part in row if part) for row in self.rows()]

    def rows(self) -> list[tuple[str, str, str, str]]:
        """The audit rows written since :meth:`settled`, oldest first."""
        return self.all_rows()[self.setup_rows :]

    def now(self) -> dt.datetime:
        return dt.datetime.fromtimestamp(self.clock.seconds(), dt.UTC)

    def refused(self, error: type[ApiError], message: str, call: Any) -> None:
        """``call()`` raises exactly ``error(message)`` and does nothing at all."""
        agents = self.db.execute("SELECT * FROM agents ORDER BY guid").fetchall()
        with pytest.raises(error) as raised:
            call()
        assert type(raised.value) is error
        assert raised.value.message == message
        assert self.db.execute("SELECT * FROM agents ORDER BY guid").fetchall() == (
            agents
        )
        assert (self.rows(), self.forgotten, self.lines) == ([], [], [])


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    clock = Clock()
    clock.advance(NOW.timestamp())
    path = tmp_path / "agents.db"
    registry = SqliteRegistry(path, inline_runner)
    forget = Forgetter()
    admin = AgentAdmin(registry, Audit(registry, clock), clock, OWN_NAMES, forget)
    world = World(admin, registry, clock, connect(path), forget.calls)

    def observe(event: LogEvent) -> None:
        if event.get("log_namespace") == "dcvix.audit":
            world.lines.append(formatEvent(event))

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    yield world
    globalLogPublisher.removeObserver(observer)
    world.db.close()
    registry.close()


# ------------------------------------------------------------------- approve


def test_approve_registers_a_pending_agent(world: World) -> None:
    world.add(A, "ws-a", "pending")
    world.settled()

    outcome = world.act("approve", A)

    assert (outcome.action, outcome.replaced, outcome.warning) == ("approve", (), "")
    record = outcome.record
    assert (record.guid, record.hostname, record.state, record.key_fingerprint) == (
        A,
        "ws-a",
        "registered",
        KEY_A,
    )
    assert (record.registered_at, record.state_changed_at) == (LATER, LATER)
    assert world.get(A) == record
    # The registry wrote the row in its transaction; the audit log adds none.
    assert world.rows() == [(ACTOR, "approve", A, f"hostname=ws-a key={KEY_A}")]
    assert world.lines == world.row_lines()  # the rows, as logged
    assert world.forgotten == []


def test_approve_a_hostname_another_agent_holds_is_a_conflict(world: World) -> None:
    world.add(B, "WS-A", "registered", KEY_B)
    world.add(A, "ws-a", "pending")
    world.settled()

    world.refused(
        Conflict,
        f"hostname ws-a is already registered to agent {B}; "
        "approve with replace to revoke it",
        lambda: world.act("approve", A),
    )
    assert (world.state(A), world.state(B)) == ("pending", "registered")


def test_approve_with_replace_revokes_and_forgets_the_holder(world: World) -> None:
    world.add(B, "WS-A", "registered", KEY_B)
    world.add(A, "ws-a", "pending")
    world.settled()

    outcome = world.act("approve", A, replace=True)

    assert outcome.replaced == (B,)
    assert (world.state(A), world.state(B)) == ("registered", "revoked")
    assert world.forgotten == [(B, False)]
    assert world.rows() == [
        (ACTOR, "revoke", B, f"replaced by {A} (ws-a)"),
        (ACTOR, "approve", A, f"hostname=ws-a key={KEY_A}"),
    ]
    assert world.lines == world.row_lines()  # the rows, as logged


def test_approve_with_replace_revokes_every_adopted_holder(world: World) -> None:
    world.adopt(B, "ws-a")
    world.adopt(C, "WS-A", duplicate=True)
    world.add(A, "ws-a", "pending")
    world.settled()

    outcome = world.act("approve", A, replace=True)

    assert outcome.replaced == (B, C)
    assert [world.state(g) for g in (A, B, C)] == ["registered", "revoked", "revoked"]
    assert world.forgotten == [(B, False), (C, False)]
    assert [row[:3] for row in world.rows()] == [
        (ACTOR, "revoke", B),
        (ACTOR, "revoke", C),
        (ACTOR, "approve", A),
    ]
    assert world.lines == world.row_lines()  # the rows, as logged


def test_approve_a_claim_pins_the_claimed_key(world: World) -> None:
    world.adopt(A, "ws-a")
    assert resolve(world.registry.claim(A, KEY_C, "10.0.0.9", NOW)) == ""
    world.settled()

    outcome = world.act("approve", A, claimed_key=KEY_C.upper())

    record = outcome.record
    assert (record.state, record.key_fingerprint, record.claimed_key) == (
        "registered",
        KEY_C,
        "",
    )
    assert (outcome.replaced, outcome.warning) == ((), "")
    assert world.rows() == [(ACTOR, "approve claim", A, f"key={KEY_C}")]
    assert world.lines == world.row_lines()  # the rows, as logged
    assert world.forgotten == []


@pytest.mark.parametrize(
    "hostname", ["director1", "Director1", "DIRECTOR1.example.org"]
)
def test_approving_the_directors_own_host_warns(world: World, hostname: str) -> None:
    world.add(A, hostname, "pending")
    world.settled()

    outcome = world.act("approve", A)

    assert outcome.record.state == "registered"
    assert outcome.warning == (
        f"{hostname} is the director's own host name: this agent runs on the "
        "director's machine"
    )
    assert world.admin.runs_on_director(outcome.record) is True


def test_no_warning_for_another_host_or_another_action(world: World) -> None:
    world.add(A, "ws-a", "pending")
    world.add(B, "director1", "pending", KEY_B)
    world.settled()

    approved = world.act("approve", A)
    denied = world.act("deny", B)

    assert (approved.warning, denied.warning) == ("", "")
    assert world.admin.runs_on_director(approved.record) is False
    assert world.admin.runs_on_director(denied.record) is True


# ------------------------------------------------- deny, revoke, reactivate


def test_deny_a_pending_agent(world: World) -> None:
    world.add(A, "ws-a", "pending")
    world.settled()

    outcome = world.act("deny", A)

    assert (outcome.action, outcome.record.state, outcome.replaced) == (
        "deny",
        "denied",
        (),
    )
    assert outcome.record.state_changed_at == LATER
    assert world.state(A) == "denied"
    assert world.rows() == [(ACTOR, "deny", A, "hostname=ws-a")]
    assert world.lines == world.row_lines()  # the rows, as logged
    assert world.forgotten == []


def test_revoke_a_registered_agent_forgets_it(world: World) -> None:
    world.add(A, "ws-a", "registered")
    world.settled()

    outcome = world.act("revoke", A)

    assert (outcome.action, outcome.record.state) == ("revoke", "revoked")
    assert world.state(A) == "revoked"
    assert world.forgotten == [(A, False)]
    assert world.rows() == [(ACTOR, "revoke", A, "hostname=ws-a")]
    assert world.lines == world.row_lines()  # the rows, as logged


@pytest.mark.parametrize(
    ("before", "after"), [("revoked", "registered"), ("denied", "pending")]
)
def test_reactivate(world: World, before: str, after: str) -> None:
    world.add(A, "ws-a", before)
    world.settled()

    outcome = world.act("reactivate", A)

    assert (outcome.action, outcome.record.state) == ("reactivate", after)
    assert outcome.record.key_fingerprint == KEY_A
    assert world.state(A) == after
    assert world.rows() == [(ACTOR, "reactivate", A, f"now {after}")]
    assert world.lines == world.row_lines()  # the rows, as logged
    assert world.forgotten == []


def test_reactivate_onto_a_taken_hostname_is_a_conflict(world: World) -> None:
    world.add(A, "ws-a", "revoked")
    world.add(B, "ws-a", "registered", KEY_B)
    world.settled()

    world.refused(
        Conflict,
        f"hostname ws-a is now registered to agent {B}",
        lambda: world.act("reactivate", A),
    )


# -------------------------------------------------------------------- delete


@pytest.mark.parametrize("state", ["pending", "registered", "revoked", "denied"])
def test_delete_forgets_the_agent_and_its_reports(world: World, state: str) -> None:
    world.add(A, "ws-a", state)
    world.settled()
    before = world.get(A)

    outcome = world.act("delete", A)

    assert (outcome.action, outcome.record) == ("delete", before)
    assert world.get(A) is None
    assert world.forgotten == [(A, True)]
    assert world.rows() == [(ACTOR, "delete", A, f"was {state}, hostname=ws-a")]
    assert world.lines == world.row_lines()  # the rows, as logged


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("state", "action", "verb"),
    [
        ("registered", "approve", "approved"),
        ("denied", "approve", "approved"),
        ("revoked", "approve", "approved"),
        ("registered", "deny", "denied"),
        ("revoked", "deny", "denied"),
        ("pending", "revoke", "revoked"),
        ("denied", "revoke", "revoked"),
        ("pending", "reactivate", "reactivated"),
        ("registered", "reactivate", "reactivated"),
    ],
)
def test_a_wrong_state_is_a_conflict(
    world: World, state: str, action: str, verb: str
) -> None:
    world.add(A, "ws-a", state)
    world.settled()

    world.refused(
        Conflict,
        f"agent {A} is {state}, it cannot be {verb}",
        lambda: world.act(action, A),
    )


def test_approve_an_adopted_agent_without_a_claim_is_a_conflict(
    world: World,
) -> None:
    world.adopt(A, "ws-a")
    world.settled()

    world.refused(
        Conflict,
        f"agent {A} is registered, it cannot be approved",
        lambda: world.act("approve", A),
    )


@pytest.mark.parametrize(
    "action", ["approve", "deny", "revoke", "reactivate", "delete"]
)
def test_an_unknown_agent_is_not_found(world: World, action: str) -> None:
    world.add(A, "ws-a", "pending")
    world.settled()

    world.refused(
        NotFound, f"agent {UNKNOWN} not found", lambda: world.act(action, UNKNOWN)
    )


@pytest.mark.parametrize(
    "guid",
    [
        "not-a-guid",
        "",
        "11111111111141118111111111111111",
        "{11111111-1111-4111-8111-111111111111}",
        "11111111-1111-4111-8111-11111111111g",
    ],
)
@pytest.mark.parametrize("action", ["approve", "revoke", "delete", "promote"])
def test_a_guid_that_is_not_a_uuid_is_400(world: World, guid: str, action: str) -> None:
    world.add(A, "ws-a", "registered")
    world.settled()

    world.refused(BadRequest, "guid must be a UUID", lambda: world.act(action, guid))


@pytest.mark.parametrize("action", ["promote", "", "Approve", "list"])
def test_an_unknown_action_is_400(world: World, action: str) -> None:
    world.add(A, "ws-a", "pending")
    world.settled()

    world.refused(BadRequest, ACTIONS_MESSAGE, lambda: world.act(action, A))


def test_an_upper_case_guid_names_the_same_agent(world: World) -> None:
    world.add(A, "ws-a", "registered")
    world.settled()

    outcome = world.act("revoke", A.upper())

    assert outcome.record.guid == A
    assert world.state(A) == "revoked"
    assert world.forgotten == [(A, False)]
    assert world.rows() == [(ACTOR, "revoke", A, "hostname=ws-a")]
    assert world.lines == world.row_lines()  # the rows, as logged


def test_forget_nothing_serves_dcvixctl(world: World) -> None:
    world.add(A, "ws-a", "registered")
    admin = AgentAdmin(
        world.registry,
        Audit(world.registry, world.clock),
        world.clock,
        frozenset(),
        forget_nothing,
    )

    outcome = resolve(admin.act("delete", A, "os:alice"))

    assert outcome.record.guid == A
    assert world.get(A) is None


# ---------------------------------------------------------------------- list


def test_list_every_agent_or_one_state_oldest_first(world: World) -> None:
    world.add(B, "ws-b", "registered", KEY_B)
    world.clock.advance(1)
    world.add(A, "ws-a", "pending")
    world.clock.advance(1)
    world.add(C, "ws-c", "pending", KEY_C)

    every = resolve(world.admin.list())
    pending = resolve(world.admin.list("pending"))
    denied = resolve(world.admin.list("denied"))

    assert [(r.guid, r.state) for r in every] == [
        (B, "registered"),
        (A, "pending"),
        (C, "pending"),
    ]
    assert [r.guid for r in pending] == [A, C]
    assert denied == []


@pytest.mark.parametrize("state", ["", "Registered", "approved", "unknown"])
def test_list_an_unknown_state_is_400(world: World, state: str) -> None:
    with pytest.raises(BadRequest) as raised:
        resolve(world.admin.list(state))

    assert raised.value.message == (
        "state must be one of pending, registered, revoked, denied"
    )
