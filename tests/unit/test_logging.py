"""Log output: levels, text and JSON lines, failing outputs, rotation, redaction."""

from __future__ import annotations

import io
import json
import re
import stat
from pathlib import Path

import pytest
from twisted.logger import Logger

import dcvix.common.logging as dcvix_logging
from dcvix.common.logging import (
    REDACTED,
    is_secret_field,
    make_observer,
    open_log_file,
    redact_event,
    redact_text,
)

PKCS8_KEY = """\
-----BEGIN PRIVATE KEY-----
MC4CAQAwBQYDK2VwBCIEIJ+DYvh6SEqVTm50DFtMDoQikTmiCqirVv9mWG9qfSnF
-----END PRIVATE KEY-----
"""
EC_KEY = """\
-----BEGIN EC PRIVATE KEY-----
MHcCAQEEIIrYSSNQFaA2Hwf1duRSxKtLYX5CB04fSeQ6tF1aY/PuoAoGCCqGSM49
AwEHoUQDQgAEPR3tU2Fta9ktY+6P9G0cWh+0XMy6yYbTLK2EHLaswRoW9LEcGm2n
-----END EC PRIVATE KEY-----
"""
PASETO = "v4.local.AAAAbbbb-cccc_dddd.eeee"
TIME = r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d\d:\d\d"


# --------------------------------------------------------------- redaction


def test_redact_pkcs8_private_key() -> None:
    text = f"loading key\n{PKCS8_KEY}done"
    assert redact_text(text) == "loading key\n<redacted private key>\ndone"


def test_redact_ec_private_key() -> None:
    assert redact_text(f"key: {EC_KEY}") == "key: <redacted private key>\n"


def test_redact_truncated_private_key() -> None:
    text = "-----BEGIN RSA PRIVATE KEY-----\nMIIEowIBAAKCAQEA7"
    assert redact_text(text) == "<redacted private key>"


def test_certificates_are_not_redacted() -> None:
    cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----"
    assert redact_text(cert) == cert


def test_redact_paseto_token() -> None:
    assert redact_text(f"token {PASETO} issued") == "token <redacted token> issued"
    assert redact_text("v2.public.eyJzdWIiOiJib2IifQ") == "<redacted token>"


def test_redact_session_cookie() -> None:
    assert redact_text("Cookie: dcvix_session=abc123; theme=dark") == (
        "Cookie: dcvix_session=<redacted>; theme=dark"
    )


def test_redact_session_cookie_holding_a_paseto_token() -> None:
    assert redact_text(f"Cookie: dcvix_session={PASETO}; theme=dark") == (
        "Cookie: dcvix_session=<redacted>; theme=dark"
    )


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("password=x", "password=<redacted>"),
        ("user=bob&password=hunter2&next=1", "user=bob&password=<redacted>&next=1"),
        ('{"password": "x"}', '{"password": "<redacted>"}'),
        (
            '{"userID": "bob", "password": "hunter2"}',
            '{"userID": "bob", "password": "<redacted>"}',
        ),
        ("ldap_bind_password = pa#ss", "ldap_bind_password = <redacted>"),
        ("PASSWORD: Secret1", "PASSWORD: <redacted>"),
        ("radius_secret=shared", "radius_secret=<redacted>"),
        ("otp=123456", "otp=<redacted>"),
        ('{"registrationToken": "enrol"}', '{"registrationToken": "<redacted>"}'),
        (f'{{"token": "{PASETO}"}}', '{"token": "<redacted>"}'),
        (f"token={PASETO}&x=1", "token=<redacted>&x=1"),
        (f"Authorization: Bearer {PASETO}", "Authorization: Bearer <redacted>"),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: Basic <redacted>"),
    ],
)
def test_redact_password_pairs(text: str, expected: str) -> None:
    assert redact_text(text) == expected


def test_redact_keeps_ordinary_text() -> None:
    text = "agent ws-01 registered from 10.0.0.5:8446 (user=bob, state=pending)"
    assert redact_text(text) == text


@pytest.mark.parametrize(
    "name",
    [
        "password",
        "Password",
        "ldap_bind_password",
        "passwd",
        "otp",
        "token_key",
        "radius_secret",
        "registrationToken",
        "registration_token",
        "authorization",
        "Authorization",
        "cookie",
        "private_key",
        "key",
    ],
)
def test_secret_field_names(name: str) -> None:
    assert is_secret_field(name)


@pytest.mark.parametrize(
    "name",
    ["log_format", "hostname", "user", "userID", "guid", "log_namespace", "keys"],
)
def test_ordinary_field_names(name: str) -> None:
    assert not is_secret_field(name)


def test_redact_event_replaces_secret_fields_only() -> None:
    event = {"log_format": "{user}", "user": "bob", "password": "hunter2", "otp": 7}
    assert redact_event(event) == {
        "log_format": "{user}",
        "user": "bob",
        "password": REDACTED,
        "otp": REDACTED,
    }
    assert event["password"] == "hunter2"


# ---------------------------------------------------------------- observer


def make_logger(level: str = "info", fmt: str = "text") -> tuple[Logger, io.StringIO]:
    output = io.StringIO()
    observer = make_observer(level, fmt, [output])
    return Logger(namespace="dcvix.test", observer=observer), output


def test_text_line_shape() -> None:
    log, output = make_logger()
    log.info("agent {name} registered", name="ws-01")
    assert re.fullmatch(
        rf"INFO     \[{TIME}\] dcvix\.test: agent ws-01 registered\n", output.getvalue()
    )


@pytest.mark.parametrize(
    ("method", "label"),
    [
        ("debug", "DEBUG    "),
        ("info", "INFO     "),
        ("warn", "WARNING  "),
        ("error", "ERROR    "),
        ("critical", "CRITICAL "),
    ],
)
def test_text_level_labels(method: str, label: str) -> None:
    log, output = make_logger("debug")
    getattr(log, method)("hello")
    assert re.fullmatch(rf"{label}\[{TIME}\] dcvix\.test: hello\n", output.getvalue())


def test_events_under_the_level_are_dropped() -> None:
    log, output = make_logger("warning")
    log.debug("debug line")
    log.info("info line")
    log.warn("warn line")
    log.error("error line")
    lines = output.getvalue().splitlines()
    assert [line.split("] ", 1)[1] for line in lines] == [
        "dcvix.test: warn line",
        "dcvix.test: error line",
    ]


def test_debug_level_keeps_debug() -> None:
    log, output = make_logger("debug")
    log.debug("debug line")
    assert output.getvalue().endswith("] dcvix.test: debug line\n")


def test_secret_field_never_written() -> None:
    log, output = make_logger()
    log.info("login {user} {password}", user="bob", password="hunter2")
    text = output.getvalue()
    assert "hunter2" not in text
    assert text.endswith("] dcvix.test: login bob <redacted>\n")


def test_secret_in_message_text_is_masked() -> None:
    log, output = make_logger()
    log.info("request body {body}", body='{"userID": "bob", "password": "hunter2"}')
    log.info("cookie {header}", header=f"dcvix_session={PASETO}")
    text = output.getvalue()
    assert "hunter2" not in text
    assert PASETO not in text
    assert '"password": "<redacted>"' in text


def test_failure_is_written_with_traceback() -> None:
    log, output = make_logger()
    try:
        raise RuntimeError("broken password=hunter2")
    except RuntimeError:
        log.failure("handler {name} failed", name="renew")
    text = output.getvalue()
    assert re.match(rf"CRITICAL \[{TIME}\] dcvix\.test: handler renew failed\n", text)
    assert "Traceback" in text
    assert "test_failure_is_written_with_traceback" in text
    assert "RuntimeError: broken password=<redacted>" in text
    assert "hunter2" not in text


def test_json_lines() -> None:
    log, output = make_logger(fmt="json")
    log.info("login {user} {password}", user="bob", password="hunter2", attempt=2)
    log.warn("second")
    lines = output.getvalue().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert re.fullmatch(TIME, first.pop("time"))
    assert first == {
        "level": "INFO",
        "namespace": "dcvix.test",
        "message": "login bob <redacted>",
        "user": "bob",
        "password": "<redacted>",
        "attempt": 2,
    }
    second = json.loads(lines[1])
    assert (second["level"], second["message"]) == ("WARNING", "second")
    assert "hunter2" not in output.getvalue()


def test_json_masks_secret_text_in_fields() -> None:
    log, output = make_logger(fmt="json")
    log.info("header", header=f"dcvix_session={PASETO}", peer=("10.0.0.1", 443))
    record = json.loads(output.getvalue())
    assert record["header"] == "dcvix_session=<redacted>"
    assert record["peer"] == "('10.0.0.1', 443)"


def test_json_failure_has_traceback() -> None:
    log, output = make_logger(fmt="json")
    try:
        raise ValueError("bad token=abc")
    except ValueError:
        log.failure("oops")
    record = json.loads(output.getvalue())
    assert record["level"] == "CRITICAL"
    assert record["message"] == "oops"
    assert record["traceback"].startswith("Traceback")
    assert "ValueError: bad token=<redacted>" in record["traceback"]
    assert "abc" not in record["traceback"]


def test_json_drops_events_under_the_level() -> None:
    log, output = make_logger("error", "json")
    log.warn("dropped")
    log.error("kept")
    assert [json.loads(line)["message"] for line in output.getvalue().splitlines()] == [
        "kept"
    ]


class BrokenOutput:
    """An output whose every write fails, like a closed stdout."""

    def __init__(self) -> None:
        self.attempts = 0

    def write(self, data: str) -> int:
        self.attempts += 1
        raise OSError(5, "Input/output error")

    def flush(self) -> None:
        raise OSError(5, "Input/output error")


def test_failing_output_does_not_stop_the_others() -> None:
    broken = BrokenOutput()
    first, last = io.StringIO(), io.StringIO()
    observer = make_observer("info", "text", [first, broken, last])  # type: ignore[list-item]
    log = Logger(namespace="dcvix.test", observer=observer)
    log.info("one")
    log.info("two")
    assert broken.attempts == 2
    for output in (first, last):
        assert [line.split(": ", 1)[1] for line in output.getvalue().splitlines()] == [
            "one",
            "two",
        ]


def test_closed_output_does_not_stop_the_others() -> None:
    closed, kept = io.StringIO(), io.StringIO()
    closed.close()
    log = Logger(
        namespace="dcvix.test", observer=make_observer("info", "text", [closed, kept])
    )
    log.info("still here")
    assert kept.getvalue().endswith("dcvix.test: still here\n")


# ------------------------------------------------------------------ log file


def test_open_log_file_creates_private_file(tmp_path: Path) -> None:
    folder = tmp_path / "log"
    log_file = open_log_file(folder, "director", rotation=2)
    try:
        path = folder / "dcvix-director.log"
        assert path.exists()
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700
        observer = make_observer("info", "text", [log_file])
        Logger(namespace="dcvix.test", observer=observer).info(
            "héllo {who}", who="file"
        )
        assert path.read_text(encoding="utf-8").endswith("dcvix.test: héllo file\n")
    finally:
        log_file.close()


def test_open_log_file_appends(tmp_path: Path) -> None:
    (tmp_path / "dcvix-agent.log").write_text("old line\n")
    log_file = open_log_file(tmp_path, "agent", rotation=2)
    try:
        log_file.write("new line\n")
        log_file.flush()
    finally:
        log_file.close()
    assert (tmp_path / "dcvix-agent.log").read_text() == "old line\nnew line\n"


def rotated(folder: Path, name: str) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f"{name}."))


def test_rotation_keeps_at_most_the_configured_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # rotateLength is given to LogFile at construction: patch before opening.
    monkeypatch.setattr(dcvix_logging, "ROTATE_BYTES", 200)
    log_file = open_log_file(tmp_path, "director", rotation=2)
    try:
        log = Logger(
            namespace="dcvix.test", observer=make_observer("info", "text", [log_file])
        )
        for number in range(40):
            log.info("line {number:03d} of the rotation test", number=number)
    finally:
        log_file.close()
    assert rotated(tmp_path, "dcvix-director.log") == [
        "dcvix-director.log.1",
        "dcvix-director.log.2",
    ]
    for path in tmp_path.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert path.stat().st_size < 200 + 100
    current = (tmp_path / "dcvix-director.log").read_text()
    assert current.endswith("line 039 of the rotation test\n")
    newest_rotated = (tmp_path / "dcvix-director.log.1").read_text()
    assert "line 000 " not in newest_rotated


def test_rotation_zero_keeps_every_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dcvix_logging, "ROTATE_BYTES", 100)
    log_file = open_log_file(tmp_path, "agent", rotation=0)
    try:
        for number in range(20):
            log_file.write(f"line {number:03d} padded to some length here\n")
    finally:
        log_file.close()
    names = rotated(tmp_path, "dcvix-agent.log")
    assert len(names) > 2
    oldest = tmp_path / f"dcvix-agent.log.{len(names)}"
    assert oldest.read_text().startswith("line 000 ")
