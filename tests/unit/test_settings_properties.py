"""Properties of config values (hypothesis).

Whatever text an operator writes after any key of either daemon, the config
is built or refused with one :class:`ConfigError` line naming the file, the
section and the key, never another exception; a value that is accepted is
written back (in the default file) as text that reads back to the same
value; and a duration accepted today never overflows the date sums the
daemons later make with it.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from dcvix.agent.config import AgentConfig
from dcvix.common.config import (
    GO_MAX_DURATION,
    ConfigError,
    Kind,
    _meta,
    format_duration,
    parse_config,
    parse_duration,
    section_classes,
)
from dcvix.director.config import DirectorConfig

FILE = Path("/nonexistent/dcvix-test.conf")
# What str.splitlines() splits on: a value never spans lines of the INI file.
LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def declared() -> list[tuple[type[Any], str, str, Kind[Any]]]:
    """(config class, section, key, kind) of every key either daemon reads."""
    keys = []
    for config_class in (DirectorConfig, AgentConfig):
        for section, section_class in section_classes(config_class):
            for f in fields(section_class):
                if "dcvix" in f.metadata:
                    keys.append((config_class, section, f.name, _meta(f).kind))
    return keys


KEYS = declared()
# Pieces each kind cares about, so that examples often come close to valid.
PIECES = st.sampled_from(
    [
        "0",
        "1",
        "65535",
        "65536",
        "-1",
        "+5",
        "1_000",
        "\u0661\u0662",
        "1.5",
        ".5",
        "5.",
        "e3",
        "9" * 30,
        "h",
        "m",
        "s",
        "ms",
        "µs",
        "ns",
        "d",
        " ",
        ",",
        ":",
        "/",
        ".",
        "[",
        "]",
        "%",
        "*",
        "#",
        ";",
        '"',
        "=",
        "\t",
        "\x00",
        "\x7f",
        "true",
        "Off",
        "yes",
        "json",
        "ldap",
        "token",
        "warn",
        "localhost",
        "ws-1",
        "example.org",
        "127.0.0.1",
        "::1",
        "fe80::1%eth0",
        "10.0.0.0/8",
        "https://",
        "ldapi://",
        "display/quality",
        "a" * 64,
        "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=",
    ]
)
TEXTS = st.lists(PIECES | st.text(max_size=4), max_size=6).map("".join) | st.text()
LINE_TEXTS = TEXTS.filter(lambda t: not any(c in LINE_BREAKS for c in t))


@settings(max_examples=120)
@given(key=st.sampled_from(KEYS), text=LINE_TEXTS)
@example(key=next(k for k in KEYS if k[2] == "max_age"), text="9" * 400)
@example(key=next(k for k in KEYS if k[2] == "max_age"), text="99999999999999h")
@example(key=next(k for k in KEYS if k[2] == "agent_cert_lifetime"), text="1e308")
def test_any_value_of_any_key_is_taken_or_refused_naming_the_key(
    key: tuple[type[Any], str, str, Kind[Any]], text: str
) -> None:
    config_class, section, name, _kind = key
    source = f"[{section}]\n{name} = {text}\n"
    try:
        parse_config(config_class, source, FILE)
    except ConfigError as error:
        assert str(error).startswith(f"{FILE}: [{section}] {name}: "), str(error)
        assert "\n" not in str(error)


def same(kind: Kind[Any], first: Any, second: Any) -> bool:
    if isinstance(first, float):
        return math.isclose(first, second, rel_tol=1e-12, abs_tol=1e-9)
    return bool(first == second)


@settings(max_examples=120)
@given(key=st.sampled_from(KEYS), text=TEXTS)
def test_an_accepted_value_is_written_back_as_text_read_as_the_same_value(
    key: tuple[type[Any], str, str, Kind[Any]], text: str
) -> None:
    kind = key[3]
    try:
        value = kind.parse(text)
    except ValueError:
        return
    written = kind.render(value)
    assert isinstance(written, str)
    assert same(kind, kind.parse(written), value), (text, written)


# ---------------------------------------------------------------- durations

UNITS = st.sampled_from(["ns", "us", "µs", "μs", "ms", "s", "m", "h"])
NUMBERS = st.builds(
    lambda whole, dot, fraction: whole + dot + fraction,
    st.integers(0, 10**12).map(str) | st.just(""),
    st.sampled_from([".", ""]),
    st.integers(0, 10**9).map(str) | st.just(""),
).filter(lambda n: n.strip(".") and ("." in n or n.isdigit()))
GO_DURATIONS = st.lists(st.tuples(NUMBERS, UNITS), min_size=1, max_size=4).map(
    lambda parts: "".join(n + u for n, u in parts)
)
NOW = dt.datetime(2026, 7, 1, 12, 0, 0, tzinfo=dt.UTC)


@settings(max_examples=100)
@given(text=GO_DURATIONS | NUMBERS | TEXTS)
@example(text="9" * 400)  # float("9" * 400) is inf: was accepted
@example(text="99999999999999h")  # was accepted; timedelta() then overflowed
@example(text="\u0661\u0662s")  # Arabic-Indic digits: Go refuses them
def test_an_accepted_duration_is_finite_and_fits_every_date_sum(text: str) -> None:
    try:
        seconds = parse_duration(text)
    except ValueError:
        return
    assert 0 <= seconds <= GO_MAX_DURATION
    assert not any(c.isdigit() and not c.isascii() for c in text)
    span = dt.timedelta(seconds=seconds)
    assert NOW - span <= NOW + span


@settings(max_examples=100)
@given(
    seconds=st.integers(min_value=0, max_value=int(GO_MAX_DURATION)).map(float)
    | st.floats(min_value=0, max_value=GO_MAX_DURATION)
    | st.decimals(min_value=0, max_value=10**6, places=9).map(float)
)
@example(seconds=1e-05)  # was written "1e-05s", which no parser reads back
@example(seconds=1234567.5)  # was written "1.23457e+06s": unreadable and wrong
@example(seconds=59.9999999999)
def test_a_written_duration_reads_back_to_the_nanosecond(seconds: float) -> None:
    written = format_duration(seconds)
    assert "e" not in written and written.endswith(("h", "m", "s"))
    back = parse_duration(written)
    # Go keeps nanoseconds; a float of this size keeps some 16 digits.
    assert math.isclose(back, seconds, rel_tol=1e-15, abs_tol=1e-9 + 1e-12)


@settings(max_examples=50)
@given(hours=st.integers(0, 10**5), minutes=st.integers(0, 59), secs=st.integers(0, 59))
def test_whole_durations_are_written_as_go_writes_them(
    hours: int, minutes: int, secs: int
) -> None:
    seconds = hours * 3600 + minutes * 60 + secs
    written = format_duration(seconds)
    expected = (
        (f"{hours}h" if hours else "")
        + (f"{minutes}m" if minutes else "")
        + (f"{secs}s" if secs else "")
    ) or "0s"
    assert written == expected
    assert parse_duration(written) == seconds
