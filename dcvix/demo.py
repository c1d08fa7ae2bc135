"""``make demo``: a director and an agent on loopback, in ./demo, until Ctrl-C.

Everything lives in ``demo/`` beside the project (data, logs, configs), so the
demo never touches /etc or /var. Run it again to reuse the same state.
"""

from __future__ import annotations

import json
import secrets
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from subprocess import Popen

from dcvix.common.pki import certificate_fingerprint, load_certificates

DIRECTOR_PORT = 8445
AGENT_PORT = 8446


ADMIN = "admin"
AUTH_SCRIPT = """#!/bin/sh
# make demo's login check. dcvix writes user, password and OTP on stdin, one per
# line; exit 0 accepts, 1 refuses.
IFS= read -r user
IFS= read -r password
[ "$user" = {admin} ] && [ "$password" = "$(cat '{secret}')" ] && exit 0
exit 1
"""


def _admin_login(folder: Path) -> str:
    """The demo admin's password (made once, kept 0600) and its check script."""
    secret = folder / "admin.password"
    if not secret.exists():
        secret.write_text(secrets.token_urlsafe(12))
        secret.chmod(0o600)
    script = folder / "auth.sh"
    script.write_text(AUTH_SCRIPT.format(admin=ADMIN, secret=secret))
    script.chmod(0o700)
    policy = folder / "policydb"
    policy.mkdir(exist_ok=True)
    # The admin is a user of the portal too: the workstation, and a pool of it.
    (policy / "users.json").write_text(
        json.dumps(
            [
                {
                    "id": ADMIN,
                    "admin": True,
                    "workstations": ["demo-workstation"],
                    "pools": ["demo"],
                }
            ]
        )
    )
    (policy / "pools.json").write_text(
        json.dumps([{"id": "demo", "workstations": ["demo-workstation"]}])
    )
    return secret.read_text()


SIMULATOR = """#!/bin/sh
# make demo: the agent's dcv_path. This is the dcvix DCV SIMULATOR, not Amazon
# DCV: sessions exist only in {state}.
exec {python} -m dcvix.agent.dcvsim --state {state} "$@"
"""


def _simulated_dcv(folder: Path) -> None:
    script = folder / "dcv"
    state = folder / "simulated-dcv.json"
    script.write_text(SIMULATOR.format(python=sys.executable, state=state))
    script.chmod(0o700)


def _write_configs(root: Path) -> tuple[Path, Path]:
    director = root / "director" / "dcvix-director.conf"
    agent = root / "agent" / "dcvix-agent.conf"
    for path in (director, agent):
        path.parent.mkdir(parents=True, exist_ok=True)
    director.write_text(
        "# Written by make demo.\n"
        "[director]\n"
        "director_host = 127.0.0.1\n"
        f"director_port = {DIRECTOR_PORT}\n"
        f"data_dir = {root / 'director' / 'data'}\n"
        f"policydb_folder = {root / 'director' / 'policydb'}\n"
        "auth_type = external\n"
        "[external_auth]\n"
        f"external_command = {root / 'director' / 'auth.sh'}\n"
        "[log]\n"
        f"directory = {root / 'director' / 'log'}\n"
    )
    agent.write_text(
        "# Written by make demo.\n"
        "[agent]\n"
        "director_host = 127.0.0.1\n"
        f"director_port = {DIRECTOR_PORT}\n"
        "bind_address = 127.0.0.1\n"
        "hostname = demo-workstation\n"
        f"dcv_path = {root / 'agent' / 'dcv'}\n"
        "update_interval = 10s\n"
        f"agent_port = {AGENT_PORT}\n"
        f"data_dir = {root / 'agent' / 'data'}\n"
        "[log]\n"
        f"directory = {root / 'agent' / 'log'}\n"
    )
    return director, agent


def _start(name: str, config: Path) -> Popen[bytes]:
    twistd = Path(sys.executable).parent / "twistd"
    log = (config.parent / "stdout.log").open("wb")
    return Popen(
        [str(twistd), "-n", "--pidfile=", name, "--conf", str(config)],
        cwd=config.parent,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _get(url: str, context: ssl.SSLContext) -> int:
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as answer:  # noqa: S310
            return int(answer.status)
    except OSError:
        return 0


def _wait(what: str, ready: Callable[[], bool], processes: list[Popen[bytes]]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if any(p.poll() is not None for p in processes):
            raise SystemExit(
                f"a daemon exited while waiting for {what}; see demo/*/stdout.log"
            )
        if ready():
            return
        time.sleep(0.2)
    raise SystemExit(f"gave up waiting for {what} after 60 s")


def _ctl(conf: Path, *args: str) -> str:
    command = [
        str(Path(sys.executable).parent / "dcvixctl"),
        "--conf",
        str(conf),
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, check=True).stdout


def main() -> None:
    """Start both daemons, enrol the agent, print how to look at them."""
    root = Path.cwd() / "demo"
    director_conf, agent_conf = _write_configs(root)
    password = _admin_login(root / "director")
    _simulated_dcv(root / "agent")
    processes = [_start("dcvix-director", director_conf)]
    try:
        ca = root / "director" / "data" / "ca.pem"
        trusted = lambda: ssl.create_default_context(cafile=str(ca))  # noqa: E731
        director_url = f"https://127.0.0.1:{DIRECTOR_PORT}"
        agent_url = f"https://127.0.0.1:{AGENT_PORT}"
        _wait(
            "the director",
            lambda: ca.exists() and _get(f"{director_url}/v1/health", trusted()) == 200,
            processes,
        )
        processes.append(_start("dcvix-agent", agent_conf))
        guid_file = root / "agent" / "data" / "agent.guid"
        _wait(
            "the agent's registration",
            lambda: (
                guid_file.exists()
                and guid_file.read_text() in _ctl(director_conf, "agents", "list")
            ),
            processes,
        )
        guid = guid_file.read_text()
        state = _ctl(director_conf, "agents", "list")
        if "pending" in state.split(guid, 1)[1].split("\n", 1)[0]:
            print(f"The agent {guid} asked to enrol; approving it with dcvixctl:")
            print(f"  dcvixctl --conf {director_conf} agents approve {guid}")
            print("  " + _ctl(director_conf, "agents", "approve", guid).strip())
            # SIGHUP makes a pending agent register at once (else within 30 s).
            print(f"  kill -HUP {processes[1].pid}   # the agent registers again now")
            processes[1].send_signal(signal.SIGHUP)
        _wait(
            "the agent's certificate",
            lambda: _get(f"{agent_url}/v1/health", trusted()) == 200,
            processes,
        )
        data = root / "director" / "data"
        fingerprint = certificate_fingerprint(load_certificates(ca.read_bytes())[0])
        print(
            f"""
dcvix demo is running (state in {root}).

  web UI    {director_url}/   (your browser will ask you to accept the demo
            certificate; tick "Administrator" for the admin console, or log in
            without it for "My desktops", the user portal)
  director  {director_url}/v1/...   the API
  agent     {agent_url}/   enrolled as {guid}
            its dcv is the dcvix DCV SIMULATOR: no real desktop runs
  admin     user {ADMIN}, password {password}
            (checked by {root}/director/auth.sh, the external login back end)

Log in as the admin, keeping the session cookie, then use the admin API:
  cd {root}
  curl --cacert {ca} --cookie-jar cookies.txt \\
       -X POST {director_url}/v1/admin/login \\
       -d '{{"userID": "{ADMIN}", "password": "{password}"}}'
  curl --cacert {ca} --cookie cookies.txt {director_url}/v1/admin/agents
  curl --cacert {ca} --cookie cookies.txt \\
       -X POST {director_url}/v1/admin/agents/GUID/approve   # a pending agent
  curl --cacert {ca} --cookie cookies.txt \\
       -X POST {director_url}/v1/sessions \\
       -d '{{"serverId": "demo-workstation", "userId": "john",
            "sessionType": "console"}}'
  curl --cacert {ca} --cookie cookies.txt {director_url}/v1/servers
  curl --cacert {ca} --cookie cookies.txt {director_url}/v1/sessions   # within 10 s
  curl --cacert {ca} --cookie cookies.txt \\
       -X DELETE {director_url}/v1/sessions/SESSION_ID
  curl --cacert {ca} --cookie cookies.txt -X POST {director_url}/v1/logout

More:
  curl --cacert {ca} {director_url}/v1/health
  curl --cert {data}/server.crt --key {data}/server.key --cacert {ca} \\
       {agent_url}/v1/health
  curl --cert {data}/server.crt --key {data}/server.key --cacert {ca} \\
       {agent_url}/v1/stats
  openssl x509 -in {root}/agent/data/agent.crt -noout \\
       -subject -issuer -dates -ext subjectAltName
  .venv/bin/dcvixctl --conf {director_conf} agents list

CA fingerprint (SHA-256): {fingerprint}
Logs: {root}/director/log, {root}/agent/log.  Ctrl-C stops both.
""",
            flush=True,
        )
        while all(p.poll() is None for p in processes):
            time.sleep(0.5)
        print("a daemon exited; see demo/*/stdout.log", file=sys.stderr)
    except KeyboardInterrupt:
        print("\nstopping", flush=True)
    finally:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()


if __name__ == "__main__":
    main()
