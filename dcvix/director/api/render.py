"""The fleet as ``GET /v1/servers`` and ``GET /v1/sessions`` show it.

Go's key names and order come first, so Go clients and scripts that read the
old director's output keep working; our own keys follow.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dcvix.common.gotime import format_time
from dcvix.director.runtime import ServerState, Session


def session_json(state: ServerState, session: Session) -> dict[str, Any]:
    """A session of the server ``state`` (reference original-agent.md §12.4).

    No time is Go's zero time, as Go writes it; a Go director answers 400 to
    ``""`` in these fields, so a missing time must never become one.
    """
    return {
        "uid": f"{session.id}-{state.hostname}",
        "server_id": state.hostname,
        "last-seen": format_time(state.last_seen),
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
        "sessions": [session_json(state, s) for s in state.sessions] if online else [],
        "guid": state.guid,
        "agent_state": agent_state,
        "online": online,
        "agent_port": state.agent_port,
        "version": state.version,
        "dcv_error": state.dcv_error,
        "pools": list(pools),
    }
