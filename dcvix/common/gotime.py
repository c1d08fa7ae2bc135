"""Timestamps as DCV prints them and as Go writes them (RFC 3339)."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

GO_ZERO_TIME = "0001-01-01T00:00:00Z"

_TIME = re.compile(
    r"(\d{4}-\d{2}-\d{2})[Tt ](\d{2}:\d{2}:\d{2})(?:\.(\d+))?"
    r"(\s*)(Z|z|[+-]\d{2}:?\d{2})?(\s.*)?"
)


def _parse(value: str, stored: bool) -> dt.datetime | None:
    """The one timestamp parser; ``stored`` relaxes it for database columns."""
    match = _TIME.fullmatch(value.strip())
    if match is None:
        raise ValueError(f"not a timestamp: {value!r}")
    day, clock, fraction, space, zone, trailer = match.groups()
    if not stored and (
        zone is None or space or trailer or (fraction is not None and len(fraction) > 9)
    ):
        raise ValueError(f"not a timestamp: {value!r}")
    micro = (fraction or "").ljust(6, "0")[:6]
    if zone in (None, "Z", "z"):
        zone = "+00:00"
    elif ":" not in zone:
        zone = f"{zone[:3]}:{zone[3:]}"
    try:
        moment = dt.datetime.fromisoformat(f"{day}T{clock}.{micro}{zone}")
        if moment.year <= 1:
            return None  # Go's zero time
        return moment.astimezone(dt.UTC)
    except (ValueError, OverflowError):
        # A month 13, hour 24 or offset of 24 h; or past year 9999 once in UTC.
        raise ValueError(f"not a timestamp: {value!r}") from None


def parse_time(value: Any) -> dt.datetime | None:
    """A DCV timestamp: RFC 3339 with 0-9 fractional digits; ``""``/null is none.

    Raises:
        ValueError: anything else.
    """
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise ValueError(f"not a timestamp: {value!r}")
    return _parse(value, stored=False)


def parse_stored_time(text: str | dt.datetime | None) -> dt.datetime | None:
    """A timestamp column: ours, Go's as its SQLite driver wrote it, or PostgreSQL's.

    Go's are ``2025-03-01 10:20:30.123456789+01:00``, or ``time.String()``
    text with a zone name after the offset; no offset means UTC. Junk is None,
    never an error: one odd row must not stop the director. A PostgreSQL
    ``timestamptz`` arrives as a datetime, given back in UTC.
    """
    if isinstance(text, dt.datetime):
        return text.astimezone(dt.UTC)
    if not text:
        return None
    try:
        return _parse(text, stored=True)
    except ValueError:
        return None


def format_time(moment: dt.datetime | None) -> str:
    """As Go writes a ``time.Time``: UTC, ``Z``, fraction without trailing zeros.

    No time is Go's zero time, never ``""`` (a Go director refuses ``""``).
    """
    if moment is None:
        return GO_ZERO_TIME
    if moment.tzinfo is not dt.UTC:  # reported times are UTC: the listings skip this
        moment = moment.astimezone(dt.UTC)
    # isoformat, not strftime: "%Y" does not pad years before 1000 to 4 digits.
    # Without "+00:00"; a fraction has a digit other than 0, so rstrip keeps ".".
    if moment.microsecond:
        return moment.isoformat(timespec="microseconds")[:-6].rstrip("0") + "Z"
    return moment.isoformat(timespec="seconds")[:-6] + "Z"
