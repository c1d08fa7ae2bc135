"""The ``dcv`` command line, wrapped: the only way the agent touches DCV.

Each command runs through :func:`dcvix.common.process.run_command` (own process
group, explicit environment, stdout and stderr apart, a time limit that kills the
group). Mutations, and the listing each depends on, are serialised. Inputs are
validated before any process starts.

``list-sessions --json`` output is parsed leniently: timestamps with 0-9
fractional digits, ``Z`` or an offset, or ``""``; unknown keys ignored; one bad
entry is logged and skipped rather than failing the whole list.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import pwd
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import DeferredLock
from twisted.logger import Logger

from dcvix.agent.metrics import AgentMetrics
from dcvix.common.gotime import format_time, parse_time
from dcvix.common.process import CommandError, CommandResult, run_command
from dcvix.common.validate import (
    InvalidInput,
)

log = Logger()

SESSION_TYPES = ("console", "virtual")
OUTPUT_CAP = 4 * 1024 * 1024


class DcvError(Exception):
    """``dcv`` could not do it; ``kind`` is missing, failed, timeout or garbage."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


# ----------------------------------------------------------------- validation


def check_owner(value: str) -> str:
    """A user name for ``--owner``: no control character, no leading ``-``."""
    if not value or len(value) > 256 or value.startswith("-"):
        raise InvalidInput("invalid user id")
    if any(ord(c) < 32 or c == "\x7f" for c in value):
        raise InvalidInput("invalid user id")
    return value


def check_session_type(value: str) -> str:
    """``console`` or ``virtual``, in any case; returned in lower case."""
    lowered = value.lower()
    if lowered not in SESSION_TYPES:
        raise InvalidInput("sessionType must be console or virtual")
    return lowered


OVERFLOW_UID = 65534
DEFAULT_MAX_SESSION_UID = 60000


def overflow_uids() -> frozenset[int]:
    """``nobody``'s uid: 65534, and the kernel's overflow uid if set otherwise."""
    uids = {OVERFLOW_UID}
    with contextlib.suppress(OSError, ValueError):
        uids.add(int(Path("/proc/sys/kernel/overflowuid").read_text()))
    return frozenset(uids)


def check_local_user(
    owner: str, min_uid: int, max_uid: int = DEFAULT_MAX_SESSION_UID
) -> str:
    """A local account with a uid in [``min_uid``, ``max_uid``], never ``nobody``.

    Who a virtual session runs as. The overflow uid (``nobody``, which owns
    files of unmapped users) is refused whatever the range says.
    """
    try:
        entry = pwd.getpwnam(owner)
    except KeyError:
        raise InvalidInput(f"{owner} is not a local user") from None
    uid = entry.pw_uid
    if uid in overflow_uids():
        raise InvalidInput(
            f"{owner} may not own a virtual session (uid {uid} is the overflow uid)"
        )
    if uid < min_uid:
        raise InvalidInput(
            f"{owner} may not own a virtual session (uid below {min_uid})"
        )
    if uid > max_uid:
        raise InvalidInput(
            f"{owner} may not own a virtual session (uid above {max_uid})"
        )
    return owner


# ------------------------------------------------------------------- sessions


@dataclass(frozen=True)
class Session:
    """One DCV session, with the members the agent reports."""

    id: str
    owner: str = ""
    user: str = ""
    connections: int = 0
    created: dt.datetime | None = None
    last_disconnected: dt.datetime | None = None
    licensing_mode: str = ""
    storage_root: str = ""
    type: str = ""
    status: str = ""
    x11_display: str = ""
    x11_authority: str = ""

    def to_json(self) -> dict[str, Any]:
        """The agent's session JSON (Go's keys and order, reference §12.4)."""
        return {
            "id": self.id,
            "owner": self.owner,
            "user": self.user,
            "num-of-connections": self.connections,
            "creation-time": format_time(self.created),
            "last-disconnection-time": format_time(self.last_disconnected),
            "licensing-mode": self.licensing_mode,
            "storage-root": self.storage_root,
            "type": self.type,
            "status": self.status,
            "x11-display": self.x11_display,
            "x11-authority": self.x11_authority,
        }


def _text(entry: dict[str, Any], key: str) -> str:
    value = entry.get(key)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ValueError(f"{key} is not a string")
    return value


def parse_session(entry: Any) -> Session:
    """One entry of ``list-sessions --json``.

    Raises:
        ValueError: not an object, no valid id, or a member of the wrong type.
    """
    if not isinstance(entry, dict):
        raise ValueError("entry is not an object")
    session_id = _text(entry, "id")
    if not session_id:
        raise ValueError("entry has no id")
    connections = entry.get("num-of-connections", 0)
    if connections is None:
        connections = 0
    if not isinstance(connections, int) or isinstance(connections, bool):
        raise ValueError("num-of-connections is not an integer")
    return Session(
        id=session_id,
        owner=_text(entry, "owner"),
        user=_text(entry, "user"),
        connections=max(connections, 0),
        created=parse_time(entry.get("creation-time")),
        last_disconnected=parse_time(entry.get("last-disconnection-time")),
        licensing_mode=_text(entry, "licensing-mode"),
        storage_root=_text(entry, "storage-root"),
        type=_text(entry, "type").lower(),
        status=_text(entry, "status"),
        x11_display=_text(entry, "x11-display"),
        x11_authority=_text(entry, "x11-authority"),
    )


def parse_sessions(stdout: bytes) -> tuple[list[Session], list[str]]:
    """Sessions from ``list-sessions --json``, and the problems of skipped entries.

    Raises:
        ValueError: the output is not a JSON array at all.
    """
    try:
        data = json.loads(stdout.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ValueError("list-sessions did not print JSON") from None
    if not isinstance(data, list):
        raise ValueError("list-sessions did not print a JSON array")
    sessions, problems = [], []
    for number, entry in enumerate(data, start=1):
        try:
            sessions.append(parse_session(entry))
        except ValueError as error:
            problems.append(f"entry {number}: {error}")
    return sessions, problems


# --------------------------------------------------------------------- runner


_Parsed = TypeVar("_Parsed")


def _as_is(result: CommandResult) -> CommandResult:
    return result


def _first_line(data: bytes) -> str:
    text = data.decode("utf-8", "replace").strip()
    return text.splitlines()[0][:200] if text else ""


class DcvCli:
    """Runs ``dcv`` for the agent.

    Args:
        reactor: spawns processes and counts time.
        path: the ``dcv`` executable (``dcv_path``).
        timeout: seconds before one command's process group is killed.
        metrics: counts each command and keeps the last listing's gauges.
    """

    def __init__(
        self,
        reactor: Any,
        path: str,
        timeout: float,
        metrics: AgentMetrics | None = None,
    ) -> None:
        self._reactor = reactor
        self.clock = reactor
        self._path = path
        self._timeout = timeout
        self._metrics = metrics or AgentMetrics()
        self.lock = DeferredLock()

    async def _run(self, *args: str, limit: float | None = None) -> CommandResult:
        return await self._call(args, limit, _as_is)

    async def _call(
        self,
        args: Sequence[str],
        limit: float | None,
        parse: Callable[[CommandResult], _Parsed],
    ) -> _Parsed:
        """Run ``dcv ARGS`` and ``parse`` its result; counted by outcome.

        Raises:
            DcvError: no time left, dcv missing, timed out, failed, or
                ``parse`` raised ValueError (``garbage``).
        """
        operation = args[0]
        timeout = self._timeout if limit is None else min(self._timeout, limit)
        if timeout <= 0:
            raise DcvError("timeout", f"no time left to run dcv {operation}")
        started = self.clock.seconds()
        outcome = "failed"
        try:
            result = await self._spawn(args, operation, timeout)
            try:
                parsed = parse(result)
            except ValueError as error:
                raise DcvError("garbage", str(error)) from None
            outcome = "ok"
            return parsed
        except DcvError as error:
            outcome = error.kind
            raise
        finally:
            self._metrics.count_dcv(operation, outcome, self.clock.seconds() - started)

    async def _spawn(
        self, args: Sequence[str], operation: str, timeout: float
    ) -> CommandResult:
        try:
            result = await run_command(
                self._reactor,
                [self._path, *args],
                timeout=timeout,
                output_cap=OUTPUT_CAP,
            )
        except CommandError as error:
            raise DcvError("missing", f"dcv {operation}: {error}") from None
        if result.timed_out:
            raise DcvError("timeout", f"dcv {operation} took over {timeout:g} s")
        if not result.ok:
            detail = _first_line(result.stderr) or _first_line(result.stdout)
            raise DcvError(
                "failed",
                f"dcv {operation} failed (exit {result.exit_code}): {detail}",
            )
        return result

    async def list_sessions(self, limit: float | None = None) -> list[Session]:
        """``dcv list-sessions --json``; bad entries are logged and skipped."""
        sessions, problems = await self._call(
            ("list-sessions", "--json"), limit, lambda r: parse_sessions(r.stdout)
        )
        for problem in problems:
            log.warn("skipped a session dcv listed: {problem}", problem=problem)
        self._metrics.set_sessions(sessions, self.clock.seconds())
        return sessions

    async def create_session(
        self,
        owner: str,
        session_type: str,
        session_id: str,
        run_as: str | None,
        limit: float | None = None,
    ) -> None:
        """``dcv create-session --owner O [--user U] --type T ID``."""
        args = ["create-session", "--owner", owner]
        if run_as is not None:
            args += ["--user", run_as]
        await self._run(*args, "--type", session_type, session_id, limit=limit)

    async def close_session(self, session_id: str) -> None:
        """``dcv close-session ID``."""
        await self._run("close-session", session_id)

    async def set_config(self, section: str, key: str, value: str) -> None:
        """``dcv set-config --section S --key K VALUE``."""
        await self._run("set-config", "--section", section, "--key", key, value)
