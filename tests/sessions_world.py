"""A director and agents with fake ``dcv`` executables, as session tests use them.

Shared by the admin session tests and the user API tests: agents report every
second, calls to the director check its CA and expect JSON.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import signal
import ssl
import time
from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from fake_dcv import FakeDcv

from fleet import Agent, Director, Fleet, enrol, wait_for

STOPPED = -signal.SIGTERM
DCV_TIMEOUT = 2.0


def new_agents(
    fleet: Fleet, director: Director, *names: str
) -> list[tuple[Agent, FakeDcv]]:
    """Enrolled agents, each with its own fake ``dcv``, reporting every second."""
    made = []
    for name in names:
        fake = FakeDcv(fleet.folder / f"{name}-dcv").install()
        agent = fleet.agent(
            director,
            name,
            start=False,
            dcv_path=str(fake.path),
            update_interval="1s",
            dcv_timeout=f"{DCV_TIMEOUT:g}s",
        )
        made.append((agent, fake))
    agents = [agent for agent, _ in made]
    fleet.start(*agents)
    enrol(director, *agents)
    return made


@dataclass
class Answer:
    status: int
    body: Any


def call(
    director: Director,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
    timeout: float = 60,
) -> Answer:
    """One request to the director, its CA checked; the answer must be JSON."""
    context = ssl.create_default_context(cafile=str(director.ca_file))
    connection = http.client.HTTPSConnection(
        "127.0.0.1", director.port, context=context, timeout=timeout
    )
    headers = {} if token is None else {"Cookie": f"dcvix_session={token}"}
    try:
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        raw = response.read()
        assert response.getheader("Content-Type") == "application/json", raw
        return Answer(response.status, json.loads(raw))
    finally:
        connection.close()


def servers(director: Director, token: str) -> dict[str, dict[str, Any]]:
    answer = call(director, "GET", "/v1/servers", token=token)
    assert answer.status == 200, answer.body
    return {server["hostname"]: server for server in answer.body}


def sessions(director: Director, token: str) -> list[dict[str, Any]]:
    answer = call(director, "GET", "/v1/sessions", token=token)
    assert answer.status == 200, answer.body
    return list(answer.body)


def seen(server: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(server["last-seen"]).timestamp()


def wait_report(
    director: Director,
    token: str,
    hostname: str,
    what: str,
    check: Any,
    after: float | None = None,
    timeout: float = 15.0,
) -> dict[str, Any]:
    """Wait for a report of ``hostname`` received after ``after`` that passes."""
    since = time.time() if after is None else after

    def ready() -> dict[str, Any] | None:
        server = servers(director, token).get(hostname)
        if server is None or seen(server) <= since or not check(server):
            return None
        return server

    found: dict[str, Any] = wait_for(f"{hostname}: {what}", ready, timeout)
    return found


def session_ids(server: dict[str, Any]) -> list[str]:
    return sorted(s["id"] for s in server["sessions"])


def agent_session(
    session_id: str, owner: str, kind: str, **times: str
) -> dict[str, Any]:
    """A session as the agent shows it (Go's keys, kebab-case, in order)."""
    shown = {
        "id": session_id,
        "owner": owner,
        "user": "",
        "num-of-connections": 0,
        "creation-time": times.get("created", "2026-07-01T08:12:44.101203Z"),
        "last-disconnection-time": times.get("disconnected", "0001-01-01T00:00:00Z"),
        "licensing-mode": "DEMO",
        "storage-root": "",
        "type": kind,
        "status": "",
        "x11-display": ":1" if kind == "virtual" else "",
        "x11-authority": (
            f"/run/user/1000/dcv/{session_id}.xauth" if kind == "virtual" else ""
        ),
    }
    return shown


def clean_stop(fleet: Fleet, allowed: Collection[str] = frozenset()) -> None:
    codes = {
        d.folder.name: d.process.returncode
        for d in fleet.started
        if d.process is not None and d.folder.name not in allowed
    }
    assert set(codes.values()) <= {STOPPED}, f"not a clean stop: {codes}"
