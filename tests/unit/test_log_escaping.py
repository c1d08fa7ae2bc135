"""Control characters in logged client data are escaped (CONTRACT §3 Hardening).

The observer escapes every text field of an event and the rendered line (but
for a traceback's newlines); the access log line escapes what the client sent.
"""

from __future__ import annotations

import io
import json
import re

import pytest
from twisted.logger import Logger
from twisted.web.server import Request
from twisted.web.test.requesthelper import DummyChannel

from dcvix.common.http import access_log_line
from dcvix.common.logging import escape_control, make_observer

# What must never reach a log file raw (a newline only ends a line).
RAW = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("plain ascii, é, 中文, emoji 🙂", "plain ascii, é, 中文, emoji 🙂"),
        ("\x1b[31mred\x1b[0m", "\\x1b[31mred\\x1b[0m"),
        ("a\r\nINFO forged", "a\\r\\nINFO forged"),
        ("tab\there", "tab\\there"),
        ("bs\x08\x08del\x7f nul\x00", "bs\\x08\\x08del\\x7f nul\\x00"),
        ("c1 \x85 \x9b2J", "c1 \\x85 \\x9b2J"),
        ("sep\u2028para\u2029", "sep\\u2028para\\u2029"),
        ("bidi \u202egnp.exe \u2066x\u2069 \u200f\u061c", None),
        ("lone \ud800 surrogate", "lone \\ud800 surrogate"),
    ],
)
def test_escape_control(text: str, escaped: str | None) -> None:
    result = escape_control(text)
    assert RAW.search(result) is None
    result.encode("utf-8")  # never a lone surrogate
    if escaped is not None:
        assert result == escaped
    else:
        assert result == "bidi \\u202egnp.exe \\u2066x\\u2069 \\u200f\\u061c"


def test_escape_control_can_keep_newlines() -> None:
    assert escape_control("a\n\x1bb\r\n", keep_newlines=True) == "a\n\\x1bb\\r\n"


def make_logger(fmt: str) -> tuple[Logger, io.StringIO]:
    output = io.StringIO()
    observer = make_observer("debug", fmt, [output])
    return Logger(namespace="dcvix.test", observer=observer), output


HOSTILE = "eve\r\nINFO     [2026-01-01T00:00:00+00:00] dcvix.audit: admin\x1b[2J\u202e"


def test_text_fields_are_escaped_one_event_one_line() -> None:
    log, output = make_logger("text")
    log.info("login failed for {user} from {address}", user=HOSTILE, address="::1")
    text = output.getvalue()
    assert text.count("\n") == 1
    assert RAW.search(text) is None
    assert text.endswith(
        "dcvix.test: login failed for eve\\r\\nINFO     [2026-01-01T00:00:00+00:00] "
        "dcvix.audit: admin\\x1b[2J\\u202e from ::1\n"
    )


def test_json_fields_and_message_are_escaped() -> None:
    log, output = make_logger("json")
    log.info("agent {hostname}", hostname="ws\x1b]0;pwned\x07", guid="g\u2028")
    [line] = output.getvalue().splitlines()
    record = json.loads(line)
    assert record["message"] == "agent ws\\x1b]0;pwned\\x07"
    assert record["hostname"] == "ws\\x1b]0;pwned\\x07"
    assert record["guid"] == "g\\u2028"
    assert RAW.search(line) is None


def test_a_traceback_keeps_its_lines_but_not_control_characters() -> None:
    log, output = make_logger("text")
    try:
        raise ValueError("bad value \x1b[31m\u2028")
    except ValueError:
        log.failure("handler failed")
    text = output.getvalue()
    assert text.count("\n") > 3
    assert RAW.search(text) is None
    assert "ValueError: bad value \\x1b[31m\\u2028" in text


def request_with(user_agent: bytes | None, uri: bytes = b"/v1/health") -> Request:
    request = Request(DummyChannel())
    request.method = b"GET"
    request.uri = uri
    request.code = 200
    request.sentLength = 22
    if user_agent is not None:
        request.requestHeaders.addRawHeader(b"User-Agent", user_agent)
    return request


@pytest.mark.parametrize(
    ("user_agent", "shown"),
    [
        (b"curl/8.5", "curl/8.5"),
        (None, "-"),
        (b'a "quoted" agent', "a 'quoted' agent"),
        (b"x\x1b[31my\x08\x7f", "x\\x1b[31my\\x08\\x7f"),
        ("t\u2028\u202e\x85".encode(), "t\\u2028\\u202e\\x85"),
        (b"latin-1 \xe9\xff", "latin-1 \\xe9\\xff"),
    ],
)
def test_access_log_line_escapes_the_user_agent(
    user_agent: bytes | None, shown: str
) -> None:
    line = access_log_line("", request_with(user_agent))
    assert line.endswith(f'"GET /v1/health" 200 22 "{shown}"')
    assert RAW.search(line) is None


def test_access_log_line_keeps_the_path_encoded_and_drops_the_query() -> None:
    line = access_log_line("", request_with(b"ua", b"/v1/%1b[31m%e2%80%a8?token=x"))
    assert '"GET /v1/%1b[31m%e2%80%a8" 200 22 "ua"' in line
    assert "token" not in line
