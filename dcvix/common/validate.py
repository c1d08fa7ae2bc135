"""Strict checks for the identifiers that cross the wire (CONTRACT §3)."""

from __future__ import annotations

import re
import uuid

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")


def is_hostname(name: str) -> bool:
    """An RFC 1123 host name: letters, digits, inner hyphens; no wildcard."""
    return bool(_HOSTNAME.fullmatch(name)) and not name.replace(".", "").isdigit()


def canonical_guid(text: str) -> str | None:
    """The lower-case canonical form of a UUID string, or None if it is not one.

    Only the 36-character hyphenated form is accepted, as Go agents write it.
    """
    if len(text) != 36:
        return None
    try:
        value = uuid.UUID(text)
    except ValueError:
        return None
    canonical = str(value)
    return canonical if canonical == text.lower() else None
