"""A real director's ``/metrics``, scraped and read with Prometheus's own parser.

Each test drives the director over HTTPS (logins, an agent's registration and
reports) and checks that each counter moved by exactly what was done, reading
two scrapes with ``prometheus_client.parser``.
"""

from __future__ import annotations

import http.client
import json
from pathlib import Path

import pytest
from director_calls import admin_director, call
from prometheus_client.parser import text_string_to_metric_families

from daemons import free_port
from fleet import Director, Fleet, enrol, https, wait_for

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
    good: dict[str, object] = {"sessions": [], "stats": {}, "tags": []}
    for body in (good, good, {"sessions": 5}):
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
    assert moved(reported, after, "dcvix_agent_updates_total", outcome="accepted") == 2
    assert moved(reported, after, "dcvix_agent_updates_total", outcome="refused") == 1
    # Gauges are computed at most once a second, at a scrape.
    after = wait_for("the gauges of the new server", lambda: online(port), 30)
    assert value(after, "dcvix_agents", state="registered") == 1
    assert value(after, "dcvix_sessions", type="virtual", state="running") == 0
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
