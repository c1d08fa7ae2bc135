"""A real director's ``/metrics``, scraped and read with Prometheus's own parser.

Each test drives the director over HTTPS (logins, an agent's registration and
reports) and checks that each counter moved by exactly what was done, reading
two scrapes with ``prometheus_client.parser``.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import psutil
import pytest
from director_calls import admin_director, call, post_form
from fake_dcv import FakeDcv
from prometheus_client.parser import text_string_to_metric_families
from sessions_world import agent_session

from daemons import free_port
from dcvix.common.pki import certificate_fingerprint
from fleet import Agent, Director, Fleet, enrol, https, wait_for

ADMIN, PASSWORD = "metrics-admin", "metrics-secret"
TOKEN = "scrape-token-0123456789abcdef"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int, token: str | None = TOKEN) -> tuple[int, str]:
    """``GET /metrics`` on the plain HTTP listener: status and body."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    try:
        connection.request("GET", "/metrics", headers=headers)
        answer = connection.getresponse()
        return answer.status, answer.read().decode()
    finally:
        connection.close()


def samples(port: int) -> Samples:
    """Every sample of a scrape, by name and labels."""
    status, text = scrape(port)
    assert status == 200, text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: Samples, name: str, **labels: str) -> float:
    return found.get((name, tuple(sorted(labels.items()))), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def director(fleet: Fleet) -> tuple[Director, int]:
    """A director whose metrics listen on a free loopback port, behind TOKEN."""
    token_file = fleet.folder / "metrics-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    director = admin_director(
        fleet,
        ADMIN,
        PASSWORD,
        login_max_failures="3",
    )
    port = free_port()
    director.extra["metrics"] = {
        "listen": f"127.0.0.1:{port}",
        "token_file": str(token_file),
    }
    fleet.start(director)
    return director, port


def login(director: Director, password: str) -> int:
    body = {"userID": ADMIN, "password": password}
    return call(director, "POST", "/v1/admin/login", body).status


def test_logins_and_lockouts_are_counted(director: tuple[Director, int]) -> None:
    daemon, port = director
    before = samples(port)

    assert login(daemon, PASSWORD) == 200
    assert [login(daemon, "wrong") for _ in range(3)] == [401, 401, 401]
    assert login(daemon, PASSWORD) == 429  # the third failure locked the user
    status = call(daemon, "POST", "/v1/admin/login", {"userID": "", "password": "x"})
    assert status.status == 400

    after = samples(port)
    counted = {
        outcome: moved(
            before, after, "dcvix_logins_total", backend="external", outcome=outcome
        )
        for outcome in ("ok", "rejected", "locked", "invalid", "unavailable")
    }
    assert counted == {
        "ok": 1,
        "rejected": 3,
        "locked": 1,
        "invalid": 1,
        "unavailable": 0,
    }
    # The user and the address each reached three failures.
    assert moved(before, after, "dcvix_login_lockouts_total", kind="user") == 1
    assert moved(before, after, "dcvix_login_lockouts_total", kind="address") == 1


def test_registrations_updates_and_the_fleet_are_counted(
    fleet: Fleet, director: tuple[Director, int]
) -> None:
    daemon, port = director
    before = samples(port)
    # Its own reports off: the test's are the only ones.
    agent = fleet.agent(daemon, "ws-metrics", update_interval="0")
    enrol(daemon, agent)
    reported = samples(port)
    # Two reports with the agent's certificate, and one that is refused.
    running = agent_session("dcvix_m1", "bob", "virtual") | {
        "status": "running",
        "num-of-connections": 2,
    }
    good: dict[str, object] = {"sessions": [running], "stats": {}, "tags": []}
    # The second announces a 1 ms interval: it comes late by the time between.
    hasty = good | {"update_interval": 0.001}
    for body in (good, hasty, {"sessions": 5}):
        https(
            daemon.port,
            "/v1/agent/update",
            cert=agent.certificate,
            key=agent.key,
            method="POST",
            body=body,
        )

    after = samples(port)
    assert moved(before, after, "dcvix_registrations_total", outcome="pending") >= 1
    assert moved(before, after, "dcvix_registrations_total", outcome="registered") == 1
    assert (
        moved(reported, after, "dcvix_updates_received_total", outcome="accepted") == 2
    )
    assert (
        moved(reported, after, "dcvix_updates_received_total", outcome="refused") == 1
    )
    # What DCV servers and Gateways ask: a forged token, an unknown session.
    checked = samples(port)
    form = "sessionId=dcvix_m1&authenticationToken=forged"
    assert b'result="no"' in post_form(daemon, "/v1/user/authtokenverify", form)
    assert b"session not found" in post_form(daemon, "/resolveSession?sessionId=x", "")
    asked = samples(port)
    assert moved(checked, asked, "dcvix_dcv_verifications_total", result="no") == 1
    assert moved(checked, asked, "dcvix_dcv_verification_seconds_count") == 1
    assert (
        moved(checked, asked, "dcvix_gateway_resolutions_total", result="not_found")
        == 1
    )
    # The first report has no previous one to be late after.
    assert moved(reported, after, "dcvix_update_lag_seconds_count") == 1
    assert moved(reported, after, "dcvix_update_lag_seconds_sum") > 0
    # Gauges are computed at most once a second, at a scrape.
    after = wait_for("the gauges of the new server", lambda: online(port), 30)
    assert value(after, "dcvix_agents", state="registered") == 1
    assert value(after, "dcvix_sessions", type="virtual", state="running") == 1
    assert value(after, "dcvix_session_clients") == 2
    assert value(after, "dcvix_build_info", daemon="director", version=_version()) == 1
    expiry = value(
        after, "dcvix_certificate_expiry_timestamp_seconds", certificate="ca"
    )
    assert expiry > value(after, "process_start_time_seconds") > 0


def online(port: int) -> Samples | None:
    """A scrape whose gauges count one server online, or None."""
    found = samples(port)
    return found if value(found, "dcvix_servers", status="online") == 1 else None


def _version() -> str:
    from dcvix import __version__

    return __version__


def test_a_scrape_needs_the_token(director: tuple[Director, int]) -> None:
    _daemon, port = director
    for token in (None, "wrong", TOKEN + "x", ""):
        status, body = scrape(port, token)
        assert status == 401
        assert json.loads(body) == {"error": "a valid bearer token is required"}
    status, body = scrape(port)
    assert status == 200 and "dcvix_build_info" in body
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        connection.request("GET", "/other")
        answer = connection.getresponse()
        assert answer.status == 404
        assert "error" in json.loads(answer.read())
    finally:
        connection.close()


def test_a_token_file_others_can_read_stops_the_start(
    fleet: Fleet, tmp_path: Path
) -> None:
    token_file = tmp_path / "loose-token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)
    director = fleet.director(start=False)
    director.extra["metrics"] = {
        "listen": f"127.0.0.1:{free_port()}",
        "token_file": str(token_file),
    }
    director.start(wait=False)
    assert director.process is not None
    assert director.process.wait(60) == 1
    assert f"[metrics] token_file {token_file} is readable by other users" in (
        director.output.read_text()
    )


# ------------------------------------------------------------------ the agent


@pytest.fixture
def agent_world(fleet: Fleet) -> tuple[Director, Agent, FakeDcv, int]:
    """An enrolled agent on a fake ``dcv``, reporting and reaping every second.

    Its metrics listen on a free loopback port behind TOKEN. Sessions idle for
    a minute are reaped: the test's old sessions at once, its new one never.
    """
    token_file = fleet.folder / "agent-metrics-token"
    token_file.write_text(TOKEN + "\n")
    token_file.chmod(0o600)
    director = fleet.director()
    fake = FakeDcv(fleet.folder / "ws-m-dcv").install()
    agent = fleet.agent(
        director,
        "ws-m",
        start=False,
        dcv_path=str(fake.path),
        update_interval="1s",
        reap_interval="1s",
        idle_timeout="60s",
    )
    port = free_port()
    agent.extra["metrics"] = {
        "listen": f"127.0.0.1:{port}",
        "token_file": str(token_file),
    }
    fleet.start(agent)
    return director, agent, fake, port


def test_an_agents_commands_reports_reaper_and_host_are_counted(
    agent_world: tuple[Director, Agent, FakeDcv, int],
) -> None:
    director, agent, fake, port = agent_world
    # Not enrolled: nothing sent, no certificate of its own yet.
    before = samples(port)
    assert value(before, "dcvix_agent_reports_total", outcome="delivered") == 0
    assert value(before, "dcvix_build_info", daemon="agent", version=_version()) == 1
    assert (
        value(
            before,
            "dcvix_agent_certificate_expiry_timestamp_seconds",
            certificate="agent",
        )
        == 0
    )

    # Two idle sessions dcvix made long ago (reaped at once), one in use (kept).
    long_ago = time.time() - 7200
    fake.add_session("dcvix_unused", "bob", created=long_ago)
    fake.add_session("dcvix_left", "bob", created=long_ago, disconnected=long_ago + 60)
    fake.add_session("dcvix_busy", "carol", created=long_ago, connections=2)
    enrol(director, agent)

    def reaped() -> Samples | None:
        found = samples(port)
        done = value(found, "dcvix_agent_reaped_sessions_total", reason="unused") and (
            value(found, "dcvix_agent_reaped_sessions_total", reason="disconnected")
        )
        delivered = value(found, "dcvix_agent_reports_total", outcome="delivered")
        # The gauges are the last listing's: one made after the reaper's closes.
        left = value(found, "dcvix_agent_sessions", type="virtual", state="other")
        return found if done and delivered >= 2 and left == 1 else None

    found = wait_for("two reaped sessions, two reports, one left", reaped, 60)
    assert fake.session_ids() == ["dcvix_busy"]
    for reason in ("unused", "disconnected"):
        assert value(found, "dcvix_agent_reaped_sessions_total", reason=reason) == 1
    assert value(found, "dcvix_agent_reap_failures_total") == 0
    assert value(found, "dcvix_agent_reports_total", outcome="refused") == 0
    assert value(found, "dcvix_agent_report_seconds_count") >= 2
    closed = value(
        found, "dcvix_agent_dcv_commands_total", command="close-session", outcome="ok"
    )
    assert closed == 2
    listed = value(
        found, "dcvix_agent_dcv_commands_total", command="list-sessions", outcome="ok"
    )
    assert listed >= 3  # two reports and a reaper pass at least
    assert value(found, "dcvix_agent_session_clients") == 2
    assert value(found, "dcvix_agent_sessions", type="virtual", state="other") == 1
    now = time.time()
    assert value(found, "dcvix_agent_sessions_listed_timestamp_seconds") > now - 60
    for certificate in ("agent", "ca"):
        expiry = value(
            found,
            "dcvix_agent_certificate_expiry_timestamp_seconds",
            certificate=certificate,
        )
        assert expiry > now
    assert value(found, "dcvix_agent_memory_total_bytes") == (
        psutil.virtual_memory().total
    )
    assert value(found, "dcvix_agent_cpu_seconds_total", mode="idle") > 0

    # The director's audit trail says why each reaped session ended.
    def reaped_rows() -> list[tuple[str, ...]] | None:
        with contextlib.closing(sqlite3.connect(director.data_dir / "agents.db")) as db:
            rows = db.execute(
                "SELECT actor, target, address, detail FROM audit "
                "WHERE action = 'reap session' ORDER BY target"
            ).fetchall()
        return [tuple(row) for row in rows] if len(rows) == 2 else None

    left, unused = wait_for("the reaped sessions audited", reaped_rows, 30)
    assert left[:3] == ("agent ws-m", "dcvix_left", "127.0.0.1")
    assert left[3].startswith("owner=bob no client for ")
    assert left[3].endswith("since its last disconnection (idle_timeout 60 s)")
    assert unused[1] == "dcvix_unused"
    assert unused[3].endswith("since its creation, unused (idle_timeout 60 s)")

    # What the director asks: one create, one set-config that dcv refuses.
    before = samples(port)
    as_director: dict[str, Any] = {
        "cafile": director.ca_file,
        "cert": director.server_crt,
        "key": director.server_key,
    }
    body = {"userId": "john", "sessionType": "console", "sessionId": "test"}
    status, _ = https(
        agent.port, "/v1/sessions", method="POST", body=body, **as_director
    )
    assert status == 201
    fake.hook("set-config", exit=1, stderr="ERROR: no such section\n")
    quality = {"config": [{"section": "display", "key": "quality", "value": "(0,9)"}]}
    status, _ = https(
        agent.port, "/v1/config", method="POST", body=quality, **as_director
    )
    assert status == 502
    after = samples(port)
    for command, outcome, count in (
        ("create-session", "ok", 1),
        ("set-config", "failed", 1),
        ("set-config", "ok", 0),
        ("close-session", "ok", 0),
    ):
        assert (
            moved(
                before,
                after,
                "dcvix_agent_dcv_commands_total",
                command=command,
                outcome=outcome,
            )
            == count
        ), (command, outcome)
    assert (
        moved(
            before,
            after,
            "dcvix_agent_dcv_command_seconds_count",
            command="create-session",
        )
        == 1
    )

    # The API port serves no metrics, even to the director.
    status, answer = https(agent.port, "/metrics", **as_director)
    assert status == 404 and "error" in answer
    assert scrape(port, "wrong")[0] == 401

    # No director answers: the reports fail, and say so.
    director.stop()

    def failed() -> Samples | None:
        found = samples(port)
        return (
            found
            if value(found, "dcvix_agent_reports_total", outcome="failed")
            else None
        )

    wait_for("a failed report", failed, 60)


# ------------------------------------------------------------ dcvixctl status


def test_dcvixctl_status_reads_the_store_and_the_running_director(
    fleet: Fleet, director: tuple[Director, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    daemon, port = director
    # A proxy in the environment is never used: the token goes to the director.
    monkeypatch.setenv("http_proxy", f"http://127.0.0.1:{free_port()}")
    done = daemon.ctl("status", check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    screen = done.stdout
    assert f"director   dcvix {_version()}, up " in screen
    assert f"(metrics on 127.0.0.1:{port})" in screen
    assert "servers    0 online, 0 offline" in screen
    fingerprint = certificate_fingerprint(daemon.ca_certificate())
    assert f"CA         SHA-256 {fingerprint}  expires " in screen
    assert "agents     0 pending, 0 registered, 0 revoked, 0 denied" in screen
    assert screen.endswith("attention: nothing\n")

    # An agent waiting for approval needs an admin.
    agent = fleet.agent(daemon, "ws-status", update_interval="0")
    agent.wait_log("pending approval")
    done = daemon.ctl("status", check=False)
    assert done.returncode == 1
    assert "  - 1 agent(s) pending approval: dcvixctl agents list --state pending" in (
        done.stdout
    )
    # A director that does not answer needs someone too.
    daemon.stop()
    done = daemon.ctl("status", check=False)
    assert done.returncode == 1
    assert f"  - the director does not answer on 127.0.0.1:{port}" in done.stdout
