"""A real twistd director with ``auth_type = radius``.

One director logs users in through the session's FreeRADIUS
(``services.radiusd``); another asks a UDP socket of the test's own that never
answers, and must stay responsive while a login waits on it.
"""

from __future__ import annotations

import contextlib
import socket
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from director_calls import audit_rows, call, login
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
