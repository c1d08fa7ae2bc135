"""A real twistd director with ``auth_type = radius``.

One director logs users in through the session's FreeRADIUS
(``services.radiusd``); another asks a UDP socket of the test's own that never
answers, and must stay responsive while a login waits on it.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import socket
import sqlite3
import ssl
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import pytest
from services import (  # noqa: F401 (fixture)
    RADIUS_ALICE,
    RADIUS_CAROL,
    Radiusd,
    radiusd_fixture,
)

from fleet import Director, Fleet

pytestmark = pytest.mark.service

FAILED = {"error": "authentication failed"}
HEALTHY = {"status": "healthy"}


@pytest.fixture
def fleet(tmp_path: Any) -> Iterator[Fleet]:
    group = Fleet(tmp_path)
    try:
        yield group
    finally:
        group.stop_all()
    codes = [d.process.returncode for d in group.started if d.process is not None]
    assert set(codes) <= {-signal.SIGTERM}, f"not a clean stop: {codes}"


@dataclass
class Answer:
    status: int
    headers: http.client.HTTPMessage
    body: Any

    @property
    def token(self) -> str | None:
        for cookie in self.headers.get_all("Set-Cookie") or []:
            name, _, rest = cookie.partition("=")
            if name == "dcvix_session":
                return rest.split(";", 1)[0]
        return None


def call(
    director: Director,
    method: str,
    path: str,
    body: Any = None,
    token: str | None = None,
) -> Answer:
    context = ssl.create_default_context(cafile=str(director.ca_file))
    connection = http.client.HTTPSConnection(
        "127.0.0.1", director.port, context=context, timeout=30
    )
    headers = {"Cookie": f"dcvix_session={token}"} if token else {}
    try:
        data = None if body is None else json.dumps(body).encode()
        connection.request(method, path, body=data, headers=headers)
        response = connection.getresponse()
        return Answer(response.status, response.headers, json.loads(response.read()))
    finally:
        connection.close()


def login(director: Director, user: str, password: str) -> Answer:
    return call(
        director, "POST", "/v1/user/login", {"userID": user, "password": password}
    )


def audit_rows(director: Director) -> list[tuple[str, str, str]]:
    """(actor, action, detail) of every audit row, oldest first."""
    with contextlib.closing(sqlite3.connect(director.data_dir / "agents.db")) as db:
        rows = db.execute("SELECT actor, action, detail FROM audit ORDER BY id")
        return [tuple(row) for row in rows.fetchall()]


def radius_director(fleet: Fleet, port: int, secret: str, **keys: str) -> Director:
    policy = fleet.folder / "policydb"
    policy.mkdir()
    director = fleet.director(
        start=False, auth_type="radius", policydb_folder=str(policy)
    )
    director.extra["radius_auth"] = {
        "radius_server": "127.0.0.1",
        "radius_port": str(port),
        "radius_secret": secret,
        **keys,
    }
    fleet.start(director)
    return director


def test_user_login_through_radius(fleet: Fleet, radiusd: Radiusd) -> None:
    director = radius_director(fleet, radiusd.port, radiusd.secret)
    alice = RADIUS_ALICE

    answer = login(director, alice.name, alice.password)
    assert (answer.status, answer.body) == (200, {})
    assert answer.token is not None
    health = call(director, "GET", "/v1/auth-health", token=answer.token)
    assert (health.status, health.body) == (
        200,
        {**HEALTHY, "user": alice.name, "admin": False},
    )

    refused = login(director, alice.name, "not-" + alice.password)
    assert (refused.status, refused.body, refused.token) == (401, FAILED, None)
    challenged = login(director, RADIUS_CAROL.name, RADIUS_CAROL.password)
    assert (challenged.status, challenged.body) == (401, FAILED)

    assert audit_rows(director)[-3:] == [
        ("alice", "login", "backend=radius result=ok"),
        ("alice", "login failed", "backend=radius result=rejected"),
        ("carol", "login failed", "backend=radius result=rejected"),
    ]
    assert "challenge-response is not supported" in director.log_text()
    assert alice.password not in director.log_text()


def test_silent_server_is_a_401_and_the_director_stays_responsive(
    fleet: Fleet,
) -> None:
    timeout, retries = 2, 1
    bound = timeout * (retries + 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        director = radius_director(
            fleet,
            silent.getsockname()[1],
            "shared-secret",
            radius_timeout=str(timeout),
            radius_retries=str(retries),
        )
        with ThreadPoolExecutor(1) as executor:
            start = time.monotonic()
            waiting = executor.submit(login, director, "alice", "pw")
            silent.settimeout(15)
            datagrams = [silent.recv(4096)]  # the login now waits on RADIUS
            health = call(director, "GET", "/v1/health")
            assert health.status == 200
            assert not waiting.done()
            answer = waiting.result(timeout=bound + 15)
            elapsed = time.monotonic() - start
        silent.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            while True:
                datagrams.append(silent.recv(4096))

    assert (answer.status, answer.body) == (401, FAILED)
    assert elapsed < bound + 10
    # retries + 1 sends of the same request.
    assert len(datagrams) == retries + 1
    assert len(set(datagrams)) == 1
    assert audit_rows(director)[-1] == (
        "alice",
        "login failed",
        "backend=radius result=backend unavailable",
    )
    assert "no valid answer from RADIUS server 127.0.0.1:" in director.log_text()
