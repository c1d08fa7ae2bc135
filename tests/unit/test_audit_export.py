"""Audit export: JSON lines to a file (rotation, modes, errors) and to syslog."""

from __future__ import annotations

import fcntl
import json
import os
import re
import socket
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogEvent, LogLevel, globalLogPublisher

from dcvix.director.audit_export import (
    SYSLOG_MAX,
    TRUNCATED,
    JsonLinesFile,
    SyslogSink,
    open_sinks,
)

ENTRY: dict[str, Any] = {  # as audit.entry_json makes them
    "time": "2026-12-08T01:02:03.456789Z",
    "actor": "admin:alice",
    "action": "approve",
    "target": "5f0c3a52-7f6e-4c1e-9d1a-0a4b8c7d6e5f",
    "address": "10.0.0.7",
    "outcome": "ok",
    "detail": "hostname=ws1 now=registered",
}

FAILED_LOGIN: dict[str, Any] = {
    "time": "2026-12-08T01:02:04.000001Z",
    "actor": "user:bob",
    "action": "login",
    "target": "bob",
    "address": "192.0.2.9",
    "outcome": "failed",
    "detail": "password",
}

SYSLOG_LINE = re.compile(
    r"<(?P<pri>\d+)>(?P<version>\d) (?P<time>\S+) (?P<host>\S+) (?P<app>\S+) "
    r"(?P<pid>\d+) (?P<msgid>\S+) (?P<sd>-) (?P<msg>.*)",
    re.DOTALL,
)


@pytest.fixture
def warnings() -> Iterator[list[LogEvent]]:
    """The warnings audit_export logs during the test."""
    seen: list[LogEvent] = []

    def observe(event: LogEvent) -> None:
        if (
            event.get("log_namespace") == "dcvix.director.audit_export"
            and event.get("log_level") == LogLevel.warn
        ):
            seen.append(event)

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    yield seen
    globalLogPublisher.removeObserver(observer)


def lines_of(path: Path) -> list[dict[str, Any]]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return [json.loads(line) for line in data.split(b"\n")[:-1]]


# ------------------------------------------------------------------ the file


def test_lines_parse_back_to_the_entries(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesFile(path)
    sink.write(ENTRY)
    sink.write(FAILED_LOGIN)
    sink.close()

    assert lines_of(path) == [ENTRY, FAILED_LOGIN]
    assert b": " not in path.read_bytes()  # compact
    assert sink.lost == 0


def test_a_new_file_is_private(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    old_umask = os.umask(0o002)
    try:
        JsonLinesFile(path).close()
    finally:
        os.umask(old_umask)

    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_an_existing_readable_file_is_tightened_and_appended_to(
    tmp_path: Path,
) -> None:
    path = tmp_path / "audit.jsonl"
    path.write_text('{"id":1}\n')
    path.chmod(0o644)

    sink = JsonLinesFile(path)
    sink.write(ENTRY)
    sink.close()

    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert lines_of(path) == [{"id": 1}, ENTRY]


def test_line_separators_and_newlines_stay_inside_one_line(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesFile(path)
    entry = dict(ENTRY, detail="a\u2028b\nc\rd\u2029e\x85f\x00g é 😀")
    sink.write(entry)
    sink.write(ENTRY)
    sink.close()

    data = path.read_bytes()
    assert data.isascii()
    assert len(data.decode().splitlines()) == 2  # splitlines knows U+2028 too
    assert lines_of(path) == [entry, ENTRY]


def test_a_missing_folder_is_a_clear_one_line_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist") as raised:
        JsonLinesFile(tmp_path / "nowhere" / "audit.jsonl")
    assert "\n" not in str(raised.value)
    assert str(tmp_path / "nowhere") in str(raised.value)


def test_an_unopenable_file_is_a_clear_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "audit.jsonl").mkdir()
    with pytest.raises(ValueError, match="cannot be opened") as raised:
        JsonLinesFile(tmp_path / "audit.jsonl")
    assert "\n" not in str(raised.value)


def test_a_fifo_is_refused_without_blocking(tmp_path: Path) -> None:
    path = tmp_path / "audit.fifo"
    os.mkfifo(path)
    with pytest.raises(ValueError, match="cannot be opened"):
        JsonLinesFile(path)


def test_rotation_by_rename_without_reopen_writes_a_new_file(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesFile(path)
    sink.write(ENTRY)
    path.rename(tmp_path / "audit.jsonl.1")

    sink.write(FAILED_LOGIN)
    sink.close()

    assert lines_of(tmp_path / "audit.jsonl.1") == [ENTRY]
    assert lines_of(path) == [FAILED_LOGIN]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_a_replaced_file_is_followed(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesFile(path)
    sink.write(ENTRY)
    path.rename(tmp_path / "audit.jsonl.1")
    path.write_text("")  # logrotate's create, before the signal

    sink.write(FAILED_LOGIN)
    sink.close()

    assert lines_of(path) == [FAILED_LOGIN]


def test_reopen_after_logrotate(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesFile(path)
    sink.write(ENTRY)
    path.rename(tmp_path / "audit.jsonl.1")

    sink.reopen()
    assert path.exists()  # created by the reopen, before any write
    sink.write(FAILED_LOGIN)
    sink.close()

    assert lines_of(tmp_path / "audit.jsonl.1") == [ENTRY]
    assert lines_of(path) == [FAILED_LOGIN]


def test_reopen_keeps_the_old_file_if_the_path_cannot_be_opened(
    tmp_path: Path, warnings: list[LogEvent]
) -> None:
    folder = tmp_path / "logs"
    folder.mkdir()
    path = folder / "audit.jsonl"
    sink = JsonLinesFile(path)
    path.rename(tmp_path / "kept.jsonl")
    folder.rmdir()

    sink.reopen()
    sink.write(ENTRY)
    sink.close()

    assert lines_of(tmp_path / "kept.jsonl") == [ENTRY]
    assert sink.lost == 0
    assert len(warnings) == 1
    assert "cannot reopen" in warnings[0]["problem"]


def test_write_errors_do_not_raise_and_warn_once_a_minute(
    tmp_path: Path, warnings: list[LogEvent]
) -> None:
    path = tmp_path / "audit.jsonl"
    clock = Clock()
    sink = JsonLinesFile(path, clock)
    good = sink._fd
    assert good is not None
    sink._fd = os.open("/dev/full", os.O_WRONLY | os.O_CLOEXEC)
    try:
        sink.write(ENTRY)
        sink.write(ENTRY)
        clock.advance(30)
        sink.write(ENTRY)
        assert sink.lost == 3
        assert len(warnings) == 1
        assert warnings[0]["problem"] == os.strerror(28)  # ENOSPC
        assert warnings[0]["lost"] == 1

        clock.advance(31)
        sink.write(ENTRY)
        assert sink.lost == 4
        assert len(warnings) == 2
        assert warnings[1]["lost"] == 4
        assert warnings[1]["suppressed"] == 2
    finally:
        os.close(sink._fd)
        sink._fd = good

    sink.write(FAILED_LOGIN)  # the disk has room again
    sink.close()
    assert lines_of(path) == [FAILED_LOGIN]


def test_a_line_cut_by_a_short_write_does_not_swallow_the_next(
    tmp_path: Path, warnings: list[LogEvent]
) -> None:
    # A non-blocking pipe takes part of a long line, then refuses the rest:
    # a real short write, as a disk filling mid-line gives.
    sink = JsonLinesFile(tmp_path / "audit.jsonl")
    good = sink._fd
    reader, writer = os.pipe()
    os.set_blocking(writer, False)
    capacity = fcntl.fcntl(writer, fcntl.F_GETPIPE_SZ)
    sink._fd = writer
    try:
        sink.write(dict(ENTRY, detail="x" * (capacity * 2)))
        assert sink.lost == 1
        assert len(warnings) == 1
        torn = os.read(reader, capacity * 4)
        assert len(torn) == capacity
        sink.write(ENTRY)
        after = os.read(reader, capacity)
    finally:
        os.close(reader)
        os.close(writer)
        sink._fd = good
        sink.close()

    assert after.startswith(b"\n")
    assert json.loads(after.split(b"\n")[1]) == ENTRY


def test_writes_after_close_are_ignored(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesFile(path)
    sink.close()
    sink.write(ENTRY)
    sink.reopen()
    sink.close()

    assert path.read_bytes() == b""


# ---------------------------------------------------------------- syslog


@pytest.fixture
def log_socket(tmp_path: Path) -> Iterator[socket.socket]:
    """A syslog daemon's socket: an AF_UNIX datagram socket bound in tmp_path."""
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(tmp_path / "log"))
    receiver.setblocking(False)  # datagrams arrive as send() returns
    yield receiver
    receiver.close()


def received(receiver: socket.socket) -> list[bytes]:
    """The datagrams waiting at ``receiver``."""
    datagrams = []
    while True:
        try:
            datagrams.append(receiver.recv(65536))
        except BlockingIOError:
            return datagrams


def parsed(datagram: bytes) -> dict[str, str]:
    match = SYSLOG_LINE.fullmatch(datagram.decode("ascii"))
    assert match, datagram
    return match.groupdict()


def test_syslog_messages_are_rfc5424_with_the_json_line(
    tmp_path: Path, log_socket: socket.socket
) -> None:
    sink = SyslogSink(str(tmp_path / "log"), hostname="director1.example")
    sink.write(ENTRY)
    sink.write(FAILED_LOGIN)
    sink.close()

    info, notice = (parsed(d) for d in received(log_socket))
    assert info == {
        "pri": "86",  # authpriv.info
        "version": "1",
        "time": "2026-12-08T01:02:03.456789Z",
        "host": "director1.example",
        "app": "dcvix-director",
        "pid": str(os.getpid()),
        "msgid": "AUDIT",
        "sd": "-",
        "msg": json.dumps(ENTRY, separators=(",", ":")),
    }
    assert notice["pri"] == "85"  # authpriv.notice: a failed login
    assert notice["time"] == "2026-12-08T01:02:04.000001Z"
    assert json.loads(notice["msg"]) == FAILED_LOGIN


@pytest.mark.parametrize("outcome", ["failed", "refused", "locked"])
def test_refusals_are_notices(
    tmp_path: Path, log_socket: socket.socket, outcome: str
) -> None:
    sink = SyslogSink(str(tmp_path / "log"))
    sink.write(dict(ENTRY, outcome=outcome))
    sink.close()

    (datagram,) = received(log_socket)
    assert parsed(datagram)["pri"] == "85"


def test_syslog_times_are_the_entrys_own(
    tmp_path: Path, log_socket: socket.socket
) -> None:
    sink = SyslogSink(str(tmp_path / "log"))
    sink.write(ENTRY)
    sink.write({k: v for k, v in ENTRY.items() if k != "time"})
    sink.close()

    times = [parsed(d)["time"] for d in received(log_socket)]
    assert times == ["2026-12-08T01:02:03.456789Z", "-"]


def test_the_hostname_is_made_printable(
    tmp_path: Path, log_socket: socket.socket
) -> None:
    sink = SyslogSink(str(tmp_path / "log"), hostname="dir ector\n1")
    sink.write(ENTRY)
    sink.close()

    (datagram,) = received(log_socket)
    assert parsed(datagram)["host"] == "director1"


def test_a_missing_socket_does_not_raise_and_the_next_write_arrives_once_it_exists(
    tmp_path: Path, warnings: list[LogEvent]
) -> None:
    address = tmp_path / "log"
    sink = SyslogSink(str(address))
    sink.write(ENTRY)
    sink.write(ENTRY)
    assert sink.lost == 2
    assert len(warnings) == 1
    assert "cannot connect" in warnings[0]["problem"]

    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        receiver.bind(str(address))
        receiver.setblocking(False)
        sink.write(FAILED_LOGIN)
        (datagram,) = received(receiver)
    finally:
        receiver.close()
        sink.close()

    assert json.loads(parsed(datagram)["msg"]) == FAILED_LOGIN
    assert sink.lost == 2


def test_a_restarted_daemon_loses_nothing(tmp_path: Path) -> None:
    address = str(tmp_path / "log")
    first = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    first.bind(address)
    first.setblocking(False)
    sink = SyslogSink(address)
    sink.write(ENTRY)
    assert len(received(first)) == 1
    first.close()
    os.unlink(address)

    second = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        second.bind(address)
        second.setblocking(False)
        sink.write(FAILED_LOGIN)  # the old connection is stale: reconnects
        (datagram,) = received(second)
    finally:
        second.close()
        sink.close()

    assert json.loads(parsed(datagram)["msg"]) == FAILED_LOGIN
    assert sink.lost == 0


def test_a_full_queue_drops_without_blocking_and_recovers(
    tmp_path: Path, log_socket: socket.socket, warnings: list[LogEvent]
) -> None:
    sink = SyslogSink(str(tmp_path / "log"))
    for n in range(2000):  # far more than the queue holds
        sink.write(dict(ENTRY, id=n))
    assert sink.lost > 0
    assert len(warnings) == 1
    assert "not keeping up" in warnings[0]["problem"]
    delivered = received(log_socket)
    assert len(delivered) == 2000 - sink.lost

    sink.write(FAILED_LOGIN)  # the queue has room again, same socket
    sink.close()
    (datagram,) = received(log_socket)
    assert json.loads(parsed(datagram)["msg"]) == FAILED_LOGIN


@pytest.mark.parametrize("filler", ["x", "é", "😀", "\u2028", "\n"])
def test_an_oversize_detail_is_truncated_to_valid_json(
    tmp_path: Path, log_socket: socket.socket, filler: str
) -> None:
    sink = SyslogSink(str(tmp_path / "log"))
    entry = dict(ENTRY, detail="start " + filler * 20_000)
    sink.write(entry)
    sink.close()

    (datagram,) = received(log_socket)
    assert len(datagram) <= SYSLOG_MAX
    assert len(datagram) > SYSLOG_MAX - 12  # cut no more than needed
    message = json.loads(parsed(datagram)["msg"])
    assert message["detail"].startswith("start " + filler)
    assert message["detail"].endswith(TRUNCATED)
    assert {k: v for k, v in message.items() if k != "detail"} == {
        k: v for k, v in entry.items() if k != "detail"
    }


def test_other_fields_are_cut_when_detail_is_not_enough(
    tmp_path: Path, log_socket: socket.socket
) -> None:
    sink = SyslogSink(str(tmp_path / "log"))
    sink.write(dict(ENTRY, target="t" * 20_000, detail="d" * 20_000))
    sink.close()

    (datagram,) = received(log_socket)
    cut = json.loads(parsed(datagram)["msg"])
    assert cut["detail"] == TRUNCATED
    assert cut["target"].endswith(TRUNCATED)
    assert (cut["actor"], cut["action"]) == (ENTRY["actor"], ENTRY["action"])


def test_the_file_keeps_an_oversize_detail_whole(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    sink = JsonLinesFile(path)
    entry = dict(ENTRY, detail="x" * 20_000)
    sink.write(entry)
    sink.close()

    assert lines_of(path) == [entry]


def test_bad_syslog_addresses_are_start_up_errors() -> None:
    with pytest.raises(ValueError, match="empty"):
        SyslogSink("")
    with pytest.raises(ValueError, match="too long"):
        SyslogSink("/run/" + "x" * 200)


# ---------------------------------------------------------------- open_sinks


def test_open_sinks_opens_what_is_configured(
    tmp_path: Path, log_socket: socket.socket
) -> None:
    assert open_sinks("", False, "/dev/log") == []

    path = tmp_path / "audit.jsonl"
    sinks = open_sinks(str(path), True, str(tmp_path / "log"))
    assert [type(s) for s in sinks] == [JsonLinesFile, SyslogSink]
    for sink in sinks:
        sink.write(ENTRY)
        sink.reopen()
        sink.close()

    assert lines_of(path) == [ENTRY]
    assert len(received(log_socket)) == 1

    only_syslog = open_sinks("", True, str(tmp_path / "log"))
    assert [type(s) for s in only_syslog] == [SyslogSink]


def test_open_sinks_reports_a_bad_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="does not exist"):
        open_sinks(str(tmp_path / "no" / "audit.jsonl"), True, "/dev/log")


def test_a_symbolic_link_at_the_path_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text("keep\n")
    target.chmod(0o644)
    (tmp_path / "audit.jsonl").symlink_to(target)
    with pytest.raises(ValueError, match="cannot be opened"):
        JsonLinesFile(tmp_path / "audit.jsonl")
    assert target.read_text() == "keep\n"
    assert oct(target.stat().st_mode & 0o777) == "0o644"
