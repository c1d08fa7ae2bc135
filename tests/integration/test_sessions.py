"""Sessions end to end: real twistd director and agents, a fake ``dcv`` executable.

The agents run ``tests/fake_dcv.py`` (through a ``dcv`` wrapper naming its
folder), which records every argv and takes hooks from a control file, so each
test knows exactly which ``dcv`` commands ran. The director logs admins in
through a small external-command script (``alice`` is the admin). Agents
report every second; the director's ``[housekeeper] max_age`` is 3 s, checked
every second; one ``dcv`` command may take 2 s.

Most tests share one director and two agents (``ws-a``, ``ws-b``) for the
module; the ``world`` fixture empties both fakes and waits for a clean report
before each. Tests that stop, kill or revoke an agent get a fleet of their own.
The seeds' curl examples run verbatim through bash (only the port changes; the
files are copied under the names the seeds use), with a ``.curlrc`` in
``CURL_HOME`` that adds the status code to curl's output.
"""

from __future__ import annotations

import concurrent.futures
import datetime as dt
import http.client
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from director_calls import admin_director
from fake_dcv import FakeDcv
from sessions_world import (
    DCV_TIMEOUT,
    agent_session,
    call,
    clean_stop,
    new_agents,
    seen,
    servers,
    session_ids,
    sessions,
    wait_report,
)

from dcvix import __version__
from fleet import Agent, Director, Fleet, https, wait_for

ADMIN, ADMIN_PASSWORD = "alice", "Wonder-land.42"
MAX_AGE = 3.0
WRITE_TIMEOUT = 10.0  # [director] agent_write_timeout of the slow-agent test
COOKIE = re.compile(r"dcvix_session=(v4\.local\.[A-Za-z0-9_-]+);")
# 2026-07-01T08:12:44.101203Z, as DCV would print it.
CREATED = dt.datetime(2026, 7, 1, 8, 12, 44, 101203, tzinfo=dt.UTC).timestamp()
SERVER_KEYS = [
    "last-seen",
    "hostname",
    "agent_ip",
    "free_memory",
    "total_memory",
    "cores",
    "cpu_usage",
    "load1",
    "load5",
    "load15",
    "tags",
    "sessions",
    "guid",
    "agent_state",
    "online",
    "agent_port",
    "version",
    "dcv_error",
    "pools",
]
ROOT_REFUSED = "root may not own a virtual session (uid below 1000)"
CLOSED = {
    "status": "success",
    "code": 200,
    "message": "Session close request sent successfully",
}

# ------------------------------------------------- the seeds' curl examples

# The first line of every agent example (too long for one source line here).
AS_DIRECTOR = (
    "curl --cert dcvix-director.crt --key dcvix-director.key --cacert ca-cert.pem \\\n"
)

SEED_AGENT_HEALTH = AS_DIRECTOR + """https://127.0.0.1:8446/v1/health"""

SEED_AGENT_LIST = AS_DIRECTOR + """https://127.0.0.1:8446/v1/sessions"""

SEED_AGENT_CREATE = (
    AS_DIRECTOR
    + """-X POST \\
-H "Content-Type: application/json" \\
-d '{"userId": "john", "sessionType": "console", "sessionId": "test"}' \\
https://127.0.0.1:8446/v1/sessions"""
)

SEED_AGENT_CLOSE = (
    AS_DIRECTOR
    + """-X DELETE \\
https://127.0.0.1:8446/v1/sessions/test"""
)

SEED_AGENT_QUALITY = (
    AS_DIRECTOR
    + """-X POST \\
-H "Content-Type: application/json" \\
-d '{"config": [{"section": "display", "key": "quality", "value": "(30,80)"}]}' \\
https://127.0.0.1:8446/v1/config"""
)

SEED_ADMIN_LOGIN = """curl --cacert ca.pem \\
--cookie-jar cookies.txt \\
-X POST https://127.0.0.1:8445/v1/admin/login \\
-d '{"userID": "'$USERNAME'", "password": "'$PASSWORD'"}'"""

SEED_LIST_SESSIONS = """curl --cacert ca.pem \\
--cookie cookies.txt \\
https://127.0.0.1:8445/v1/sessions"""

SEED_CLOSE_SESSION = """curl --cacert ca.pem \\
--cookie cookies.txt \\
-X DELETE \\
https://127.0.0.1:8445/v1/sessions/SESSION_ID"""

SEED_AGENT_UPDATE = """curl --cert agent.crt --key agent.key --cacert ca.pem \\
-X POST \\
-H "Content-Type: application/json" \\
-d '{
"sessions": [],
"stats": {
"hostname": "server.domain.com",
"free_memory": 54545088512,
"total_memory": 66996871168,
"cores": 8,
"cpu_usage": 1.16,
"load1": 0.11,
"load5": 0.13,
"load15": 0.15
},
"tags": ["tag1", "tag2"]
}' \\
https://127.0.0.1:8445/v1/agent/update"""


def run_curl(
    command: str, port: int, cwd: Path, default_port: int = 8446, **env: str
) -> tuple[int, Any]:
    """A seed's curl command, verbatim but for the port: status and JSON body.

    The status comes from a ``.curlrc`` (``CURL_HOME``) that adds it after the
    body, so the command itself is the seed's.
    """
    adapted = command.replace(f":{default_port}/", f":{port}/")
    assert adapted.count(f":{port}/") == 1, adapted
    curl_home = cwd.parent / f"{cwd.name}-curlhome"
    curl_home.mkdir(exist_ok=True)
    (curl_home / ".curlrc").write_text('write-out = "\\n%{http_code}"\n')
    environment = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    done = subprocess.run(
        ["bash", "-c", adapted],
        cwd=cwd,
        env=environment | {"CURL_HOME": str(curl_home)} | env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, (done.returncode, done.stderr)
    body, status = done.stdout.rsplit("\n", 1)
    return int(status), json.loads(body)


def director_files(director: Director, folder: Path) -> Path:
    """The director's client files under the names the agent seed uses."""
    folder.mkdir(exist_ok=True)
    shutil.copyfile(director.server_crt, folder / "dcvix-director.crt")
    shutil.copyfile(director.server_key, folder / "dcvix-director.key")
    shutil.copyfile(director.ca_file, folder / "ca-cert.pem")
    shutil.copyfile(director.ca_file, folder / "ca.pem")
    return folder


# ------------------------------------------------------------------ helpers


def new_director(fleet: Fleet, **keys: str) -> Director:
    """A director that logs ``alice`` in (admin) through an external script.

    ``keys``: more ``[director]`` keys.
    """
    director = admin_director(fleet, ADMIN, ADMIN_PASSWORD, **keys)
    director.extra["housekeeper"] = {
        "max_age": f"{MAX_AGE:g}s",
        "housekeeper_frequency": "1s",
    }
    fleet.start(director)
    return director


def admin_token(director: Director) -> str:
    context = ssl.create_default_context(cafile=str(director.ca_file))
    connection = http.client.HTTPSConnection(
        "127.0.0.1", director.port, context=context, timeout=30
    )
    try:
        body = json.dumps({"userID": ADMIN, "password": ADMIN_PASSWORD}).encode()
        connection.request("POST", "/v1/admin/login", body=body)
        response = connection.getresponse()
        response.read()
        assert response.status == 200
        match = COOKIE.match(response.getheader("Set-Cookie") or "")
        assert match is not None
        return match.group(1)
    finally:
        connection.close()


def as_director(
    director: Director,
    agent: Agent,
    method: str,
    path: str,
    body: Any = None,
) -> tuple[int, Any, float]:
    """A call to an agent with the director's certificate: status, body, seconds."""
    started = time.monotonic()
    status, answer = https(
        agent.port,
        path,
        cafile=director.ca_file,
        cert=director.server_crt,
        key=director.server_key,
        method=method,
        body=body,
    )
    return status, answer, time.monotonic() - started


# ----------------------------------------------------------------- fixtures


@dataclass
class World:
    director: Director
    token: str
    a: Agent
    b: Agent
    fake_a: FakeDcv
    fake_b: FakeDcv
    folder: Path


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    folder = tmp_path_factory.mktemp("sessions")
    fleet = Fleet(folder)
    try:
        director = new_director(fleet)
        (a, fake_a), (b, fake_b) = new_agents(fleet, director, "ws-a", "ws-b")
        yield World(director, admin_token(director), a, b, fake_a, fake_b, folder)
    finally:
        fakes = [FakeDcv(folder / "ws-a-dcv"), FakeDcv(folder / "ws-b-dcv")]
        for fake in fakes:
            if fake.home.exists():
                fake.control()
        fleet.stop_all()
        for fake in fakes:
            fake.kill_grandchildren()
    clean_stop(fleet)


@pytest.fixture
def world(shared: World) -> Iterator[World]:
    """The shared fleet with empty fakes and a clean report from each agent."""
    reset = time.time()
    for fake in (shared.fake_a, shared.fake_b):
        fake.reset()
    for name in ("ws-a", "ws-b"):
        wait_report(
            shared.director,
            shared.token,
            name,
            "a clean report after the reset",
            lambda s: s["online"] and s["sessions"] == [] and s["dcv_error"] == "",
            after=reset,
        )
    yield shared
    for fake in (shared.fake_a, shared.fake_b):
        fake.control()
        fake.kill_grandchildren()


@pytest.fixture
def fleet(loose_fleet: Fleet) -> Fleet:
    """Tests here kill and stop agents on purpose: no clean-stop check."""
    return loose_fleet


def account_tool(*argv: str) -> None:
    """useradd/userdel, retried while another test holds the passwd lock."""
    tool = shutil.which(argv[0], path="/usr/sbin:/usr/bin:/sbin:/bin")
    if tool is None:
        pytest.skip(f"{argv[0]} is not installed (Debian package passwd)")
    for _attempt in range(40):
        done = subprocess.run(
            [tool, *argv[1:]], capture_output=True, text=True, timeout=30, check=False
        )
        if done.returncode == 0:
            return
        time.sleep(0.25)
    raise AssertionError(f"{argv} exited {done.returncode}: {done.stderr}")


@pytest.fixture(scope="module")
def local_user() -> Iterator[str]:
    """A throw-away local account (uid ≥ 1000) for virtual sessions."""
    if os.geteuid() != 0:
        pytest.skip("needs root to make a local user")
    name = f"dcvixs{secrets.token_hex(4)}"
    account_tool("useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", name)
    try:
        assert pwd.getpwnam(name).pw_uid >= 1000
        yield name
    finally:
        account_tool("userdel", name)
    with pytest.raises(KeyError):
        pwd.getpwnam(name)


# ----------------------------------- 1. the seeds' agent curl examples


def test_seed_agent_curl_examples_verbatim(world: World) -> None:
    work = director_files(world.director, world.folder / "operator-agent")
    port, fake = world.a.port, world.fake_a
    fake.add_session("dcvix_pre", "bob", "virtual", created=CREATED)

    assert run_curl(SEED_AGENT_HEALTH, port, work) == (200, {"status": "healthy"})

    assert run_curl(SEED_AGENT_LIST, port, work) == (
        200,
        [agent_session("dcvix_pre", "bob", "virtual")],
    )

    assert run_curl(SEED_AGENT_CREATE, port, work) == (201, {"sessionID": "test"})
    assert fake.mutations() == [
        ["create-session", "--owner", "john", "--type", "console", "test"]
    ]
    assert fake.session_ids() == ["dcvix_pre", "test"]

    # The same request again reuses john's console session: nothing created.
    assert run_curl(SEED_AGENT_CREATE, port, work) == (201, {"sessionID": "test"})
    assert len(fake.mutations()) == 1

    assert run_curl(SEED_AGENT_CLOSE, port, work) == (200, {})
    assert fake.mutations()[1:] == [["close-session", "test"]]
    assert fake.session_ids() == ["dcvix_pre"]

    assert run_curl(SEED_AGENT_QUALITY, port, work) == (200, {})
    assert fake.mutations()[2:] == [
        ["set-config", "--section", "display", "--key", "quality", "(30,80)"]
    ]
    assert fake.state()["config"] == {"display": {"quality": "(30,80)"}}

    # Closing it again: the agent knows it is gone, dcv is not asked to close it.
    assert run_curl(SEED_AGENT_CLOSE, port, work) == (
        404,
        {"error": "no session test"},
    )
    assert len(fake.mutations()) == 3


def test_agent_refuses_what_it_must_not_run(world: World, local_user: str) -> None:
    director, agent, fake = world.director, world.a, world.fake_a

    # A key outside [agent] config_allow (default display/quality): 403, no dcv.
    assert as_director(
        director,
        agent,
        "POST",
        "/v1/config",
        {
            "config": [
                {"section": "security", "key": "auth-token-verifier", "value": "x"}
            ]
        },
    )[:2] == (403, {"error": "security/auth-token-verifier is not an allowed setting"})
    # All entries are checked before any runs: the allowed first one is not applied.
    assert as_director(
        director,
        agent,
        "POST",
        "/v1/config",
        {
            "config": [
                {"section": "display", "key": "quality", "value": "(0,10)"},
                {"section": "connectivity", "key": "web-port", "value": "1"},
            ]
        },
    )[:2] == (403, {"error": "connectivity/web-port is not an allowed setting"})
    assert as_director(
        director,
        agent,
        "POST",
        "/v1/config",
        {"config": [{"section": "display", "key": "quality", "value": "--help"}]},
    )[:2] == (400, {"error": "invalid value"})

    # Virtual sessions run as their owner: never root, never an unknown user.
    for owner, error in (
        ("root", "root may not own a virtual session (uid below 1000)"),
        ("no-such-user-x", "no-such-user-x is not a local user"),
    ):
        assert as_director(
            director,
            agent,
            "POST",
            "/v1/sessions",
            {"userId": owner, "sessionType": "virtual", "sessionId": "v1"},
        )[:2] == (400, {"error": error})
    for body, error in (
        (
            {"userId": "-x", "sessionType": "console", "sessionId": "s"},
            "invalid user id",
        ),
        (
            {"userId": "john", "sessionType": "web", "sessionId": "s"},
            "sessionType must be console or virtual",
        ),
        (
            {"userId": "john", "sessionType": "console", "sessionId": "--all"},
            "invalid session id",
        ),
    ):
        assert as_director(director, agent, "POST", "/v1/sessions", body)[:2] == (
            400,
            {"error": error},
        )
    assert as_director(director, agent, "DELETE", "/v1/sessions/nope")[:2] == (
        404,
        {"error": "no session nope"},
    )
    assert fake.mutations() == []

    # A real local user (uid ≥ 1000): --owner and --user, type in lower case.
    assert as_director(
        director,
        agent,
        "POST",
        "/v1/sessions",
        {"userId": local_user, "sessionType": "Virtual", "sessionId": "v1"},
    )[:2] == (201, {"sessionID": "v1"})
    assert fake.mutations() == [
        [
            "create-session",
            "--owner",
            local_user,
            "--user",
            local_user,
            "--type",
            "virtual",
            "v1",
        ]
    ]

    # Another agent's certificate (same CA) is not the director's.
    other = world.b
    assert https(agent.port, "/v1/sessions", cafile=director.ca_file) == (
        401,
        {"error": "client certificate required"},
    )
    status, body = https(
        agent.port,
        "/v1/sessions",
        cafile=director.ca_file,
        cert=other.certificate,
        key=other.key,
    )
    assert (status, body) == (403, {"error": "only the director may call this"})


def test_timestamp_styles_reach_agent_and_director(world: World) -> None:
    director, token, agent, fake = world.director, world.token, world.a, world.fake_a
    fake.add_session(
        "dcvix_t", "bob", "virtual", created=CREATED, disconnected=CREATED + 60.5
    )
    for style, created, disconnected in (
        ("micro", "2026-07-01T08:12:44.101203Z", "2026-07-01T08:13:44.601203Z"),
        ("seconds", "2026-07-01T08:12:44Z", "2026-07-01T08:13:44Z"),
        ("empty", "0001-01-01T00:00:00Z", "0001-01-01T00:00:00Z"),
    ):
        fake.control(timestamps=style)
        expected = agent_session(
            "dcvix_t", "bob", "virtual", created=created, disconnected=disconnected
        )
        assert as_director(director, agent, "GET", "/v1/sessions")[:2] == (
            200,
            [expected],
        )
        server = wait_report(
            director,
            token,
            "ws-a",
            f"the session with {style} times",
            lambda s, e=expected: (
                s["sessions"]
                and s["sessions"][0]["creation-time"] == e["creation-time"]
            ),
        )
        assert {k: v for k, v in server["sessions"][0].items() if k != "last-seen"} == {
            "uid": "dcvix_t-ws-a",
            "server_id": "ws-a",
            **expected,
        }


# ------------------------------------- 2. the director's seed curl examples


def test_seed_director_curl_examples_verbatim(world: World) -> None:
    director, token, a, fake = world.director, world.token, world.a, world.fake_a
    work = director_files(director, world.folder / "operator-director")
    port = director.port

    status, body = run_curl(
        SEED_ADMIN_LOGIN,
        port,
        work,
        default_port=8445,
        USERNAME=ADMIN,
        PASSWORD=ADMIN_PASSWORD,
    )
    assert (status, body) == (200, {})
    assert "dcvix_session" in (work / "cookies.txt").read_text()

    fake.add_session("dcvix_seed", "john", "virtual", created=CREATED)
    wait_report(
        director,
        token,
        "ws-a",
        "dcvix_seed",
        lambda s: session_ids(s) == ["dcvix_seed"],
    )
    status, listed = run_curl(SEED_LIST_SESSIONS, port, work, default_port=8445)
    assert status == 200
    assert [{k: v for k, v in s.items() if k != "last-seen"} for s in listed] == [
        {
            "uid": "dcvix_seed-ws-a",
            "server_id": "ws-a",
            **agent_session("dcvix_seed", "john", "virtual"),
        }
    ]

    close = SEED_CLOSE_SESSION.replace("SESSION_ID", "dcvix_seed")
    assert run_curl(close, port, work, default_port=8445) == (200, CLOSED)
    assert fake.mutations() == [["close-session", "dcvix_seed"]]
    wait_report(director, token, "ws-a", "no session", lambda s: s["sessions"] == [])
    assert run_curl(close, port, work, default_port=8445) == (
        404,
        {"error": "session not found"},
    )

    # Agent Update with ws-a's own files, in its data_dir. The agent is paused
    # so that its own next report does not replace the seed's figures at once.
    os.kill(a.pid, signal.SIGSTOP)
    try:
        time.sleep(0.3)
        mark = director.mark()
        assert run_curl(SEED_AGENT_UPDATE, port, a.data_dir, default_port=8445) == (
            200,
            {},
        )
        listed_servers = servers(director, token)
    finally:
        os.kill(a.pid, signal.SIGCONT)
    assert sorted(listed_servers) == ["ws-a", "ws-b"]  # no server.domain.com
    server = listed_servers["ws-a"]
    assert {k: server[k] for k in SERVER_KEYS[1:13]} == {
        "hostname": "ws-a",
        "agent_ip": "127.0.0.1",
        "free_memory": 54545088512,
        "total_memory": 66996871168,
        "cores": 8,
        "cpu_usage": 1.16,
        "load1": 0.11,
        "load5": 0.13,
        "load15": 0.15,
        "tags": ["tag1", "tag2"],
        "sessions": [],
        "guid": a.guid,
    }
    director.wait_log(
        "reported hostname 'server.domain.com'; keeping its registered ws-a",
        since=mark,
    )
    # The agent reports again, with its own figures.
    wait_report(
        director,
        token,
        "ws-a",
        "the agent's own report",
        lambda s: s["total_memory"] == psutil.virtual_memory().total,
    )


# ------------------------------------ 3. admin sessions through the director


def test_admin_create_list_close_through_the_director(
    world: World, local_user: str
) -> None:
    director, token = world.director, world.token
    fake_a, fake_b = world.fake_a, world.fake_b

    answer = call(
        director,
        "POST",
        "/v1/sessions",
        {"serverId": "ws-a", "userId": "john", "sessionType": "console"},
        token,
    )
    assert answer.status == 200, answer.body
    session_id = answer.body["sessionID"]
    assert answer.body == {"sessionID": session_id, "serverId": "ws-a"}
    assert re.fullmatch(r"dcvix_[0-9a-f-]{36}", session_id)
    assert uuid.UUID(session_id.removeprefix("dcvix_")).version == 4
    assert fake_a.mutations() == [
        ["create-session", "--owner", "john", "--type", "console", session_id]
    ]
    assert fake_b.mutations() == []

    wait_report(
        director, token, "ws-a", "the new session", lambda s: s["sessions"] != []
    )
    listed = sessions(director, token)
    assert [(s["uid"], s["server_id"], s["owner"], s["type"]) for s in listed] == [
        (f"{session_id}-ws-a", "ws-a", "john", "console")
    ]

    answer = call(director, "DELETE", f"/v1/sessions/{session_id}", token=token)
    assert (answer.status, answer.body) == (200, CLOSED)
    assert fake_a.mutations()[1:] == [["close-session", session_id]]
    wait_report(director, token, "ws-a", "no session", lambda s: s["sessions"] == [])
    assert sessions(director, token) == []

    answer = call(director, "DELETE", "/v1/sessions/dcvix_nope", token=token)
    assert (answer.status, answer.body) == (404, {"error": "session not found"})

    # A client's valid sessionId is kept; a virtual session runs as its owner.
    answer = call(
        director,
        "POST",
        "/v1/sessions",
        {
            "serverId": "ws-b",
            "userId": local_user,
            "sessionType": "virtual",
            "sessionId": "lab-1",
        },
        token,
    )
    assert (answer.status, answer.body) == (
        200,
        {"sessionID": "lab-1", "serverId": "ws-b"},
    )
    assert fake_b.mutations() == [
        [
            "create-session",
            "--owner",
            local_user,
            "--user",
            local_user,
            "--type",
            "virtual",
            "lab-1",
        ]
    ]
    # What the agent refuses comes back as the agent said it.
    answer = call(
        director,
        "POST",
        "/v1/sessions",
        {"serverId": "ws-b", "userId": "root", "sessionType": "virtual"},
        token,
    )
    assert (answer.status, answer.body) == (
        400,
        {"error": "the agent refused: " + ROOT_REFUSED},
    )
    answer = call(
        director,
        "POST",
        "/v1/sessions",
        {"serverId": "nosuch", "userId": "john", "sessionType": "console"},
        token,
    )
    assert (answer.status, answer.body) == (404, {"error": "unknown server nosuch"})

    # One id on two servers: ambiguous without ?serverId=.
    fake_a.add_session("shared", "carol", "virtual", created=CREATED)
    fake_b.add_session("shared", "dave", "virtual", created=CREATED)
    for name in ("ws-a", "ws-b"):
        wait_report(
            director, token, name, "shared", lambda s: "shared" in session_ids(s)
        )
    answer = call(director, "DELETE", "/v1/sessions/shared", token=token)
    assert (answer.status, answer.body) == (
        409,
        {"error": "session shared is on ws-a, ws-b: give ?serverId="},
    )
    answer = call(director, "DELETE", "/v1/sessions/shared?serverId=ws-b", token=token)
    assert (answer.status, answer.body) == (200, CLOSED)
    assert fake_b.mutations()[1:] == [["close-session", "shared"]]
    assert fake_a.mutations()[1:] == [["close-session", session_id]]
    assert fake_a.session_ids() == ["shared"]
    assert sorted(fake_b.session_ids()) == ["lab-1"]


def test_director_config_allow_list(world: World) -> None:
    director, token, a, fake = world.director, world.token, world.a, world.fake_a
    quality = {"config": [{"section": "display", "key": "quality", "value": "(80,90)"}]}
    answer = call(director, "POST", "/v1/servers/ws-a/config", quality, token)
    assert (answer.status, answer.body) == (200, {})
    assert fake.mutations() == [
        ["set-config", "--section", "display", "--key", "quality", "(80,90)"]
    ]

    # The agent logs each request it serves: the push above is there.
    a.wait_log('"POST /v1/config" 200')
    mark = a.mark()
    answer = call(
        director,
        "POST",
        "/v1/servers/ws-a/config",
        {"config": [{"section": "security", "key": "ca-file", "value": "/tmp/x"}]},
        token,
    )
    assert (answer.status, answer.body) == (
        403,
        {"error": "security/ca-file is not an allowed setting"},
    )
    # Nothing reached the agent: the next allowed push is the first request
    # after the mark in its log, and the only dcv command since the first.
    answer = call(director, "POST", "/v1/servers/ws-a/config", quality, token)
    assert (answer.status, answer.body) == (200, {})
    a.wait_log('"POST /v1/config" 200', since=mark)
    assert a.log_since(mark).count("/v1/config") == 1
    assert len(fake.mutations()) == 2
    answer = call(director, "POST", "/v1/servers/nosuch/config", quality, token)
    assert (answer.status, answer.body) == (404, {"error": "unknown server nosuch"})


# --------------------------------------------- 4. two agents on one machine


def test_two_agents_on_one_machine_are_both_online(world: World) -> None:
    listed = call(world.director, "GET", "/v1/servers", token=world.token)
    assert listed.status == 200
    assert [s["hostname"] for s in listed.body] == ["ws-b", "ws-a"]
    total = psutil.virtual_memory().total
    for server, agent in zip(listed.body, (world.b, world.a), strict=True):
        assert list(server) == SERVER_KEYS
        assert (
            server["online"],
            server["agent_state"],
            server["guid"],
            server["agent_port"],
            server["agent_ip"],
            server["tags"],
            server["version"],
            server["total_memory"],
        ) == (
            True,
            "registered",
            agent.guid,
            agent.port,
            "127.0.0.1",
            ["linux"],
            __version__,
            total,
        )
        assert time.time() - seen(server) < MAX_AGE
    assert world.a.port != world.b.port
    assert world.a.guid != world.b.guid


# ------------------------------------------------------- 5. dcv in trouble


def _in_trouble(
    world: World,
    what: str,
    error: str,
    status: int,
    config_error: str,
    limit: float,
    least: float = 0.0,
) -> None:
    """Every route answers ``status``/``error`` in ``least``..``limit`` s.

    The stats route and the reports to the director go on meanwhile.
    """
    director, token, agent = world.director, world.token, world.a
    before = time.time()
    for method, path, body, expected in (
        ("GET", "/v1/sessions", None, error),
        (
            "POST",
            "/v1/sessions",
            {"userId": "john", "sessionType": "console", "sessionId": "x"},
            error,
        ),
        ("DELETE", "/v1/sessions/dcvix_known", None, error),
        (
            "POST",
            "/v1/config",
            {"config": [{"section": "display", "key": "quality", "value": "(0,10)"}]},
            config_error,
        ),
    ):
        got, answer, took = as_director(director, agent, method, path, body)
        assert (got, answer) == (status, {"error": expected}), (what, method, path)
        assert least <= took < limit, (what, method, path, took)

    # The stats route and the reports to the director go on, with dcv_error.
    got, report, took = as_director(director, agent, "GET", "/v1/stats")
    assert took < limit
    assert got == 200
    assert "sessions" not in report
    assert (report["dcv_error"], report["stats"]["hostname"], report["tags"]) == (
        error,
        "ws-a",
        ["linux"],
    )
    first = wait_report(
        director, token, "ws-a", f"{what}: dcv_error", lambda s: s["dcv_error"] == error
    )
    second = wait_report(
        director,
        token,
        "ws-a",
        f"{what}: another report",
        lambda s: s["dcv_error"] == error,
        after=seen(first),
    )
    assert seen(second) > seen(first) > before
    assert (second["online"], second["total_memory"]) == (
        True,
        psutil.virtual_memory().total,
    )
    # What the director knew of the sessions is kept while dcv cannot say.
    assert session_ids(second) == ["dcvix_known"]
    # An admin's create through the director gets the agent's reason.
    answer = call(
        director,
        "POST",
        "/v1/sessions",
        {"serverId": "ws-a", "userId": "john", "sessionType": "console"},
        token,
    )
    assert (answer.status, answer.body) == (
        502,
        {"error": f"the agent answered {status}: {error}"},
    )


def _known_session(world: World) -> None:
    world.fake_a.add_session("dcvix_known", "bob", "virtual", created=CREATED)
    wait_report(
        world.director,
        world.token,
        "ws-a",
        "dcvix_known",
        lambda s: session_ids(s) == ["dcvix_known"],
    )


def test_dcv_missing(world: World) -> None:
    _known_session(world)
    fake = world.fake_a
    away = fake.home / "dcv.away"
    fake.path.rename(away)
    try:
        _in_trouble(
            world,
            "missing",
            f"dcv list-sessions: {fake.path}: no such file",
            503,
            f"dcv set-config: {fake.path}: no such file",
            1.0,
        )
    finally:
        away.rename(fake.path)


def test_dcv_failing(world: World) -> None:
    _known_session(world)
    world.fake_a.hook("*", exit=1, stderr="ERROR: the DCV server is not running\n")
    _in_trouble(
        world,
        "failing",
        "dcv list-sessions failed (exit 1): ERROR: the DCV server is not running",
        502,
        "dcv set-config failed (exit 1): ERROR: the DCV server is not running",
        1.0,
    )
    assert world.fake_a.mutations()[-1] == [
        "set-config",
        "--section",
        "display",
        "--key",
        "quality",
        "(0,10)",
    ]


def test_dcv_printing_garbage(world: World) -> None:
    _known_session(world)
    fake = world.fake_a
    director, agent = world.director, world.a
    for stdout, error in (
        ("Welcome to DCV!\nThis is not JSON.\n", "list-sessions did not print JSON"),
        ('{"id" : "x"}', "list-sessions did not print a JSON array"),
        ("\xff\xfe[]", "list-sessions did not print JSON"),
    ):
        fake.hook("list-sessions", stdout=stdout)
        for method, path in (("GET", "/v1/sessions"), ("DELETE", "/v1/sessions/x")):
            assert as_director(director, agent, method, path)[:2] == (
                502,
                {"error": error},
            )
        wait_report(
            director,
            world.token,
            "ws-a",
            f"dcv_error {error}",
            lambda s, e=error: s["dcv_error"] == e and s["online"],
        )
    # One bad entry among good ones is skipped, not fatal.
    good = agent_session("dcvix_ok", "bob", "console")
    fake.hook(
        "list-sessions",
        stdout=json.dumps(
            [
                {
                    "id": "dcvix_ok",
                    "owner": "bob",
                    "type": "console",
                    "num-of-connections": 0,
                    "licensing-mode": "DEMO",
                    "creation-time": "2026-07-01T08:12:44.101203Z",
                    "last-disconnection-time": "",
                },
                {"id": "dcvix_bad", "owner": "bob", "num-of-connections": "two"},
                {"id": "dcvix_bad2", "creation-time": "yesterday"},
                "junk",
            ],
            indent=2,
        ).replace('": ', '" : '),
    )
    assert as_director(director, agent, "GET", "/v1/sessions")[:2] == (200, [good])
    agent.wait_log("skipped a session dcv listed: entry 4: entry is not an object")
    wait_report(
        director,
        world.token,
        "ws-a",
        "dcvix_ok",
        lambda s: session_ids(s) == ["dcvix_ok"] and s["dcv_error"] == "",
    )


def test_dcv_hanging_with_a_grandchild_holding_the_pipes(world: World) -> None:
    _known_session(world)
    fake = world.fake_a
    fake.hook("*", hang={"seconds": 120, "grandchild": "group"})
    _in_trouble(
        world,
        "hanging",
        f"dcv list-sessions took over {DCV_TIMEOUT:g} s",
        504,
        f"dcv set-config took over {DCV_TIMEOUT:g} s",
        DCV_TIMEOUT + 1.0,
        least=DCV_TIMEOUT,
    )
    # The whole process group was killed: no grandchild outlived its command.
    fake.hook("*")
    assert len(fake.forked()) >= 8  # 4 routes, each a call and its grandchild
    wait_for("the grandchildren to be gone", lambda: fake.grandchildren() == [], 5)


def test_dcv_hanging_with_a_grandchild_that_left_the_group(world: World) -> None:
    """A grandchild that escaped the group keeps the pipes: the agent stops waiting."""
    fake = world.fake_a
    fake.hook("list-sessions", hang={"seconds": 120, "grandchild": "escape"})
    got, answer, took = as_director(world.director, world.a, "GET", "/v1/sessions")
    assert (got, answer) == (
        504,
        {"error": f"dcv list-sessions took over {DCV_TIMEOUT:g} s"},
    )
    # The time limit, then two seconds of grace for the pipes, then the answer.
    assert DCV_TIMEOUT + 2.0 <= took < DCV_TIMEOUT + 2.0 + 1.0, took
    fake.hook("list-sessions")
    assert fake.grandchildren() != []  # it escaped the kill, and still runs
    fake.kill_grandchildren()


# -------------------------------- 6. revoked, silent and unreachable agents


def test_revoked_agent_is_refused(fleet: Fleet) -> None:
    director = new_director(fleet)
    ((agent, fake),) = new_agents(fleet, director, "ws-v")
    token = admin_token(director)
    wait_report(director, token, "ws-v", "online", lambda s: s["online"])

    mark = agent.mark()
    director.ctl("agents", "revoke", agent.guid)
    assert run_curl(SEED_AGENT_UPDATE, director.port, agent.data_dir, 8445) == (
        401,
        {"error": "agent revoked"},
    )
    # The agent's own updates, on its kept-alive connection, are refused too.
    agent.wait_log("update not delivered: 401 agent revoked", since=mark)

    answer = call(
        director,
        "POST",
        "/v1/sessions",
        {"serverId": "ws-v", "userId": "john", "sessionType": "console"},
        token,
    )
    assert (answer.status, answer.body) == (
        409,
        {"error": "server ws-v is not a registered agent"},
    )
    assert fake.mutations() == []
    server = wait_report(
        director,
        token,
        "ws-v",
        "offline",
        lambda s: not s["online"],
        after=0,
        timeout=MAX_AGE + 5,
    )
    assert server["agent_state"] == "revoked"
    fleet.stop_all()
    clean_stop(fleet)


def test_silent_and_unreachable_agents(fleet: Fleet) -> None:
    # A shorter wait than Go's 30 s keeps the test short; the default is
    # checked in tests/unit/test_agent_client.py.
    director = new_director(fleet, agent_write_timeout=f"{WRITE_TIMEOUT:g}s")
    ((agent, fake),) = new_agents(fleet, director, "ws-q")
    token = admin_token(director)
    fake.add_session("dcvix_q", "bob", "virtual", created=CREATED)
    wait_report(director, token, "ws-q", "dcvix_q", lambda s: s["sessions"] != [])
    create = {"serverId": "ws-q", "userId": "john", "sessionType": "console"}

    # Paused (SIGSTOP): still online for max_age, so the director calls it, and
    # gives up after its write timeout; meanwhile it goes offline.
    wait_report(director, token, "ws-q", "a fresh report", lambda s: True)
    os.kill(agent.pid, signal.SIGSTOP)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            started = time.monotonic()
            pending = pool.submit(call, director, "POST", "/v1/sessions", create, token)
            server = wait_report(
                director,
                token,
                "ws-q",
                "offline",
                lambda s: not s["online"],
                after=0,
                timeout=MAX_AGE + 5,
            )
            offline_after = time.time() - seen(server)
            wait_for(
                "sessions dropped",
                lambda: (
                    servers(director, token)["ws-q"]["sessions"] == []
                    and sessions(director, token) == []
                ),
                5,
            )
            answer = pending.result(timeout=60)
            took = time.monotonic() - started
        assert (answer.status, answer.body) == (
            504,
            {"error": "the agent did not answer in time"},
        )
        # It waited for its write timeout, not less; the upper bounds leave a
        # loaded machine room (the call itself is bounded above).
        assert WRITE_TIMEOUT - 0.5 < took < WRITE_TIMEOUT + 15.0, took
        assert MAX_AGE <= offline_after < MAX_AGE + 6.0, offline_after
        answer = call(director, "POST", "/v1/sessions", create, token)
        assert (answer.status, answer.body) == (
            409,
            {"error": "server ws-q is offline"},
        )
    finally:
        os.kill(agent.pid, signal.SIGCONT)
    wait_report(
        director, token, "ws-q", "back", lambda s: s["online"] and s["sessions"] != []
    )
    assert fake.mutations() == []

    # Gone (SIGKILL) right after a report: online, unreachable, 502 at once.
    wait_report(director, token, "ws-q", "a fresh report", lambda s: True)
    os.kill(agent.pid, signal.SIGKILL)
    started = time.monotonic()
    answer = call(director, "POST", "/v1/sessions", create, token)
    took = time.monotonic() - started
    assert (answer.status, answer.body) == (
        502,
        {"error": "the agent could not be reached"},
    )
    assert took < 2.0, took
    wait_report(
        director,
        token,
        "ws-q",
        "offline, sessions dropped",
        lambda s: not s["online"] and s["sessions"] == [],
        after=0,
    )
    answer = call(director, "POST", "/v1/sessions", create, token)
    assert (answer.status, answer.body) == (409, {"error": "server ws-q is offline"})
    answer = call(director, "DELETE", "/v1/sessions/dcvix_q", token=token)
    assert (answer.status, answer.body) == (404, {"error": "session not found"})
    fleet.stop_all()
    clean_stop(fleet, allowed={"ws-q"})
    assert agent.process is not None
    assert agent.process.returncode == -signal.SIGKILL
