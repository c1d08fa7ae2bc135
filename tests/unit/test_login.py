"""LoginService: logins, throttling, audit, logout, identify and require_admin.

A fake back end; a real TokenService on a task.Clock, PolicyHolder on files in
tmp_path, a SqliteRegistry on tmp_path run inline, Audit on the same clock and
LoginThrottle. Every coroutine completes synchronously unless the fake back end
is told to wait. Bodies are decoded LoginRequests, as the routes hand them over.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import pyseto
import pytest
from pyseto import Key
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from dcvix.common.errors import (
    ApiError,
    BadRequest,
    Forbidden,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
)
from dcvix.common.jsonfields import decode
from dcvix.ctl import wait as resolve
from dcvix.director.audit import Audit
from dcvix.director.auth import AuthUnavailable
from dcvix.director.auth.admission import AdmissionBound, BoundedAuthenticator
from dcvix.director.login import LoginService
from dcvix.director.policy import PolicyHolder
from dcvix.director.registry import AuditEntry
from dcvix.director.registry.engine import inline_runner
from dcvix.director.registry.sqlite import SqliteRegistry
from dcvix.director.requests import LoginRequest
from dcvix.director.throttle import LoginThrottle
from dcvix.director.tokens import CONNECTION, Claims, TokenService

KEY = bytes(range(32))
NOW = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
EXPIRES = NOW + dt.timedelta(hours=2)
ADDRESS = "10.0.0.7"
USERS = [{"id": "alice", "admin": True}, {"id": "bob"}]
FAILED = "authentication failed"
LOCKED = "too many failed logins; try again later"


# ------------------------------------------------------------------- harness


class FakeAuthenticator:
    """Knows two passwords; "unavailable" cannot be decided; may be made to wait."""

    name = "fake"

    def __init__(self) -> None:
        self.passwords = {"alice": "alice-pw", "bob": "bob-pw"}
        self.canonical: dict[str, str] = {}  # what an LDAP directory would answer
        self.calls: list[tuple[str, str, str]] = []
        self.gate: Deferred[None] | None = None
        self.crash = False

    async def authenticate(self, user: str, password: str, otp: str) -> str | None:
        self.calls.append((user, password, otp))
        if self.gate is not None:
            await self.gate
        if self.crash:
            raise RuntimeError("a bug in the back end")
        if password == "unavailable":
            raise AuthUnavailable("ldap://10.9.9.9 timed out")
        if self.passwords.get(user) != password:
            return None
        return self.canonical.get(user, user)


@dataclass
class World:
    service: LoginService
    backend: FakeAuthenticator
    tokens: TokenService
    policy: PolicyHolder
    registry: SqliteRegistry
    clock: Clock
    folder: Path

    def login(
        self,
        user: str,
        password: str,
        admin: bool = False,
        address: str = ADDRESS,
    ) -> tuple[str, dt.datetime]:
        body = LoginRequest(user, password)
        result: tuple[str, dt.datetime] = resolve(
            self.service.login(body, address, admin)
        )
        return result

    def refused(
        self, error: type[ApiError], message: str, call: Callable[[], Any]
    ) -> None:
        with pytest.raises(error) as raised:
            call()
        assert type(raised.value) is error
        assert raised.value.message == message

    def audit(self) -> list[AuditEntry]:
        """The audit table, oldest first."""
        return list(reversed(resolve(self.registry.latest())))

    def write_users(self, users: Any) -> None:
        (self.folder / "users.json").write_text(json.dumps(users))


@pytest.fixture
def make_world(tmp_path: Path) -> Iterator[Callable[[], World]]:
    folder = tmp_path / "policydb"
    folder.mkdir()
    (folder / "users.json").write_text(json.dumps(USERS))
    (folder / "pools.json").write_text("[]")
    clock = Clock()
    clock.advance(NOW.timestamp())
    opened: list[SqliteRegistry] = []

    def make(shared: bool = False) -> World:
        """A director; a second call is the same director after a restart.

        ``shared``: directors made so count login failures in the store, as
        directors sharing a PostgreSQL store do.
        """
        registry = SqliteRegistry(tmp_path / "agents.db", inline_runner)
        opened.append(registry)
        backend = FakeAuthenticator()
        tokens = TokenService(KEY, clock)
        policy = PolicyHolder(folder)
        service = LoginService(
            backend,
            tokens,
            policy,
            registry,
            LoginThrottle(5, 300, clock),
            Audit(registry, clock),
            registry if shared else None,
        )
        return World(service, backend, tokens, policy, registry, clock, folder)

    yield make
    for registry in opened:
        registry.close()


@pytest.fixture
def world(make_world: Callable[..., World]) -> World:
    return make_world()


# -------------------------------------------------------------------- logins


def test_user_login_issues_a_user_token(world: World) -> None:
    token, expires = world.login("bob", "bob-pw")

    assert expires == EXPIRES
    assert world.tokens.check(token) == Claims("bob", "user", "login", EXPIRES)
    assert world.backend.calls == [("bob", "bob-pw", "")]
    assert world.audit() == [
        AuditEntry(NOW, "bob", "login", "", "backend=fake result=ok", ADDRESS, "ok"),
    ]


def test_an_admin_at_user_login_gets_a_user_token(world: World) -> None:
    token, _ = world.login("alice", "alice-pw")

    assert world.tokens.check(token).category == "user"


def test_admin_login_issues_an_admin_token(world: World) -> None:
    token, expires = world.login("alice", "alice-pw", admin=True)

    assert expires == EXPIRES
    assert world.tokens.check(token) == Claims("alice", "admin", "login", EXPIRES)
    assert world.audit() == [
        AuditEntry(
            NOW, "alice", "admin login", "", "backend=fake result=ok", ADDRESS, "ok"
        ),
    ]


def test_login_body_keys_match_as_go_does(world: World) -> None:
    body = {"userid": "bob", "PASSWORD": "bob-pw", "OTP": "123456", "extra": 1}

    request = decode(LoginRequest, body)

    assert request == LoginRequest("bob", "bob-pw", "123456")
    token, _ = resolve(world.service.login(request, ADDRESS, False))
    assert world.tokens.check(token).user == "bob"
    assert world.backend.calls == [("bob", "bob-pw", "123456")]


@pytest.mark.parametrize(
    ("user", "password", "admin", "action", "result"),
    [
        ("bob", "wrong", False, "login failed", "rejected"),
        ("alice", "wrong", True, "admin login failed", "rejected"),
        ("nobody", "bob-pw", False, "login failed", "rejected"),
        ("bob", "", False, "login failed", "empty password"),
        ("bob", "unavailable", False, "login failed", "backend unavailable"),
        ("alice", "unavailable", True, "admin login failed", "backend unavailable"),
        ("bob", "bob-pw", True, "admin login failed", "not an admin"),
        ("carol", "", True, "admin login failed", "empty password"),
    ],
)
def test_every_failure_looks_the_same(
    world: World, user: str, password: str, admin: bool, action: str, result: str
) -> None:
    world.refused(
        Unauthorized, FAILED, lambda: world.login(user, password, admin=admin)
    )
    # An empty password never reaches a back end (for LDAP it would bind anonymously).
    assert world.backend.calls == ([(user, password, "")] if password else [])
    assert world.audit() == [
        AuditEntry(
            NOW, user, action, "", f"backend=fake result={result}", ADDRESS, "failed"
        ),
    ]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("userID=bob&password=bob-pw", "request body must be a JSON object"),
        (["bob", "bob-pw"], "request body must be a JSON object"),
        (None, "request body must be a JSON object"),
        ({"userID": 5, "password": "x"}, "field 'userID' must be a string"),
        ({"userID": "bob", "password": ["x"]}, "field 'password' must be a string"),
        (
            {"userID": "bob", "password": "x", "otp": 123},
            "field 'otp' must be a string",
        ),
    ],
)
def test_a_body_that_is_not_a_login_request_is_400(body: Any, message: str) -> None:
    with pytest.raises(BadRequest) as raised:
        decode(LoginRequest, body)

    assert raised.value.message == message


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"password": "bob-pw"}, "invalid userID"),
        ({"userID": "", "password": "bob-pw"}, "invalid userID"),
        ({"userID": "bob\n", "password": "bob-pw"}, "invalid userID"),
        ({"userID": "bo\rb", "password": "bob-pw"}, "invalid userID"),
        ({"userID": "bo\x00b", "password": "bob-pw"}, "invalid userID"),
        ({"userID": "bo\x85b", "password": "bob-pw"}, "invalid userID"),
        ({"userID": "-bob", "password": "bob-pw"}, "invalid userID"),
        ({"userID": "b" * 257, "password": "bob-pw"}, "invalid userID"),
    ],
)
@pytest.mark.parametrize("admin", [False, True])
def test_bad_requests_never_reach_the_back_end(
    world: World, body: Any, message: str, admin: bool
) -> None:
    request = decode(LoginRequest, body)

    world.refused(
        BadRequest,
        message,
        lambda: resolve(world.service.login(request, ADDRESS, admin)),
    )
    assert world.backend.calls == []
    assert world.audit() == []


# ---------------------------------------------------------------- throttling


def test_sixth_failure_is_locked_without_asking_the_back_end(
    world: World, audit_lines: list[str]
) -> None:
    for _ in range(5):
        world.refused(Unauthorized, FAILED, lambda: world.login("bob", "wrong"))

    world.refused(TooManyRequests, LOCKED, lambda: world.login("bob", "bob-pw"))
    world.refused(
        TooManyRequests, LOCKED, lambda: world.login("bob", "bob-pw", admin=True)
    )
    assert world.backend.calls == [("bob", "wrong", "")] * 5
    # Refusals while locked: one line per address and kind, then counted
    # (hammering must not grow the store).
    assert [(e.action, e.outcome) for e in world.audit()] == [
        ("login failed", "failed")
    ] * 5 + [("login refused", "refused"), ("admin login refused", "refused")]
    assert audit_lines == [
        "bob login failed from 10.0.0.7 backend=fake result=rejected"
    ] * 5 + [
        "bob login refused from 10.0.0.7 backend=fake result=locked count=1",
        "bob admin login refused from 10.0.0.7 backend=fake result=locked count=1",
    ]

    world.clock.advance(299)
    world.refused(TooManyRequests, LOCKED, lambda: world.login("bob", "bob-pw"))
    assert len(world.audit()) == 7
    world.clock.advance(1)
    token, _ = world.login("bob", "bob-pw")
    assert world.tokens.check(token).user == "bob"


def test_failures_from_many_addresses_lock_the_user(world: World) -> None:
    for n in range(5):
        world.refused(
            Unauthorized,
            FAILED,
            partial(world.login, "alice", "guess", address=f"192.0.2.{n}"),
        )

    world.refused(
        TooManyRequests,
        LOCKED,
        lambda: world.login("alice", "alice-pw", admin=True, address="198.51.100.1"),
    )
    assert len(world.backend.calls) == 5
    token, _ = world.login("bob", "bob-pw", address="198.51.100.1")
    assert world.tokens.check(token).user == "bob"


def test_failures_for_many_users_lock_the_address(world: World) -> None:
    for n in range(5):
        world.refused(Unauthorized, FAILED, partial(world.login, f"user{n}", "123456"))

    world.refused(TooManyRequests, LOCKED, lambda: world.login("bob", "bob-pw"))
    token, _ = world.login("bob", "bob-pw", address="10.0.0.8")
    assert world.tokens.check(token).user == "bob"


def test_a_burst_of_simultaneous_logins_is_throttled(world: World) -> None:
    """Attempts waiting for the back end count: a burst cannot outrun the limit."""
    gate: Deferred[None] = Deferred()
    world.backend.gate = gate
    body = LoginRequest("alice", "guess")
    attempts = [
        Deferred.fromCoroutine(world.service.login(body, f"192.0.2.{n}", True))
        for n in range(8)
    ]
    outcomes: list[Any] = []
    for attempt in attempts:
        attempt.addErrback(lambda failure: failure.value).addCallback(outcomes.append)

    assert len(world.backend.calls) == 5
    assert [type(error) for error in outcomes] == [TooManyRequests] * 3

    gate.callback(None)
    assert [type(error) for error in outcomes] == [TooManyRequests] * 3 + [
        Unauthorized
    ] * 5
    world.backend.gate = None
    world.refused(
        TooManyRequests, LOCKED, lambda: world.login("alice", "alice-pw", True)
    )
    assert len(world.backend.calls) == 5


def test_a_crashing_back_end_releases_its_attempt(world: World) -> None:
    world.backend.crash = True
    for _ in range(6):
        with pytest.raises(RuntimeError):
            world.login("bob", "bob-pw")

    world.backend.crash = False
    token, _ = world.login("bob", "bob-pw")
    assert world.tokens.check(token).user == "bob"
    assert len(world.backend.calls) == 7


def test_success_clears_the_users_failures(world: World) -> None:
    for _ in range(4):
        world.refused(Unauthorized, FAILED, lambda: world.login("bob", "wrong"))
    world.login("bob", "bob-pw")

    elsewhere = "192.0.2.99"
    for _ in range(4):
        world.refused(
            Unauthorized,
            FAILED,
            lambda: world.login("bob", "wrong", address=elsewhere),
        )
    world.login("bob", "bob-pw", address=elsewhere)
    assert len(world.backend.calls) == 10


# -------------------------------------------------- identify, logout, admin


def test_identify(world: World) -> None:
    token, _ = world.login("bob", "bob-pw")

    assert resolve(world.service.identify(token)) == Claims(
        "bob", "user", "login", EXPIRES
    )


@pytest.mark.parametrize("token", [None, "", "v4.local.garbage", "Bearer x"])
def test_identify_without_a_valid_token(world: World, token: str | None) -> None:
    world.refused(
        Unauthorized, "login required", lambda: resolve(world.service.identify(token))
    )


def test_identify_refuses_a_connection_token(world: World) -> None:
    token, _ = world.tokens.issue(
        "bob", "user", CONNECTION, dt.timedelta(minutes=10), serverId="ws1"
    )

    world.refused(
        Unauthorized, "login required", lambda: resolve(world.service.identify(token))
    )


def test_identify_refuses_an_expired_token(world: World) -> None:
    token, _ = world.login("bob", "bob-pw")
    world.clock.advance(2 * 3600)

    world.refused(
        Unauthorized, "login required", lambda: resolve(world.service.identify(token))
    )


def test_identify_accepts_a_go_token(world: World) -> None:
    claims = {
        "iat": "2025-03-01T13:00:00+01:00",
        "nbf": "2025-03-01T13:00:00+01:00",
        "exp": "2025-03-01T15:00:00+01:00",
        "userID": "alice",
        "userCategory": "admin",
    }
    key = Key.new(version=4, purpose="local", key=KEY)
    token = pyseto.encode(key, json.dumps(claims).encode()).decode()

    assert resolve(world.service.require_admin(token)) == Claims(
        "alice", "admin", "login", EXPIRES
    )


def test_logout_revokes_the_token(
    world: World, make_world: Callable[[], World]
) -> None:
    token, _ = world.login("bob", "bob-pw")
    other, _ = world.login("bob", "bob-pw")

    resolve(world.service.logout(token, "10.0.0.9"))

    world.refused(
        Unauthorized, "login required", lambda: resolve(world.service.identify(token))
    )
    world.refused(
        Unauthorized,
        "login required",
        lambda: resolve(world.service.identify(token + "=")),
    )
    assert resolve(world.service.identify(other)).user == "bob"
    assert world.audit()[-1] == AuditEntry(NOW, "bob", "logout", "", "", "10.0.0.9")

    restarted = make_world()
    world.refused(
        Unauthorized,
        "login required",
        lambda: resolve(restarted.service.identify(token)),
    )
    assert resolve(restarted.service.identify(other)).user == "bob"


@pytest.mark.parametrize("token", [None, "", "v4.local.garbage"])
def test_logout_without_a_valid_token_does_nothing(
    world: World, token: str | None
) -> None:
    resolve(world.service.logout(token, ADDRESS))

    assert world.audit() == []


def test_require_admin(world: World) -> None:
    admin, _ = world.login("alice", "alice-pw", admin=True)
    alice_user, _ = world.login("alice", "alice-pw")
    bob, _ = world.login("bob", "bob-pw")

    assert resolve(world.service.require_admin(admin)) == Claims(
        "alice", "admin", "login", EXPIRES
    )
    for token in (alice_user, bob):
        world.refused(
            Forbidden,
            "admin rights required",
            partial(resolve, world.service.require_admin(token)),
        )
    world.refused(
        Unauthorized,
        "login required",
        lambda: resolve(world.service.require_admin(None)),
    )


def test_a_demoted_admin_loses_admin_rights_at_once(world: World) -> None:
    admin, _ = world.login("alice", "alice-pw", admin=True)
    assert resolve(world.service.require_admin(admin)).user == "alice"

    world.write_users([{"id": "alice", "admin": False}, {"id": "bob"}])
    assert world.policy.reload()

    world.refused(
        Forbidden,
        "admin rights required",
        lambda: resolve(world.service.require_admin(admin)),
    )
    assert resolve(world.service.identify(admin)).category == "admin"
    world.refused(
        Unauthorized, FAILED, lambda: world.login("alice", "alice-pw", admin=True)
    )

    world.write_users(USERS)
    assert world.policy.reload()
    assert resolve(world.service.require_admin(admin)).user == "alice"


def test_an_admin_removed_from_users_json_loses_admin_rights(world: World) -> None:
    admin, _ = world.login("alice", "alice-pw", admin=True)

    world.write_users([{"id": "bob"}])
    assert world.policy.reload()

    world.refused(
        Forbidden,
        "admin rights required",
        lambda: resolve(world.service.require_admin(admin)),
    )


# ------------------------------------------------- canonical ids, admission


def test_the_back_ends_canonical_id_is_the_one_logged_in(world: World) -> None:
    world.backend.canonical = {"ALICE": "alice"}
    world.backend.passwords["ALICE"] = "alice-pw"

    token, _ = world.login("ALICE", "alice-pw", admin=True)

    assert world.tokens.check(token).user == "alice"  # admin as alice in users.json
    (entry,) = world.audit()
    assert (entry.actor, entry.action, entry.detail) == (
        "ALICE",
        "admin login",
        "backend=fake result=ok as alice",
    )


def test_a_full_admission_queue_is_503_and_not_a_failed_login(
    make_world: Callable[[], World],
) -> None:
    world = make_world()
    bounded = BoundedAuthenticator(world.backend, AdmissionBound(1, 0, world.clock))
    service = LoginService(
        bounded,
        world.tokens,
        world.policy,
        world.registry,
        LoginThrottle(1, 300, world.clock),
        Audit(world.registry, world.clock),
    )
    gate: Deferred[None] = Deferred()
    world.backend.gate = gate
    first: list[Any] = []
    Deferred.fromCoroutine(
        service.login(LoginRequest("bob", "bob-pw"), "10.0.0.1", False)
    ).addBoth(first.append)

    busy: list[Any] = []
    Deferred.fromCoroutine(
        service.login(LoginRequest("alice", "alice-pw"), "10.0.0.2", False)
    ).addErrback(lambda failure: failure.value).addCallback(busy.append)

    assert [type(e) for e in busy] == [ServiceUnavailable]
    assert world.backend.calls == [("bob", "bob-pw", "")]
    assert world.audit() == []  # neither audited nor counted as a failure
    gate.callback(None)
    world.backend.gate = None
    assert len(first) == 1 and isinstance(first[0], tuple)
    # alice (1 failure allowed) was not charged a failure for the 503.
    token, _ = resolve(
        service.login(LoginRequest("alice", "alice-pw"), "10.0.0.2", False)
    )
    assert world.tokens.check(token).user == "alice"


def test_a_login_the_client_abandons_still_counts_as_a_failure(world: World) -> None:
    gate: Deferred[None] = Deferred()
    world.backend.gate = gate
    for _ in range(5):
        attempt = Deferred.fromCoroutine(
            world.service.login(LoginRequest("alice", "guess"), ADDRESS, False)
        )
        attempt.addErrback(lambda failure: None)
        attempt.cancel()  # the client hangs up; the guess reached the back end
    world.backend.gate = None
    world.refused(TooManyRequests, LOCKED, lambda: world.login("alice", "alice-pw"))


# ------------------------------------------------- directors sharing a store


def fail(director: World, address: str = ADDRESS) -> None:
    director.refused(
        Unauthorized, FAILED, lambda: director.login("bob", "wrong", address=address)
    )


@pytest.mark.parametrize("shared", [True, False])
def test_failures_spread_over_two_directors_lock_the_account_when_shared(
    make_world: Callable[..., World], shared: bool
) -> None:
    first, second = make_world(shared), make_world(shared)
    for attempt in range(5):
        fail((first, second)[attempt % 2])

    for director in (first, second):
        if shared:
            with pytest.raises(TooManyRequests):
                director.login("bob", "bob-pw")
        else:  # each counts its own: 3 and 2 failures, under the limit of 5
            assert director.login("bob", "bob-pw")


def test_a_login_on_one_director_clears_the_users_failures_on_the_other(
    make_world: Callable[..., World],
) -> None:
    first, second = make_world(True), make_world(True)
    for _ in range(4):
        fail(first)
    assert second.login("bob", "bob-pw")

    # From elsewhere (the address's own count is not cleared by a success):
    for _ in range(4):
        fail(first, "10.9.9.9")
    assert first.login("bob", "bob-pw")  # the user's 4 failures since the success


def test_a_lock_set_on_one_director_holds_on_the_other_until_it_ends(
    make_world: Callable[..., World],
) -> None:
    first, second = make_world(True), make_world(True)
    for _ in range(5):
        fail(first)
    second.refused(TooManyRequests, LOCKED, lambda: second.login("bob", "bob-pw"))

    first.clock.advance(301)

    assert second.login("bob", "bob-pw")
