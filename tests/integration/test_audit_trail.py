"""The audit trail of a real director: one line per audited action, everywhere.

One of each audited action is done to a director over HTTPS, with
``dcvixctl`` and with SIGHUP; the trail is then read through
``GET /v1/admin/audit``, the ``[audit] file`` JSON lines and a syslog socket
of the test's own, and must hold exactly one line per action, with its actor,
source address and outcome, the same line in all three, and no secret.
"""

from __future__ import annotations

import getpass
import json
import os
import signal
import socket
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from director_calls import admin_director, call, post_form
from sessions_world import new_agents, wait_report

from fleet import Director, Fleet, wait_for

ADMIN, PASSWORD = "audit-admin", "Audit-secret-42"
WRONG = "Wrong-secret-17"
BOB, BOB_PASSWORD = "bob", "Bob-secret-99"
TWO_USERS = f"""#!/bin/sh
IFS= read -r user
IFS= read -r password
case "$user:$password" in
    '{ADMIN}:{PASSWORD}' | '{BOB}:{BOB_PASSWORD}') exit 0 ;;
esac
exit 1
"""
FIELDS = ("actor", "action", "target", "address", "outcome", "detail")


class Syslog:
    """A syslog daemon's socket, read as datagrams come (as rsyslog does).

    A UNIX datagram socket queues only a few datagrams (net.unix.max_dgram_qlen):
    a reader that waited until the end would lose most of them.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.received: list[bytes] = []
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self._socket.bind(str(path))
        self._socket.settimeout(0.2)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while not self._done.is_set():
            try:
                self.received.append(self._socket.recv(65536))
            except TimeoutError:
                continue

    def close(self) -> None:
        self._done.set()
        self._thread.join()
        self._socket.close()


@pytest.fixture
def syslog(tmp_path: Path) -> Iterator[Syslog]:
    daemon = Syslog(tmp_path / "log.sock")
    yield daemon
    daemon.close()


def login(director: Director, password: str) -> Any:
    return call(
        director, "POST", "/v1/admin/login", {"userID": ADMIN, "password": password}
    )


def test_each_audited_action_is_one_line_in_the_api_the_file_and_syslog(
    fleet: Fleet, syslog: Syslog
) -> None:
    trail_file = fleet.folder / "audit.jsonl"
    director = admin_director(fleet, ADMIN, PASSWORD)
    # bob, a user granted the workstation, logs in too.
    (fleet.folder / "check-password").write_text(TWO_USERS)
    (fleet.folder / "policydb" / "users.json").write_text(
        json.dumps(
            [{"id": ADMIN, "admin": True}, {"id": BOB, "workstations": ["ws-audit"]}]
        )
    )
    director.extra["audit"] = {
        "file": str(trail_file),
        "syslog": "true",
        "syslog_address": str(syslog.path),
    }
    fleet.start(director)
    ((agent, fake),) = new_agents(fleet, director, "ws-audit")

    # 1. A failed and a good admin login (the back end is an external command).
    assert login(director, WRONG).status == 401
    token = login(director, PASSWORD).token
    assert token
    wait_report(director, token, "ws-audit", "a report", lambda s: s["online"])
    # 2. Sessions driven by the admin, and a setting pushed.
    created = call(
        director,
        "POST",
        "/v1/sessions",
        {"serverId": "ws-audit", "userId": "john", "sessionType": "console"},
        token,
    )
    assert created.status == 200, created.body
    session = created.body["sessionID"]
    quality = {"config": [{"section": "display", "key": "quality", "value": "(0,9)"}]}
    assert (
        call(director, "POST", "/v1/servers/ws-audit/config", quality, token).status
        == 200
    )
    closed = call(director, "DELETE", f"/v1/sessions/{session}", None, token)
    assert closed.status == 200, closed.body
    # 3. bob's session, its connection token, a setting, then closed.
    bob = call(
        director, "POST", "/v1/user/login", {"userID": BOB, "password": BOB_PASSWORD}
    ).token
    assert bob
    mine = call(
        director,
        "POST",
        "/v1/user/sessions",
        {"serverId": "ws-audit", "sessionType": "console"},
        bob,
    )
    assert mine.status == 200, mine.body
    own = mine.body["sessionID"]
    query = f"serverId=ws-audit&sessionId={own}"
    connection = call(director, "GET", f"/v1/user/connectiontoken?{query}", None, bob)
    assert connection.status == 200, connection.body
    assert (
        call(director, "POST", "/v1/user/servers/ws-audit/config", quality, bob).status
        == 200
    )
    gone = call(director, "DELETE", f"/v1/user/sessions/{own}?{query}", None, bob)
    assert gone.status == 200, gone.body
    # 4. Refusals anyone can cause: a token DCV refuses (twice: one line), a
    # Gateway asking for an unknown session, a registration that is not one.
    for _ in range(2):
        assert b'result="no"' in post_form(
            director,
            "/v1/user/authtokenverify",
            f"sessionId={own}&authenticationToken=forged",
        )
    assert b"session not found" in post_form(
        director, "/resolveSession?sessionId=nobody", ""
    )
    assert call(director, "POST", "/v1/agent/register", {"csr": "x"}).status == 400
    # 5. An admin action by dcvixctl, with the OS user.
    director.ctl("agents", "revoke", agent.guid)
    # 6. A policy reload (SIGHUP), and a logout.
    os.kill(director.pid, signal.SIGHUP)
    director.wait_log("policy reload")
    assert call(director, "POST", "/v1/logout", None, token).status == 200

    def trail() -> list[dict[str, Any]] | None:
        fresh = login(director, PASSWORD).token
        answer = call(director, "GET", "/v1/admin/audit?limit=1000", None, fresh)
        assert answer.status == 200, answer.body
        entries: list[dict[str, Any]] = answer.body["entries"]
        return entries if any(e["action"] == "logout" for e in entries) else None

    entries = list(reversed(wait_for("the whole trail", trail, 30)))
    # The login that read the trail is the last line: not one of the test's.
    entries = entries[: [e["action"] for e in entries].index("logout") + 1]
    me = getpass.getuser()
    expected = {
        "register": ("address 127.0.0.1", agent.guid, "127.0.0.1", "ok"),
        "approve": ("os:" + me, agent.guid, "", "ok"),
        "admin login failed": (ADMIN, "", "127.0.0.1", "failed"),
        "admin login": (ADMIN, "", "127.0.0.1", "ok"),
        "create session": (f"admin:{ADMIN}", session, "127.0.0.1", "ok"),
        "configure server": (f"admin:{ADMIN}", "ws-audit", "127.0.0.1", "ok"),
        "close session": (f"admin:{ADMIN}", session, "127.0.0.1", "ok"),
        "revoke": ("os:" + me, agent.guid, "", "ok"),
        "policy reload": ("sighup", str(fleet.folder / "policydb"), "", "ok"),
        "login": (BOB, "", "127.0.0.1", "ok"),
        "user session": (BOB, own, "127.0.0.1", "ok"),
        "connection token": (BOB, own, "127.0.0.1", "ok"),
        "close user session": (BOB, own, "127.0.0.1", "ok"),
        "dcv token refused": ("dcv server", own, "127.0.0.1", "refused"),
        "resolve refused": ("gateway 127.0.0.1", "nobody", "127.0.0.1", "refused"),
        "register refused": ("address 127.0.0.1", "", "127.0.0.1", "refused"),
        "logout": (ADMIN, "", "127.0.0.1", "ok"),
    }
    counted = Counter(e["action"] for e in entries)
    # Two "configure server" lines (the admin's, bob's); one of each else.
    assert counted == dict.fromkeys(expected, 1) | {"configure server": 2}, counted
    for entry in entries:
        who = (entry["actor"], entry["target"], entry["address"], entry["outcome"])
        if entry["action"] == "configure server" and entry["actor"] == BOB:
            assert who == (BOB, "ws-audit", "127.0.0.1", "ok")
            continue
        assert who == expected[entry["action"]], entry
    config = [e["detail"] for e in entries if e["action"] == "configure server"]
    assert config == ["keys=display/quality"] * 2
    refused = next(e for e in entries if e["action"] == "dcv token refused")
    assert refused["detail"] == "result=no count=1"  # the second one is counted

    # The file and syslog: the same lines, in the same order.
    def exported(line: dict[str, Any]) -> tuple[Any, ...]:
        return tuple(line[f] for f in FIELDS)

    filed = [json.loads(line) for line in trail_file.read_text().splitlines()]
    assert [exported(e) for e in entries] == [exported(e) for e in filed][
        : len(entries)
    ]

    def every_line() -> list[bytes] | None:
        return syslog.received if len(syslog.received) >= len(filed) else None

    datagrams = wait_for("every line in syslog", every_line, 30)
    messages = [json.loads(d.split(b" AUDIT - ", 1)[1]) for d in datagrams]
    assert [exported(m) for m in messages] == [exported(e) for e in filed]
    failed = datagrams[[m["action"] for m in messages].index("admin login failed")]
    assert failed.startswith(b"<85>1 ")  # authpriv.notice for a failure
    assert oct(trail_file.stat().st_mode & 0o777) == "0o600"

    # No secret anywhere: passwords and login tokens.
    everything = json.dumps(entries) + trail_file.read_text()
    everything += b"".join(datagrams).decode()
    for secret in (PASSWORD, WRONG, token, BOB_PASSWORD, bob, "forged"):
        assert secret not in everything
    fake.reset()
