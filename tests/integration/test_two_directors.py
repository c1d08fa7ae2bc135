"""Two directors on one PostgreSQL store, and one of them killed (``kill -9``).

Issue 12's scenario, end to end with real twistd processes: directors A and B
share a throwaway database (``tests/postgres.py``) and one CA and token key
(copied into B's ``data_dir`` before its first start). Two agents, each with a
fake ``dcv``, list both directors: ``ws-one`` prefers A (``A, B``), ``ws-two``
prefers B (``B, A``), so each director hears one agent directly and the other
only through the store. An admin on B approves both.

The user ``bob`` logs in on A and asks for a console in the pool ``desks``:
``ws-one``'s console is carol's, so A must place the session on ``ws-two``,
which it only knows from B's reports. A hands bob a connection token for it,
and ``ws-one`` then reports a look-alike session of the same id (carol's), so
that only the token's grant, shared through the store, tells a resolver which
server is bob's. Then A is killed: ``ws-one`` fails over to B, and B lets
bob's DCV connection in (the verifier, asked from the agent's address as the
DCV server would) and resolves the session to ``ws-two`` for a Gateway on
127.0.0.1 (``gateways_list``'s default). Nothing is lost: both agents stay
registered and online, every session stays listed, and a login logged out on
A before the kill is still refused by B.
"""

from __future__ import annotations

import datetime as dt
import http.client
import json
import os
import shutil
import signal
import ssl
import time
import urllib.parse
from pathlib import Path
from typing import Any

from director_calls import call
from fake_dcv import FakeDcv
from postgres import Postgres, postgres_fixture  # noqa: F401
from sessions_world import clean_stop

from daemons import free_port
from fleet import Agent, Director, Fleet, mode, wait_for

ADMIN, ADMIN_PASSWORD = "two-admin", "two-admin-secret"
USER, USER_PASSWORD = "bob", "bob-secret"
OTHER = "carol"
POOL = "desks"
# Generous bounds for a loaded machine: only ever waited on, never asserted.
BOUND = 60.0
LOGIN_SCRIPT = """#!/bin/sh
IFS= read -r user
IFS= read -r password
case "$user:$password" in
'{admin}:{admin_password}'|'{user}:{user_password}') exit 0 ;;
esac
exit 1
"""
IDENTITY = (("ca.key", 0o600), ("ca.pem", 0o644), ("token.key", 0o600))
XML = "text/xml; charset=utf-8"


# ------------------------------------------------------------------ helpers


def director(fleet: Fleet, name: str, url: str, secret: Path) -> Director:
    """A director on ``url``, not started; admin and user log in by a script.

    Each director has its own copy of the same policy (as separate machines
    would): ``bob`` may use the pool ``desks`` (``ws-one``, ``ws-two``).
    """
    script = fleet.folder / "check-password"
    if not script.exists():
        script.write_text(
            LOGIN_SCRIPT.format(
                admin=ADMIN,
                admin_password=ADMIN_PASSWORD,
                user=USER,
                user_password=USER_PASSWORD,
            )
        )
        script.chmod(0o755)
    policy = fleet.folder / f"policydb-{name}"
    policy.mkdir()
    (policy / "users.json").write_text(
        json.dumps([{"id": ADMIN, "admin": True}, {"id": USER, "pools": [POOL]}])
    )
    (policy / "pools.json").write_text(
        json.dumps([{"id": POOL, "workstations": ["ws-one", "ws-two"]}])
    )
    made = Director(
        "dcvix-director",
        fleet.folder / name,
        free_port(),
        extra={
            "director": {"auth_type": "external", "policydb_folder": str(policy)},
            "external_auth": {"external_command": str(script)},
            "store": {"url": url, "password_file": str(secret), "connections": "2"},
        },
    )
    fleet.started.append(made)
    return made


def login(target: Director, route: str, user: str, password: str) -> str:
    """A login on ``target`` (``/v1/admin/login`` or ``/v1/user/login``): its token."""
    answer = call(target, "POST", route, {"userID": user, "password": password})
    assert answer.status == 200 and answer.token, (answer.status, answer.body)
    return answer.token


def states(target: Director, token: str) -> dict[str, str]:
    """GUID → state of every agent, as ``target``'s admin API lists them."""
    answer = call(target, "GET", "/v1/admin/agents", token=token)
    assert answer.status == 200, answer.body
    return {agent["guid"]: agent["state"] for agent in answer.body}


def servers(target: Director, token: str) -> dict[str, dict[str, Any]]:
    """Hostname → server, as ``target``'s ``GET /v1/servers`` lists them."""
    answer = call(target, "GET", "/v1/servers", token=token)
    assert answer.status == 200, answer.body
    return {server["hostname"]: server for server in answer.body}


def owners(server: dict[str, Any]) -> dict[str, str]:
    """Session id → owner of the sessions a server reports."""
    return {session["id"]: session["owner"] for session in server["sessions"]}


def seen(server: dict[str, Any]) -> float:
    """A server's ``last-seen``, in seconds since the epoch."""
    return dt.datetime.fromisoformat(server["last-seen"]).timestamp()


def fleet_as(
    target: Director, token: str, expected: dict[str, dict[str, str]], after: float = 0
) -> dict[str, dict[str, Any]]:
    """Wait until ``target`` lists exactly ``expected`` (hostname → sessions'
    owners), every server online and heard from after ``after``."""

    def ready() -> dict[str, dict[str, Any]] | None:
        listed = servers(target, token)
        if set(listed) != set(expected):
            return None
        for name, server in listed.items():
            fresh = server["online"] and seen(server) > after
            if not fresh or owners(server) != expected[name]:
                return None
        return listed

    found: dict[str, dict[str, Any]] = wait_for(
        f"{target.folder.name} to list {expected} (heard from after {after})",
        ready,
        BOUND,
    )
    return found


def post(target: Director, path: str, body: bytes = b"", kind: str = "") -> Any:
    """A POST from 127.0.0.1 (the agents' and the Gateway's address).

    The director's CA is checked, as DCV's ``ca-file`` and the Gateway do.
    Returns the response, read.
    """
    context = ssl.create_default_context(cafile=str(target.ca_file))
    link = http.client.HTTPSConnection(
        "127.0.0.1", target.port, context=context, timeout=30
    )
    headers = {"Content-Type": kind} if kind else {}
    try:
        link.request("POST", path, body=body, headers=headers)
        response = link.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        link.close()


def verify(target: Director, token: str, session_id: str) -> Any:
    """What a DCV server's ``auth-token-verifier`` call gets back."""
    form = {
        "sessionId": session_id,
        "authenticationToken": token,
        "clientAddress": "192.0.2.44",
    }
    return post(
        target,
        "/v1/user/authtokenverify",
        urllib.parse.urlencode(form).encode(),
        "application/x-www-form-urlencoded",
    )


def resolve(target: Director, session_id: str) -> tuple[int, Any]:
    """What the Connection Gateway's ``resolveSession`` call gets back."""
    query = urllib.parse.urlencode(
        {"sessionId": session_id, "transport": "HTTP", "clientIpAddress": "192.0.2.44"}
    )
    status, kind, body = post(target, f"/resolveSession?{query}")
    assert kind == "application/json", (status, kind, body)
    return status, json.loads(body)


def restart_registered(*agents: Agent) -> None:
    """Restart approved agents (registration at once) and wait until registered."""
    marks = [agent.mark() for agent in agents]
    for agent in agents:
        agent.stop()
    for agent in agents:
        agent.start(wait=False)
    for agent, mark in zip(agents, marks, strict=True):
        agent.wait_healthy(BOUND)
        agent.wait_log("registered as agent", since=mark, timeout=BOUND)


# --------------------------------------------------------------------- test


def test_a_director_killed_loses_no_agent_session_or_logout(
    loose_fleet: Fleet, postgres: Postgres
) -> None:
    fleet = loose_fleet
    url = postgres.database()
    secret = fleet.folder / "pg-password"
    secret.write_text(postgres.password + "\n")
    secret.chmod(0o600)

    # A makes the store's CA and token key; B gets copies before it starts.
    first = director(fleet, "director-a", url, secret)
    first.start(wait=False)
    first.wait_healthy(BOUND)
    second = director(fleet, "director-b", url, secret)
    second.data_dir.mkdir(parents=True, mode=0o700)
    for name, bits in IDENTITY:
        shutil.copyfile(first.data_dir / name, second.data_dir / name)
        (second.data_dir / name).chmod(bits)
    assert mode(second.data_dir) == 0o700
    second.start(wait=False)
    second.wait_healthy(BOUND)
    a, b = f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"

    # ws-one prefers A, ws-two prefers B; ws-one's console is carol's.
    fake_one = FakeDcv(fleet.folder / "ws-one-dcv").install()
    fake_two = FakeDcv(fleet.folder / "ws-two-dcv").install()
    fake_one.add_session("console", OTHER, "console")
    one = fleet.agent(
        first,
        "ws-one",
        start=False,
        director_host=f"{a}, {b}",
        update_interval="2s",
        dcv_path=str(fake_one.path),
    )
    two = fleet.agent(
        first,
        "ws-two",
        start=False,
        director_host=f"{b}, {a}",
        update_interval="2s",
        dcv_path=str(fake_two.path),
    )
    fleet.start(one, two)
    for agent in (one, two):
        agent.wait_log("pending approval", timeout=BOUND)

    # An admin on B sees both pending and approves them through B's API.
    admin_b = login(second, "/v1/admin/login", ADMIN, ADMIN_PASSWORD)
    wait_for(
        "B to list both agents pending",
        lambda: states(second, admin_b) == {one.guid: "pending", two.guid: "pending"},
        BOUND,
    )
    for agent in (one, two):
        answer = call(
            second, "POST", f"/v1/admin/agents/{agent.guid}/approve", token=admin_b
        )
        assert answer.status == 200, answer.body
    restart_registered(one, two)
    assert f"using director {a}" in one.log_text()
    assert f"using director {b}" in two.log_text()
    assert f"using director {b}" not in one.log_text()
    assert f"using director {a}" not in two.log_text()
    registered = {one.guid: "registered", two.guid: "registered"}
    admin_a = login(first, "/v1/admin/login", ADMIN, ADMIN_PASSWORD)
    for target, token in ((first, admin_a), (second, admin_b)):
        assert states(target, token) == registered, target.folder.name

    # Each director lists both servers: one heard directly, one through the store.
    before = {"ws-one": {"console": OTHER}, "ws-two": {}}
    fleet_as(first, admin_a, before)
    fleet_as(second, admin_b, before)

    # bob logs in on A (twice: the second login is logged out before the kill).
    user = login(first, "/v1/user/login", USER, USER_PASSWORD)
    gone = login(first, "/v1/user/login", USER, USER_PASSWORD)
    assert call(first, "POST", "/v1/logout", token=gone).status == 200
    assert call(first, "GET", "/v1/user/sessions", token=gone).status == 401

    # A places bob's console on ws-two (ws-one's is carol's), from B's reports.
    made = call(
        first,
        "POST",
        "/v1/user/sessions",
        {"poolId": POOL, "sessionType": "console"},
        token=user,
    )
    assert made.status == 200, made.body
    assert made.body["serverId"] == "ws-two", made.body
    session = made.body["sessionID"]
    assert fake_two.mutations() == [
        ["create-session", "--owner", USER, "--type", "console", session]
    ]
    assert fake_one.mutations() == []
    after = {"ws-one": {"console": OTHER}, "ws-two": {session: USER}}
    # Reported by ws-two to B, and shared with A.
    fleet_as(second, admin_b, after)
    fleet_as(first, admin_a, after)

    # A hands bob a connection token for it.
    query = urllib.parse.urlencode({"serverId": "ws-two", "sessionId": session})
    granted = call(first, "GET", f"/v1/user/connectiontoken?{query}", token=user)
    assert granted.status == 200, granted.body
    connection = granted.body["token"]
    assert granted.body["webUrl"].endswith(f"?authToken={connection}#{session}")
    yes = f'<auth result="yes"><username>{USER}</username></auth>'.encode()
    assert verify(first, connection, session) == (200, XML, yes)

    # A look-alike: ws-one reports a session of the same id too. Only the
    # token A issued says which server bob's connection is for, so B's
    # resolver answers from A's grant, shared through the store.
    fake_one.add_session(session, OTHER, "virtual")
    after["ws-one"][session] = OTHER
    fleet_as(first, admin_a, after)
    fleet_as(second, admin_b, after)
    endpoint = {
        "SessionId": session,
        "TransportProtocol": "HTTP",
        "DcvServerEndpoint": "ws-two",
        "Port": 8443,
        "WebUrlPath": "/",
    }
    wait_for(
        "B to resolve the session by the token A issued",
        lambda: resolve(second, session) == (200, endpoint),
        BOUND,
    )

    # kill -9 A.
    moved = one.mark()
    assert first.process is not None
    os.kill(first.pid, signal.SIGKILL)
    first.process.wait(BOUND)
    assert first.process.returncode == -signal.SIGKILL
    killed = time.time()

    # ws-one fails over to B at its next update, and B hears from it directly.
    one.wait_log(f"director {a} failed", since=moved, timeout=BOUND)
    one.wait_log(f"using director {b}", since=moved, timeout=BOUND)
    assert "regist" not in one.log_since(moved), one.log_since(moved)
    assert "update not delivered" not in one.log_since(moved), one.log_since(moved)
    listed = fleet_as(second, admin_b, after, after=killed)
    assert {name: s["agent_state"] for name, s in listed.items()} == {
        "ws-one": "registered",
        "ws-two": "registered",
    }
    assert states(second, admin_b) == registered

    # The DCV server on ws-two asks B about bob's token (A's): yes.
    assert verify(second, connection, session) == (200, XML, yes)
    # The Gateway (127.0.0.1, in gateways_list by default) asks B where it is:
    # ws-two, by the grant of the token the dead A issued.
    assert resolve(second, session) == (200, endpoint)

    # bob's login from A works on B; the one logged out on A stays refused.
    mine = call(second, "GET", "/v1/user/sessions", token=user)
    assert mine.status == 200, mine.body
    assert [(s["id"], s["server_id"]) for s in mine.body] == [(session, "ws-two")]
    assert call(second, "GET", "/v1/user/sessions", token=gone).status == 401
    # Asking again on B finds the same session, nothing new made.
    again = call(
        second,
        "POST",
        "/v1/user/sessions",
        {"poolId": POOL, "sessionType": "console"},
        token=user,
    )
    assert (again.status, again.body) == (
        200,
        {"sessionID": session, "serverId": "ws-two"},
    )
    assert len(fake_two.mutations()) == 1

    fleet.stop_all()
    clean_stop(fleet, allowed={"director-a"})
