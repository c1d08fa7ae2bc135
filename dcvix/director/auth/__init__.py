"""Login back ends: one interface for PAM, LDAP, RADIUS, OTP and commands.

A back end answers the canonical user id (the credentials are good: the id as
the back end knows it, which tokens and sessions then use — LDAP's may differ
from what was typed) or ``None`` (they are not), or raises
:class:`AuthUnavailable` when it could not decide (timeout, server down,
misconfiguration). Callers log the reason and show the client the
same failure text whatever happened: back-end details never reach it.
"""

from __future__ import annotations

from typing import Protocol

from twisted.logger import Logger

log = Logger()


class AuthUnavailable(Exception):
    """The back end could not decide; the message is for the log only."""


class Authenticator(Protocol):
    """Checks a user's credentials; never blocks the reactor, always times out."""

    name: str

    async def authenticate(self, user: str, password: str, otp: str) -> str | None:
        """The canonical id of ``user`` if they proved who they are, else None."""
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


def refused_before_asking(user: str, password: str, *more: str) -> bool:
    """Whether a login is refused before any back end sees it (and say why).

    An empty password (for LDAP an unauthenticated bind), and fields with CR,
    LF, NUL or a lone surrogate. The login service refuses these too; each back
    end checks again because it alone knows what reaching it would cost.
    """
    if not password:
        return True
    if has_forbidden_characters(user, password, *more):
        log.warn("refused a login with a forbidden character in a field")
        return True
    return False
