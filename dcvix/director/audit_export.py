"""Copies of the audit trail for SIEMs: JSON lines to a file and/or to syslog.

The director's database is the authoritative audit trail (see
:mod:`dcvix.director.audit`); these sinks are best-effort copies for log
shippers. So a sink never raises into the caller and never blocks: an
admin's action must not fail, nor the reactor stall, because a disk is full
or syslog is restarting. Lost entries are counted (:attr:`lost`) and warned
about at most once a minute, so a full disk does not flood the very logs an
operator reads to find out why.

Every entry is written as one compact JSON object, pure ASCII (see
:func:`encode`). Sinks are called from the reactor thread only.
"""

from __future__ import annotations

import errno
import json
import os
import socket
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol, cast

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dcvix.common.ratelimit import LogBudget

log = Logger()

#: Seconds between two warnings of one sink: the first failure is reported
#: at once, the next ones are summed up in the following warning.
WARN_INTERVAL = 60.0

#: Largest syslog datagram, header included. rsyslog and syslog-ng accept
#: 8 KiB by default; a larger one would be cut (or dropped) by the daemon,
#: leaving JSON that no SIEM can parse.
SYSLOG_MAX = 8192

#: RFC 5424 facility ``authpriv``: the audit trail says who logged in and
#: from where, which ``auth`` logs readable by others must not carry.
FACILITY_AUTHPRIV = 10
SEVERITY_NOTICE = 5
SEVERITY_INFO = 6
#: Outcomes an operator should notice: a refused login, a locked account.
NOTICE_OUTCOMES = frozenset({"failed", "refused", "locked"})

APP_NAME = "dcvix-director"
MSGID = "AUDIT"

#: Appended to a field cut to make a syslog message fit.
TRUNCATED = "...[truncated]"


class AuditSink(Protocol):
    """Where audit entries are exported to, besides the database."""

    def write(self, entry: Mapping[str, Any]) -> None:
        """Exports one entry (a JSON-ready dict); never raises, never blocks."""

    def reopen(self) -> None:
        """Reopens the output, on SIGHUP after logrotate; a no-op for syslog."""

    def close(self) -> None:
        """Releases the output; later writes are ignored."""


def encode(entry: Mapping[str, Any]) -> str:
    """``entry`` as one compact JSON line (no newline at its end).

    ``ensure_ascii=True``: JSON escapes control characters anyway, but a
    non-ASCII line break (U+2028, U+2029, U+0085) would be written raw
    without it, and many line-oriented readers (``str.splitlines``,
    JavaScript, some shippers) split there, cutting one entry into two
    broken ones. Escaping all of non-ASCII also makes the output pure
    ASCII, so no SIEM can misread its charset and syslog needs no BOM.
    ``default=str``: a stray non-JSON value (a datetime) is exported as its
    text instead of losing the entry.
    """
    return json.dumps(entry, ensure_ascii=True, separators=(",", ":"), default=str)


class _Warnings:
    """A sink's count of lost entries, and its warnings at most once a minute."""

    def __init__(self, sink: str, clock: IReactorTime | None) -> None:
        self._sink = sink
        self.lost = 0
        if clock is None:
            from twisted.internet import reactor  # noqa: PLC0415 - the running one

            clock = cast(IReactorTime, reactor)
        self._budget = LogBudget(1, WARN_INTERVAL, clock)

    def entry_lost(self, problem: str) -> None:
        """One entry was not exported, because of ``problem``."""
        self.lost += 1
        self.warn(problem)

    def warn(self, problem: str) -> None:
        """Logs ``problem`` unless this sink warned less than a minute ago."""
        suppressed = self._budget.take()
        if suppressed is None:
            return
        log.warn(
            "audit export to {sink}: {problem} ({lost} entries lost so far, "
            "{suppressed} warnings suppressed since the last one)",
            sink=self._sink,
            problem=problem,
            lost=self.lost,
            suppressed=suppressed,
        )


def _reason(error: OSError) -> str:
    """The error's text, without the file name Python may append."""
    if error.strerror:
        return error.strerror
    if error.errno:
        return os.strerror(error.errno)
    return str(error) or type(error).__name__


class JsonLinesFile:
    """Appends one JSON line per entry to a file, mode 0600.

    The file may already exist; if others can read or write it, it is
    tightened to 0600 (the trail names users and their addresses), rather
    than refused, so an old file from before this rule needs no manual step.
    It must be a regular file: a FIFO or a device is refused (opening a FIFO
    could block start-up, and chmod-ing ``/dev/null`` would be harmful).

    Rotation: :meth:`reopen` on SIGHUP (logrotate's ``create`` mode), and,
    as SIGHUP may be forgotten in the logrotate rule, each write compares the
    path's inode with the open file's and reopens when they differ (an
    ``os.stat`` per entry is nothing at audit rates). ``copytruncate`` also
    works, as the file is opened ``O_APPEND``.

    Writes are not fsync-ed: the database is the durable trail.
    """

    def __init__(self, path: Path, clock: IReactorTime | None = None) -> None:
        """Opens ``path``; ``clock`` times the warnings (the reactor's by default).

        Raises:
            ValueError: with a one-line message, if the folder is missing or
                the file cannot be opened; the director reports it at start.
        """
        self._path = path
        self._fd: int | None = None
        self._identity: tuple[int, int] = (0, 0)
        self._closed = False
        # A line was written in part (disk full mid-line): the next write
        # starts with a newline, so the lines after it stay whole.
        self._torn = False
        self._warnings = _Warnings(f"file {path}", clock)
        if not path.parent.is_dir():
            raise ValueError(f"file {path}: its folder {path.parent} does not exist")
        try:
            self._fd, self._identity = self._open()
        except OSError as error:
            raise ValueError(
                f"file {path} cannot be opened: {_reason(error)}"
            ) from None

    @property
    def lost(self) -> int:
        """How many entries could not be written."""
        return self._warnings.lost

    def _open(self) -> tuple[int, tuple[int, int]]:
        """A descriptor appending to the path, and the file's (device, inode).

        ``O_NONBLOCK`` does nothing to a regular file; it only makes opening
        a FIFO without a reader fail (ENXIO) instead of hanging the director.
        ``O_NOFOLLOW``: a symbolic link planted at the path (in a folder
        others may write) never makes ``dcvixctl``, run as root, append to
        or tighten another file. Only a file of our own is tightened: root
        appends to the director's file as it is.
        """
        fd = os.open(
            self._path,
            os.O_WRONLY
            | os.O_APPEND
            | os.O_CREAT
            | os.O_CLOEXEC
            | os.O_NOCTTY
            | os.O_NONBLOCK
            | os.O_NOFOLLOW,
            0o600,
        )
        try:
            status = os.fstat(fd)
            if not stat.S_ISREG(status.st_mode):
                raise OSError(errno.EINVAL, "not a regular file")
            if stat.S_IMODE(status.st_mode) & 0o077 and status.st_uid == os.geteuid():
                os.fchmod(fd, 0o600)
        except BaseException:
            os.close(fd)
            raise
        return fd, (status.st_dev, status.st_ino)

    def _replace(self) -> bool:
        """Opens the path anew and closes the old descriptor.

        If the path cannot be opened, the old descriptor (if any) is kept,
        so entries still go to the rotated file rather than nowhere.
        """
        try:
            fd, identity = self._open()
        except OSError as error:
            self._warnings.warn(f"cannot reopen: {_reason(error)}")
            return False
        old, self._fd, self._identity = self._fd, fd, identity
        self._torn = False
        if old is not None:
            self._close_fd(old)
        return True

    def _close_fd(self, fd: int) -> None:
        try:
            os.close(fd)
        except OSError as error:  # EIO on a network filesystem
            self._warnings.warn(f"closing: {_reason(error)}")

    def _follow_rotation(self) -> None:
        """Reopens if the path is no longer the open file (rotated, deleted)."""
        try:
            status = os.stat(self._path)
        except FileNotFoundError:
            self._replace()
            return
        except OSError:
            return  # cannot tell: keep the file we have
        if (status.st_dev, status.st_ino) != self._identity:
            self._replace()

    def write(self, entry: Mapping[str, Any]) -> None:
        """Appends ``entry`` as one line; errors are counted, never raised.

        The line goes out in one ``os.write``: with ``O_APPEND`` the kernel
        places it at the end whole, so lines never interleave with another
        writer's. Only a short write (disk full mid-line) loops on the rest.
        """
        if self._closed:
            return
        try:
            line = (encode(entry) + "\n").encode("ascii")
        except (TypeError, ValueError) as error:
            self._warnings.entry_lost(f"not JSON: {error}")
            return
        self._follow_rotation()
        if self._fd is None and not self._replace():
            self._warnings.entry_lost("the file is not open")
            return
        assert self._fd is not None
        data = memoryview(b"\n" + line if self._torn else line)
        written = 0
        try:
            written = os.write(self._fd, data)
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except OSError as error:
            if written:
                self._torn = True
            self._warnings.entry_lost(_reason(error))
            return
        self._torn = False

    def reopen(self) -> None:
        """Closes the file and opens the path again (after logrotate).

        Never raises: on SIGHUP there is no one to report to but the log.
        """
        if not self._closed:
            self._replace()

    def close(self) -> None:
        """Closes the file; later writes are ignored."""
        self._closed = True
        if self._fd is not None:
            fd, self._fd = self._fd, None
            self._close_fd(fd)


def _syslog_hostname(name: str) -> str:
    """``name`` as an RFC 5424 HOSTNAME: printable ASCII, 1 to 255 of them."""
    kept = "".join(c for c in name if 33 <= ord(c) <= 126)[:255]
    return kept or "-"


def _timestamp(entry: Mapping[str, Any]) -> str:
    """The entry's own time (so syslog and the store agree), or RFC 5424's ``-``.

    ``entry_json`` writes it as RFC 3339 in UTC with at most six fraction
    digits: a valid RFC 5424 TIMESTAMP as it is.
    """
    moment = entry.get("time")
    return moment if isinstance(moment, str) and moment else "-"


def fit(entry: Mapping[str, Any], budget: int) -> str:
    """``entry`` encoded in at most ``budget`` bytes, still valid JSON.

    ``detail`` (free text, the only field that grows without bound) is cut
    first, then the other text fields, longest first; a cut field ends with
    :data:`TRUNCATED`.
    """
    line = encode(entry)
    if len(line) <= budget:
        return line
    trimmed = dict(entry)
    others = sorted(
        (k for k, v in entry.items() if k != "detail" and isinstance(v, str)),
        key=lambda k: len(entry[k]),
        reverse=True,
    )
    for key in ["detail", *others]:
        value = entry.get(key)
        if not isinstance(value, str):
            continue
        trimmed[key] = TRUNCATED
        if len(encode(trimmed)) > budget:
            continue  # too long even with this field cut: cut the next one too
        # Each character takes at least one byte: a longer prefix never fits.
        candidate = value[:budget]
        low, high = 0, len(candidate)
        while low < high:  # the longest prefix that fits
            middle = (low + high + 1) // 2
            trimmed[key] = candidate[:middle] + TRUNCATED
            if len(encode(trimmed)) <= budget:
                low = middle
            else:
                high = middle - 1
        trimmed[key] = value if low == len(value) else value[:low] + TRUNCATED
        return encode(trimmed)
    return encode({"truncated": True})  # only non-text fields: none exported


class SyslogSink:
    """Sends RFC 5424 messages to the local syslog daemon's datagram socket.

    ``<PRI>1 TIMESTAMP HOSTNAME dcvix-director PID AUDIT - MSG``, facility
    authpriv, severity notice for failed, refused or locked outcomes, info
    otherwise; MSG is the entry's JSON line (ASCII, so no BOM), the whole
    message at most 8 KiB.

    Not the stdlib's ``SysLogHandler``: it blocks on a full socket and
    formats RFC 3164 (no year, no microseconds, no MSGID). This socket is
    non-blocking; a message the daemon cannot take now (no socket yet,
    restarting, queue full) is dropped and counted, never waited for.
    The socket is connected at the first write; after a failed connect the
    next write tries again. If a working connection goes stale (the daemon
    restarted and bound a new socket), the message is retried once on a new
    connection, so a restart loses nothing. :meth:`reopen` is therefore not
    needed and does nothing.
    """

    def __init__(
        self,
        address: str,
        hostname: str | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        """Prepares to send to the UNIX datagram socket at ``address``.

        Raises:
            ValueError: if ``address`` is empty or too long for a UNIX
                socket, mistakes the director reports at start.
        """
        if not address:
            raise ValueError("syslog_address is empty")
        if len(os.fsencode(address)) > 107:  # sun_path holds 108 with its NUL
            raise ValueError(f"syslog_address {address} is too long for a UNIX socket")
        self._address = address
        self._hostname = _syslog_hostname(
            socket.gethostname() if hostname is None else hostname
        )
        self._socket: socket.socket | None = None
        self._closed = False
        self._warnings = _Warnings(f"syslog {address}", clock)

    @property
    def lost(self) -> int:
        """How many entries were dropped."""
        return self._warnings.lost

    def message(self, entry: Mapping[str, Any]) -> bytes:
        """The datagram for ``entry``."""
        severity = (
            SEVERITY_NOTICE
            if entry.get("outcome") in NOTICE_OUTCOMES
            else SEVERITY_INFO
        )
        header = (
            f"<{FACILITY_AUTHPRIV * 8 + severity}>1 "
            f"{_timestamp(entry)} {self._hostname} "
            f"{APP_NAME} {os.getpid()} {MSGID} - "
        )
        return (header + fit(entry, SYSLOG_MAX - len(header))).encode("ascii")

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.setblocking(False)
            sock.connect(self._address)
        except BaseException:
            sock.close()
            raise
        return sock

    def _disconnect(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None

    def write(self, entry: Mapping[str, Any]) -> None:
        """Sends ``entry``, or drops and counts it; never raises or blocks."""
        if self._closed:
            return
        try:
            data = self.message(entry)
        except (TypeError, ValueError, OverflowError, OSError) as error:
            self._warnings.entry_lost(f"cannot format: {error}")
            return
        for attempt in range(2):
            fresh = self._socket is None
            if self._socket is None:
                try:
                    self._socket = self._connect()
                except OSError as error:
                    self._warnings.entry_lost(f"cannot connect: {_reason(error)}")
                    return
            try:
                self._socket.send(data)
            except (BlockingIOError, InterruptedError):
                # The daemon's queue is full: it is alive, keep the socket.
                self._warnings.entry_lost("the syslog daemon is not keeping up")
                return
            except OSError as error:
                if error.errno == errno.ENOBUFS:
                    self._warnings.entry_lost("the syslog daemon is not keeping up")
                    return
                self._disconnect()
                if fresh or attempt:
                    self._warnings.entry_lost(f"cannot send: {_reason(error)}")
                    return
                continue  # a stale connection: once more on a new one
            return

    def reopen(self) -> None:
        """Nothing to do: a stale connection is replaced at the next write."""

    def close(self) -> None:
        """Closes the socket; later writes are ignored."""
        self._closed = True
        self._disconnect()


def open_sinks(
    file: str,
    syslog: bool,
    syslog_address: str,
    clock: IReactorTime | None = None,
) -> list[AuditSink]:
    """The sinks ``[audit]`` asks for, in that order; none when both are off.

    Raises:
        ValueError: if the file cannot be opened or the syslog address is
            unusable, as a one-line message for the start-up error.
    """
    sinks: list[AuditSink] = []
    if file:
        sinks.append(JsonLinesFile(Path(file), clock))
    if syslog:
        try:
            sinks.append(SyslogSink(syslog_address, clock=clock))
        except ValueError:
            for sink in sinks:
                sink.close()
            raise
    return sinks
