"""The fleet as ``GET /v1/servers`` and ``GET /v1/sessions`` show it.

Go's key names and order come first, so Go clients and scripts that read the
old director's output keep working; our own keys follow.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from dcvix.common.gotime import format_time
from dcvix.director.runtime import ServerState, Session


def session_json(state: ServerState, session: Session) -> dict[str, Any]:
    """A session of the server ``state`` (reference original-agent.md §12.4).

    No time is Go's zero time, as Go writes it; a Go director answers 400 to
    ``""`` in these fields, so a missing time must never become one.
    """
    return {
        **_session_front(state.hostname, session),
        "last-seen": format_time(state.last_seen),
        **_session_rest(session),
    }


def _session_front(hostname: str, session: Session) -> dict[str, Any]:
    """A session's keys before ``last-seen``."""
    return {"uid": f"{session.id}-{hostname}", "server_id": hostname}


def _session_rest(session: Session) -> dict[str, Any]:
    """A session's keys after ``last-seen``: the session alone decides them."""
    return {
        "id": session.id,
        "owner": session.owner,
        "user": session.user,
        "num-of-connections": session.connections,
        "creation-time": format_time(session.creation_time),
        "last-disconnection-time": format_time(session.last_disconnection_time),
        "licensing-mode": session.licensing_mode,
        "storage-root": session.storage_root,
        "type": session.type,
        "status": session.status,
        "x11-display": session.x11_display,
        "x11-authority": session.x11_authority,
    }


def server_json(
    state: ServerState,
    online: bool,
    agent_state: str,
    pools: Sequence[str] = (),
) -> dict[str, Any]:
    """A server; the sessions of one gone offline are not shown.

    Args:
        state: the server's last report.
        online: whether it is heard from in time (see ``runtime.is_online``).
        agent_state: its agent's state in the registry.
        pools: the pools of ``pools.json`` that hold it.
    """
    return {
        **_server_head(state),
        "sessions": [session_json(state, s) for s in state.sessions] if online else [],
        **_server_tail(state, online, agent_state, pools),
    }


def _server_head(state: ServerState) -> dict[str, Any]:
    """A server's keys before ``sessions``: its report alone decides them."""
    stats = state.stats
    return {
        "last-seen": format_time(state.last_seen),
        "hostname": state.hostname,
        "agent_ip": state.address,
        "free_memory": stats.free_memory,
        "total_memory": stats.total_memory,
        "cores": stats.cores,
        "cpu_usage": stats.cpu_usage,
        "load1": stats.load1,
        "load5": stats.load5,
        "load15": stats.load15,
        "tags": list(state.tags),
    }


def _server_tail(
    state: ServerState, online: bool, agent_state: str, pools: Sequence[str]
) -> dict[str, Any]:
    """A server's keys after ``sessions``."""
    return {
        "guid": state.guid,
        "agent_state": agent_state,
        "online": online,
        "agent_port": state.agent_port,
        "version": state.version,
        "dcv_error": state.dcv_error,
        "pools": list(pools),
    }


def _dumps(value: Any) -> bytes:
    """As :func:`dcvix.common.http.json_response` writes a value (no newline)."""
    return json.dumps(value).encode()


_SEEN_KEY = b'"last-seen": '


def _between(items: Sequence[bytes]) -> list[bytes]:
    """``items`` with ``b", "`` between each two, for one join."""
    out = [b", "] * (2 * len(items) - 1) if items else []
    out[::2] = items
    return out


def _tail_fields(state: ServerState) -> tuple[str, int, str, str]:
    """What a server's keys after ``sessions`` take from its report."""
    return (state.guid, state.agent_port, state.version, state.dcv_error)


class _Rendered:
    """One report's JSON, in the pieces the listings put together.

    ``head`` is the server's object up to its last key before ``sessions``
    (no closing brace); ``tail`` its keys after ``sessions`` (no opening
    brace), for ``tail_key``, the last online / agent state / pools asked;
    ``sessions`` each session's object, ``order`` its (user, uid).

    A session list an agent reports again unchanged is the same tuple of the
    same objects (``runtime.SessionsMemo``): its JSON is then the last one's
    with the new ``last-seen`` put in. The key and a quote around the value
    make that text unique in a session's JSON, as every quote inside a JSON
    string is escaped.
    """

    __slots__ = ("head", "order", "seen", "sessions", "state", "tail", "tail_key")

    def __init__(self, state: ServerState, last: _Rendered | None) -> None:
        self.state = state
        head = _server_head(state)
        self.head = _dumps(head)[:-1]
        self.seen = _SEEN_KEY + _dumps(head["last-seen"])
        # Tuples of text: the garbage collector stops tracking them, where it
        # walks every list in each full pass (three per server, at 10,000).
        self.sessions: tuple[bytes, ...]
        self.order: tuple[tuple[str, str], ...]
        if last is not None and last.state.sessions is state.sessions:
            self.sessions = tuple(
                j.replace(last.seen, self.seen, 1) for j in last.sessions
            )
            self.order = last.order
        else:
            made = [session_json(state, s) for s in state.sessions]
            self.sessions = tuple(_dumps(j) for j in made)
            self.order = tuple((j["user"], j["uid"]) for j in made)
        self.tail_key: tuple[bool, str, tuple[str, ...]] | None = None
        self.tail = b""
        if last is not None and _tail_fields(last.state) == _tail_fields(state):
            self.tail, self.tail_key = last.tail, last.tail_key

    def prepare_tail(
        self, online: bool, agent_state: str, pools: Sequence[str]
    ) -> None:
        """Have the keys after ``sessions`` for these values ready."""
        key = (online, agent_state, tuple(pools))
        if key != self.tail_key:
            tail = _server_tail(self.state, online, agent_state, pools)
            self.tail, self.tail_key = _dumps(tail)[1:], key

    def add_server(
        self, out: list[bytes], online: bool, agent_state: str, pools: Sequence[str]
    ) -> None:
        """Append the pieces of ``json.dumps(server_json(...))`` to ``out``."""
        self.prepare_tail(online, agent_state, pools)
        out += (self.head, b', "sessions": [')
        if online:
            out += _between(self.sessions)
        out += (b"], ", self.tail)


# FleetRenderer.warm: at most this many reports a call: 10 ms or less when
# agents report their sessions unchanged, up to 40 ms for new ones (after a
# start), on this project's 2-core test machine.
WARM_LIMIT = 300


class FleetRenderer:
    """The JSON of ``GET /v1/servers`` and ``/v1/sessions``, kept per report.

    A server's JSON changes only with its report (a new ``ServerState``, every
    ``update_interval``), its online flag, agent state or pools; a session's
    only with the agent's session list. Yet at 10,000 servers and 30,000
    sessions, building and encoding every dict took over a second
    (bench/scale.py). Each report's pieces are made once and the answers are
    joined from them in one go, byte for byte what ``json.dumps`` of
    :func:`server_json` / :func:`session_json` lists gives. One entry per
    hostname; entries of servers no longer listed go at the next full listing.

    A listing should not pay for the reports that came since the last one (all
    of them, after a start or when listings are 30 s apart): :meth:`warm`, run
    twice a second, renders new reports ahead. That costs little, as each agent
    reports once per ``update_interval`` and only a server's latest report is
    rendered: at 10,000 agents every 30 s, 333 reports a second at 26 µs, plus
    a pass over every server twice a second (2 ms) to find them, some 1.3 %
    of a core. Only a listing asked before a burst of reports is caught up
    renders the rest.
    """

    def __init__(self) -> None:
        self._cache: dict[str, _Rendered] = {}

    def warm(
        self,
        states: Iterable[ServerState],
        tail: Callable[[ServerState], tuple[bool, str, Sequence[str]]] | None = None,
        limit: int = WARM_LIMIT,
    ) -> int:
        """Render up to ``limit`` reports not rendered yet; how many it did.

        ``tail`` gives what a listing would likely show with a report (online,
        agent state, pools), to render its last keys ahead too: the first
        listing after a start otherwise renders them for every server.
        ``limit`` bounds the time one call holds the reactor (30 µs a report
        whose sessions its agent reported unchanged, 130 µs one with 3 new
        sessions).
        """
        done = 0
        for state in states:
            if done >= limit:
                break
            last = self._cache.get(state.hostname)
            if last is None or last.state is not state:
                entry = self._cache[state.hostname] = _Rendered(state, last)
                if tail is not None:
                    entry.prepare_tail(*tail(state))
                done += 1
        return done

    def _entry(self, state: ServerState) -> _Rendered:
        last = self._cache.get(state.hostname)
        if last is not None and last.state is state:
            return last
        entry = self._cache[state.hostname] = _Rendered(state, last)
        return entry

    def servers(
        self, listed: Iterable[tuple[ServerState, bool, str, Sequence[str]]]
    ) -> list[bytes]:
        """A JSON array of servers, (state, online, agent state, pools) each.

        In pieces to join once: a whole answer (18 MB at 10,000 servers) is
        not copied server by server, then again for every wrapping.
        """
        out = [b"["]
        for n, (state, online, agent_state, pools) in enumerate(listed):
            if n:
                out.append(b", ")
            self._entry(state).add_server(out, online, agent_state, pools)
        out.append(b"]")
        return out

    def sessions(self, states: Iterable[ServerState]) -> list[bytes]:
        """A JSON array of the sessions of ``states``, by user then ``uid``.

        Sorted as the dicts would be (stably, in the order of ``states``); in
        pieces to join.
        """
        found: list[tuple[tuple[str, str], bytes]] = []
        for state in states:
            entry = self._entry(state)
            found += zip(entry.order, entry.sessions, strict=True)
        found.sort(key=lambda item: item[0])
        return [b"[", *_between([item[1] for item in found]), b"]"]

    def keep_only(self, states: Sequence[ServerState]) -> None:
        """Forget the entries of servers not among ``states`` (every server now)."""
        if len(self._cache) > len(states):
            kept = {s.hostname for s in states}
            self._cache = {h: e for h, e in self._cache.items() if h in kept}
