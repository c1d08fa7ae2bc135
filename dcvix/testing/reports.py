"""Builders of what agents report, for tests of placement, tokens and routes.

One place to build a :class:`~dcvix.director.runtime.Session` and a
:class:`~dcvix.director.runtime.ServerState` with plausible defaults, so a
test names only what it is about (an owner, a session type, free memory).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from dcvix.director.runtime import HostStats, ServerState, Session

GiB = 1024**3
REPORTED_AT = dt.datetime(2026, 1, 15, 12, 0, 0, tzinfo=dt.UTC)


def session(
    session_id: str,
    owner: str,
    kind: str = "virtual",
    created: dt.datetime | None = REPORTED_AT,
    **more: Any,
) -> Session:
    """A session of ``owner`` (its DCV user too), never connected."""
    fields: dict[str, Any] = {
        "id": session_id,
        "owner": owner,
        "user": owner,
        "connections": 0,
        "creation_time": created,
        "last_disconnection_time": None,
        "licensing_mode": "",
        "storage_root": "",
        "type": kind,
        "status": "",
        "x11_display": "",
        "x11_authority": "",
    }
    fields.update(more)
    return Session(**fields)


def server(
    hostname: str,
    *sessions: Session,
    seen: dt.datetime = REPORTED_AT,
    free_gib: int = 16,
    cpu: float = 10.0,
    **more: Any,
) -> ServerState:
    """The last report of ``hostname`` (GUID ``guid-<hostname>``), made at ``seen``."""
    fields: dict[str, Any] = {
        "guid": f"guid-{hostname}",
        "hostname": hostname,
        "address": "10.0.0.1",
        "agent_port": 8446,
        "update_interval": 30.0,
        "last_seen": seen,
        "stats": HostStats(free_gib * GiB, 64 * GiB, 8, cpu, 0.1, 0.1, 0.1),
        "sessions": sessions,
    }
    fields.update(more)
    return ServerState(**fields)
