"""Plain HTTPS calls to a director test process, as a client or operator makes them.

For the login back-end tests (LDAP, RADIUS, OTP): one request per
connection, the director's CA checked, the answer's JSON and its cookie; and
the audit rows as ``agents.db`` holds them.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import sqlite3
import ssl
from dataclasses import dataclass
from typing import Any

from fleet import Director, Fleet


@dataclass
class Answer:
    """A director's answer: status, headers, JSON body."""

    status: int
    headers: http.client.HTTPMessage
    body: Any

    @property
    def token(self) -> str | None:
        """The ``dcvix_session`` cookie it set, if any."""
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
    """One JSON request, with the login cookie when ``token`` is given."""
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


def post_form(director: Director, path: str, form: str) -> bytes:
    """A form POST as DCV servers and Gateways send them; the raw answer."""
    context = ssl.create_default_context(cafile=str(director.ca_file))
    link = http.client.HTTPSConnection(
        "127.0.0.1", director.port, context=context, timeout=30
    )
    try:
        headers = {"Content-Type": "application/x-www-form-urlencoded"}
        link.request("POST", path, body=form.encode(), headers=headers)
        return link.getresponse().read()
    finally:
        link.close()


def login(director: Director, user: str, password: str, otp: str = "") -> Answer:
    """A user login."""
    body = {"userID": user, "password": password}
    if otp:
        body["otp"] = otp
    return call(director, "POST", "/v1/user/login", body)


def audit_rows(director: Director) -> list[tuple[str, str, str]]:
    """(actor, action, detail) of every audit row, oldest first."""
    with contextlib.closing(sqlite3.connect(director.data_dir / "agents.db")) as db:
        rows = db.execute("SELECT actor, action, detail FROM audit ORDER BY id")
        return [tuple(row) for row in rows.fetchall()]


ADMIN_SCRIPT = """#!/bin/sh
IFS= read -r user
IFS= read -r password
[ "$user:$password" = '{user}:{password}' ]
"""


def admin_director(fleet: Fleet, user: str, password: str, **keys: str) -> Director:
    """A director, not started, that logs ``user`` in as admin by a script.

    The external back end checks the one password; ``users.json`` makes
    ``user`` an admin. ``keys`` go to ``[director]``; start it with
    ``fleet.start``.
    """
    script = fleet.folder / "check-password"
    script.write_text(ADMIN_SCRIPT.format(user=user, password=password))
    script.chmod(0o755)
    policy = fleet.folder / "policydb"
    policy.mkdir()
    (policy / "users.json").write_text(json.dumps([{"id": user, "admin": True}]))
    director = fleet.director(
        start=False, auth_type="external", policydb_folder=str(policy), **keys
    )
    director.extra["external_auth"] = {"external_command": str(script)}
    return director
