"""Directors on PostgreSQL (``[store] url = postgresql://...``), as real twistd.

Each test gets a new, empty database on the session's throwaway cluster
(``tests/postgres.py``); directors log in as its superuser with the password in
a 0600 ``password_file``. Agents are real twistd agents; approvals go through
``dcvixctl`` with the director's config, and what a director sees through its
admin API (an admin logs in through a shell script, as in
``director_calls.admin_director``). No test stops the cluster (it is shared by
the session): a database is taken away with ``ALLOW_CONNECTIONS false`` and
its sessions ended, then given back.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from director_calls import ADMIN_SCRIPT, call
from postgres import Postgres, PostgresStore, postgres_fixture  # noqa: F401

from daemons import free_port
from fleet import Director, Fleet, enrol, mode, wait_for

ADMIN, ADMIN_PASSWORD = "pg-admin", "pg-admin-secret"
# Starting, registering and a database coming back take their time on a
# loaded machine: bounds well above what they need.
START = 60.0
BACK = 120.0


def database_name(url: str) -> str:
    """The database of a ``postgresql://`` URL."""
    return url.rsplit("/", 1)[1]


def password_file(fleet: Fleet, password: str, name: str = "pg-password") -> Path:
    """``password`` as the first line of a 0600 file in the test's folder."""
    path = fleet.folder / name
    path.write_text(password + "\n")
    path.chmod(0o600)
    return path


def pg_director(
    fleet: Fleet,
    name: str,
    url: str,
    secret: Path,
    *,
    start: bool = True,
    port: int = 0,
    **keys: str,
) -> Director:
    """A director in folder ``name`` on ``url``, ``ADMIN`` logging in as admin.

    Registered with ``fleet`` (stopped at the end) even when not started.
    ``port``: its port (default: a free one); ``keys``: more ``[director]`` keys.
    """
    script = fleet.folder / "check-password"
    if not script.exists():
        script.write_text(ADMIN_SCRIPT.format(user=ADMIN, password=ADMIN_PASSWORD))
        script.chmod(0o755)
    policy = fleet.folder / f"policydb-{name}"
    policy.mkdir()
    (policy / "users.json").write_text(json.dumps([{"id": ADMIN, "admin": True}]))
    director = Director(
        "dcvix-director",
        fleet.folder / name,
        port or free_port(),
        extra={
            "director": {
                "auth_type": "external",
                "policydb_folder": str(policy),
                **keys,
            },
            "external_auth": {"external_command": str(script)},
            "store": {"url": url, "password_file": str(secret), "connections": "2"},
        },
    )
    fleet.started.append(director)
    if start:
        director.start(wait=False)
        director.wait_healthy(START)
    return director


def admin_token(director: Director) -> str:
    """A login of ``ADMIN`` on ``director``."""
    answer = call(
        director,
        "POST",
        "/v1/admin/login",
        {"userID": ADMIN, "password": ADMIN_PASSWORD},
    )
    assert answer.status == 200 and answer.token, answer.body
    return answer.token


def states(director: Director, token: str) -> dict[str, str]:
    """GUID → state of every agent, as the director's admin API lists them."""
    answer = call(director, "GET", "/v1/admin/agents", token=token)
    assert answer.status == 200, answer.body
    return {agent["guid"]: agent["state"] for agent in answer.body}


def failed_start(director: Director) -> str:
    """Start ``director``, which must exit 1; what it wrote."""
    director.start(wait=False)
    assert director.process is not None
    try:
        code = director.process.wait(START)
    except subprocess.TimeoutExpired:
        raise AssertionError(
            f"still running after {START} s:\n{director.log_text()}"
        ) from None
    output = director.log_text()
    assert code == 1, output
    assert "Traceback" not in output, output
    return output


@contextmanager
def connections_refused(postgres: Postgres, database: str) -> Iterator[None]:
    """No session on ``database`` and no new one, until the block ends."""
    postgres.admin(f"ALTER DATABASE {database} ALLOW_CONNECTIONS false")
    try:
        postgres.admin(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "  # noqa: S608 - our name
            f"WHERE datname = '{database}' AND pid <> pg_backend_pid()"
        )
        yield
    finally:
        postgres.admin(f"ALTER DATABASE {database} ALLOW_CONNECTIONS true")


def test_a_director_on_postgresql_enrols_agents_without_agents_db(
    fleet: Fleet, postgres: Postgres
) -> None:
    url = postgres.database()
    director = pg_director(
        fleet, "director", url, password_file(fleet, postgres.password)
    )
    agent = fleet.agent(director, "ws-pg-1")

    agent.wait_log("pending approval", timeout=START)
    assert director.listed("pending") == {agent.guid: "ws-pg-1"}
    enrol(director, agent)
    token = admin_token(director)
    assert states(director, token) == {agent.guid: "registered"}

    assert not list(director.data_dir.glob("agents.db*"))
    assert postgres.password not in director.log_text()


def test_two_directors_share_one_database_and_ca(
    fleet: Fleet, postgres: Postgres
) -> None:
    url = postgres.database()
    secret = password_file(fleet, postgres.password)
    first = pg_director(fleet, "director-a", url, secret)
    second = pg_director(fleet, "director-b", url, secret, start=False)
    second.data_dir.mkdir(parents=True, mode=0o700)
    for name, bits in (("ca.key", 0o600), ("ca.pem", 0o644), ("token.key", 0o600)):
        shutil.copyfile(first.data_dir / name, second.data_dir / name)
        (second.data_dir / name).chmod(bits)
    assert mode(second.data_dir) == 0o700
    second.start(wait=False)
    second.wait_healthy(START)
    assert second.ca_file.read_bytes() == first.ca_file.read_bytes()
    assert "new CA" not in second.log_text()

    agent = fleet.agent(first, "ws-shared", update_interval="2s")
    agent.wait_log("pending approval", timeout=START)
    tokens = [(first, admin_token(first)), (second, admin_token(second))]
    for director, token in tokens:
        assert states(director, token) == {agent.guid: "pending"}, director.folder

    # Approved with B's config; the agent's next registration, through A, works.
    marks = first.mark(), second.mark()
    enrol(second, agent)
    first.wait_log('"POST /v1/agent/register" 200', since=marks[0])
    assert "/v1/agent/register" not in second.log_since(marks[1])
    for director, token in tokens:
        assert states(director, token) == {agent.guid: "registered"}, director.folder

    # The agent reports to A only; B lists its server from the shared store.
    def listed_on_b() -> dict[str, Any] | None:
        answer = call(second, "GET", "/v1/servers", token=tokens[1][1])
        assert answer.status == 200, answer.body
        found = [s for s in answer.body if s["hostname"] == "ws-shared" and s["online"]]
        return found[0] if found else None

    shared = wait_for("B to list the server A heard from", listed_on_b, START)
    assert shared["agent_state"] == "registered"
    assert "/v1/agent/update" not in second.log_since(marks[1])

    # A change through one director's API is what the other lists next.
    answer = call(
        second, "POST", f"/v1/admin/agents/{agent.guid}/revoke", token=tokens[1][1]
    )
    assert answer.status == 200, answer.body
    for director, token in tokens:
        assert states(director, token) == {agent.guid: "revoked"}, director.folder

    # ... and the revoked server leaves A's fleet too (placement, verifier).
    def listed_on_a() -> list[str]:
        answer = call(first, "GET", "/v1/servers", token=tokens[0][1])
        assert answer.status == 200, answer.body
        return [s["hostname"] for s in answer.body]

    wait_for("A to forget the revoked server", lambda: listed_on_a() == [], START)
    # One token key: a login on A is good on B.
    assert states(second, tokens[0][1]) == {agent.guid: "revoked"}
    # A logout on A is refused on B at once.
    assert call(first, "POST", "/v1/logout", token=tokens[0][1]).status == 200
    assert call(second, "GET", "/v1/admin/agents", token=tokens[0][1]).status == 401
    # Five failures spread over both directors lock the account on both.
    wrong = {"userID": ADMIN, "password": "not-the-password"}
    for attempt in range(5):
        director = (first, second)[attempt % 2]
        assert call(director, "POST", "/v1/admin/login", wrong).status == 401
    right = {"userID": ADMIN, "password": ADMIN_PASSWORD}
    for director in (first, second):
        assert call(director, "POST", "/v1/admin/login", right).status == 429


def test_a_new_ca_is_refused_when_the_database_holds_agents(
    loose_fleet: Fleet, postgres: Postgres
) -> None:
    fleet = loose_fleet
    # A database directors have used (schema made), holding an agent.
    url = PostgresStore(postgres).url
    secret = password_file(fleet, postgres.password)
    postgres.admin(
        "INSERT INTO agents (guid, hostname, state, created_at) VALUES "
        "('3b0a6f0e-1111-4c2d-9a44-0123456789ab', 'ws-old', 'registered', now())",
        database_name(url),
    )
    director = pg_director(fleet, "director", url, secret, start=False)

    (line,) = failed_start(director).splitlines()
    assert "the store already holds 1 agents" in line, line
    assert str(director.data_dir) in line, line
    assert "ca.key, ca.pem and token.key" in line, line
    assert not (director.data_dir / "ca.key").exists()
    assert not (director.data_dir / "ca.pem").exists()


def test_a_wrong_password_is_one_line_naming_the_database(
    loose_fleet: Fleet, postgres: Postgres
) -> None:
    fleet = loose_fleet
    url = postgres.database()
    wrong = "not-" + postgres.password
    director = pg_director(
        fleet, "director", url, password_file(fleet, wrong), start=False
    )

    (line,) = failed_start(director).splitlines()
    label = f"postgresql://{postgres.host}:{postgres.port}/{database_name(url)}"
    assert line.startswith(f"dcvix-director: {label}: "), line
    assert "password authentication failed" in line, line
    assert wrong not in line
    assert postgres.password not in line
    # The store is opened before anything is made in data_dir.
    assert not (director.data_dir / "ca.key").exists()


def test_the_database_going_away_answers_503_and_coming_back_serves_again(
    fleet: Fleet, postgres: Postgres
) -> None:
    url = postgres.database()
    name = database_name(url)
    label = f"postgresql://{postgres.host}:{postgres.port}/{name}"
    director = pg_director(
        fleet, "director", url, password_file(fleet, postgres.password)
    )
    token = admin_token(director)
    assert states(director, token) == {}
    ready = call(director, "GET", "/v1/health?ready=1")
    assert (ready.status, ready.body["status"]) == (200, "ready"), ready.body
    assert ready.body["checks"]["database"] == "ok"

    mark = director.mark()
    with connections_refused(postgres, name):
        # The director's own sessions ended: it noticed (its listener did).
        director.wait_log(
            f"lost the connection listening to {label}", since=mark, timeout=START
        )
        answer = call(director, "GET", "/v1/admin/agents", token=token)
        assert answer.status == 503, (answer.status, answer.body)
        assert list(answer.body) == ["error"], answer.body
        assert "database" in answer.body["error"], answer.body
        # A load balancer's readiness check says so; plain health stays Go's.
        ready = call(director, "GET", "/v1/health?ready=1")
        assert ready.status == 503, (ready.status, ready.body)
        assert ready.body["error"].startswith("not ready: database unreachable")
        assert ready.headers["Retry-After"] == "5"
        health = call(director, "GET", "/v1/health")
        assert (health.status, health.body) == (200, {"status": "healthy"})
        assert director.pid  # still running
        # dcvixctl, on the same config: one line naming the database.
        listed = director.ctl("agents", "list", check=False)
        assert listed.returncode == 2, (listed.stdout, listed.stderr)
        (line,) = listed.stderr.splitlines()
        assert line.startswith(f"{label}: "), line
        assert postgres.password not in line
    back = director.mark()

    def served() -> bool:
        answer = call(director, "GET", "/v1/admin/agents", token=token)
        assert answer.status in (200, 503), (answer.status, answer.body)
        return answer.status == 200

    wait_for("the admin API after the database came back", served, BACK)
    # A finding is reused for a second: wait for one made since.
    wait_for(
        "ready again",
        lambda: call(director, "GET", "/v1/health?ready=1").status == 200,
        BACK,
    )
    assert states(director, token) == {}
    director.wait_log(f"listening to {label} again", since=back, timeout=BACK)
    assert director.listed() == {}
    assert director.pid
    assert postgres.password not in director.log_text()


def listeners(port: int) -> int:
    """Sockets listening on ``port`` (IPv4), as the kernel lists them."""
    rows = Path("/proc/net/tcp").read_text().splitlines()[1:]
    return sum(
        1
        for row in rows
        if row.split()[1].endswith(f":{port:04X}") and row.split()[3] == "0A"
    )


def copy_identity(source: Director, target: Director) -> None:
    """What an operator copies to a new director of the same store."""
    target.data_dir.mkdir(parents=True, mode=0o700)
    for name, bits in (("ca.key", 0o600), ("ca.pem", 0o644), ("token.key", 0o600)):
        shutil.copyfile(source.data_dir / name, target.data_dir / name)
        (target.data_dir / name).chmod(bits)


def test_two_processes_share_one_port_and_both_serve(
    fleet: Fleet, postgres: Postgres
) -> None:
    url = postgres.database()
    secret = password_file(fleet, postgres.password)
    first = pg_director(fleet, "process-1", url, secret, reuse_port="true")
    second = pg_director(
        fleet, "process-2", url, secret, start=False, port=first.port, reuse_port="true"
    )
    copy_identity(first, second)
    second.start(wait=False)
    # A health check could be answered by the first process: wait for the
    # kernel to list two listening sockets on the port instead.
    wait_for("both processes listening", lambda: listeners(first.port) == 2, START)
    marks = first.mark(), second.mark()

    # New connections are spread by the kernel: 64 reach both (the chance that
    # they all reach one is 2 in 2**64).
    for _ in range(64):
        assert call(first, "GET", "/v1/health").status == 200

    def served() -> list[int]:
        return [
            director.log_since(mark).count('"GET /v1/health" 200')
            for director, mark in ((first, marks[0]), (second, marks[1]))
        ]

    wait_for("64 lines logged", lambda: sum(served()) == 64, START)
    assert min(served()) > 0, served()


def test_a_shared_port_without_a_shared_store_is_refused(fleet: Fleet) -> None:
    director = fleet.director(start=False, reuse_port="true")

    output = failed_start(director)

    assert "[director] reuse_port needs a PostgreSQL store" in output
