"""Faults around the daemons' files: a crash mid-renewal, a full ``data_dir``.

Real twistd processes on 127.0.0.1 (CONTRACT §3: every state file is written
atomically, temp file + fsync + rename). Each test ends with ``agents.db``
passing ``PRAGMA integrity_check`` and no registered agent lost.

The full-disk tests give a daemon's ``data_dir`` a small tmpfs of its own: the
daemon runs under ``unshare --mount`` (a private mount namespace) with a shell
that mounts the tmpfs and then execs twistd, so the mount exists only while the
daemon does and is never seen by the host, whatever happens to the test. The
test reaches the files through ``/proc/<pid>/root`` and runs what must open
``agents.db`` (SQLite resolves that magic link to the host's empty folder) with
``nsenter --mount``.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from daemons import free_port
from dcvix.agent.identity import make_csr
from dcvix.common.pki import (
    certificate_fingerprint,
    load_certificates,
    load_private_key,
    public_key_fingerprint,
)
from fleet import DCVIXCTL, Agent, Director, Fleet, enrol, https, wait_for

# Long: `make test-quick` leaves it out; `make test` (and CI) runs it.
pytestmark = pytest.mark.long

GUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[0-9a-f]{4}-[0-9a-f]{12}")
TEMP_NAME = re.compile(r"\..+\.[a-z0-9_]{8}\.tmp")
IDENTITY_FILES = ["agent.crt", "agent.guid", "agent.key", "ca.pem"]
# When to kill after the director logged a renewal's certificate: after so
# many seconds (from before the answer leaves to after the agent stored it:
# answer in flight, parsed, written, renamed), or ("writing") the moment the
# agent's temp file shows, inside the atomic write itself.
KILLS: list[float | str] = [0.0, 0.003, 0.02, "writing", "writing"]
TOKEN = "fault-files-token"
FILLER = "filler"  # what fills a data_dir (see fill)
PENDING = (403, {"error": "pending approval"})
FULL = (507, {"error": "insufficient storage: the director cannot record this now"})

UNSHARE = ["unshare", "--mount", "--propagation", "private"]
# In the daemon's own mount namespace: a tmpfs of size $2 on data_dir $1, then
# twistd (exec: same process, so signals and the exit status are twistd's).
MOUNT_THEN_EXEC = (
    'set -e; mkdir -p -m 0700 "$1"; '
    'mount -t tmpfs -o "size=$2,mode=0700" dcvix-fault "$1"; shift 2; exec "$@"'
)
# Run in the director's mount namespace: PRAGMA integrity_check of argv[1].
CHECK = """
import json, sqlite3, sys
db = sqlite3.connect(f"file:{sys.argv[1]}?mode=ro", uri=True)
print(json.dumps([row[0] for row in db.execute("PRAGMA integrity_check")]))
"""


# ------------------------------------------------------------------ helpers


def wait_in_output(
    daemon: Director | Agent, offset: int, pattern: str, timeout: float = 20.0
) -> re.Match[bytes]:
    """The first match of ``pattern`` in the output after byte ``offset``.

    Polls every millisecond (not :meth:`~fleet.Daemon.wait_log`'s 100 ms), so
    what the test does next happens within a few ms of the line.
    """
    compiled = re.compile(pattern.encode())
    deadline = time.monotonic() + timeout
    seen = b""
    with daemon.output.open("rb") as output:
        output.seek(offset)
        while (found := compiled.search(seen)) is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"not after {timeout} s: {pattern!r} in {seen!r}")
            time.sleep(0.001)
            seen += output.read()
    return found


def temp_files(data_dir: Path) -> list[str]:
    """Temp files an interrupted ``atomic_write`` left (``.<name>.<8>.tmp``)."""
    return sorted(n for n in os.listdir(data_dir) if TEMP_NAME.fullmatch(n))


def kill_when_writing(agent: Agent, timeout: float = 5.0) -> bool:
    """SIGKILL the agent as soon as a temp file of its shows; kill it anyway.

    A temp file exists inside ``atomic_write``, between ``mkstemp`` and the
    rename (write, fsync). False when it was never seen (the rename won).
    """
    deadline = time.monotonic() + timeout
    seen = False
    while not seen and time.monotonic() < deadline:
        seen = bool(temp_files(agent.data_dir))
        time.sleep(0.0002)
    os.kill(agent.pid, signal.SIGKILL)
    return seen


def output_size(daemon: Director | Agent) -> int:
    """Bytes the daemon has written so far (an offset for :func:`wait_in_output`)."""
    return daemon.output.stat().st_size if daemon.output.exists() else 0


def integrity(database: Path) -> list[str]:
    """``PRAGMA integrity_check`` of a database (read-only, beside a writer)."""
    with contextlib.closing(
        sqlite3.connect(f"file:{database}?mode=ro", uri=True)
    ) as db:
        return [row[0] for row in db.execute("PRAGMA integrity_check")]


def identity_on_disk(data_dir: Path, director: Director) -> tuple[str, int]:
    """Check every identity file whole and coherent; its GUID and serial.

    The key loads, the GUID is a UUID, ``ca.pem`` is the director's CA, the
    certificate loads, is for that key and GUID and was signed by that CA.
    """
    names = sorted(
        n for n in os.listdir(data_dir) if not TEMP_NAME.fullmatch(n) and n != FILLER
    )
    assert names == IDENTITY_FILES, names
    for name in names:
        assert (data_dir / name).stat().st_size > 0, name
    key = load_private_key((data_dir / "agent.key").read_bytes())
    guid = (data_dir / "agent.guid").read_text()
    assert GUID.fullmatch(guid), guid
    ca_pem = (data_dir / "ca.pem").read_bytes()
    assert ca_pem == director.ca_file.read_bytes()
    certificate = load_certificates((data_dir / "agent.crt").read_bytes())[0]
    assert public_key_fingerprint(certificate.public_key()) == public_key_fingerprint(
        key.public_key()
    )
    common_names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    assert [n.value for n in common_names] == [f"dcvix-agent-{guid}"]
    certificate.verify_directly_issued_by(load_certificates(ca_pem)[0])
    return guid, certificate.serial_number


def issued_serials(director: Director, guid: str) -> list[int]:
    """Serials the director logged as issued to ``guid``, oldest first."""
    found = re.findall(
        rf"issued a certificate to agent {guid} \([^)]*\), serial ([0-9a-f]+),",
        director.log_text(),
    )
    return [int(serial, 16) for serial in found]


def stats_as_director(agent: Agent, director: Director) -> tuple[int, Any]:
    """``GET /v1/stats`` of the agent over mTLS, as the director calls it."""
    return https(
        agent.port,
        "/v1/stats",
        cafile=director.ca_file,
        cert=director.server_crt,
        key=director.server_key,
    )


# ------------------------------------------- (1) kill -9 during a renewal


def test_kill_9_during_renewals_leaves_whole_files_and_the_same_identity(
    fleet: Fleet,
) -> None:
    director = fleet.director()
    agent = fleet.agent(director, "ws-1", renew_interval="2s")
    enrol(director, agent)
    guid = agent.guid
    outcomes: list[str] = []
    for kill in KILLS:
        # The whole line (a line half written would hide its serial).
        issue = rf"issued a certificate to agent {guid} \([^)]*\), serial (\w+),"
        issued = int(wait_in_output(director, output_size(director), issue)[1], 16)
        if kill == "writing":
            caught = kill_when_writing(agent)
        else:
            # A deliberate offset from the condition, not a wait for something.
            time.sleep(float(kill))
            os.kill(agent.pid, signal.SIGKILL)
            caught = None
        assert agent.process is not None
        agent.process.wait(10)

        # Whole files, the old certificate or the new one; maybe a temp file.
        held_guid, held = identity_on_disk(agent.data_dir, director)
        assert held_guid == guid
        assert held in issued_serials(director, guid)
        # Any kill may land inside the write: at most the certificate's temp file.
        left = temp_files(agent.data_dir)
        assert len(left) <= 1 and all(n.startswith(".agent.crt.") for n in left), left
        written = "new" if held == issued else "old"
        # A temp file left means that write's rename never happened: the disk
        # holds a certificate older than the last one issued. (Not always older
        # than ``issued``: renewing every 2 s, the write the kill lands in may
        # be the next renewal's, once ``issued`` was stored.)
        latest = issued_serials(director, guid)[-1]
        assert not left or held != latest, (left, written, held, latest)
        outcomes.append(f"{kill}: {written}, temp file seen {caught}, left {left}")

        mark = agent.mark()
        agent.start()
        agent.wait_log(f"certificate on disk is valid: serving as agent {guid}", mark)
        # The temp file is gone: crashes do not pile them up.
        assert temp_files(agent.data_dir) == []
        for name in left:
            assert f"removed {agent.data_dir / name}, left by an interrupted write" in (
                agent.log_since(mark)
            )
    print("kills:", *outcomes, sep="\n  ")

    # Back, enrolled, with the same identity: serving, renewing, reachable.
    assert agent.guid == guid
    mark = agent.mark()
    agent.wait_log("certificate renewed", mark, timeout=20)
    wait_for(
        "the certificate on disk served",
        lambda: (
            agent.served().serial_number
            == identity_on_disk(agent.data_dir, director)[1]
        ),
    )
    status, body = stats_as_director(agent, director)
    assert status == 200, body
    assert body["stats"]["hostname"] == "ws-1"
    # The director still has it registered, and nothing new is pending.
    assert director.listed() == {guid: "ws-1"}
    assert director.listed("registered") == {guid: "ws-1"}
    assert integrity(director.data_dir / "agents.db") == ["ok"]


# ------------------------------------------------- (2) a full data_dir


def on_tmpfs(data_dir: Path, size: str) -> list[str]:
    """The wrapper that runs a daemon with ``data_dir`` on a private tmpfs."""
    return [*UNSHARE, "sh", "-c", MOUNT_THEN_EXEC, "sh", str(data_dir), size]


def namespace_problem() -> str | None:
    """Why a daemon cannot get a private tmpfs here, or None."""
    for tool in ("unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(
        [*UNSHARE, "mount", "-t", "tmpfs", "-o", "size=64k", "dcvix-fault", "/tmp"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if probe.returncode != 0:
        return f"cannot mount a tmpfs in a mount namespace: {probe.stderr.strip()}"
    return None


def seen_inside(process: subprocess.Popen[bytes] | None, path: Path) -> Path:
    """``path`` as the running daemon sees it (its tmpfs), else the host's."""
    if process is None or process.poll() is not None:
        return path
    return Path(f"/proc/{process.pid}/root") / path.relative_to("/")


class TmpfsDirector(Director):
    """A director whose ``data_dir`` is its private tmpfs while it runs.

    ``data_dir`` is the path the test reads through (``/proc/<pid>/root/...``);
    the config names the real one. Not :meth:`record`: SQLite resolves the
    ``/proc`` link (see :func:`inside_namespace`).
    """

    @property
    def data_dir(self) -> Path:
        return seen_inside(self.process, self.folder / "data")

    def ctl_inside(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``dcvixctl`` in the director's mount namespace (it opens agents.db)."""
        return inside_namespace(self, DCVIXCTL, "--conf", str(self.conf), *args)

    def integrity_inside(self) -> list[str]:
        """``PRAGMA integrity_check`` of the director's agents.db."""
        done = inside_namespace(
            self, sys.executable, "-c", CHECK, str(self.folder / "data" / "agents.db")
        )
        assert done.returncode == 0, done.stderr
        return list(json.loads(done.stdout))


class TmpfsAgent(Agent):
    """An agent whose ``data_dir`` is its private tmpfs while it runs."""

    @property
    def data_dir(self) -> Path:
        return seen_inside(self.process, self.folder / "data")


def inside_namespace(
    daemon: Director | Agent, *argv: str
) -> subprocess.CompletedProcess[str]:
    """Run ``argv`` in the daemon's mount namespace."""
    return subprocess.run(
        ["nsenter", "--target", str(daemon.pid), "--mount", "--", *argv],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def fill(folder: Path) -> Path:
    """Write a file in ``folder`` until its file system is full."""
    filler = folder / FILLER
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        while True:
            try:
                os.write(descriptor, b"\0" * 4096)
            except OSError as error:
                assert error.errno == errno.ENOSPC, error
                break
    finally:
        os.close(descriptor)
    assert os.statvfs(folder).f_bavail == 0
    return filler


def register(
    director: Director, key: ec.EllipticCurvePrivateKey, guid: str, hostname: str
) -> tuple[int, Any]:
    """``POST /v1/agent/register`` as an agent with ``key`` would."""
    return https(
        director.port,
        "/v1/agent/register",
        cafile=director.ca_file,
        method="POST",
        body={"csr": make_csr(key, guid), "guid": guid, "hostname": hostname},
    )


def test_director_data_dir_full_answers_507_and_recovers(fleet: Fleet) -> None:
    problem = namespace_problem()
    if problem is not None:
        pytest.skip(problem)
    folder = fleet.folder / "director"
    director = TmpfsDirector(
        "dcvix-director",
        folder,
        free_port(),
        wrapper=on_tmpfs(folder / "data", "2m"),
    )
    fleet.start(director)
    assert not (folder / "data" / "ca.pem").exists()  # the host sees no tmpfs
    keys = {
        str(uuid.uuid4()): ec.generate_private_key(ec.SECP256R1()) for _ in range(4)
    }
    old, waiting, later, *_ = keys
    # Before: one registered agent (with a certificate) and one pending.
    assert register(director, keys[old], old, "ws-old") == PENDING
    assert register(director, keys[waiting], waiting, "ws-waiting") == PENDING
    assert director.ctl_inside("agents", "approve", old).returncode == 0
    status, body = register(director, keys[old], old, "ws-old")
    assert status == 200, body

    filler = fill(director.data_dir)
    mark = director.mark()
    # A new agent, a registered agent's new certificate: nothing recorded.
    assert register(director, keys[later], later, "ws-later") == FULL
    assert register(director, keys[old], old, "ws-old") == FULL
    approve = director.ctl_inside("agents", "approve", waiting)
    assert (approve.returncode, approve.stderr) == (
        1,
        "agents.db: database or disk is full: nothing was changed "
        "(free space and retry)\n",
    )
    status, body = https(director.port, "/v1/health", cafile=director.ca_file)
    assert (status, body) == (200, {"status": "healthy"})
    log = director.log_since(mark)
    assert (
        "POST /v1/agent/register not recorded: agents.db: database or disk is full"
        in log
    )
    assert "Traceback" not in log
    assert director.integrity_inside() == ["ok"]

    # Space again: the same calls work, without a restart.
    pid = director.pid
    filler.unlink()
    assert register(director, keys[later], later, "ws-later") == PENDING
    status, body = register(director, keys[old], old, "ws-old")
    assert status == 200, body
    assert director.ctl_inside("agents", "approve", waiting).returncode == 0
    status, body = register(director, keys[waiting], waiting, "ws-waiting")
    assert status == 200, body
    assert director.pid == pid
    listed = director.ctl_inside("agents", "list").stdout.splitlines()[1:]
    assert sorted((row.split()[1], row.split()[2]) for row in listed) == [
        ("ws-later", "pending"),
        ("ws-old", "registered"),
        ("ws-waiting", "registered"),
    ]
    assert director.integrity_inside() == ["ok"]
    # No zero-length file was left behind by a failed write.
    assert all(
        p.stat().st_size > 0
        for p in director.data_dir.iterdir()
        if not p.name.endswith("-wal")
    )


def test_agent_data_dir_full_keeps_its_certificate_and_recovers(
    fleet: Fleet,
) -> None:
    problem = namespace_problem()
    if problem is not None:
        pytest.skip(problem)
    director = fleet.director(registration_token=TOKEN, auto_approve="token")
    folder = fleet.folder / "ws-1"
    agent = TmpfsAgent(
        "dcvix-agent",
        folder,
        free_port(),
        extra={
            "agent": {
                "director_host": "127.0.0.1",
                "director_port": str(director.port),
                "hostname": "ws-1",
                "renew_interval": "2s",
                "registration_token": TOKEN,
                "ca_fingerprint": certificate_fingerprint(director.ca_certificate()),
            }
        },
        wrapper=on_tmpfs(folder / "data", "256k"),
    )
    fleet.start(agent)
    assert not (folder / "data" / "agent.key").exists()  # the host sees no tmpfs
    agent.wait_log("registered as agent")
    agent.wait_log("certificate renewed", timeout=20)
    guid = agent.guid

    filler = fill(agent.data_dir)
    _, held = identity_on_disk(agent.data_dir, director)
    mark = agent.mark()
    log = agent.wait_log(
        f"cannot store the certificate in {folder / 'data'}: No space left on "
        "device; keeping what is on disk and asking again at the next attempt",
        mark,
        count=2,
        timeout=20,
    )
    # The certificate held is whole and still used; the director still has it.
    assert identity_on_disk(agent.data_dir, director) == (guid, held)
    assert temp_files(agent.data_dir) == []
    assert agent.served().serial_number == held
    status, body = stats_as_director(agent, director)
    assert status == 200, body
    assert director.listed("registered") == {guid: "ws-1"}
    assert "Traceback" not in log

    # Space again: the next renewal is stored and served, no restart.
    pid = agent.pid
    mark = agent.mark()
    filler.unlink()
    agent.wait_log("certificate renewed", mark, timeout=20)
    _, renewed = identity_on_disk(agent.data_dir, director)
    assert renewed != held
    wait_for(
        "the renewed certificate served", lambda: agent.served().serial_number != held
    )
    assert agent.pid == pid
    assert director.listed() == {guid: "ws-1"}
    assert integrity(director.data_dir / "agents.db") == ["ok"]
