"""Login back ends: one interface, so LDAP, RADIUS and OTP plug in later.

A back end answers ``True`` (the credentials are good) or ``False`` (they are
not), or raises :class:`AuthUnavailable` when it could not decide (timeout,
server down, misconfiguration). Callers log the reason and show the client the
same failure text whatever happened: back-end details never reach it.
"""

from __future__ import annotations

from typing import Protocol


class AuthUnavailable(Exception):
    """The back end could not decide; the message is for the log only."""


class Authenticator(Protocol):
    """Checks a user's credentials; never blocks the reactor, always times out."""

    name: str

    async def authenticate(self, user: str, password: str, otp: str) -> bool:
        """Whether ``user`` proved who they are."""
        ...


FORBIDDEN_CHARACTERS = ("\r", "\n", "\x00")


def has_forbidden_characters(*fields: str) -> bool:
    """CR, LF or NUL in any field: refused before any back end sees it.

    So is text that has no UTF-8 form: a lone surrogate, which a JSON escape
    such as ``ud800`` decodes to. Back ends encode what they pass on, and that
    would raise.
    """
    for field in fields:
        if any(c in field for c in FORBIDDEN_CHARACTERS):
            return True
        try:
            field.encode("utf-8")
        except UnicodeEncodeError:
            return True
    return False
