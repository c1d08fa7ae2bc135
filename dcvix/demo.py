"""``make demo``: a director and an agent on loopback, in ./demo, until Ctrl-C.

Everything lives in ``demo/`` beside the project (data, logs, configs), so the
demo never touches /etc or /var. Run it again to reuse the same state.
"""

from __future__ import annotations

import os
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

DIRECTOR_PORT = 8445
AGENT_PORT = 8446


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
        "[log]\n"
        f"directory = {root / 'director' / 'log'}\n"
    )
    agent.write_text(
        "# Written by make demo.\n"
        "[agent]\n"
        "director_host = 127.0.0.1\n"
        f"director_port = {DIRECTOR_PORT}\n"
        "bind_address = 127.0.0.1\n"
        f"agent_port = {AGENT_PORT}\n"
        f"data_dir = {root / 'agent' / 'data'}\n"
        "[log]\n"
        f"directory = {root / 'agent' / 'log'}\n"
    )
    return director, agent


def _start(name: str, config: Path) -> subprocess.Popen[bytes]:
    twistd = Path(sys.executable).parent / "twistd"
    log = (config.parent / "stdout.log").open("wb")
    return subprocess.Popen(
        [str(twistd), "-n", "--pidfile=", name, "--conf", str(config)],
        cwd=config.parent,
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def _wait_healthy(port: int, process: subprocess.Popen[bytes], cafile: Path) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"the daemon on port {port} exited; see demo/*/stdout.log")
        if cafile.exists():
            context = ssl.create_default_context(cafile=str(cafile))
            try:
                url = f"https://127.0.0.1:{port}/v1/health"
                with urllib.request.urlopen(url, context=context, timeout=2) as answer:
                    if answer.status == 200:
                        return
            except OSError:
                pass
        time.sleep(0.2)
    raise SystemExit(f"nothing healthy on port {port} after 20 s")


def main() -> None:
    """Start both daemons, print how to reach them, stop both on Ctrl-C."""
    root = Path.cwd() / "demo"
    director_conf, agent_conf = _write_configs(root)
    processes = [
        _start("dcvix-director", director_conf),
        _start("dcvix-agent", agent_conf),
    ]
    try:
        director_cert = root / "director" / "data" / "server.crt"
        agent_cert = root / "agent" / "data" / "agent.crt"
        _wait_healthy(DIRECTOR_PORT, processes[0], director_cert)
        _wait_healthy(AGENT_PORT, processes[1], agent_cert)
        print(
            f"""
dcvix demo is running (state in {root}).

  director  https://127.0.0.1:{DIRECTOR_PORT}/   (admin UI and login: coming issues)
  agent     https://127.0.0.1:{AGENT_PORT}/

Try:
  curl --cacert {director_cert} https://127.0.0.1:{DIRECTOR_PORT}/v1/health
  curl --cacert {agent_cert} https://127.0.0.1:{AGENT_PORT}/v1/health

Both serve self-signed certificates until agent enrolment lands.
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
        os.sync()


if __name__ == "__main__":
    main()
