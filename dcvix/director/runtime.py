"""What agents report, in memory: servers, their stats and their sessions.

Each update is stored under the hostname *registered* for the certificate's
GUID; a different ``stats.hostname`` is logged and ignored. Everything an agent
reports is validated and capped before it is kept, and a server's sessions are
replaced in one step. A server not heard from within max(``max_age``,
3 x its ``update_interval``) is offline: still listed, its sessions dropped.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any

from twisted.logger import Logger

from dcvix.common.config import split_host_port
from dcvix.common.errors import BadRequest
from dcvix.common.gotime import format_time, parse_time

log = Logger()

MAX_SESSIONS = 500
MAX_TAGS = 64
MAX_TEXT = 1024  # paths such as x11-authority hold a session id of up to 256
_ID = re.compile(r"[A-Za-z0-9_.@:+=-]{1,256}")
_STAT_INTS = ("free_memory", "total_memory", "cores")
_STAT_FLOATS = ("cpu_usage", "load1", "load5", "load15")
_SESSION_TEXTS = (
    "owner",
    "user",
    "licensing-mode",
    "storage-root",
    "status",
    "x11-display",
    "x11-authority",
)


def _clean_text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise BadRequest(f"{what} must be a string of at most {MAX_TEXT} characters")
    if any(ord(c) < 32 or c == "\x7f" for c in value):
        raise BadRequest(f"{what} holds a control character")
    return value


def clean_session(entry: Any) -> dict[str, Any]:
    """One reported session, checked, in the agent's session JSON shape.

    Raises:
        BadRequest: a field of the wrong type, a bad id, type or timestamp.
    """
    if not isinstance(entry, dict):
        raise BadRequest("each session must be an object")
    session_id = entry.get("id")
    if (
        not isinstance(session_id, str)
        or not _ID.fullmatch(session_id)
        or (session_id.startswith("-"))
    ):
        raise BadRequest("a session id is invalid")
    kind = entry.get("type")
    if not isinstance(kind, str) or kind.lower() not in ("console", "virtual", ""):
        raise BadRequest(f"session {session_id}: type must be console or virtual")
    connections = entry.get("num-of-connections", 0)
    if connections is None:
        connections = 0
    if not isinstance(connections, int) or isinstance(connections, bool):
        raise BadRequest(f"session {session_id}: num-of-connections must be an integer")
    times = {}
    for key in ("creation-time", "last-disconnection-time"):
        try:
            times[key] = format_time(parse_time(entry.get(key)))
        except ValueError:
            raise BadRequest(
                f"session {session_id}: {key} is not a timestamp"
            ) from None
    texts = {
        key: _clean_text(entry.get(key), f"session {session_id}: {key}")
        for key in _SESSION_TEXTS
    }
    # Go's order (reference original-agent.md §12.4).
    return {
        "id": session_id,
        "owner": texts["owner"],
        "user": texts["user"],
        "num-of-connections": max(connections, 0),
        "creation-time": times["creation-time"],
        "last-disconnection-time": times["last-disconnection-time"],
        "licensing-mode": texts["licensing-mode"],
        "storage-root": texts["storage-root"],
        "type": kind.lower(),
        "status": texts["status"],
        "x11-display": texts["x11-display"],
        "x11-authority": texts["x11-authority"],
    }


def clean_stats(stats: Any) -> dict[str, Any]:
    """The numeric stats, checked (the hostname is handled by the caller)."""
    if not isinstance(stats, dict):
        raise BadRequest("stats must be an object")
    cleaned: dict[str, Any] = {}
    for key in _STAT_INTS:
        value = stats.get(key)
        if value is None:
            value = 0
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadRequest(f"stats.{key} must be a non-negative integer")
        cleaned[key] = value
    for key in _STAT_FLOATS:
        value = stats.get(key)
        if value is None:
            value = 0
        if (
            not isinstance(value, int | float)
            or isinstance(value, bool)
            or not 0 <= value < math.inf
        ):
            raise BadRequest(f"stats.{key} must be a non-negative number")
        try:
            cleaned[key] = float(value)
        except OverflowError:  # an integer too large for a float
            raise BadRequest(f"stats.{key} is out of range") from None
    return cleaned


def clean_tags(tags: Any) -> list[str]:
    """Reported tags, checked and capped."""
    if tags is None:
        return []
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise BadRequest(f"tags must be a list of at most {MAX_TAGS} strings")
    return [_clean_text(tag, "a tag") for tag in tags]


@dataclass(frozen=True)
class ServerState:
    """One agent's last report."""

    guid: str
    hostname: str
    address: str
    agent_port: int
    update_interval: float
    last_seen: dt.datetime
    stats: dict[str, Any] = field(default_factory=dict)
    tags: tuple[str, ...] = ()
    sessions: tuple[dict[str, Any], ...] = ()
    version: str = ""
    dcv_error: str = ""


class Runtime:
    """Servers and sessions as agents last reported them.

    Args:
        max_age: seconds after which a silent server is offline.
        default_agent_port: the port of agents that do not report theirs.
    """

    def __init__(self, max_age: float, default_agent_port: int) -> None:
        self._max_age = max_age
        self._default_port = default_agent_port
        self._servers: dict[str, ServerState] = {}

    def record(
        self,
        guid: str,
        hostname: str,
        payload: Any,
        address: str,
        now: dt.datetime,
    ) -> ServerState:
        """Store one ``/v1/agent/update`` body for the agent ``guid``.

        Raises:
            BadRequest: the body does not validate; nothing is stored then.
        """
        if not isinstance(payload, dict):
            raise BadRequest("request body must be a JSON object")
        stats_in = payload.get("stats")
        stats = clean_stats(stats_in)
        reported = stats_in.get("hostname") if isinstance(stats_in, dict) else None
        if reported not in (None, "", hostname):
            log.warn(
                "agent {guid} reported hostname {reported!r}; keeping its registered "
                "{hostname}",
                guid=guid,
                reported=str(reported)[:100],
                hostname=hostname,
            )
        tags = clean_tags(payload.get("tags"))
        previous = self._servers.get(hostname)
        raw_sessions = payload.get("sessions", None)
        if "sessions" not in payload and previous is not None:
            sessions = previous.sessions  # dcv failed on the agent: keep what we knew
        else:
            if raw_sessions is None:
                raw_sessions = []
            if not isinstance(raw_sessions, list) or len(raw_sessions) > MAX_SESSIONS:
                raise BadRequest(f"sessions must be a list of at most {MAX_SESSIONS}")
            by_id = {s["id"]: s for s in map(clean_session, raw_sessions)}
            sessions = tuple(by_id.values())
        state = ServerState(
            guid=guid,
            hostname=hostname,
            address=_address(payload.get("advertise_address"), address),
            agent_port=_port(payload.get("agent_port"), self._default_port),
            update_interval=_interval(payload.get("update_interval")),
            last_seen=now,
            stats={"hostname": hostname, **stats},
            tags=tuple(tags),
            sessions=sessions,
            version=_clean_text(payload.get("version"), "version"),
            dcv_error=_printable(str(payload.get("dcv_error") or "")[:MAX_TEXT]),
        )
        self._servers[hostname] = state
        return state

    def online(self, state: ServerState, now: dt.datetime) -> bool:
        """Heard from within max(max_age, 3 x its update interval)."""
        window = max(self._max_age, 3 * state.update_interval)
        return (now - state.last_seen).total_seconds() <= window

    def live_servers(self, now: dt.datetime) -> list[ServerState]:
        """The servers online now (whose sessions can be trusted)."""
        return [s for s in self._servers.values() if self.online(s, now)]

    def forget_guid(self, guid: str) -> None:
        """Drop the server of an agent that was deleted."""
        for state in list(self._servers.values()):
            if state.guid == guid:
                del self._servers[state.hostname]

    def servers(self) -> list[ServerState]:
        """Every server that ever reported (since start)."""
        return list(self._servers.values())

    def server(self, hostname: str) -> ServerState | None:
        """One server by registered hostname."""
        return self._servers.get(hostname)

    def forget_sessions(self, hostname: str) -> None:
        """Drop a server's sessions (it went offline)."""
        state = self._servers.get(hostname)
        if state is not None and state.sessions:
            self._servers[hostname] = replace(state, sessions=())

    def forget(self, hostname: str) -> None:
        """Drop a server entirely (its agent was deleted or revoked)."""
        self._servers.pop(hostname, None)

    def expire(self, now: dt.datetime) -> list[str]:
        """Drop the sessions of servers gone offline; their hostnames."""
        gone = []
        for state in list(self._servers.values()):
            if not self.online(state, now) and state.sessions:
                self.forget_sessions(state.hostname)
                gone.append(state.hostname)
        return gone


def _printable(text: str) -> str:
    """Free text an agent passes on (dcv's error): control characters blanked.

    It is shown, never acted on, so a stray tab or escape must not cost the
    whole update (and the server its online state).
    """
    return "".join(" " if ord(c) < 32 or c == "\x7f" else c for c in text)


def _address(advertised: Any, peer: str) -> str:
    """The host of ``advertise_address`` (host, host:port, [v6]:port, v6)."""
    if isinstance(advertised, str) and advertised:
        try:
            host, _port = split_host_port(advertised)
        except ValueError:
            log.warn(
                "ignoring invalid advertise_address {value!r}", value=advertised[:100]
            )
            return peer
        return host
    return peer


def _port(value: Any, default: int) -> int:
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value < 65536:
        return value
    return default


MAX_UPDATE_INTERVAL = 86400.0


def _interval(value: Any) -> float:
    """The agent's update interval; absurd values fall back to Go's 30 s.

    Bounded, as it stretches the window in which a silent agent counts online.
    """
    if (
        isinstance(value, int | float)
        and not isinstance(value, bool)
        and 0 < value <= MAX_UPDATE_INTERVAL
    ):
        return float(value)
    return 30.0


def session_json(state: ServerState, session: dict[str, Any]) -> dict[str, Any]:
    """A session as ``GET /v1/sessions`` shows it (Go's keys)."""
    return {
        "uid": f"{session['id']}-{state.hostname}",
        "server_id": state.hostname,
        "last-seen": format_time(state.last_seen),
        **session,
    }


def server_json(state: ServerState, online: bool, agent_state: str) -> dict[str, Any]:
    """A server as ``GET /v1/servers`` shows it (Go's keys, then ours)."""
    return {
        "last-seen": format_time(state.last_seen),
        "hostname": state.hostname,
        "agent_ip": state.address,
        **{k: v for k, v in state.stats.items() if k != "hostname"},
        "tags": list(state.tags),
        "sessions": [session_json(state, s) for s in state.sessions] if online else [],
        "guid": state.guid,
        "agent_state": agent_state,
        "online": online,
        "agent_port": state.agent_port,
        "version": state.version,
        "dcv_error": state.dcv_error,
    }
