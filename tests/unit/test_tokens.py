"""PASETO v4.local tokens: claims, purposes, expiry on the injected clock, Go tokens.

Time always comes from a task.Clock; the local zone is pinned to a fixed +01:00
so that the RFC 3339 strings (local offset, as Go writes them) are literal.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pyseto
import pytest
from pyseto import Key
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, Logger, formatEvent

from dcvix.common.daemon import StartupError
from dcvix.director import tokens
from dcvix.director.tokens import (
    CONNECTION,
    LOGIN,
    Claims,
    InvalidToken,
    TokenService,
    load_token_key,
    token_hash,
)

KEY = bytes(range(32))
OTHER_KEY = bytes(range(100, 132))
NOW = dt.datetime(2025, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
EXPIRES = dt.datetime(2025, 3, 1, 14, 0, 0, tzinfo=dt.UTC)
LOGIN_ASSERTION = b"dcvix:login"
CONNECTION_ASSERTION = b"dcvix:connection"
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.fixture(autouse=True)
def plus_one_hour(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is a fixed UTC+01:00 (no daylight saving)."""
    monkeypatch.setenv("TZ", "CET-1")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.fixture
def clock() -> Clock:
    clock = Clock()
    clock.advance(NOW.timestamp())
    return clock


@pytest.fixture
def service(clock: Clock) -> TokenService:
    return TokenService(KEY, clock)


def paseto_key(key: bytes = KEY) -> Any:
    return Key.new(version=4, purpose="local", key=key)


def raw_claims(token: str, assertion: bytes = LOGIN_ASSERTION) -> Any:
    """The claims as they are on the wire, decrypted by pyseto alone."""
    decoded = pyseto.decode(paseto_key(), token, implicit_assertion=assertion)
    assert isinstance(decoded.payload, bytes)  # no deserializer given
    return json.loads(decoded.payload)


def forge(claims: Any, assertion: bytes = b"", key: bytes = KEY) -> str:
    """A token with exactly these claims; no assertion is what Go dcvix does."""
    payload = claims if isinstance(claims, bytes) else json.dumps(claims).encode()
    token = pyseto.encode(paseto_key(key), payload, implicit_assertion=assertion)
    return token.decode("ascii")


def go_claims(**changes: Any) -> dict[str, Any]:
    """A Go dcvix admin login token's claims, issued at NOW in a +01:00 zone."""
    claims: dict[str, Any] = {
        "iat": "2025-03-01T13:00:00+01:00",
        "nbf": "2025-03-01T13:00:00+01:00",
        "exp": "2025-03-01T15:00:00+01:00",
        "userID": "alice",
        "userCategory": "admin",
    }
    claims.update(changes)
    return {k: v for k, v in claims.items() if v is not None}


def refused(service: TokenService, token: str, purpose: str, message: str) -> None:
    with pytest.raises(InvalidToken) as raised:
        service.check(token, purpose)
    assert str(raised.value) == message


# ----------------------------------------------------------- issue and check


def test_login_token_round_trip(service: TokenService) -> None:
    token, expires = service.issue("alice", "user")

    assert token.startswith("v4.local.")
    assert token.count(".") == 2  # no footer
    assert expires == EXPIRES
    assert raw_claims(token) == {
        "iat": "2025-03-01T13:00:00+01:00",
        "nbf": "2025-03-01T13:00:00+01:00",
        "exp": "2025-03-01T15:00:00+01:00",
        "userID": "alice",
        "userCategory": "user",
        "purpose": "login",
    }
    assert service.check(token) == Claims("alice", "user", "login", EXPIRES)
    assert service.check(token, LOGIN) == Claims("alice", "user", "login", EXPIRES)


def test_admin_token_and_whole_seconds(clock: Clock, service: TokenService) -> None:
    clock.advance(0.75)
    token, expires = service.issue("root-admin", "admin")

    assert expires == EXPIRES
    claims = raw_claims(token)
    assert claims["iat"] == "2025-03-01T13:00:00+01:00"
    assert claims["exp"] == "2025-03-01T15:00:00+01:00"
    assert claims["userCategory"] == "admin"
    assert service.check(token).category == "admin"


def test_connection_token_is_bound_and_short(service: TokenService) -> None:
    token, expires = service.issue(
        "bob",
        "user",
        CONNECTION,
        dt.timedelta(minutes=10),
        serverId="ws1",
        sessionId="dcvix_bob_1",
    )

    assert expires == dt.datetime(2025, 3, 1, 12, 10, 0, tzinfo=dt.UTC)
    assert raw_claims(token, CONNECTION_ASSERTION) == {
        "iat": "2025-03-01T13:00:00+01:00",
        "nbf": "2025-03-01T13:00:00+01:00",
        "exp": "2025-03-01T13:10:00+01:00",
        "userID": "bob",
        "userCategory": "user",
        "purpose": "connection",
        "serverId": "ws1",
        "sessionId": "dcvix_bob_1",
    }
    assert service.check(token, CONNECTION) == Claims(
        "bob", "user", "connection", expires, "ws1", "dcvix_bob_1"
    )


# -------------------------------------------------------------------- expiry


def test_valid_one_second_before_exp_refused_at_exp(
    clock: Clock, service: TokenService
) -> None:
    token, _ = service.issue("alice", "user")

    clock.advance(2 * 3600 - 1)
    assert service.check(token).user == "alice"
    clock.advance(1)
    refused(service, token, LOGIN, "token expired")
    clock.advance(3600)
    refused(service, token, LOGIN, "token expired")


def test_time_comes_from_the_clock_not_from_pyseto(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    clock = Clock()
    clock.advance(dt.datetime(2000, 1, 1, tzinfo=dt.UTC).timestamp())
    service = TokenService(KEY, clock)
    token, expires = service.issue("alice", "user")
    assert expires == dt.datetime(2000, 1, 1, 2, 0, tzinfo=dt.UTC)

    # pyseto's own claim check, on the wall clock, would refuse this token...
    with pytest.raises(pyseto.VerifyError, match="Token expired"):
        pyseto.decode(
            paseto_key(), token, implicit_assertion=LOGIN_ASSERTION, deserializer=json
        )

    # ...and it is never asked: break it, and the token is still fine on the Clock.
    def no_library_time_check(*args: Any) -> None:
        raise AssertionError("pyseto's claim check was used")

    monkeypatch.setattr(
        pyseto.paseto.Paseto, "_verify_registered_claims", no_library_time_check
    )
    assert service.check(token) == Claims("alice", "user", "login", expires)
    clock.advance(2 * 3600)
    refused(service, token, LOGIN, "token expired")


# ---------------------------------------------------------- tampering, keys


@pytest.mark.parametrize("position", [12, 30, 150, -3])
def test_a_changed_character_is_refused(service: TokenService, position: int) -> None:
    token, _ = service.issue("alice", "user")
    original = token[position]
    changed = "A" if original != "A" else "B"
    index = position % len(token)
    tampered = token[:index] + changed + token[index + 1 :]

    assert tampered != token
    refused(service, tampered, LOGIN, "token does not decrypt")


def trailing_bits_variant(token: str) -> str:
    """The same bytes, spelled with other (ignored) low bits in the last character."""
    last = ALPHABET.index(token[-1])
    return token[:-1] + ALPHABET[last ^ 1]


@pytest.mark.parametrize(
    "variant",
    [
        pytest.param(lambda t: t + "=", id="padding"),
        pytest.param(lambda t: t + "==", id="double padding"),
        pytest.param(lambda t: t + ".", id="empty footer"),
        pytest.param(trailing_bits_variant, id="trailing bits"),
    ],
)
def test_other_spellings_of_a_token_are_refused(
    service: TokenService, variant: Any
) -> None:
    """Revocation is by hash of the token text: one token must have one spelling."""
    token, _ = service.issue("alice", "user")
    spelled = variant(token)

    assert spelled != token
    assert token_hash(spelled) != token_hash(token)
    # pyseto alone decrypts the variant to the very same claims...
    assert raw_claims(spelled) == raw_claims(token)
    # ...but we do not accept it.
    refused(service, spelled, LOGIN, "token is not in canonical form")


@pytest.mark.parametrize(
    "text",
    ["", "v4.local.", "v4.public.AAAA", "V4.local.AAAA", "garbage", "v4.local.A"],
)
def test_not_a_token(service: TokenService, text: str) -> None:
    with pytest.raises(InvalidToken):
        service.check(text)


def test_wrong_key_is_refused(clock: Clock, service: TokenService) -> None:
    token, _ = TokenService(OTHER_KEY, clock).issue("alice", "admin")

    refused(service, token, LOGIN, "token does not decrypt")
    refused(service, token, CONNECTION, "token does not decrypt")
    assert TokenService(OTHER_KEY, clock).check(token).user == "alice"


# ------------------------------------------------------------------ purposes


def test_connection_token_is_not_a_login_token(service: TokenService) -> None:
    token, _ = service.issue("bob", "user", CONNECTION, dt.timedelta(minutes=10))

    refused(service, token, LOGIN, "token does not decrypt")
    assert service.check(token, CONNECTION).purpose == "connection"


def test_login_token_is_not_a_connection_token(service: TokenService) -> None:
    token, _ = service.issue("bob", "user")

    refused(service, token, CONNECTION, "token does not decrypt")


def test_purpose_claim_must_match_the_assertion(service: TokenService) -> None:
    """Claims saying login, sealed as a connection token: refused both ways."""
    claims = go_claims(purpose="login", userCategory="user")
    token = forge(claims, CONNECTION_ASSERTION)

    refused(service, token, LOGIN, "token does not decrypt")
    refused(service, token, CONNECTION, "token has another purpose")


def test_connection_claim_sealed_as_login_is_refused(service: TokenService) -> None:
    token = forge(go_claims(purpose="connection"), LOGIN_ASSERTION)

    refused(service, token, LOGIN, "token has another purpose")
    refused(service, token, CONNECTION, "token does not decrypt")


# --------------------------------------------------------------- Go tokens


@pytest.mark.parametrize(
    "exp",
    [
        "2025-03-01T15:00:00+01:00",
        "2025-03-01T14:00:00Z",
        "2025-03-01T09:00:00-05:00",
        # Go's time.RFC3339Nano, read by the one timestamp parser
        "2025-03-01T14:00:00.000000000Z",
    ],
)
def test_go_token_is_a_login_token_until_it_expires(
    clock: Clock, service: TokenService, exp: str
) -> None:
    token = forge(go_claims(exp=exp))

    assert service.check(token, LOGIN) == Claims("alice", "admin", "login", EXPIRES)
    refused(service, token, CONNECTION, "token does not decrypt")
    clock.advance(2 * 3600 - 1)
    assert service.check(token).user == "alice"
    clock.advance(1)
    refused(service, token, LOGIN, "token expired")


@pytest.mark.parametrize("purpose", ["login", "connection", ""])
def test_go_style_token_with_a_purpose_is_refused(
    service: TokenService, purpose: str
) -> None:
    token = forge(go_claims(purpose=purpose))

    refused(service, token, LOGIN, "token has another purpose")
    refused(service, token, CONNECTION, "token does not decrypt")


# ------------------------------------------------------------ broken claims


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        (go_claims(exp=None), "token has no valid exp"),
        (go_claims(exp=1740844800), "token has no valid exp"),
        (
            go_claims(exp=None, Exp="2025-03-01T15:00:00+01:00"),
            "token has no valid exp",
        ),
        (go_claims(exp="tomorrow"), "token has no valid exp"),
        (go_claims(exp="2025-03-01T15:00:00"), "token has no valid exp"),
        (go_claims(exp=""), "token has no valid exp"),
        (go_claims(userID=None), "token lacks userID or userCategory"),
        (go_claims(userID=""), "token lacks userID or userCategory"),
        (go_claims(userID=7), "token lacks userID or userCategory"),
        (go_claims(userCategory=None), "token lacks userID or userCategory"),
        (b"not json", "token payload is not JSON"),
        (b"\xff\xfe", "token payload is not JSON"),
        (b'["alice"]', "token payload is not an object"),
    ],
)
def test_broken_claims_are_refused(
    service: TokenService, claims: Any, message: str
) -> None:
    if isinstance(claims, dict):
        claims = {**claims, "purpose": "login"}
    refused(service, forge(claims, LOGIN_ASSERTION), LOGIN, message)


def test_broken_go_claims_are_refused(service: TokenService) -> None:
    refused(service, forge(go_claims(exp=None)), LOGIN, "token has no valid exp")
    refused(
        service,
        forge(go_claims(userID=None)),
        LOGIN,
        "token lacks userID or userCategory",
    )


# ------------------------------------------------------------------ the key


def test_configured_key_wins(tmp_path: Path) -> None:
    (tmp_path / "token.key").write_text(base64.b64encode(OTHER_KEY).decode() + "\n")
    configured = base64.b64encode(KEY).decode()

    assert load_token_key(configured, tmp_path) == KEY
    # Go ignores line breaks in the base64.
    assert load_token_key(configured[:20] + "\n" + configured[20:], tmp_path) == KEY
    assert (tmp_path / "token.key").read_text() == (
        base64.b64encode(OTHER_KEY).decode() + "\n"
    )


def test_configured_key_writes_no_file(tmp_path: Path) -> None:
    assert load_token_key(base64.b64encode(KEY).decode(), tmp_path) == KEY
    assert not (tmp_path / "token.key").exists()


def test_key_is_made_once_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(
        tokens, "log", Logger(observer=cast(ILogObserver, events.append))
    )

    first = load_token_key("", tmp_path)
    path = tmp_path / "token.key"
    written = path.read_bytes()
    second = load_token_key("", tmp_path)

    assert len(first) == 32
    assert second == first
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert written == base64.b64encode(first) + b"\n"
    assert path.read_bytes() == written
    assert [formatEvent(e) for e in events] == [
        f"made a token key in {path}; logins now survive restarts"
    ]
    assert base64.b64encode(first).decode() not in formatEvent(events[0])


def test_tokens_survive_a_restart(tmp_path: Path, clock: Clock) -> None:
    token, _ = TokenService(load_token_key("", tmp_path), clock).issue("alice", "user")

    assert (
        TokenService(load_token_key("", tmp_path), clock).check(token).user == "alice"
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"not*base64\n", "unreadable token key: Only base64 data is allowed"),
        (base64.b64encode(bytes(16)) + b"\n", "a token key is base64 of 32 bytes"),
        (base64.b64encode(bytes(33)) + b"\n", "a token key is base64 of 32 bytes"),
        (b"", "a token key is base64 of 32 bytes"),
    ],
)
def test_corrupt_key_file_stops_the_start(
    tmp_path: Path, content: bytes, message: str
) -> None:
    path = tmp_path / "token.key"
    path.write_bytes(content)
    path.chmod(0o600)

    with pytest.raises(StartupError) as raised:
        load_token_key("", tmp_path)
    assert str(raised.value) == f"{path}: {message}"
    assert path.read_bytes() == content


def test_a_key_file_readable_by_others_stops_the_start(tmp_path: Path) -> None:
    path = tmp_path / "token.key"
    path.write_text("A" * 43 + "=\n")
    path.chmod(0o644)

    with pytest.raises(StartupError) as raised:
        load_token_key("", tmp_path)
    assert str(raised.value) == (
        f"{path} is readable by other users (mode 0644); "
        f"it must be 0600: chmod 600 {path}"
    )


def test_token_hash_is_sha256_hex() -> None:
    assert token_hash("abc") == (
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    )
    assert token_hash("v4.local.x") != token_hash("v4.local.y")
