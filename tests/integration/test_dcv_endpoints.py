"""What DCV servers and the Connection Gateway see: real director, agent, fake dcv.

The director listens on ``::`` (both families where the machine has IPv6), so
an IPv4 Gateway arrives as ``::ffff:127.0.0.1`` and must still match
``127.0.0.1`` in ``gateways_list``. An admin (``alice``, external login
script) makes ``autosession`` (console, owned by alice) through
``POST /v1/sessions``; a second session of hers, ``other-session``, is put in
the fake ``dcv`` directly. Connection tokens are minted with the director's
own ``token.key``, as ``GET /v1/user/connectiontoken`` would hand them out
(that route's tests check it mints the same thing).
"""

from __future__ import annotations

import base64
import datetime as dt
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fake_dcv import FakeDcv
from readme_examples import readme_example
from sessions_world import call, clean_stop, new_agents, wait_report
from twisted.internet.task import Clock

from dcvix.director.tokens import CONNECTION, USER, TokenService
from fleet import Director, Fleet

ADMIN, PASSWORD = "alice", "Wonder-land.42"
AUTH_SCRIPT = f"""#!/bin/sh
IFS= read -r user
IFS= read -r password
IFS= read -r otp
[ "$user:$password" = '{ADMIN}:{PASSWORD}' ] && exit 0
exit 1
"""
COOKIE = re.compile(r"dcvix_session=(v4\.local\.[A-Za-z0-9_-]+);")
YES = b'<auth result="yes"><username>alice</username></auth>'
NO = (
    b'<auth result="no"><message>dcvix-director: authentication token '
    b"verification failed</message></auth>"
)
TTL = dt.timedelta(minutes=10)
SEED_RESOLVE = """curl --noproxy '*' --cacert ca.pem \\
-X POST \\
-H "Content-Type: application/json" \\
-d '{"sessionId": "autosession", "transport": "XXXX", "clientIpAddress": "127.0.0.1"}' \\
https://127.0.0.1:8445/resolveSession"""  # noqa: E501 - verbatim


def has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


IPV6 = has_ipv6_loopback()


# ------------------------------------------------------------------ helpers


def new_director(fleet: Fleet, **keys: str) -> Director:
    """A director that logs ``alice`` (admin) in through an external script."""
    folder = fleet.folder / "director-setup"
    folder.mkdir(exist_ok=True)
    script = folder / "check-password"
    script.write_text(AUTH_SCRIPT)
    script.chmod(0o755)
    (folder / "users.json").write_text(json.dumps([{"id": ADMIN, "admin": True}]))
    gateways = keys.pop("gateways_list", "127.0.0.1, ::1")
    director = fleet.director(
        start=False,
        auth_type="external",
        policydb_folder=str(folder),
        director_host="::" if IPV6 else "127.0.0.1",
        **keys,
    )
    director.extra["external_auth"] = {"external_command": str(script)}
    director.extra["housekeeper"] = {"max_age": "3s", "housekeeper_frequency": "1s"}
    director.extra["gateway"] = {"gateways_list": gateways}
    fleet.start(director)
    return director


def admin_cookie(director: Director) -> str:
    context = ssl.create_default_context(cafile=str(director.ca_file))
    link = http.client.HTTPSConnection("127.0.0.1", director.port, context=context)
    try:
        body = json.dumps({"userID": ADMIN, "password": PASSWORD})
        link.request("POST", "/v1/admin/login", body=body)
        response = link.getresponse()
        response.read()
        assert response.status == 200
        match = COOKIE.match(response.getheader("Set-Cookie") or "")
        assert match is not None
        return match.group(1)
    finally:
        link.close()


def mint(
    director: Director,
    session_id: str,
    server: str = "ws-a",
    user: str = ADMIN,
    issued: float | None = None,
) -> str:
    """A connection token as the director issues it, with its own key."""
    key = base64.b64decode((director.data_dir / "token.key").read_text())
    clock = Clock()
    clock.advance(time.time() if issued is None else issued)
    token, _ = TokenService(key, clock).issue(
        user, USER, CONNECTION, TTL, serverId=server, sessionId=session_id
    )
    return token


@dataclass
class Reply:
    status: int
    content_type: str
    body: bytes


def post(
    director: Director,
    path: str,
    body: bytes = b"",
    content_type: str | None = None,
    host: str = "127.0.0.1",
) -> Reply:
    """A POST to the director, its CA checked (not its name, for ``::1``)."""
    context = ssl.create_default_context(cafile=str(director.ca_file))
    context.check_hostname = host == "127.0.0.1"
    link = http.client.HTTPSConnection(host, director.port, context=context, timeout=30)
    headers = {} if content_type is None else {"Content-Type": content_type}
    try:
        link.request("POST", path, body=body, headers=headers)
        response = link.getresponse()
        return Reply(
            response.status, response.getheader("Content-Type") or "", response.read()
        )
    finally:
        link.close()


ABSENT = "<absent>"


def verify(director: Director, token: str, session_id: str) -> tuple[int, str, bytes]:
    """What a DCV server's auth-token-verifier call gets back (ABSENT: no field)."""
    fields = {
        "sessionId": session_id,
        "authenticationToken": token,
        "clientAddress": "192.0.2.44",
    }
    fields = {k: v for k, v in fields.items() if v != ABSENT}
    reply = post(
        director,
        "/v1/user/authtokenverify",
        urllib.parse.urlencode(fields).encode(),
        "application/x-www-form-urlencoded",
    )
    return reply.status, reply.content_type, reply.body


def resolve(director: Director, query: str, host: str = "127.0.0.1") -> tuple[int, Any]:
    """What the Connection Gateway's call gets back: no body, the query only."""
    reply = post(director, f"/resolveSession?{query}", host=host)
    assert reply.content_type == "application/json", reply
    return reply.status, json.loads(reply.body)


def endpoint(session_id: str, transport: str = "HTTP") -> dict[str, Any]:
    return {
        "SessionId": session_id,
        "TransportProtocol": transport,
        "DcvServerEndpoint": "ws-a",
        "Port": 8443,
        "WebUrlPath": "/",
    }


def run_curl(command: str, port: int, cwd: Path) -> tuple[int, Any]:
    """A seed's curl command, verbatim but for the port: status and JSON body."""
    adapted = command.replace(":8445/", f":{port}/")
    assert adapted.count(f":{port}/") == 1
    done = subprocess.run(
        ["bash", "-c", adapted + ' -s -w "\\n%{http_code}"'],
        cwd=cwd,
        env={k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    body, status = done.stdout.rsplit("\n", 1)
    return int(status), json.loads(body)


# ----------------------------------------------------------------- fixtures


@dataclass
class World:
    director: Director
    cookie: str
    fake: FakeDcv
    folder: Path


def make_world(fleet: Fleet, **keys: str) -> World:
    director = new_director(fleet, **keys)
    ((_agent, fake),) = new_agents(fleet, director, "ws-a")
    cookie = admin_cookie(director)
    wait_report(director, cookie, "ws-a", "a report", lambda s: s["online"], after=0)
    made = call(
        director,
        "POST",
        "/v1/sessions",
        {
            "serverId": "ws-a",
            "userId": ADMIN,
            "sessionType": "console",
            "sessionId": "autosession",
        },
        cookie,
    )
    assert (made.status, made.body) == (
        200,
        {"sessionID": "autosession", "serverId": "ws-a"},
    )
    fake.add_session("other-session", ADMIN)
    wait_report(
        director,
        cookie,
        "ws-a",
        "both sessions reported",
        lambda s: {x["id"] for x in s["sessions"]} == {"autosession", "other-session"},
    )
    return World(director, cookie, fake, fleet.folder)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("dcv")
    fleet = Fleet(folder)
    try:
        yield make_world(fleet)
    finally:
        fleet.stop_all()
        FakeDcv(folder / "ws-a-dcv").kill_grandchildren()
    clean_stop(fleet)


@pytest.fixture
def fleet(loose_fleet: Fleet, tmp_path: Path) -> Iterator[Fleet]:
    """No clean-stop check; the fake dcv's strays are killed at the end."""
    yield loose_fleet
    loose_fleet.stop_all()
    FakeDcv(tmp_path / "ws-a-dcv").kill_grandchildren()


# ----------------------------------------------------------------- verifier

XML = "text/xml; charset=utf-8"


def test_the_dcv_server_lets_the_session_owner_in(world: World) -> None:
    token = mint(world.director, "autosession")
    assert verify(world.director, token, "autosession") == (200, XML, YES)
    # connection_token_single_use is off: a reconnecting client gets in again.
    assert verify(world.director, token, "autosession") == (200, XML, YES)


def test_the_dcv_server_is_told_no_and_nothing_more(world: World) -> None:
    director = world.director
    mark = director.mark()
    token = mint(director, "autosession")
    refused = {
        "a login token (the cookie)": verify(director, world.cookie, "autosession"),
        "another session": verify(director, token, "other-session"),
        "a token of another session": verify(
            director, mint(director, "other-session"), "autosession"
        ),
        "expired": verify(
            director,
            mint(director, "autosession", issued=time.time() - 601),
            "autosession",
        ),
        "another server": verify(
            director, mint(director, "autosession", server="ws-b"), "autosession"
        ),
        "another user": verify(
            director, mint(director, "autosession", user="bob"), "autosession"
        ),
        "not a token": verify(director, "not-a-token", "autosession"),
        "no token": verify(director, ABSENT, "autosession"),
        "no session": verify(director, token, ABSENT),
    }
    assert refused == dict.fromkeys(refused, (200, XML, NO))

    log = director.wait_log("refused", since=mark, count=len(refused))
    reasons = re.findall(r"refused \(asked by [^)]*\): (.*)", log)
    assert reasons == [
        "token does not decrypt",
        "token is for another session",
        "token is for another session",
        "token expired",
        "its server is not online",
        "the session is not the token user's",
        "token is not in canonical form",
        "a field is missing",
        "a field is missing",
    ]
    assert world.cookie not in log
    assert token not in log
    # The refusals consumed nothing: the token still lets alice in.
    assert verify(director, token, "autosession") == (200, XML, YES)


def test_single_use_tokens_let_in_once(fleet: Fleet) -> None:
    world = make_world(fleet, connection_token_single_use="true")
    director = world.director
    token = mint(director, "autosession")
    # A refusal first: it must not use the token up.
    assert verify(director, token, "other-session")[2] == NO
    assert verify(director, token, "autosession")[2] == YES
    assert verify(director, token, "autosession")[2] == NO
    assert "token already used" in director.log_text()

    # Used stays used across a restart (kept in agents.db until it expires).
    director.restart()
    wait_report(
        director,
        admin_cookie(director),
        "ws-a",
        "reported to the restarted director",
        lambda s: "autosession" in {x["id"] for x in s["sessions"]},
    )
    assert verify(director, token, "autosession")[2] == NO
    assert verify(director, mint(director, "autosession"), "autosession")[2] == YES


# ----------------------------------------------------------------- resolver


def test_the_gateway_resolves_with_the_query_string(world: World) -> None:
    assert resolve(
        world.director, "sessionId=autosession&transport=HTTP&clientIpAddress=10.0.0.5"
    ) == (200, endpoint("autosession"))
    assert resolve(world.director, "sessionId=other-session&transport=QUIC") == (
        200,
        endpoint("other-session", "QUIC"),
    )
    # No clientIpAddress (the Gateway could not tell), or an IPv6 one.
    assert resolve(world.director, "sessionId=autosession") == (
        200,
        endpoint("autosession"),
    )
    assert resolve(
        world.director, "sessionId=autosession&clientIpAddress=2001%3Adb8%3A%3A7"
    ) == (200, endpoint("autosession"))


def test_the_seeds_and_the_readmes_curl_examples_work_as_written(
    world: World,
) -> None:
    work = world.folder / "operator"
    work.mkdir(exist_ok=True)
    (work / "ca.pem").write_bytes(world.director.ca_file.read_bytes())
    assert run_curl(SEED_RESOLVE, world.director.port, work) == (
        200,
        endpoint("autosession", "XXXX"),
    )
    body_form, query_form = readme_example("gateway")
    assert body_form == SEED_RESOLVE
    assert run_curl(query_form, world.director.port, work) == (
        200,
        endpoint("autosession", "QUIC"),
    )


def test_an_unknown_session_is_404(world: World) -> None:
    assert resolve(world.director, "sessionId=nobody-has-it&transport=HTTP") == (
        404,
        {"error": "session not found"},
    )
    assert resolve(world.director, "transport=HTTP") == (
        400,
        {"error": "sessionId is required"},
    )


@pytest.mark.skipif(not IPV6, reason="no IPv6 loopback on this machine")
def test_a_gateway_on_ipv6_loopback(world: World) -> None:
    assert resolve(world.director, "sessionId=autosession", host="::1") == (
        200,
        endpoint("autosession"),
    )


def test_an_address_outside_gateways_list_is_refused(fleet: Fleet) -> None:
    director = new_director(fleet, gateways_list="10.0.0.0/8, 2001:db8::/32")
    mark = director.mark()
    assert resolve(director, "sessionId=autosession") == (403, {"error": "forbidden"})
    line = director.wait_log("refused a session resolution", since=mark)
    assert "from 127.0.0.1: it is not in [gateway] gateways_list" in line
    if IPV6:
        assert resolve(director, "sessionId=autosession", host="::1") == (
            403,
            {"error": "forbidden"},
        )
        director.wait_log("from ::1: it is not in", since=mark)
    # The seed's JSON form is refused the same way, before its body is read.
    reply = post(director, "/resolveSession", b'{"sessionId": "x"}', "application/json")
    assert (reply.status, json.loads(reply.body)) == (403, {"error": "forbidden"})

    # An empty list: nobody may resolve, and the log says why.
    director.extra["gateway"] = {"gateways_list": ""}
    mark = director.mark()
    director.restart()
    assert resolve(director, "sessionId=autosession") == (403, {"error": "forbidden"})
    director.wait_log("[gateway] gateways_list is empty", since=mark)
