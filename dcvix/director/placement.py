"""Where a user's session in a pool goes: pure, on a snapshot of the fleet.

The caller hands over the pool members the user may use that are registered
and online now (the policy and the registry decide that); this module only
ranks them, so later rules (weights, tags, drain) are added here without
touching the API. The rules (CONTRACT §3 "Pools are real"):

1. the user's existing session of that type on any member is reused;
2. for ``console``, a member whose console session belongs to someone else is
   not a candidate (a Linux DCV server has one console session);
3. else fewest sessions, then most free memory, then lowest CPU use, then the
   host name, so that equal servers are chosen the same way every time.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from dcvix.director.runtime import ServerState, Session

CONSOLE = "console"


@dataclass(frozen=True)
class Placement:
    """The chosen server, and the user's session there to reuse (if any)."""

    server: ServerState
    existing: Session | None = None


def rank(server: ServerState) -> tuple[int, int, float, str]:
    """The order of preference among candidates: smaller is better."""
    return (
        len(server.sessions),
        -server.stats.free_memory,
        server.stats.cpu_usage,
        server.hostname,
    )


def _taken_console(server: ServerState, user: str) -> bool:
    return any(s.type == CONSOLE and s.owner != user for s in server.sessions)


def choose_server(
    members: Iterable[ServerState], user: str, session_type: str
) -> Placement | None:
    """The best member for ``user``'s session of ``session_type``, or None.

    None when no member can take it (none given, or every console taken).
    """
    kind = session_type.lower()
    servers = list(members)
    owned = [
        (rank(server), session.id, server, session)
        for server in servers
        for session in server.sessions
        if session.owner == user and session.type == kind
    ]
    if owned:
        _rank, _id, server, session = min(owned, key=lambda item: item[:2])
        return Placement(server, session)
    candidates = [
        server
        for server in servers
        if kind != CONSOLE or not _taken_console(server, user)
    ]
    if not candidates:
        return None
    return Placement(min(candidates, key=rank))
