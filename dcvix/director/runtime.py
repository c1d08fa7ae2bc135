"""What agents report: the parsed report and where it is kept.

:func:`parse_report` turns one ``/v1/agent/update`` body into a
:class:`ServerState`, validating and capping everything an agent sends; it
stores nothing. A :class:`RuntimeStore` keeps the last state of each server,
under the hostname *registered* for the certificate's GUID (a different
``stats.hostname`` is logged and ignored), and replaces a server's sessions in
one step. A server not heard from within max(``max_age``, 3 x its
``update_interval``) is offline (:func:`is_online`): still listed, its sessions
dropped.

The store is async although the only engine is in memory: several directors
will later share one, behind the same interface.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from dataclasses import dataclass, replace
from typing import Any, Protocol

from twisted.logger import Logger

from dcvix.common.errors import BadRequest
from dcvix.common.gotime import parse_time
from dcvix.common.validate import InvalidInput, check_session_id, split_host_port

log = Logger()

# C0 controls and DEL: one regex scan, not a Python loop over every character
# (a report holds some 200 texts; this check was a tenth of an update's cost).
_CONTROL = re.compile("[\x00-\x1f\x7f]")
# A session's text fields, in the order parse_session checks them.
_SESSION_TEXTS = (
    "owner",
    "user",
    "licensing-mode",
    "storage-root",
    "status",
    "x11-display",
    "x11-authority",
)
# Every key parse_session reads: SessionsMemo keeps no list holding others.
_SESSION_KEYS = frozenset(
    {"id", "type", "num-of-connections", "creation-time", "last-disconnection-time"}
    | set(_SESSION_TEXTS)
)
# A session's times come again in every report (every 30 s): parsed once.
_time = functools.lru_cache(maxsize=65_536)(parse_time)

MAX_SESSIONS = 500
MAX_TAGS = 64
MAX_REAPED = 100  # sessions an agent's reaper closed, per report
MAX_OWNER, MAX_REASON = 256, 300  # of a reaped session, in the audit trail
MAX_TEXT = 1024  # paths such as x11-authority hold a session id of up to 256
# An agent's own interval stretches the window in which it counts online
# (3 x): capped so a silent agent cannot stay "online" for days.
MAX_UPDATE_INTERVAL = 600.0
DEFAULT_UPDATE_INTERVAL = 30.0  # Go's


@dataclass(frozen=True)
class Session:
    """One DCV session as its agent reported it.

    Times are None for Go's zero time (never disconnected, or not reported).
    """

    id: str
    owner: str
    user: str
    connections: int
    creation_time: dt.datetime | None
    last_disconnection_time: dt.datetime | None
    licensing_mode: str
    storage_root: str
    type: str
    status: str
    x11_display: str
    x11_authority: str


@dataclass(frozen=True)
class HostStats:
    """A server's load as its agent reported it."""

    free_memory: int
    total_memory: int
    cores: int
    cpu_usage: float
    load1: float
    load5: float
    load15: float


@dataclass(frozen=True)
class ServerState:
    """One agent's last report."""

    guid: str
    hostname: str
    address: str
    agent_port: int
    update_interval: float
    last_seen: dt.datetime
    stats: HostStats
    tags: tuple[str, ...] = ()
    sessions: tuple[Session, ...] = ()
    version: str = ""
    dcv_error: str = ""
    advertised: bool = False

    @functools.cached_property
    def seen_at(self) -> float:
        """``last_seen`` in seconds since the epoch (computed once)."""
        return self.last_seen.timestamp()

    @property
    def dcv_host(self) -> str:
        """Where DCV clients and gateways reach this server's DCV.

        The ``advertise_address`` host when the agent set one (NAT), else its
        registered hostname, as Go dcvix did.
        """
        return self.address if self.advertised else self.hostname


def parse_report(
    guid: str,
    hostname: str,
    payload: Any,
    address: str,
    now: dt.datetime,
    default_agent_port: int,
    previous: ServerState | None,
    memo: SessionsMemo | None = None,
    *,
    sessions: tuple[Session, ...] | None = None,
) -> ServerState:
    """One ``/v1/agent/update`` body of the agent ``guid``, registered as ``hostname``.

    Args:
        guid: the agent, from its certificate.
        hostname: its registered hostname, which wins over ``stats.hostname``.
        payload: the decoded JSON body.
        address: the peer address, used unless a valid ``advertise_address``.
        now: when the report arrived.
        default_agent_port: for agents that do not report their port.
        previous: the server's last state; its sessions are kept when the body
            has no ``sessions`` key (dcv failed on the agent).
        memo: the agents' last parsed session lists, to skip parsing a list
            equal to the one the same agent sent before.
        sessions: the sessions, already parsed (a report another director
            passed on without them in ``payload``); they win over the memo.

    Raises:
        BadRequest: the body does not validate.
    """
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    stats_in = payload.get("stats")
    stats = parse_stats(stats_in)
    reported = stats_in.get("hostname") if isinstance(stats_in, dict) else None
    if reported not in (None, "", hostname):
        log.warn(
            "agent {guid} reported hostname {reported!r}; keeping its registered "
            "{hostname}",
            guid=guid,
            reported=reported[:100]
            if isinstance(reported, str)
            else type(reported).__name__,
            hostname=hostname,
        )
    tags = parse_tags(payload.get("tags"))
    if sessions is not None:
        pass
    elif "sessions" not in payload and previous is not None and previous.guid == guid:
        sessions = previous.sessions  # dcv failed on the agent: keep what we knew
    elif memo is not None:
        sessions = memo.parse(guid, payload.get("sessions"))
    else:
        sessions = parse_sessions(payload.get("sessions"))
    advertised = _address(payload.get("advertise_address"), "")
    return ServerState(
        guid=guid,
        hostname=hostname,
        address=advertised or address,
        agent_port=_port(payload.get("agent_port"), default_agent_port),
        update_interval=_interval(payload.get("update_interval")),
        last_seen=now,
        stats=stats,
        tags=tuple(tags),
        sessions=sessions,
        version=_text(payload.get("version"), "version"),
        dcv_error=_free_text(payload.get("dcv_error")),
        advertised=bool(advertised),
    )


def is_online(state: ServerState, now: float, max_age: float) -> bool:
    """Heard from within max(``max_age``, 3 x its update interval) of ``now``.

    ``now`` in seconds since the epoch (``clock.seconds()``): a listing
    compares 10,000 servers with one reading, and datetime arithmetic cost
    some 1.7 µs a server (bench/scale.py). A slow agent is not declared
    offline between two of its own updates.
    """
    return now - state.seen_at <= max(max_age, 3 * state.update_interval)


def parse_session(entry: Any) -> Session:
    """One reported session, checked.

    Raises:
        BadRequest: a field of the wrong type, a bad id, type or timestamp.
    """
    if not isinstance(entry, dict):
        raise BadRequest("each session must be an object")
    session_id = entry.get("id")
    if not isinstance(session_id, str):
        raise BadRequest("a session id is invalid")
    try:
        check_session_id(session_id)
    except InvalidInput:
        raise BadRequest("a session id is invalid") from None
    kind = entry.get("type")
    if not isinstance(kind, str) or kind.lower() not in ("console", "virtual", ""):
        raise BadRequest(f"session {session_id}: type must be console or virtual")
    connections = entry.get("num-of-connections", 0)
    if connections is None:
        connections = 0
    if not isinstance(connections, int) or isinstance(connections, bool):
        raise BadRequest(f"session {session_id}: num-of-connections must be an integer")

    def moment(key: str) -> dt.datetime | None:
        value = entry.get(key)
        try:
            return _time(value) if isinstance(value, str) else parse_time(value)
        except ValueError:
            raise BadRequest(
                f"session {session_id}: {key} is not a timestamp"
            ) from None

    # Times before texts: a report bad in both is refused for its time, as before.
    creation_time = moment("creation-time")
    last_disconnection_time = moment("last-disconnection-time")
    raw: list[Any] = [entry.get(key) for key in _SESSION_TEXTS]
    texts: list[str] = raw
    try:
        joined = "".join(raw)  # TypeError unless every one is a string
    except TypeError:
        joined = None
    if joined is None or _CONTROL.search(joined) or max(map(len, raw)) > MAX_TEXT:
        # Not the usual case (every text a clean string): find the culprit, or
        # read None as "", key by key.
        texts = [
            _text(entry.get(key), f"session {session_id}: {key}")
            for key in _SESSION_TEXTS
        ]
    owner, user, licensing_mode, storage_root, status, display, authority = texts
    return Session(
        id=session_id,
        owner=owner,
        user=user,
        connections=max(connections, 0),
        creation_time=creation_time,
        last_disconnection_time=last_disconnection_time,
        licensing_mode=licensing_mode,
        storage_root=storage_root,
        type=kind.lower(),
        status=status,
        x11_display=display,
        x11_authority=authority,
    )


def parse_stats(stats: Any) -> HostStats:
    """The numeric stats, checked (the hostname is the caller's business).

    Raises:
        BadRequest: not an object, or a value of the wrong type or sign.
    """
    if not isinstance(stats, dict):
        raise BadRequest("stats must be an object")
    return HostStats(
        free_memory=_count(stats, "free_memory"),
        total_memory=_count(stats, "total_memory"),
        cores=_count(stats, "cores"),
        cpu_usage=_amount(stats, "cpu_usage"),
        load1=_amount(stats, "load1"),
        load5=_amount(stats, "load5"),
        load15=_amount(stats, "load15"),
    )


def parse_tags(tags: Any) -> list[str]:
    """Reported tags, checked and capped.

    Raises:
        BadRequest: not a list of short printable strings.
    """
    if tags is None:
        return []
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise BadRequest(f"tags must be a list of at most {MAX_TAGS} strings")
    return [_text(tag, "a tag") for tag in tags]


@dataclass(frozen=True)
class Reaped:
    """A session an agent's idle reaper closed, and why (for the audit trail)."""

    id: str
    owner: str
    reason: str


def parse_reaped(payload: Any) -> list[Reaped]:
    """The ``reaped`` list of an update (none when absent).

    Raises:
        BadRequest: not a list of at most MAX_REAPED objects of printable strings.
    """
    reaped = payload.get("reaped") if isinstance(payload, dict) else None
    if reaped is None:
        return []
    if not isinstance(reaped, list) or len(reaped) > MAX_REAPED:
        raise BadRequest(f"reaped must be a list of at most {MAX_REAPED} objects")
    found = []
    for entry in reaped:
        if not isinstance(entry, dict) or not entry.get("id"):
            raise BadRequest("each reaped entry must be an object with an id")
        session_id = _text(entry.get("id"), "a reaped session id")
        try:
            check_session_id(session_id)
        except InvalidInput:
            raise BadRequest("a reaped session id is not a session id") from None
        found.append(
            Reaped(
                session_id,
                _text(entry.get("owner"), "a reaped session owner")[:MAX_OWNER],
                _text(entry.get("reason"), "a reaped session reason")[:MAX_REASON],
            )
        )
    return found


class RuntimeStore(Protocol):
    """The last state of each server, by registered hostname."""

    async def put(self, state: ServerState) -> None:
        """Keep ``state`` as its server's, replacing the previous one whole."""

    async def server(self, hostname: str) -> ServerState | None:
        """One server by registered hostname, or None."""

    async def servers(self) -> list[ServerState]:
        """Every server that reported since start, online or not."""

    async def drop_sessions(self, hostname: str) -> None:
        """Empty a server's sessions (it went offline); it stays listed."""

    async def forget_guid(self, guid: str) -> None:
        """Drop the server of an agent that was deleted."""

    async def add_session(
        self, hostname: str, session: Session, until: dt.datetime
    ) -> None:
        """Show a session the director just created, until a report lists it.

        Reports made before the creation do not list it; those received
        before ``until`` keep it shown (as the caller made it: ``creating``).
        """

    async def remove_session(
        self, hostname: str, session_id: str, until: dt.datetime
    ) -> None:
        """Hide a session the director just closed, until a report omits it.

        Reports received before ``until`` that still list it (made before the
        close) do not bring it back.
        """


class MemoryRuntimeStore:
    """A :class:`RuntimeStore` in this process's memory: one director's own."""

    def __init__(self) -> None:
        self._servers: dict[str, ServerState] = {}
        # hostname -> session id -> (session shown, until when)
        self._created: dict[str, dict[str, tuple[Session, dt.datetime]]] = {}
        # hostname -> session id -> until when it stays hidden
        self._closed: dict[str, dict[str, dt.datetime]] = {}

    async def put(self, state: ServerState) -> None:
        """Keep ``state`` as its server's, replacing the previous one whole.

        Sessions the director created or closed since are kept as it left
        them until a report confirms it or their time runs out.
        """
        self._servers[state.hostname] = self._overlay(state)

    def _overlay(self, state: ServerState) -> ServerState:
        created = self._created.get(state.hostname)
        closed = self._closed.get(state.hostname)
        if not created and not closed:
            return state
        reported = {s.id for s in state.sessions}
        now = state.last_seen
        sessions = list(state.sessions)
        for session_id, (session, until) in list((created or {}).items()):
            if session_id in reported or until <= now:
                del self._created[state.hostname][session_id]
            else:
                sessions.append(session)
        for session_id, until in list((closed or {}).items()):
            if session_id not in reported or until <= now:
                del self._closed[state.hostname][session_id]
            else:
                sessions = [s for s in sessions if s.id != session_id]
        return replace(state, sessions=tuple(sessions))

    async def add_session(
        self, hostname: str, session: Session, until: dt.datetime
    ) -> None:
        """Show a session the director just created, until a report lists it."""
        self._closed.get(hostname, {}).pop(session.id, None)
        state = self._servers.get(hostname)
        if state is None or any(s.id == session.id for s in state.sessions):
            return
        self._created.setdefault(hostname, {})[session.id] = (session, until)
        self._servers[hostname] = replace(state, sessions=(*state.sessions, session))

    async def remove_session(
        self, hostname: str, session_id: str, until: dt.datetime
    ) -> None:
        """Hide a session the director just closed, until a report omits it."""
        self._created.get(hostname, {}).pop(session_id, None)
        state = self._servers.get(hostname)
        if state is None:
            return
        self._closed.setdefault(hostname, {})[session_id] = until
        self._servers[hostname] = replace(
            state, sessions=tuple(s for s in state.sessions if s.id != session_id)
        )

    async def server(self, hostname: str) -> ServerState | None:
        """One server by registered hostname, or None."""
        return self._servers.get(hostname)

    async def servers(self) -> list[ServerState]:
        """Every server that reported since start, in the order first seen."""
        return list(self._servers.values())

    async def drop_sessions(self, hostname: str) -> None:
        """Empty a server's sessions (it went offline); it stays listed."""
        self._created.pop(hostname, None)
        self._closed.pop(hostname, None)
        state = self._servers.get(hostname)
        if state is not None and state.sessions:
            self._servers[hostname] = replace(state, sessions=())

    async def forget_guid(self, guid: str) -> None:
        """Drop the server of an agent that was deleted."""
        for state in list(self._servers.values()):
            if state.guid == guid:
                del self._servers[state.hostname]
                self._created.pop(state.hostname, None)
                self._closed.pop(state.hostname, None)


class SessionsMemo:
    """Each agent's last reported session list, raw and parsed.

    An agent sends its whole list every ``update_interval`` and it rarely
    changes: comparing the decoded JSON with the last one (in C) costs a
    fraction of checking every field again, which was a tenth of an update.
    The raw lists are kept (a few hundred bytes a session), one per agent that
    reported since start: no more than the registry holds. Equal is Python's
    ``==`` and, as ``1 == 1.0 == True``, the connection counts must still be
    integers: then a list equal to one that validated stands for the same
    sessions.
    """

    def __init__(self) -> None:
        self._last: dict[str, tuple[Any, tuple[Session, ...]]] = {}

    def parse(self, guid: str, raw: Any) -> tuple[Session, ...]:
        """``raw`` parsed as :func:`parse_report` does, reused when unchanged.

        Raises:
            BadRequest: ``raw`` does not validate (the memo is left as it was).
        """
        last = self._last.get(guid)
        if last is not None and last[0] == raw and _counts_are_integers(raw):
            return last[1]
        sessions = parse_sessions(raw)
        if raw is None or all(entry.keys() <= _SESSION_KEYS for entry in raw):
            self._last[guid] = (raw, sessions)
        else:
            # Keys nothing reads (up to the body cap) are not worth keeping:
            # such a list is parsed each time, as without the memo.
            self._last.pop(guid, None)
        return sessions


def _counts_are_integers(raw: list[dict[str, Any]] | None) -> bool:
    """Whether a list equal to one that validated validates too.

    To ``==``, ``1``, ``1.0`` and ``True`` are one value, but only the first
    is a valid ``num-of-connections`` (the only number a session has): one
    pass over the entries, no parsing.
    """
    return raw is None or all(
        type(s.get("num-of-connections")) in _COUNT_TYPES for s in raw
    )


_COUNT_TYPES = frozenset({int, type(None)})


def parse_sessions(raw: Any) -> tuple[Session, ...]:
    """The reported sessions; of one id reported twice, the last is kept."""
    if raw is None:
        raw = []
    if not isinstance(raw, list) or len(raw) > MAX_SESSIONS:
        raise BadRequest(f"sessions must be a list of at most {MAX_SESSIONS}")
    by_id = {s.id: s for s in map(parse_session, raw)}
    return tuple(by_id.values())


def _count(stats: dict[str, Any], key: str) -> int:
    value = stats.get(key)
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise BadRequest(f"stats.{key} must be a non-negative integer")
    return value


def _amount(stats: dict[str, Any], key: str) -> float:
    value = stats.get(key)
    if value is None:
        return 0.0
    if (
        not isinstance(value, int | float)
        or isinstance(value, bool)
        or not 0 <= value < math.inf
    ):
        raise BadRequest(f"stats.{key} must be a non-negative number")
    try:
        return float(value)
    except OverflowError:  # an integer too large for a float
        raise BadRequest(f"stats.{key} is out of range") from None


def _text(value: Any, what: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > MAX_TEXT:
        raise BadRequest(f"{what} must be a string of at most {MAX_TEXT} characters")
    if _CONTROL.search(value):
        raise BadRequest(f"{what} holds a control character")
    return value


def _free_text(value: Any) -> str:
    """Free text an agent passes on (dcv's error), printable and capped.

    Anything but a string is dropped: turning an arbitrary JSON value into
    text would walk all of it (and could reach Python's recursion limit).
    """
    return _printable(value[:MAX_TEXT]) if isinstance(value, str) else ""


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
    return DEFAULT_UPDATE_INTERVAL
