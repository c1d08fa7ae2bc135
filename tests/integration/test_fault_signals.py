"""Faults from outside, against real twistd directors (issue 11, item 3).

A SIGHUP storm while the policy files are rewritten, good and corrupt,
atomically or not, with a client reading policy-dependent answers all along;
and login back ends that never answer: an external command that never ends
(and ignores SIGTERM), an LDAP server that accepts and stays silent.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import http.client
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from director_calls import Answer, call, login

from dcvix.agent.identity import make_csr
from dcvix.common.pki import new_ec_key
from fleet import Director, Fleet, https, wait_for

# Long: `make test-quick` leaves it out; `make test` (and CI) runs it.
pytestmark = pytest.mark.long

STOPPED = -signal.SIGTERM
FAILED = {"error": "authentication failed"}
BUSY = {"error": "too many logins at once; try again shortly"}
HEALTHY = {"status": "healthy"}
TOKEN = "a-registration-token-for-the-fault-tests"
# dcvix.director.auth.external.EXTERNAL_TIMEOUT: the command's time limit.
EXTERNAL_TIMEOUT = 10.0
# SIGTERM with logins stuck in a back end must end twistd within this.
STOP_BOUND = 15.0


# ===================================================== (1) SIGHUP storms

ALICE, ALICE_PASSWORD = "alice", "Wonder-land.42"
CHECK_ALICE = f"""#!/bin/sh
IFS= read -r user
IFS= read -r password
[ "$user:$password" = '{ALICE}:{ALICE_PASSWORD}' ] && exit 0
exit 1
"""
# Both pools in every good pools.json: a reload between the writes of the two
# files then always sees a consistent pair or a refused one.
POOLS = [
    {"id": "gpu", "workstations": ["ws-g1"]},
    {"PoolID": "cad", "Workstations": ["ws-c1", "ws-c2"]},
]


@dataclass(frozen=True)
class Version:
    """A good ``users.json`` and the ``servers`` it gives alice."""

    name: str
    users: list[dict[str, Any]]
    servers: list[str]
    summary: str

    @property
    def text(self) -> str:
        return json.dumps(self.users, indent=1)


GOOD_A = Version(
    "A",
    [{"id": ALICE, "workstations": ["ws-a1", "ws-a2"], "pools": ["gpu"]}],
    ["ws-a1", "ws-a2", "ws-g1"],
    "policy: 1 users (0 admins), 2 pools",
)
GOOD_B = Version(
    "B",
    [
        {"UserID": ALICE, "Workstations": ["ws-b1"], "Pools": ["cad"]},
        {"id": "bob", "admin": True},
    ],
    ["ws-b1", "ws-c1", "ws-c2"],
    "policy: 2 users (1 admins), 2 pools",
)
# Written only at the end: seeing it proves the last reload was seen.
FINAL = Version(
    "final",
    [{"id": ALICE, "workstations": ["ws-final"]}, {"id": "carol"}, {"id": "dave"}],
    ["ws-final"],
    "policy: 3 users (0 admins), 2 pools",
)

REFUSED = "policy not reloaded, keeping the last good one: "
OUTCOMES = ("policy: ", REFUSED)


def atomic(path: Path, data: bytes) -> None:
    """Written whole: a temporary file renamed over the old one."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_bytes(data)
    temporary.replace(path)


def in_place(path: Path, data: bytes) -> None:
    """Truncated, then written: a reload in between reads a short file."""
    with path.open("wb") as file:
        file.write(data)


@dataclass(frozen=True)
class Step:
    """One change to the policy folder before a SIGHUP.

    ``good`` is the version in force once it has been reloaded, None when the
    files it leaves are refused (the last good version stays).
    """

    name: str
    write: Callable[[Path], None]
    good: Version | None
    problem: str = ""


def good(version: Version, writer: Callable[[Path, bytes], None]) -> Step:
    def write(folder: Path) -> None:
        atomic(folder / "pools.json", json.dumps(POOLS).encode())
        writer(folder / "users.json", version.text.encode())

    return Step(f"good {version.name} ({writer.__name__})", write, version)


def corrupt(name: str, file: str, data: bytes | None, problem: str) -> Step:
    """``file`` replaced by ``data`` written in place (None: deleted)."""

    def write(folder: Path) -> None:
        path = folder / file
        if data is None:
            path.unlink(missing_ok=True)
        else:
            in_place(path, data)

    return Step(name, write, None, problem)


HALF = GOOD_B.text.encode()[: len(GOOD_B.text) // 2]
STEPS = [
    good(GOOD_A, atomic),
    corrupt("invalid JSON", "users.json", b'[{"id": "alice",', "not valid JSON"),
    good(GOOD_B, in_place),
    corrupt("half-written users.json", "users.json", HALF, "not valid JSON"),
    corrupt("empty users.json", "users.json", b"", "not valid JSON"),
    good(GOOD_A, in_place),
    corrupt(
        "an object, not an array",
        "users.json",
        b'{"alice": {"workstations": ["ws-x"]}}',
        "must be a JSON array of objects",
    ),
    corrupt(
        "a string for a list",
        "users.json",
        b'[{"id": "alice", "workstations": "ws-x"}]',
        "'workstations' must be a list of strings",
    ),
    good(GOOD_B, atomic),
    corrupt(
        "a pool twice",
        "pools.json",
        b'[{"id": "gpu"}, {"PoolID": "gpu"}]',
        "'id' 'gpu' repeats item 1",
    ),
    corrupt("not UTF-8", "users.json", b"\xff\xfe[]", "not valid JSON"),
    good(GOOD_A, atomic),
    corrupt("nested too deeply", "users.json", b"[" * 100_000, "nested too deeply"),
    corrupt("missing users.json", "users.json", None, "No such file or directory"),
    good(GOOD_B, atomic),
]


@dataclass
class Reader:
    """Reads alice's server list over and over, in a thread, until stopped."""

    director: Director
    token: str
    answers: list[tuple[int, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                answer = call(
                    self.director, "GET", "/v1/user/servers", token=self.token
                )
            except (OSError, http.client.HTTPException, ValueError) as error:
                self.answers.append((0, repr(error)))
            else:
                self.answers.append((answer.status, answer.body))

    def servers(self) -> list[str]:
        """One read of the list (from the test's own thread)."""
        answer = call(self.director, "GET", "/v1/user/servers", token=self.token)
        assert answer.status == 200, answer.body
        servers: list[str] = answer.body["servers"]
        return servers

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)
        assert not self._thread.is_alive()


def policy_director(fleet: Fleet) -> tuple[Director, Path]:
    auth = fleet.folder / "auth"
    auth.mkdir()
    script = auth / "check-alice"
    script.write_text(CHECK_ALICE)
    script.chmod(0o755)
    folder = fleet.folder / "policydb"
    folder.mkdir()
    good(GOOD_A, atomic).write(folder)
    director = fleet.director(
        start=False, auth_type="external", policydb_folder=str(folder)
    )
    director.extra["external_auth"] = {"external_command": str(script)}
    fleet.start(director)
    return director, folder


def reload_lines(text: str) -> list[str]:
    """The SIGHUP and policy lines of the log, in order (not the audit trail's)."""
    wanted = ("SIGHUP: reloading", *OUTCOMES)
    return [
        line
        for line in text.splitlines()
        if any(w in line for w in wanted) and "dcvix.audit:" not in line
    ]


def reloaded(director: Director, mark: int, step: str) -> list[str]:
    """The reload lines after ``mark``, once the reload has said what it did."""
    wait_for(
        f"the reload after {step}",
        lambda: len(reload_lines(director.log_since(mark))) >= 2,
    )
    return reload_lines(director.log_since(mark))


def test_sighup_storm_with_good_and_corrupt_policies(fleet: Fleet) -> None:
    director, folder = policy_director(fleet)
    token = login(director, ALICE, ALICE_PASSWORD).token
    assert token is not None
    reader = Reader(director, token)
    signals = 0
    try:
        # One step per SIGHUP, each reload waited for: exactly one line says
        # what it did, and the answers follow the last good version.
        in_force = GOOD_A
        for step in STEPS * 2:
            mark = director.mark()
            step.write(folder)
            os.kill(director.pid, signal.SIGHUP)
            signals += 1
            lines = reloaded(director, mark, step.name)
            assert len(lines) == 2, (step.name, lines)
            assert "SIGHUP: reloading" in lines[0], lines
            if step.good is None:
                assert lines[1].startswith("ERROR"), lines
                assert REFUSED in lines[1], lines
                assert step.problem in lines[1], (step.name, lines)
            else:
                in_force = step.good
                assert in_force.summary in lines[1], (step.name, lines)
            assert reader.servers() == in_force.servers, step.name

        # A storm: writes and signals back to back, never waiting, then the
        # final version; the director must end up serving exactly that.
        shuffled = random.Random(11).choices(STEPS, k=30)
        for step in shuffled:
            step.write(folder)
            os.kill(director.pid, signal.SIGHUP)
            signals += 1
        mark = director.mark()
        good(FINAL, atomic).write(folder)
        os.kill(director.pid, signal.SIGHUP)
        signals += 1
        wait_for(
            "the final policy served",
            lambda: reader.servers() == FINAL.servers,
            timeout=30,
        )
        director.wait_log(FINAL.summary, since=mark)
    finally:
        reader.stop()

    # The reader never saw an error nor a policy that was not a good one.
    allowed = [v.servers for v in (GOOD_A, GOOD_B, FINAL)]
    assert len(reader.answers) >= 20
    bad = [a for a in reader.answers if a[0] != 200 or a[1]["servers"] not in allowed]
    assert bad == []
    assert reader.servers() == FINAL.servers
    # Reloads never overlap: each "reloading" line is followed by exactly one
    # outcome before the next; signals may coalesce, never multiply.
    lines = reload_lines(director.log_text())
    assert "SIGHUP" not in lines[0]  # the policy read at start
    lines = lines[1:]
    starts = [i for i, line in enumerate(lines) if "SIGHUP: reloading" in line]
    assert 2 * signals >= len(lines) == 2 * len(starts), lines[-10:]
    assert starts == list(range(0, len(lines), 2))
    assert FINAL.summary in lines[-1]
    text = director.log_text()
    assert "Traceback" not in text
    assert "SIGHUP handler" not in text
    assert director.process is not None
    assert director.process.poll() is None


# ============================================= (2) back ends that never answer


@dataclass
class AgentIdentity:
    """A certificate the director issued, for mTLS calls as an agent makes them."""

    guid: str
    key: Any
    certificate: Path
    key_file: Path


def agent_identity(director: Director, folder: Path) -> AgentIdentity:
    """Register with the token (``auto_approve = token``: certified at once)."""
    key = new_ec_key()
    guid = str(uuid.uuid4())
    status, body = https(
        director.port,
        "/v1/agent/register",
        cafile=director.ca_file,
        method="POST",
        body={
            "csr": make_csr(key, guid),
            "guid": guid,
            "hostname": "ws-fault",
            "registrationToken": TOKEN,
        },
    )
    assert status == 200, body
    folder.mkdir(parents=True, exist_ok=True)
    certificate, key_file = folder / "agent.crt", folder / "agent.key"
    certificate.write_text(body["certificate"])
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return AgentIdentity(guid, key, certificate, key_file)


def renew(director: Director, agent: AgentIdentity) -> tuple[int, Any]:
    """``POST /v1/agent/renew`` over mTLS, with the agent's own key."""
    return https(
        director.port,
        "/v1/agent/renew",
        cafile=director.ca_file,
        cert=agent.certificate,
        key=agent.key_file,
        method="POST",
        body={"csr": make_csr(agent.key, agent.guid)},
    )


def still_serving(director: Director, agent: AgentIdentity) -> None:
    """Health and an agent's mTLS route answer while logins hang."""
    assert https(director.port, "/v1/health", cafile=director.ca_file) == (
        200,
        HEALTHY,
    )
    status, body = renew(director, agent)
    assert status == 200, body
    assert body["certificate"].startswith("-----BEGIN CERTIFICATE-----")


@dataclass(frozen=True)
class Timed:
    """A login's answer, or the error that ended it, and how long it took."""

    answer: Answer | None
    error: str
    seconds: float

    @property
    def outcome(self) -> tuple[int, Any] | str:
        return self.error if self.answer is None else (self.answer.status, self.body)

    @property
    def body(self) -> Any:
        return None if self.answer is None else self.answer.body


def timed_login(director: Director, user: str) -> Timed:
    start = time.monotonic()
    try:
        answer = login(director, user, "a-guess")
    except (OSError, http.client.HTTPException) as error:
        return Timed(None, type(error).__name__, time.monotonic() - start)
    return Timed(answer, "", time.monotonic() - start)


def finished(logins: list[concurrent.futures.Future[Timed]]) -> list[Timed]:
    return [f.result() for f in logins if f.done()]


def stop_within(director: Director) -> float:
    """SIGTERM; the seconds until twistd exited (killed after 60 s)."""
    assert director.process is not None
    start = time.monotonic()
    director.process.send_signal(signal.SIGTERM)
    try:
        director.process.wait(60)
    except subprocess.TimeoutExpired:
        director.process.kill()
        director.process.wait()
        raise AssertionError("SIGTERM did not stop the director in 60 s") from None
    return time.monotonic() - start


def group_alive(pgid: int) -> list[int]:
    """Processes of group ``pgid`` that are not zombies."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # pid (comm) state ppid pgrp ...: comm may hold spaces, split after it.
        state, _ppid, pgrp = stat.rsplit(")", 1)[1].split()[:3]
        if int(pgrp) == pgid and state != "Z":
            alive.append(int(entry.name))
    return alive


# Records its process group (setsid: its own pid), ignores SIGTERM, never ends.
NEVER_ENDS = """#!/bin/sh
trap '' TERM INT HUP
echo $$ >> {pids}
while :; do sleep 1; done
"""


def test_login_command_that_never_ends(fleet: Fleet) -> None:
    """Timed out (401), bounded (503 at once), killed when the director stops."""
    auth = fleet.folder / "auth"
    auth.mkdir()
    pids = auth / "pids"
    script = auth / "never-ends"
    script.write_text(NEVER_ENDS.format(pids=pids))
    script.chmod(0o755)
    (fleet.folder / "policydb").mkdir()
    director = fleet.director(
        start=False,
        auth_type="external",
        policydb_folder=str(fleet.folder / "policydb"),
        registration_token=TOKEN,
        auto_approve="token",
        login_max_failures="100",
        auth_concurrency="2",
        auth_queue="2",
    )
    director.extra["external_auth"] = {"external_command": str(script)}
    fleet.start(director)
    agent = agent_identity(director, fleet.folder / "agent")

    def groups() -> list[int]:
        return [int(p) for p in pids.read_text().split()] if pids.exists() else []

    with concurrent.futures.ThreadPoolExecutor(max_workers=5) as pool:
        logins = [pool.submit(timed_login, director, f"user{n}") for n in range(5)]
        # Two commands run, two logins wait, the fifth is refused at once.
        wait_for("two commands running", lambda: len(groups()) == 2, 30)
        wait_for("one login refused", lambda: finished(logins), 30)
        refused = finished(logins)
        assert [t.outcome for t in refused] == [(503, BUSY)]
        assert refused[0].seconds < EXTERNAL_TIMEOUT / 2
        still_serving(director, agent)
        assert len(groups()) == 2

        # The two running commands reach their time limit: 401, killed.
        wait_for("two logins timed out", lambda: len(finished(logins)) == 3, 60)
        timed_out = [t for t in finished(logins) if t.answer and t.answer.status != 503]
        assert [t.outcome for t in timed_out] == [(401, FAILED)] * 2
        for timed in timed_out:
            assert EXTERNAL_TIMEOUT <= timed.seconds < EXTERNAL_TIMEOUT + 20
        first = groups()[:2]
        wait_for(
            "the timed-out commands gone", lambda: not any(map(group_alive, first))
        )
        # The waiting two run now, and hang just the same.
        wait_for("the waiting logins' commands", lambda: len(groups()) == 4, 30)
        still_serving(director, agent)
        hanging = groups()[2:]
        assert all(group_alive(pgid) for pgid in hanging)

        seconds = stop_within(director)
        assert director.process is not None
        assert director.process.returncode == STOPPED
        assert seconds < STOP_BOUND
        # Their clients lose the connection; no answer was a 5xx but the 503.
        results = [f.result(timeout=30) for f in logins]
    wait_for(
        "no command outlives the director", lambda: not any(map(group_alive, groups()))
    )
    assert (
        sorted(str(t.outcome) for t in results if t.answer is None)
        == ["RemoteDisconnected"] * 2
    ), [t.outcome for t in results]
    text = director.log_text()
    assert text.count(f"timed out after {EXTERNAL_TIMEOUT} s") == 2
    assert "Traceback" not in text


@dataclass
class SilentServer:
    """A TCP listener that accepts every connection and never says a word."""

    sock: socket.socket = field(default_factory=socket.socket)
    connections: list[socket.socket] = field(default_factory=list)
    received: bytearray = field(default_factory=bytearray)

    def __post_init__(self) -> None:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.sock.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    def _serve(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(TimeoutError):
                connection, _ = self.sock.accept()
                connection.setblocking(False)
                self.connections.append(connection)
            for connection in list(self.connections):
                with contextlib.suppress(OSError):
                    self.received.extend(connection.recv(65536))

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        for connection in self.connections:
            connection.close()
        self.sock.close()


@contextlib.contextmanager
def silent_server() -> Iterator[SilentServer]:
    server = SilentServer()
    try:
        yield server
    finally:
        server.close()


def ldap_director(
    fleet: Fleet, name: str, port: int, timeout: int, **keys: str
) -> Director:
    """``auth_type = ldap`` against ``127.0.0.1:port``, ``ldap_timeout`` seconds."""
    policy = fleet.folder / "policydb"
    policy.mkdir(exist_ok=True)
    director = fleet.director(
        start=False,
        auth_type="ldap",
        policydb_folder=str(policy),
        registration_token=TOKEN,
        auto_approve="token",
        login_max_failures="100",
        **keys,
    )
    director.folder = fleet.folder / name
    director.extra["ldap_auth"] = {
        "ldap_address": f"ldap://127.0.0.1:{port}",
        "ldap_base_dn": "dc=example,dc=com",
        "ldap_bind_user": "cn=admin,dc=example,dc=com",
        "ldap_bind_password": "secret",
        "ldap_timeout": str(timeout),
    }
    fleet.start(director)
    return director


def test_ldap_server_that_accepts_and_never_answers(fleet: Fleet) -> None:
    """Timed out (401); with threads stuck far longer, 503 at once and a prompt stop."""
    with silent_server() as server:
        # A short ldap_timeout: the login ends within its bound.
        quick = ldap_director(fleet, "quick", server.port, 2)
        timed = timed_login(quick, "user0")
        assert timed.outcome == (401, FAILED)
        assert timed.seconds < 2 * 2 + 1 + 20
        assert server.received  # the service bind reached the silent server
        assert "login back end could not decide for user0" in quick.log_text()

        # A long one: the auth threads stay stuck for the whole test.
        stuck = ldap_director(
            fleet, "stuck", server.port, 120, auth_concurrency="2", auth_queue="1"
        )
        agent = agent_identity(stuck, fleet.folder / "agent")
        sent = len(server.received)
        with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
            logins = [pool.submit(timed_login, stuck, f"user{n}") for n in range(4)]
            wait_for("a bind reaches the server", lambda: len(server.received) > sent)
            wait_for("one login refused", lambda: finished(logins), 30)
            refused = finished(logins)
            assert [t.outcome for t in refused] == [(503, BUSY)]
            assert refused[0].seconds < 120 / 4
            still_serving(stuck, agent)
            assert len(finished(logins)) == 1

            seconds = stop_within(stuck)
            assert stuck.process is not None
            assert stuck.process.returncode == STOPPED
            assert seconds < STOP_BOUND
            results = [f.result(timeout=30) for f in logins]
    assert (
        sorted(str(t.outcome) for t in results if t.answer is None)
        == ["RemoteDisconnected"] * 3
    ), [t.outcome for t in results]
    text = stuck.log_text()
    assert "auth pool: 2 thread(s) still busy" in text
    assert "Traceback" not in text
