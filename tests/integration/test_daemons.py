"""Both daemons as real twistd processes: files, reloads, stops, config, logs."""

from __future__ import annotations

import datetime as dt
import hashlib
import http.client
import json
import os
import resource
import shutil
import signal
import socket
import ssl
import stat
import subprocess
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID

import certs
from daemons import (
    TWISTD,
    DaemonProcess,
    agent_certificate,
    free_port,
    twistd_argv,
    unverified_context,
)
from dcvix import __version__
from dcvix.common.pki import public_key_fingerprint

PLUGINS = ["dcvix-director", "dcvix-agent"]
HEALTHY = {"status": "healthy"}


# ------------------------------------------------------------------ helpers

AGENT_HOSTNAME = "ws-test-1"
RELOADED = "TLS certificate reloaded from"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def log_file(daemon: DaemonProcess) -> Path:
    return daemon.log_dir / f"{daemon.plugin}.log"


def log_lines(daemon: DaemonProcess) -> list[str]:
    return log_file(daemon).read_text().splitlines()


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Poll ``condition`` until true; return the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not after {timeout} s: {what}")


def log_has(daemon: DaemonProcess, text: str, count: int = 1) -> Callable[[], bool]:
    path = log_file(daemon)
    return lambda: path.exists() and path.read_text().count(text) >= count


def connect(port: int) -> http.client.HTTPSConnection:
    connection = http.client.HTTPSConnection(
        "127.0.0.1", port, timeout=5, context=unverified_context()
    )
    connection.connect()
    return connection


def get_health(connection: http.client.HTTPSConnection) -> tuple[int, object]:
    connection.request("GET", "/v1/health")
    answer = connection.getresponse()
    return answer.status, json.loads(answer.read())


def peer_der(connection: http.client.HTTPSConnection) -> bytes:
    sock = connection.sock
    assert isinstance(sock, ssl.SSLSocket)
    der = sock.getpeercert(binary_form=True)
    assert der is not None
    return der


def served(port: int) -> tuple[bytes, int, object]:
    """The certificate a new connection gets, and its health answer."""
    connection = connect(port)
    try:
        der = peer_der(connection)
        status, body = get_health(connection)
    finally:
        connection.close()
    return der, status, body


def served_certificate(port: int) -> x509.Certificate:
    return x509.load_der_x509_certificate(served(port)[0])


def der(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.DER)


def der_of(pem_file: Path) -> bytes:
    return der(certs.load_certificate(pem_file))


def replace_file(path: Path, data: bytes, file_mode: int) -> None:
    """Write a temporary file beside ``path`` and rename it over ``path``."""
    descriptor, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(descriptor, "wb") as handle:
        os.fchmod(handle.fileno(), file_mode)
        handle.write(data)
    os.replace(temp, path)


def new_daemon(folder: Path, plugin: str) -> DaemonProcess:
    """A daemon in ``folder``; an agent has ``hostname = ws-test-1`` and no
    director (see ``daemons.NO_DIRECTOR_PORT``), so it is never enrolled."""
    daemon = DaemonProcess(plugin, folder / plugin, free_port())
    if plugin == "dcvix-agent":
        daemon.extra = {"agent": {"hostname": AGENT_HOSTNAME}}
    return daemon


def start(daemons: list[DaemonProcess], daemon: DaemonProcess) -> DaemonProcess:
    """Start ``daemon`` and make sure the fixture stops it, even if start fails."""
    daemons.append(daemon)
    return daemon.start()


def start_all(daemons: list[DaemonProcess], *started: DaemonProcess) -> None:
    """Start several daemons at once, then wait until each one is healthy."""
    for daemon in started:
        daemons.append(daemon)
        daemon.start(wait=False)
    for daemon in started:
        daemon.wait_healthy()


def director_certificate(
    director: DaemonProcess, key: certs.PrivateKey | None = None
) -> certs.Leaf:
    """A certificate the director itself would keep at its next start: signed by
    its own ``ca.key``, CN ``dcvix-director``, every SAN of its current
    ``server.crt``, a year to run; for a new key unless ``key``."""
    ca = certs.load_ca(director.data_dir / "ca.pem", director.data_dir / "ca.key")
    dns, ips = certs.alt_names(certs.load_certificate(director.certificate))
    not_after = dt.datetime.now(dt.UTC) + dt.timedelta(days=365)
    return ca.issue("dcvix-director", dns, ips, key=key, not_after=not_after)


def swap_certificate(daemon: DaemonProcess, ca: certs.CA) -> bytes:
    """Put a new usable certificate in place; its DER.

    The director gets a new key and a certificate from its own CA; the agent a
    certificate for its own key from ``ca``, the test's stand-in for the
    director's CA (written to its ``ca.pem`` the first time).
    """
    if daemon.plugin == "dcvix-director":
        leaf = director_certificate(daemon)
        replace_file(daemon.key, leaf.key_pem(), 0o600)
    else:
        if not daemon.ca.exists():
            replace_file(daemon.ca, ca.pem(), 0o644)
        leaf = agent_certificate(daemon, ca, AGENT_HOSTNAME)
    replace_file(daemon.certificate, leaf.cert_pem(), 0o644)
    return der(leaf.certificate)


def sighup(daemon: DaemonProcess) -> None:
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)


# ---------------------------------------------------------------- first start


def assert_private_log_and_start_line(daemon: DaemonProcess, line: str) -> None:
    assert mode(daemon.log_dir) == 0o700
    assert sorted(p.name for p in daemon.log_dir.iterdir()) == [f"{daemon.plugin}.log"]
    assert mode(log_file(daemon)) == 0o600
    assert line in log_file(daemon).read_text()
    assert line in daemon.output.read_text()


def test_director_first_start_makes_its_ca_and_private_files(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    director = new_daemon(tmp_path, "dcvix-director")
    director.extra = {"director": {"server_names": "director.example.org, 192.0.2.7"}}
    data = director.data_dir
    assert not data.exists()
    start(daemons, director)

    assert mode(data) == 0o700
    assert mode(data / "ca.key") == 0o600
    assert mode(data / "server.key") == 0o600
    assert mode(data / "agents.db") == 0o600
    assert (data / "agents.db").read_bytes()[:16] == b"SQLite format 3\x00"

    ca = certs.load_certificate(data / "ca.pem")
    assert certs.common_names(ca) == ["dcvix CA"]
    assert ca.issuer == ca.subject
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert certs.same_key(ca, certs.load_key(data / "ca.key"))
    server = certs.load_certificate(data / "server.crt")
    assert server.subject == x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "dcvix-director")]
    )
    server.verify_directly_issued_by(ca)  # raises if ca.key did not sign it
    assert certs.same_key(server, certs.load_key(data / "server.key"))
    dns, ips = certs.alt_names(server)
    # (and the FQDN, when DNS gives one in time)
    wanted = {"dcvix-director", "localhost", socket.gethostname()}
    assert wanted | {"director.example.org"} <= set(dns), dns
    assert ips == ["127.0.0.1", "192.0.2.7"]

    # Served, and verified against ca.pem by its IP SAN.
    assert served(director.port) == (der(server), 200, HEALTHY)
    with urllib.request.urlopen(
        director.url("/v1/health"), context=director.context(), timeout=5
    ) as answer:
        assert json.loads(answer.read()) == HEALTHY

    fingerprint = hashlib.sha256(der(ca)).hexdigest()
    assert f"CA fingerprint (SHA-256): {fingerprint}" in log_file(director).read_text()
    assert_private_log_and_start_line(
        director,
        f"dcvix-director {__version__} listening on 127.0.0.1:{director.port}, "
        f"data in {data}",
    )
    assert director.stop() == -signal.SIGTERM
    assert sorted(p.name for p in data.iterdir()) == [
        "agents.db",
        "ca.key",
        "ca.pem",
        "server.crt",
        "server.key",
        "token.key",
    ]
    assert mode(data / "token.key") == 0o600


def test_agent_first_start_makes_its_identity_and_private_files(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    agent = new_daemon(tmp_path, "dcvix-agent")
    data = agent.data_dir
    assert not data.exists()
    start(daemons, agent)

    assert mode(data) == 0o700
    assert sorted(p.name for p in data.iterdir()) == ["agent.guid", "agent.key"]
    assert mode(data / "agent.key") == 0o600
    assert (
        (data / "agent.key").read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----\n")
    )
    key = certs.load_key(data / "agent.key")
    assert isinstance(key, ed25519.Ed25519PrivateKey)
    guid = agent.guid
    assert str(uuid.UUID(guid)) == guid  # canonical, no newline
    assert uuid.UUID(guid).version == 4

    # Not enrolled: health answers with a certificate made in memory for its
    # own key and GUID; none is written.
    certificate = served_certificate(agent.port)
    assert certs.common_names(certificate) == [f"dcvix-agent-{guid}"]
    assert certificate.issuer == certificate.subject
    assert certs.same_key(certificate, key)
    assert served(agent.port)[1:] == (200, HEALTHY)

    assert_private_log_and_start_line(
        agent,
        f"dcvix-agent {__version__} {guid} for {AGENT_HOSTNAME} listening on "
        f"127.0.0.1:{agent.port}, key fingerprint "
        f"{public_key_fingerprint(key.public_key())}",
    )
    assert agent.stop() == -signal.SIGTERM
    assert sorted(p.name for p in data.iterdir()) == ["agent.guid", "agent.key"]


def _limits(pid: int) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError("no open-file limit in /proc")


@pytest.mark.parametrize("plugin", PLUGINS)
def test_open_file_limit_raised_to_the_hard_limit(
    tmp_path: Path, daemons: list[DaemonProcess], plugin: str
) -> None:
    _, hard_limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    daemon = new_daemon(tmp_path, plugin)
    daemon.preexec = lambda: resource.setrlimit(
        resource.RLIMIT_NOFILE, (256, hard_limit)
    )
    start(daemons, daemon)
    assert daemon.process is not None
    soft, hard = _limits(daemon.process.pid)
    assert hard == str(hard_limit)
    assert soft == hard


@pytest.mark.parametrize("plugin", PLUGINS)
def test_open_data_and_log_folders_are_tightened(
    tmp_path: Path, daemons: list[DaemonProcess], plugin: str
) -> None:
    daemon = new_daemon(tmp_path, plugin)
    for folder in (daemon.data_dir, daemon.log_dir):
        folder.mkdir(parents=True)
        os.chmod(folder, 0o755)  # noqa: S103 - as Go left them
    start(daemons, daemon)

    assert mode(daemon.data_dir) == 0o700
    assert mode(daemon.log_dir) == 0o700
    text = log_file(daemon).read_text()
    assert f"tightened {daemon.data_dir} from 755 to 700" in text
    assert f"tightened {daemon.log_dir} from 755 to 700" in text


# ------------------------------------------------------ certificate hot reload


@pytest.mark.parametrize("plugin", PLUGINS)
def test_certificate_reloads_on_sighup(
    tmp_path: Path, daemons: list[DaemonProcess], plugin: str
) -> None:
    daemon = start(daemons, new_daemon(tmp_path, plugin))
    ca = certs.CA.create()
    old = served(daemon.port)[0]
    if plugin == "dcvix-director":
        assert old == der_of(daemon.certificate)
    else:
        assert not daemon.certificate.exists()  # not enrolled: made in memory
    kept = connect(daemon.port)
    try:
        sock = kept.sock
        assert peer_der(kept) == old
        assert get_health(kept) == (200, HEALTHY)

        # Twice: for the agent, first its not-enrolled certificate is replaced
        # by a usable one, then that one by another.
        news: list[bytes] = []
        for swap in (1, 2):
            new = swap_certificate(daemon, ca)
            assert new not in (old, *news)
            sighup(daemon)
            wait_for(f"reload {swap} logged", log_has(daemon, RELOADED, swap))

            assert served(daemon.port) == (new, 200, HEALTHY)
            # The kept-alive connection still answers, on the same socket and
            # with the certificate it was opened with.
            assert get_health(kept) == (200, HEALTHY)
            assert kept.sock is sock
            assert peer_der(kept) == old
            news.append(new)
    finally:
        kept.close()

    # SIGHUP did the reloads, not the periodic check: a reload line follows each.
    lines = log_lines(daemon)
    after = [i + 1 for i, line in enumerate(lines) if "SIGHUP: reloading" in line]
    assert len(after) == 2
    for i in after:
        assert f"{RELOADED} {daemon.certificate}" in lines[i], lines
    assert sum(RELOADED in line for line in lines) == 2

    if plugin == "dcvix-director":
        # The replacement is one the director keeps: after a restart it serves
        # it as it is, issuing nothing.
        assert daemon.stop() == -signal.SIGTERM
        daemon.start()
        assert served(daemon.port) == (news[-1], 200, HEALTHY)
        issued = "issued a new director certificate"
        assert log_file(daemon).read_text().count(issued) == 1


def test_certificate_reloads_within_seven_seconds_without_sighup(
    tmp_path: Path, daemons: list[DaemonProcess]
) -> None:
    # Both daemons in one test, so the wait for the 5 s check is paid once. The
    # agent goes from its not-enrolled certificate to a usable one.
    started = [new_daemon(tmp_path, plugin) for plugin in PLUGINS]
    start_all(daemons, *started)
    ca = certs.CA.create()
    kept = [connect(daemon.port) for daemon in started]
    try:
        olds = [peer_der(connection) for connection in kept]
        assert olds[0] == der_of(started[0].certificate)
        for connection in kept:
            assert get_health(connection) == (200, HEALTHY)

        news = [swap_certificate(daemon, ca) for daemon in started]
        assert not set(news) & set(olds)
        took = wait_for(
            "both serve the new certificate",
            lambda: all(
                served(d.port)[0] == new for d, new in zip(started, news, strict=True)
            ),
            timeout=7.0,
        )
        print(f"periodic reload seen after {took:.1f} s")

        for daemon, new in zip(started, news, strict=True):
            assert served(daemon.port) == (new, 200, HEALTHY)
        for connection, old in zip(kept, olds, strict=True):
            sock = connection.sock
            assert get_health(connection) == (200, HEALTHY)
            assert connection.sock is sock
            assert peer_der(connection) == old
    finally:
        for connection in kept:
            connection.close()
    for daemon in started:
        text = log_file(daemon).read_text()
        assert f"{RELOADED} {daemon.certificate}" in text
        assert "SIGHUP" not in text


@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("breakage", ["garbage key", "mismatched key"])
def test_broken_new_files_keep_the_old_certificate(
    tmp_path: Path, daemons: list[DaemonProcess], plugin: str, breakage: str
) -> None:
    daemon = start(daemons, new_daemon(tmp_path, plugin))
    ca = certs.CA.create()
    reloads = 0
    if plugin == "dcvix-agent":
        # Until it serves a usable certificate the agent serves one of its own,
        # whatever the files hold; once it does, unusable files are refused.
        swap_certificate(daemon, ca)
        sighup(daemon)
        wait_for("usable certificate loaded", log_has(daemon, RELOADED))
        reloads = 1
    old = der_of(daemon.certificate)
    assert served(daemon.port) == (old, 200, HEALTHY)

    # A new certificate either way: serving it would show the files were taken.
    if plugin == "dcvix-director":
        # Garbage key: a certificate for the key in service, which alone would
        # load. Mismatched key: one for a key the director does not have.
        current = certs.load_key(daemon.key)
        fresh = director_certificate(
            daemon, certs.new_key() if breakage == "mismatched key" else current
        )
    else:
        other = certs.new_key("ed25519") if breakage == "mismatched key" else None
        fresh = agent_certificate(daemon, ca, AGENT_HOSTNAME, other)
    new = der(fresh.certificate)
    if breakage == "garbage key":
        replace_file(daemon.key, b"this is not a key\n", 0o600)
    replace_file(daemon.certificate, fresh.cert_pem(), 0o644)
    sighup(daemon)

    message = f"new TLS files in {daemon.data_dir} are unusable, keeping the current"
    wait_for("error logged", log_has(daemon, message))
    errors = [x for x in log_lines(daemon) if message in x]
    # Usually one line; two if the 5 s check ran between the two renames.
    assert errors, errors
    assert all(x.startswith("ERROR ") for x in errors), errors
    assert log_file(daemon).read_text().count(RELOADED) == reloads

    assert served(daemon.port) == (old, 200, HEALTHY)
    assert new != old
    assert daemon.process is not None
    assert daemon.process.poll() is None
    assert daemon.stop() == -signal.SIGTERM


# ----------------------------------------------------------------------- stop


@pytest.mark.parametrize("plugin", PLUGINS)
def test_sigterm_stops_cleanly(
    tmp_path: Path, daemons: list[DaemonProcess], plugin: str
) -> None:
    daemon = start(daemons, DaemonProcess(plugin, tmp_path / plugin, free_port()))
    began = time.monotonic()
    assert daemon.stop() == -signal.SIGTERM
    assert time.monotonic() - began < 5
    output = daemon.output.read_text()
    assert "Received SIGTERM, shutting down." in output
    assert "Server Shut Down." in output
    assert "Server Shut Down." in log_file(daemon).read_text()
    assert "Traceback" not in output
    with socket.socket() as probe, pytest.raises(ConnectionRefusedError):
        probe.connect(("127.0.0.1", daemon.port))


# ------------------------------------------------------------- config errors


def run_twistd(
    argv: list[str], cwd: Path
) -> tuple[subprocess.CompletedProcess[str], float]:
    began = time.monotonic()
    result = subprocess.run(
        argv, cwd=cwd, capture_output=True, text=True, timeout=30, check=False
    )
    return result, time.monotonic() - began


@pytest.mark.parametrize(
    ("plugin", "section", "line", "problem"),
    [
        pytest.param(
            "dcvix-director",
            "director",
            "director_port = 99999",
            "[director] director_port: 99999 must be at least 1 and at most 65535",
            id="director-port",
        ),
        pytest.param(
            "dcvix-director",
            "log",
            "level = verbose",
            "[log] level: 'verbose' is not a log level (debug, info, warning, "
            "error, critical; Go's trace, warn, fatal, panic)",
            id="director-log-level",
        ),
        pytest.param(
            "dcvix-agent",
            "agent",
            "update_interval = 5d",
            "[agent] update_interval: '5d' is not a duration "
            "(use seconds or Go's form: 40s, 1m30s, 12h)",
            id="agent-duration",
        ),
        pytest.param(
            "dcvix-agent",
            "log",
            "format = xml",
            "[log] format: 'xml' is not one of text, json",
            id="agent-log-format",
        ),
    ],
)
def test_invalid_value_is_one_line_and_exit_1(
    tmp_path: Path, plugin: str, section: str, line: str, problem: str
) -> None:
    # Valid folders too: the bad value must stop the daemon before it makes them.
    sections = {
        plugin.removeprefix("dcvix-"): [f"data_dir = {tmp_path / 'data'}"],
        "log": [f"directory = {tmp_path / 'log'}"],
    }
    sections[section].append(line)
    conf = tmp_path / f"{plugin}.conf"
    conf.write_text(
        "".join(
            f"[{name}]\n" + "".join(f"{x}\n" for x in lines)
            for name, lines in sections.items()
        )
    )
    result, took = run_twistd(twistd_argv(plugin, conf), tmp_path)
    assert result.returncode == 1
    assert result.stderr == f"{conf}: {problem}\n"
    assert result.stdout == ""
    assert took < 10
    assert sorted(p.name for p in tmp_path.iterdir()) == [conf.name]


def test_invalid_value_names_the_file_as_given(tmp_path: Path) -> None:
    (tmp_path / "relative.conf").write_text("[director]\nregister_rate = 0\n")
    argv = [TWISTD, "-n", "--pidfile=", "dcvix-director", "--conf", "relative.conf"]
    result, _ = run_twistd(argv, tmp_path)
    assert result.returncode == 1
    assert result.stderr == (
        "relative.conf: [director] register_rate: 0 must be at least 1\n"
    )


@pytest.mark.parametrize("plugin", PLUGINS)
def test_missing_conf_file_is_one_line_and_exit_1(tmp_path: Path, plugin: str) -> None:
    missing = tmp_path / "nowhere" / f"{plugin}.conf"
    result, took = run_twistd(twistd_argv(plugin, missing), tmp_path)
    assert result.returncode == 1
    assert result.stderr == f"{missing}: config file not found\n"
    assert result.stdout == ""
    assert "Usage" not in result.stderr
    assert took < 10
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------- no config at all: write defaults

NAMESPACE_SETUP = r"""
set -eu
ip link set lo up
mount --bind /etc /etc
mount -o remount,bind,ro /etc
mount -t tmpfs tmpfs /var/lib
mount -t tmpfs tmpfs /var/log
"""
NAMESPACE_RUN = r"""
"$TWISTD" -n --pidfile= "$PLUGIN" >"$OUT" 2>&1 &
pid=$!
answer=""
i=0
while [ "$i" -lt 200 ]; do
    if answer=$(curl -sk --max-time 2 "https://127.0.0.1:$PORT/v1/health"); then
        break
    fi
    answer=""
    kill -0 "$pid" 2>/dev/null || break
    i=$((i + 1))
    sleep 0.1
done
echo "health: $answer"
kill -TERM "$pid" 2>/dev/null || true
status=0
wait "$pid" || status=$?
echo "twistd status: $status"
stat -c '%a %n' "/var/lib/$PLUGIN" "/var/lib/$PLUGIN"/*
"""
# A private mount, network and pid namespace: /etc read-only, empty /var/lib and
# /var/log, its own loopback for the default ports, and everything in it killed
# when unshare goes (--kill-child), even if the test times out.
UNSHARE = ["unshare", "--mount", "--net", "--pid", "--fork", "--kill-child"]


def namespace_problem() -> str | None:
    for tool in ("unshare", "curl", "ip", "mount"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed"
    probe = subprocess.run(
        [*UNSHARE, "sh", "-c", NAMESPACE_SETUP],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    if probe.returncode != 0:
        return f"cannot make namespaces: {probe.stderr.strip()}"
    return None


@pytest.mark.parametrize(
    ("plugin", "port"), [("dcvix-director", 8445), ("dcvix-agent", 8446)]
)
def test_missing_config_writes_defaults_and_starts(
    tmp_path: Path, plugin: str, port: int
) -> None:
    problem = namespace_problem()
    if problem is not None:
        pytest.skip(problem)
    if Path(f"/etc/{plugin}/{plugin}.conf").exists():
        pytest.skip(f"/etc/{plugin}/{plugin}.conf exists on this machine")
    for hidden in ("/etc", "/var/lib", "/var/log"):
        assert not tmp_path.is_relative_to(hidden), (
            "tmp_path is hidden in the namespace"
        )
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    out = tmp_path / "twistd.out"
    env = os.environ | {
        "TWISTD": TWISTD,
        "PLUGIN": plugin,
        "PORT": str(port),
        "OUT": str(out),
    }
    result = subprocess.run(
        [*UNSHARE, "sh", "-c", NAMESPACE_SETUP + NAMESPACE_RUN],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = out.read_text()
    assert result.returncode == 0, result.stderr + output
    lines = result.stdout.splitlines()
    assert lines[:2] == [
        'health: {"status": "healthy"}',
        "twistd status: 143",  # 128 + SIGTERM: twistd re-raised the signal
    ], output

    conf = cwd / f"{plugin}.conf"
    # The director also makes its policy folder, relative to cwd as in Go.
    extra = ["policydb"] if plugin == "dcvix-director" else []
    assert sorted(p.name for p in cwd.iterdir()) == sorted([conf.name, *extra])
    assert mode(conf) == 0o600
    text = conf.read_text()
    assert text.startswith(f"# {plugin} configuration\n")
    key = "director_port" if plugin == "dcvix-director" else "agent_port"
    assert f"\n# {key} = {port}\n" in text
    assert f"cannot write /etc/{plugin}/{plugin}.conf: Read-only file system" in output
    assert f"no config file found: wrote the defaults to {conf}" in output
    assert f"listening on 0.0.0.0:{port}" in output
    assert "Server Shut Down." in output

    # The default data_dir, on the namespace's own /var/lib.
    data = f"/var/lib/{plugin}"
    modes = {name: int(octal, 8) for octal, name in (x.split() for x in lines[2:])}
    if plugin == "dcvix-director":
        assert f"fresh install: made a new CA in {data} (fingerprint " in output
        assert (
            "issued a new director certificate because it is missing: "
            "dcvix-director, localhost, "
        ) in output
        assert sorted(modes) == [
            data,
            f"{data}/agents.db",
            f"{data}/ca.key",
            f"{data}/ca.pem",
            f"{data}/server.crt",
            f"{data}/server.key",
            f"{data}/token.key",
        ]
        private = ["agents.db", "ca.key", "server.key", "token.key"]
    else:
        assert "made a new key and a new identity " in output
        assert sorted(modes) == [data, f"{data}/agent.guid", f"{data}/agent.key"]
        private = ["agent.key"]
    assert modes[data] == 0o700
    for name in private:
        assert modes[f"{data}/{name}"] == 0o600, name


# ----------------------------------------------------------------- log format


@pytest.mark.parametrize("plugin", PLUGINS)
def test_json_log_lines(
    tmp_path: Path, daemons: list[DaemonProcess], plugin: str
) -> None:
    daemon = DaemonProcess(plugin, tmp_path / plugin, free_port())
    daemon.extra = {"log": {"format": "json"}}
    start(daemons, daemon)
    assert daemon.stop() == -signal.SIGTERM

    records = [json.loads(line) for line in log_file(daemon).read_text().splitlines()]
    assert len(records) >= 5
    for record in records:
        assert isinstance(record, dict)
        assert {"time", "level", "namespace", "message"} <= record.keys(), record
        assert dt.datetime.fromisoformat(record["time"]).tzinfo is not None
        assert record["level"] in {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"}
    service = plugin.replace("-", ".", 1) + ".service"  # dcvix.director.service
    [start_record] = [
        r for r in records if f"listening on 127.0.0.1:{daemon.port}" in r["message"]
    ]
    assert start_record["namespace"] == service
    assert start_record["level"] == "INFO"
    assert start_record["port"] == daemon.port
    assert any(r["message"] == "Server Shut Down." for r in records)


# ---------------------------------------------------------------- secrets


@pytest.mark.parametrize("plugin", PLUGINS)
def test_readable_secret_file_is_warned_about_and_never_logged(
    tmp_path: Path, daemons: list[DaemonProcess], plugin: str
) -> None:
    daemon = DaemonProcess(plugin, tmp_path / plugin, free_port())
    daemon.extra = {plugin.removeprefix("dcvix-"): {"registration_token": "s3cret"}}
    daemon.write_conf()
    os.chmod(daemon.conf, 0o644)
    start(daemons, daemon)  # rewrites the same text; the mode stays
    assert mode(daemon.conf) == 0o644
    assert daemon.stop() == -signal.SIGTERM

    warning = (
        f"{daemon.conf}: holds secrets but is readable by other users "
        f"(chmod 600 {daemon.conf})"
    )
    for text in (log_file(daemon).read_text(), daemon.output.read_text()):
        [line] = [x for x in text.splitlines() if warning in x]
        assert line.startswith("WARNING "), line
        assert "s3cret" not in text


# ------------------------------------------------------------ two agents


def test_two_agents_side_by_side(tmp_path: Path, daemons: list[DaemonProcess]) -> None:
    first = DaemonProcess("dcvix-agent", tmp_path / "a", free_port())
    second = DaemonProcess("dcvix-agent", tmp_path / "b", free_port())
    first.extra = {"agent": {"hostname": "ws-a"}}
    second.extra = {"agent": {"hostname": "ws-b"}}
    start_all(daemons, first, second)
    assert first.port != second.port

    # Each its own identity: key, GUID, and the certificate it serves for them.
    assert first.guid != second.guid
    for agent, hostname in ((first, "ws-a"), (second, "ws-b")):
        assert str(uuid.UUID(agent.guid)) == agent.guid
        certificate = served_certificate(agent.port)
        assert certs.common_names(certificate) == [f"dcvix-agent-{agent.guid}"]
        assert certs.same_key(certificate, certs.load_key(agent.key))
        line = f"{agent.guid} for {hostname} listening on 127.0.0.1:{agent.port}"
        assert line in log_file(agent).read_text()
    assert first.key.read_bytes() != second.key.read_bytes()
    assert served(first.port)[1:] == served(second.port)[1:] == (200, HEALTHY)

    assert first.stop() == -signal.SIGTERM
    assert served(second.port)[1:] == (200, HEALTHY)
    assert second.stop() == -signal.SIGTERM
    assert f"listening on 127.0.0.1:{second.port}" not in log_file(first).read_text()
    assert second.guid not in log_file(first).read_text()


@pytest.mark.parametrize("plugin", PLUGINS)
def test_a_port_in_use_is_one_line_and_exit_1(tmp_path: Path, plugin: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        daemon = DaemonProcess(plugin, tmp_path / plugin, port)
        daemon.write_conf()
        result = subprocess.run(
            twistd_argv(plugin, daemon.conf),
            cwd=daemon.folder,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    line = (
        f"{plugin}: cannot listen on 127.0.0.1:{port}: "
        "[Errno 98] Address already in use"
    )
    assert result.returncode == 1
    assert line in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
