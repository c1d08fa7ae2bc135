"""Both daemons as real twistd processes: files, reloads, stops, config, logs."""

from __future__ import annotations

import datetime as dt
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
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from daemons import TWISTD, DaemonProcess, free_port, twistd_argv
from dcvix import __version__

PLUGINS = ["dcvix-director", "dcvix-agent"]
HEALTHY = {"status": "healthy"}


# ------------------------------------------------------------------ helpers


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def log_file(daemon: DaemonProcess) -> Path:
    return daemon.log_dir / f"{daemon.plugin}.log"


def wait_for(what: str, condition: Callable[[], bool], timeout: float = 5.0) -> float:
    """Poll ``condition`` until true; return the seconds it took."""
    start = time.monotonic()
    while time.monotonic() - start < timeout:
        if condition():
            return time.monotonic() - start
        time.sleep(0.05)
    raise AssertionError(f"not after {timeout} s: {what}")


def log_has(daemon: DaemonProcess, text: str) -> Callable[[], bool]:
    path = log_file(daemon)
    return lambda: path.exists() and text in path.read_text()


def unverified_context() -> ssl.SSLContext:
    """Trusts anything: tests compare the served certificate themselves."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


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


def der_of(pem_file: Path) -> bytes:
    certificate = x509.load_pem_x509_certificate(pem_file.read_bytes())
    return certificate.public_bytes(serialization.Encoding.DER)


def new_pair(common_name: str) -> tuple[bytes, bytes, bytes]:
    """A fresh self-signed ECDSA pair: certificate PEM, key PEM, certificate DER."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(hours=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return (
        certificate.public_bytes(serialization.Encoding.PEM),
        key_pem,
        certificate.public_bytes(serialization.Encoding.DER),
    )


def replace_file(path: Path, data: bytes, file_mode: int) -> None:
    """Write a temporary file beside ``path`` and rename it over ``path``."""
    descriptor, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(descriptor, "wb") as handle:
        os.fchmod(handle.fileno(), file_mode)
        handle.write(data)
    os.replace(temp, path)


def start(daemons: list[DaemonProcess], daemon: DaemonProcess) -> DaemonProcess:
    """Start ``daemon`` and make sure the fixture stops it, even if start fails."""
    daemons.append(daemon)
    return daemon.start()


# ---------------------------------------------------------------- first start


START_LINE = {
    "dcvix-director": "dcvix-director {version} listening on 127.0.0.1:{port}, "
    "data in {data}",
    "dcvix-agent": "dcvix-agent {version} for ws-test-1 listening on 127.0.0.1:{port}",
}


@pytest.mark.parametrize("plugin", PLUGINS)
def test_first_start_makes_private_files(tmp_path: Path, daemons, plugin: str) -> None:
    daemon = DaemonProcess(plugin, tmp_path / plugin, free_port())
    daemon.extra = (
        {"agent": {"hostname": "ws-test-1"}} if plugin == "dcvix-agent" else {}
    )
    assert not daemon.data_dir.exists()
    start(daemons, daemon)

    assert mode(daemon.data_dir) == 0o700
    assert mode(daemon.key) == 0o600
    assert mode(daemon.log_dir) == 0o700
    assert sorted(p.name for p in daemon.log_dir.iterdir()) == [f"{plugin}.log"]
    assert mode(log_file(daemon)) == 0o600
    expected = START_LINE[plugin].format(
        version=__version__, port=daemon.port, data=daemon.data_dir
    )
    assert expected in log_file(daemon).read_text()
    assert expected in daemon.output.read_text()


def _limits(pid: int) -> tuple[str, str]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return soft, hard
    raise AssertionError("no open-file limit in /proc")


@pytest.mark.parametrize("plugin", PLUGINS)
def test_open_file_limit_raised_to_the_hard_limit(
    tmp_path: Path, daemons, plugin: str
) -> None:
    _, hard_limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    daemon = DaemonProcess(plugin, tmp_path / plugin, free_port())
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
    tmp_path: Path, daemons, plugin: str
) -> None:
    daemon = DaemonProcess(plugin, tmp_path / plugin, free_port())
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


def swap_certificate(daemon: DaemonProcess) -> bytes:
    """Put a new self-signed pair in place of the daemon's; its DER."""
    certificate, key, der = new_pair("replacement")
    replace_file(daemon.key, key, 0o600)
    replace_file(daemon.certificate, certificate, 0o644)
    return der


@pytest.mark.parametrize("plugin", PLUGINS)
def test_certificate_reloads_on_sighup(tmp_path: Path, daemons, plugin: str) -> None:
    daemon = start(daemons, DaemonProcess(plugin, tmp_path / plugin, free_port()))
    old = der_of(daemon.certificate)
    kept = connect(daemon.port)
    try:
        sock = kept.sock
        assert peer_der(kept) == old
        assert get_health(kept) == (200, HEALTHY)

        new = swap_certificate(daemon)
        assert new != old
        assert daemon.process is not None
        daemon.process.send_signal(signal.SIGHUP)
        wait_for("reload logged", log_has(daemon, "TLS certificate reloaded from"))

        assert served(daemon.port) == (new, 200, HEALTHY)
        # The kept-alive connection still answers, on the same socket and with
        # the certificate it was opened with.
        assert get_health(kept) == (200, HEALTHY)
        assert kept.sock is sock
        assert peer_der(kept) == old
    finally:
        kept.close()

    # SIGHUP did the reload, not the periodic check: the reload line follows it.
    lines = log_file(daemon).read_text().splitlines()
    after = [i + 1 for i, line in enumerate(lines) if "SIGHUP: reloading" in line]
    assert len(after) == 1
    assert f"TLS certificate reloaded from {daemon.certificate}" in lines[after[0]], (
        lines
    )


def test_certificate_reloads_within_seven_seconds_without_sighup(
    tmp_path: Path, daemons
) -> None:
    # Both daemons in one test, so the wait for the 5 s check is paid once.
    started = [
        start(daemons, DaemonProcess(plugin, tmp_path / plugin, free_port()))
        for plugin in PLUGINS
    ]
    kept = [connect(daemon.port) for daemon in started]
    try:
        olds = [der_of(daemon.certificate) for daemon in started]
        for connection, old in zip(kept, olds, strict=True):
            assert peer_der(connection) == old
            assert get_health(connection) == (200, HEALTHY)

        news = [swap_certificate(daemon) for daemon in started]
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
        assert f"TLS certificate reloaded from {daemon.certificate}" in text
        assert "SIGHUP" not in text


@pytest.mark.parametrize("plugin", PLUGINS)
@pytest.mark.parametrize("breakage", ["garbage key", "mismatched key"])
def test_broken_new_files_keep_the_old_certificate(
    tmp_path: Path, daemons, plugin: str, breakage: str
) -> None:
    daemon = start(daemons, DaemonProcess(plugin, tmp_path / plugin, free_port()))
    old = der_of(daemon.certificate)
    # A new certificate either way: serving it would show the files were taken.
    certificate, _key, new = new_pair("broken")
    if breakage == "garbage key":
        replace_file(daemon.key, b"this is not a key\n", 0o600)
    replace_file(daemon.certificate, certificate, 0o644)
    assert daemon.process is not None
    daemon.process.send_signal(signal.SIGHUP)

    message = f"new TLS files in {daemon.data_dir} are unusable, keeping the current"
    wait_for("error logged", log_has(daemon, message))
    errors = [x for x in log_file(daemon).read_text().splitlines() if message in x]
    # Usually one line; two if the 5 s check ran between the two renames.
    assert errors, errors
    assert all(x.startswith("ERROR ") for x in errors), errors
    assert "TLS certificate reloaded" not in log_file(daemon).read_text()

    assert served(daemon.port) == (old, 200, HEALTHY)
    assert new != old
    assert daemon.process.poll() is None
    assert daemon.stop() == -signal.SIGTERM


# ----------------------------------------------------------------------- stop


@pytest.mark.parametrize("plugin", PLUGINS)
def test_sigterm_stops_cleanly(tmp_path: Path, daemons, plugin: str) -> None:
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
    assert result.stdout.splitlines() == [
        'health: {"status": "healthy"}',
        "twistd status: 143",  # 128 + SIGTERM: twistd re-raised the signal
    ], output

    conf = cwd / f"{plugin}.conf"
    assert sorted(p.name for p in cwd.iterdir()) == [conf.name]
    assert mode(conf) == 0o600
    text = conf.read_text()
    assert text.startswith(f"# {plugin} configuration\n")
    key = "director_port" if plugin == "dcvix-director" else "agent_port"
    assert f"\n# {key} = {port}\n" in text
    assert f"cannot write /etc/{plugin}/{plugin}.conf: Read-only file system" in output
    assert f"no config file found: wrote the defaults to {conf}" in output
    assert f"listening on 0.0.0.0:{port}" in output
    certificate = "server.crt" if plugin == "dcvix-director" else "agent.crt"
    assert f"made a self-signed certificate /var/lib/{plugin}/{certificate}" in output
    assert "Server Shut Down." in output


# ----------------------------------------------------------------- log format


@pytest.mark.parametrize("plugin", PLUGINS)
def test_json_log_lines(tmp_path: Path, daemons, plugin: str) -> None:
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
    tmp_path: Path, daemons, plugin: str
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


def test_two_agents_side_by_side(tmp_path: Path, daemons) -> None:
    first = start(daemons, DaemonProcess("dcvix-agent", tmp_path / "a", free_port()))
    second = start(daemons, DaemonProcess("dcvix-agent", tmp_path / "b", free_port()))
    assert first.port != second.port

    first_der, *first_health = served(first.port)
    second_der, *second_health = served(second.port)
    assert first_health == second_health == [200, HEALTHY]
    assert first_der == der_of(first.certificate)
    assert second_der == der_of(second.certificate)
    assert first_der != second_der
    assert first.key.read_bytes() != second.key.read_bytes()

    assert first.stop() == -signal.SIGTERM
    assert served(second.port)[1:] == (200, HEALTHY)
    assert second.stop() == -signal.SIGTERM
    assert f"listening on 127.0.0.1:{second.port}" not in log_file(first).read_text()
