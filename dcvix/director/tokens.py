"""PASETO v4.local tokens with a purpose, checked on the injected clock.

Claims are Go dcvix's (``iat``, ``nbf``, ``exp`` as RFC 3339 strings, ``userID``,
``userCategory``) plus ``purpose``. The purpose is also bound cryptographically
as the PASETO implicit assertion, so a connection token cannot be replayed as a
login token even by editing claims (it would not decrypt). Go tokens carry
neither; they are accepted as login tokens until they expire, so a switch from
Go dcvix does not log everyone out (with the same ``token_key``).

The library never checks time: ``exp`` is required and compared with the
injected clock here.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyseto
from pyseto import Key
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dcvix.common.clock import now_utc
from dcvix.common.daemon import StartupError, require_private_file
from dcvix.common.files import atomic_write
from dcvix.common.gotime import parse_time
from dcvix.director.datadir import DirectorFiles

log = Logger()

LOGIN = "login"
CONNECTION = "connection"
LOGIN_LIFETIME = dt.timedelta(hours=2)
_ASSERTIONS = {LOGIN: b"dcvix:login", CONNECTION: b"dcvix:connection"}
_PREFIX = "v4.local."
_BODY = re.compile(r"[A-Za-z0-9_-]+")
ADMIN, USER = "admin", "user"


class InvalidToken(Exception):
    """The token does not decrypt, has expired or lacks a claim."""


@dataclass(frozen=True)
class Claims:
    """What a valid token says."""

    user: str
    category: str
    purpose: str
    expires: dt.datetime
    server: str = ""
    session: str = ""


def load_token_key(configured: str, data_dir: Path) -> bytes:
    """The 32-byte key: ``token_key`` from config, else ``token.key``, made once.

    Raises:
        StartupError: ``token.key`` exists but does not hold base64 of 32 bytes.
    """
    if configured:
        return base64.b64decode("".join(configured.split()))
    path = DirectorFiles(data_dir).token_key
    if path.exists():
        require_private_file(path)
        try:
            key = base64.b64decode(path.read_text().strip(), validate=True)
        except (OSError, binascii.Error, ValueError) as error:
            raise StartupError(f"{path}: unreadable token key: {error}") from None
        if len(key) != 32:
            raise StartupError(f"{path}: a token key is base64 of 32 bytes")
        return key
    key = os.urandom(32)
    atomic_write(path, base64.b64encode(key) + b"\n", 0o600)
    log.info("made a token key in {path}; logins now survive restarts", path=str(path))
    return key


def _rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone().replace(microsecond=0).isoformat()


def token_hash(token: str) -> str:
    """SHA-256 of a token, hex: what the revocation list keeps."""
    return hashlib.sha256(token.encode()).hexdigest()


class TokenService:
    """Issues and checks tokens.

    Args:
        key: the 32-byte symmetric key.
        clock: where "now" comes from.
    """

    def __init__(self, key: bytes, clock: IReactorTime) -> None:
        self._key = Key.new(version=4, purpose="local", key=key)
        self._clock = clock

    def issue(
        self,
        user: str,
        category: str,
        purpose: str = LOGIN,
        lifetime: dt.timedelta = LOGIN_LIFETIME,
        **binding: str,
    ) -> tuple[str, dt.datetime]:
        """A new token and its expiry.

        Raises:
            ValueError: ``user`` is empty: :meth:`check` would refuse the token.
        """
        if not user:
            raise ValueError("a token needs a user")
        issued = now_utc(self._clock).replace(microsecond=0)
        expires = issued + lifetime
        claims: dict[str, Any] = {
            "iat": _rfc3339(issued),
            "nbf": _rfc3339(issued),
            "exp": _rfc3339(expires),
            "userID": user,
            "userCategory": category,
            "purpose": purpose,
            **binding,
        }
        token = pyseto.encode(
            self._key,
            payload=json.dumps(claims).encode(),
            implicit_assertion=_ASSERTIONS[purpose],
        )
        return token.decode("ascii"), expires

    def check(self, token: str, purpose: str = LOGIN) -> Claims:
        """The claims of a valid token of ``purpose``.

        Raises:
            InvalidToken: wrong key or purpose, tampered, expired, or malformed.
        """
        if not _canonical(token):
            raise InvalidToken("token is not in canonical form")
        payload = self._decrypt(token, _ASSERTIONS[purpose])
        legacy = False
        if payload is None and purpose == LOGIN:
            payload = self._decrypt(token, b"")
            legacy = True
        if payload is None:
            raise InvalidToken("token does not decrypt")
        try:
            claims = json.loads(payload)
        except (ValueError, UnicodeDecodeError):
            raise InvalidToken("token payload is not JSON") from None
        if not isinstance(claims, dict):
            raise InvalidToken("token payload is not an object")
        found = claims.get("purpose", LOGIN if legacy else None)
        if found != purpose or (legacy and "purpose" in claims):
            raise InvalidToken("token has another purpose")
        expires = _parse_time(claims.get("exp"))
        if expires is None:
            raise InvalidToken("token has no valid exp")
        if now_utc(self._clock) >= expires:
            raise InvalidToken("token expired")
        user, category = claims.get("userID"), claims.get("userCategory")
        if not isinstance(user, str) or not user or not isinstance(category, str):
            raise InvalidToken("token lacks userID or userCategory")
        return Claims(
            user,
            category,
            purpose,
            expires,
            str(claims.get("serverId", "")),
            str(claims.get("sessionId", "")),
        )

    def _decrypt(self, token: str, assertion: bytes) -> bytes | None:
        try:
            decoded = pyseto.decode(self._key, token, implicit_assertion=assertion)
        except (pyseto.PysetoError, ValueError, TypeError):
            return None
        payload = decoded.payload
        return payload if isinstance(payload, bytes) else None


def _canonical(token: str) -> bool:
    """Whether ``token`` is ``v4.local.`` and unpadded canonical base64url.

    pyseto also accepts padding, a trailing ``.``, the standard alphabet and
    other final characters that decode to the same bytes: variants of one token
    that hash differently, which would slip past the revocation list.
    """
    body = token.removeprefix(_PREFIX)
    if body == token or not _BODY.fullmatch(body):
        return False
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (binascii.Error, ValueError):
        return False
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode() == body


def _parse_time(value: Any) -> dt.datetime | None:
    """A claim's RFC 3339 time (Go writes them), or None when it is not one."""
    try:
        return parse_time(value)
    except ValueError:
        return None
