"""Strict checks for the identifiers that cross the wire (CONTRACT §3)."""

from __future__ import annotations

import ipaddress
import re
import uuid
from collections.abc import Sequence

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}$){_LABEL}(?:\.{_LABEL})*")
_ZONE = re.compile(r"[A-Za-z0-9_.-]{1,32}")


def is_hostname(name: str) -> bool:
    """An RFC 1123 host name: letters, digits, inner hyphens; no wildcard."""
    return bool(_HOSTNAME.fullmatch(name)) and not name.replace(".", "").isdigit()


def parse_host(text: str) -> str:
    """A DNS name (a final dot allowed) or an IP address (IPv6 without brackets).

    Raises:
        ValueError: anything else.
    """
    try:
        address = ipaddress.ip_address(text.strip("[]"))
    except ValueError:
        pass
    else:
        # Python accepts any text as an IPv6 zone ("fe80::1%<anything>").
        zone = getattr(address, "scope_id", None)
        if zone is not None and not _ZONE.fullmatch(zone):
            raise ValueError(f"{text!r} has an invalid IPv6 zone")
        return str(address)
    if not _HOSTNAME.fullmatch(text.removesuffix(".")):
        raise ValueError(f"{text!r} is not a host name or IP address")
    return text


def split_host_port(text: str) -> tuple[str, int | None]:
    """Split ``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address.

    Raises:
        ValueError: not a host, or a port outside 1-65535.
    """
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else None
        if rest and port_text is None:
            raise ValueError(f"{text!r} is not host[:port]")
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    else:
        host, port_text = text, None
    port = None
    if port_text is not None:
        if not port_text.isdigit():
            raise ValueError(f"{port_text!r} is not an integer")
        port = int(port_text)
        if not 1 <= port <= 65535:
            raise ValueError(f"{port} must be at least 1 and at most 65535")
    return parse_host(host), port


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


MAX_CONFIG_VALUE = 256
_SESSION_ID = re.compile(r"[A-Za-z0-9_.@:+=-]{1,256}")


class NotAllowed(Exception):
    """A DCV setting outside ``config_allow``; the message is safe to show."""


class InvalidInput(ValueError):
    """A value that must not reach ``dcv``; the message is safe to show."""


def check_session_id(value: str) -> str:
    """A DCV session id: letters, digits and ``_.@:+=-``, not starting with ``-``.

    ``.`` and ``..`` are refused: the id becomes a URL path segment.
    """
    if (
        not _SESSION_ID.fullmatch(value)
        or value.startswith("-")
        or not value.strip(".")
    ):
        raise InvalidInput("invalid session id")
    return value


def check_config(
    section: str, key: str, value: str, allowed: Sequence[str]
) -> tuple[str, str, str]:
    """One ``set-config`` entry: allowed key, and a value that is plain text.

    Raises:
        NotAllowed: the key is not in ``config_allow``.
        InvalidInput: an empty part, a control character, a leading ``-`` or an
            over-long value.
    """
    if not section or not key or not value:
        raise InvalidInput("section, key and value must not be empty")
    if f"{section}/{key}" not in allowed:
        raise NotAllowed(f"{section}/{key} is not an allowed setting")
    if len(value) > MAX_CONFIG_VALUE or value.startswith("-"):
        raise InvalidInput("invalid value")
    if any(ord(c) < 32 or c == "\x7f" for c in value):
        raise InvalidInput("invalid value")
    return section, key, value
