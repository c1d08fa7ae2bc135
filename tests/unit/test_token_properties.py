"""Properties of the director's PASETO tokens (hypothesis).

Whatever a client sends as a login cookie or as a DCV ``authenticationToken``
(any text, or a real token with a character changed), it is refused with the
module's own error (:class:`InvalidToken`; ``Unauthorized`` at the login
layer; no user at the verifier), never another exception; a token comes back
with exactly the user, category and binding it was issued with, whatever
their characters; and a token of one purpose is never accepted as another.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.internet.task import Clock

from dcvix.common.errors import Unauthorized
from dcvix.ctl import wait as resolve
from dcvix.director.connections import ConnectionTokens
from dcvix.director.login import LoginService
from dcvix.director.runtime import MemoryRuntimeStore
from dcvix.director.tokens import (
    ADMIN,
    CONNECTION,
    LOGIN,
    USER,
    InvalidToken,
    TokenService,
)
from dcvix.testing import reports

KEY = bytes(range(32))
NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=dt.UTC)
PURPOSES = [LOGIN, CONNECTION]
ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


class Revoked:
    """The revoked-token list, in memory."""

    def __init__(self) -> None:
        self.hashes: set[str] = set()

    async def revoke_token(self, token_hash: str, expires: dt.datetime) -> bool:
        fresh = token_hash not in self.hashes
        self.hashes.add(token_hash)
        return fresh

    async def token_revoked(self, token_hash: str) -> bool:
        return token_hash in self.hashes

    async def vacuum_tokens(self, now: dt.datetime) -> int:
        return 0


CLOCK = Clock()
CLOCK.advance(NOW.timestamp())
SERVICE = TokenService(KEY, CLOCK)
RUNTIME = MemoryRuntimeStore()
resolve(
    RUNTIME.put(
        reports.server(
            "ws-1",
            reports.session("s-bob", "bob"),
            seen=NOW,
            address="192.0.2.1",
        )
    )
)
CONNECTIONS = ConnectionTokens(SERVICE, RUNTIME, Revoked(), 600.0, False, 90.0, CLOCK)
# identify() reads only the token service and the revoked list.
LOGINS = LoginService(
    cast(Any, None),
    SERVICE,
    cast(Any, None),
    Revoked(),
    cast(Any, None),
    cast(Any, None),
)
BOB_LOGIN = SERVICE.issue("bob", USER)[0]
BOB_CONNECTION = CONNECTIONS.issue("bob", "ws-1", "s-bob").token


def identify(token: str) -> Any:
    return resolve(LOGINS.identify(token))


def verify(token: str, session_id: str = "s-bob") -> str | None:
    return resolve(CONNECTIONS.verify(token, session_id, "192.0.2.1"))


def test_the_real_tokens_are_accepted() -> None:
    """The mutation properties below start from tokens that do work."""
    assert identify(BOB_LOGIN).user == "bob"
    assert verify(BOB_CONNECTION) == "bob"


TEXTS = (
    st.text(max_size=200)
    | st.text(ALPHABET, max_size=200).map(lambda body: "v4.local." + body)
    | st.sampled_from(["v4.local.", "v4.public.", "v2.local.AAAA", "v4.local.====", ""])
)


@settings(max_examples=150)
@given(text=TEXTS, purpose=st.sampled_from(PURPOSES))
@example(text="v4.local.\ud800", purpose=LOGIN)
@example(text="v4.local." + "A" * 43, purpose=LOGIN)
def test_any_text_is_refused_with_invalid_token(text: str, purpose: str) -> None:
    try:
        SERVICE.check(text, purpose)
    except InvalidToken:
        return
    raise AssertionError(f"{text!r} accepted")


@st.composite
def mutated(draw: st.DrawFn, token: str) -> str:
    """``token`` with characters changed, inserted, dropped, or cut short."""
    chars = list(token)
    for _ in range(draw(st.integers(1, 3))):
        where = draw(st.integers(0, len(chars)))
        how = draw(st.sampled_from(["change", "insert", "drop", "cut", "case"]))
        new = draw(st.sampled_from(list(ALPHABET + "=./+ \x00é")))
        if how == "change" and where < len(chars):
            chars[where] = new
        elif how == "insert":
            chars.insert(where, new)
        elif how == "drop" and where < len(chars):
            del chars[where]
        elif how == "cut":
            del chars[where:]
        elif how == "case" and where < len(chars):
            chars[where] = chars[where].swapcase()
    return "".join(chars)


@settings(max_examples=150)
@given(login=mutated(BOB_LOGIN), connection=mutated(BOB_CONNECTION))
def test_a_changed_token_is_refused_at_every_door(login: str, connection: str) -> None:
    for token, original in ((login, BOB_LOGIN), (connection, BOB_CONNECTION)):
        if token == original:
            continue
        for purpose in PURPOSES:
            try:
                SERVICE.check(token, purpose)
            except InvalidToken:
                pass
            else:
                raise AssertionError(f"{token!r} accepted as {purpose}")
        try:
            identify(token)
        except Unauthorized as error:
            assert error.message == "login required"
        else:
            raise AssertionError(f"{token!r} accepted as a login")
        assert verify(token) is None


ANY_TEXT = st.text(max_size=40)  # surrogates and control characters included


@settings(max_examples=120)
@given(
    user=ANY_TEXT,
    category=st.sampled_from([ADMIN, USER]) | ANY_TEXT,
    server=ANY_TEXT,
    session=ANY_TEXT,
    purpose=st.sampled_from(PURPOSES),
)
@example(user="", category=USER, server="", session="", purpose=LOGIN)
@example(user="\ud800\x00\u202e", category="\n", server="", session="", purpose=LOGIN)
def test_a_token_says_exactly_what_it_was_issued_with(
    user: str, category: str, server: str, session: str, purpose: str
) -> None:
    binding = (
        {"serverId": server, "sessionId": session} if purpose == CONNECTION else {}
    )
    try:
        token, expires = SERVICE.issue(
            user, category, purpose, dt.timedelta(minutes=10), **binding
        )
    except ValueError:
        # Regression: an empty user was issued a token that check() refused.
        assert user == ""
        return
    assert token.isascii()
    claims = SERVICE.check(token, purpose)
    assert (claims.user, claims.category, claims.purpose) == (user, category, purpose)
    assert (claims.server, claims.session) == (
        binding.get("serverId", ""),
        binding.get("sessionId", ""),
    )
    assert claims.expires == expires


@settings(max_examples=100)
@given(
    user=ANY_TEXT.filter(bool),
    issued_as=st.sampled_from(PURPOSES),
    checked_as=st.sampled_from(PURPOSES),
    session=st.sampled_from(["s-bob", "console", ""]),
)
def test_a_token_of_one_purpose_is_never_another(
    user: str, issued_as: str, checked_as: str, session: str
) -> None:
    binding = (
        {"serverId": "ws-1", "sessionId": session} if issued_as == CONNECTION else {}
    )
    token = SERVICE.issue(user, ADMIN, issued_as, dt.timedelta(minutes=10), **binding)[
        0
    ]
    try:
        claims = SERVICE.check(token, checked_as)
    except InvalidToken:
        assert issued_as != checked_as
    else:
        assert issued_as == checked_as == claims.purpose
    if issued_as != LOGIN:
        try:
            identify(token)
        except Unauthorized:
            pass
        else:
            raise AssertionError("a connection token passed as a login")
    if issued_as != CONNECTION:
        assert verify(token, session or "s-bob") is None
