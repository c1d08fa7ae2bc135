"""The Go launcher, a DCV server and the Connection Gateway against a real fleet.

One director and one agent (a fake ``dcv``) as twistd processes. The user
``bob`` logs in through the external-command back end and runs the launcher's
exact sequence (original-director.md §13); then the token is verified as the
DCV server posts it, and the session resolved as the Gateway asks.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import ssl
import subprocess
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fake_dcv import FakeDcv
from go_launcher import MEDIUM_QUALITY, GoLauncher, LauncherError
from readme_examples import readme_example
from sessions_world import clean_stop, new_agents

from fleet import Agent, Director, Fleet, wait_for

USER, PASSWORD = "bob", "Bob-pass.42"
AUTH_SCRIPT = """#!/bin/sh
IFS= read -r user
IFS= read -r password
IFS= read -r otp
[ "$user:$password" = '{user}:{password}' ] && exit 0
exit 1
"""


@dataclass
class Launch:
    director: Director
    agent: Agent
    fake: FakeDcv


@pytest.fixture
def launch(tmp_path: Path) -> Iterator[Launch]:
    fleet = Fleet(tmp_path)
    try:
        script = tmp_path / "check-password"
        script.write_text(AUTH_SCRIPT.format(user=USER, password=PASSWORD))
        script.chmod(0o755)
        policy = tmp_path / "policydb"
        policy.mkdir()
        (policy / "users.json").write_text(
            json.dumps([{"id": USER, "workstations": ["ws-go"], "pools": ["gpu"]}])
        )
        (policy / "pools.json").write_text(
            json.dumps([{"id": "gpu", "workstations": ["ws-go"]}])
        )
        director = fleet.director(
            start=False, auth_type="external", policydb_folder=str(policy)
        )
        director.extra["external_auth"] = {"external_command": str(script)}
        director.extra["gateway"] = {"gateways_list": "127.0.0.0/8, ::1"}
        fleet.start(director)
        ((agent, fake),) = new_agents(fleet, director, "ws-go")
        yield Launch(director, agent, fake)
    finally:
        fleet.stop_all()
    clean_stop(fleet)


def post(
    director: Director, target: str, body: bytes, content_type: str
) -> tuple[int, str, bytes]:
    """A POST as a DCV server or gateway would make it: status, type, body."""
    context = ssl.create_default_context(cafile=str(director.ca_file))
    connection = http.client.HTTPSConnection(
        "127.0.0.1", director.port, context=context, timeout=30
    )
    try:
        headers = {"Content-Type": content_type} if content_type else {}
        connection.request("POST", target, body=body, headers=headers)
        response = connection.getresponse()
        return (
            response.status,
            response.getheader("Content-Type") or "",
            response.read(),
        )
    finally:
        connection.close()


def online(launcher: GoLauncher) -> bool:
    """Whether the user's details show ``ws-go`` online (its first report came)."""
    status, _headers, body = launcher._exchange("GET", "/v1/user/servers", None)
    assert status == 200
    details = json.loads(body)["details"]["workstations"]
    return [w["online"] for w in details] == [True]


def verify(director: Director, session: str, token: str) -> bytes:
    form = urllib.parse.urlencode(
        {
            "sessionId": session,
            "authenticationToken": token,
            "clientAddress": "192.0.2.10",
        }
    ).encode()
    status, _type, body = post(
        director,
        "/v1/user/authtokenverify",
        form,
        "application/x-www-form-urlencoded",
    )
    assert status == 200
    return body


def test_the_go_launcher_then_dcv_then_the_gateway(launch: Launch) -> None:
    director = launch.director
    launcher = GoLauncher(director.port, director.ca_file)
    with pytest.raises(LauncherError, match=r"^login failed: "):
        launcher.login(USER, "wrong")
    launcher.login(USER, PASSWORD)
    assert launcher.servers() == ["ws-go"]
    wait_for("ws-go online for bob", lambda: online(launcher))

    session, token = launcher.connect("ws-go", USER)
    assert session.startswith("dcvix_")
    assert token.startswith("v4.local.")
    # The quality went through the allow-list to dcv; bob's console was made.
    state = launch.fake.state()
    assert state["config"]["display"]["quality"] == MEDIUM_QUALITY
    assert [(s["id"], s["owner"], s["type"]) for s in state["sessions"]] == [
        (session, USER, "console")
    ]

    # The DCV server checks the token the viewer brought.
    assert verify(director, session, token) == (
        b'<auth result="yes"><username>bob</username></auth>'
    )
    assert b'result="no"' in verify(director, "another-session", token)
    assert b'result="no"' in verify(director, session, launcher.cookie)

    # The Gateway asks where the session lives.
    query = urllib.parse.urlencode(
        {"sessionId": session, "transport": "HTTP", "clientIpAddress": "192.0.2.10"}
    )
    status, kind, body = post(director, f"/resolveSession?{query}", b"", "")
    assert (status, kind) == (200, "application/json")
    assert json.loads(body) == {
        "SessionId": session,
        "TransportProtocol": "HTTP",
        "DcvServerEndpoint": "ws-go",
        "Port": 8443,
        "WebUrlPath": "/",
    }
    status, _kind, _body = post(director, "/resolveSession?sessionId=nope", b"", "")
    assert status == 404

    # Connecting again reuses the session and verifies again.
    again, second = launcher.connect("ws-go", USER)
    assert again == session
    assert verify(director, session, second).startswith(b'<auth result="yes">')


def test_the_readmes_user_api_examples_as_written(
    launch: Launch, tmp_path: Path
) -> None:
    director = launch.director
    work = tmp_path / "work"
    work.mkdir()
    shutil.copyfile(director.ca_file, work / "ca.pem")
    watcher = GoLauncher(director.port, director.ca_file)
    watcher.login(USER, PASSWORD)
    wait_for("ws-go online", lambda: online(watcher))

    def run(command: str, **env: str) -> subprocess.CompletedProcess[str]:
        adapted = command.replace(":8445/", f":{director.port}/")
        environment = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
        done = subprocess.run(
            ["bash", "-c", adapted],
            cwd=work,
            env=environment | {"USERNAME": USER, "PASSWORD": PASSWORD} | env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done

    login, servers, create, dcv_file = readme_example("user-api")
    assert json.loads(run(login).stdout) == {}
    listed = json.loads(run(servers).stdout)
    assert listed["servers"] == ["ws-go"]
    made = json.loads(run(create, POOL="gpu").stdout)
    assert made["serverId"] == "ws-go"
    run(dcv_file, SERVER="ws-go", SESSION_ID=made["sessionID"])
    saved = (work / f"{made['sessionID']}.dcv").read_text()
    assert f"sessionid={made['sessionID']}" in saved
    assert "authtoken=v4.local." in saved
