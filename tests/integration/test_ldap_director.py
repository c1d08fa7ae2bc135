"""A real twistd director with ``auth_type = ldap``, logging users in via slapd.

The director talks ldaps:// to the session's throwaway slapd
(``services.slapd``), trusting only that server's test CA; the test talks
HTTPS to the director, trusting only the director's ``ca.pem``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import signal
import sqlite3
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from services import LDAP_ALICE, Slapd, slapd_fixture  # noqa: F401 (fixture)

from fleet import Director, Fleet

pytestmark = pytest.mark.service

FAILED = {"error": "authentication failed"}
HEALTHY = {"status": "healthy"}


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
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


def audit_rows(director: Director) -> list[tuple[str, str, str]]:
    """(actor, action, detail) of every audit row, oldest first."""
    with contextlib.closing(sqlite3.connect(director.data_dir / "agents.db")) as db:
        rows = db.execute("SELECT actor, action, detail FROM audit ORDER BY id")
        return [tuple(row) for row in rows.fetchall()]


def test_user_login_through_ldap(fleet: Fleet, slapd: Slapd) -> None:
    policy = fleet.folder / "policydb"
    policy.mkdir()
    director = fleet.director(
        start=False, auth_type="ldap", policydb_folder=str(policy)
    )
    director.extra["ldap_auth"] = {
        "ldap_address": slapd.ldaps_url,
        "ldap_ca_file": str(slapd.ca_file),
        "ldap_base_dn": slapd.base_dn,
        "ldap_bind_user": slapd.bind_dn,
        "ldap_bind_password": slapd.bind_password,
        "ldap_timeout": "5",
    }
    fleet.start(director)

    answer = call(
        director,
        "POST",
        "/v1/user/login",
        {"userID": "ALICE", "password": LDAP_ALICE.password},
    )
    assert (answer.status, answer.body) == (200, {})
    token = answer.token
    assert token is not None
    health = call(director, "GET", "/v1/auth-health", token=token)
    # The canonical id the directory answered, not the typed ALICE.
    assert (health.status, health.body) == (
        200,
        {**HEALTHY, "user": "alice", "admin": False},
    )

    refused = call(
        director,
        "POST",
        "/v1/user/login",
        {"userID": "ALICE", "password": "not-" + LDAP_ALICE.password},
    )
    assert (refused.status, refused.body, refused.token) == (401, FAILED, None)

    # The token is alice's, as the directory spells her; the password is
    # nowhere in the director's output.
    assert audit_rows(director)[-2:] == [
        ("ALICE", "login", "backend=ldap result=ok as alice"),
        ("ALICE", "login failed", "backend=ldap result=rejected"),
    ]
    assert LDAP_ALICE.password not in director.log_text()
