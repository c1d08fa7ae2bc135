"""A fake ``dcv`` executable for tests, and the helper that installs and drives it.

Not the shipped simulator (:mod:`dcvix.agent.dcvsim`): this one records every
argv and takes orders from the test. As a script (``python fake_dcv.py ARGS``,
through the ``dcv`` wrapper :meth:`FakeDcv.install` writes) it imitates the
documented CLI (reference original-agent.md §18):

- ``list-sessions [--json|-j]``: pretty-printed JSON in DCV's ``"key" : value``
  style (or the one-line text form without ``--json``);
- ``describe-session ID [--json|-j]``;
- ``create-session [--type T] [--owner O] [--user U] [--name N] ... ID``:
  refuses a duplicate id, a second console session and a bad type;
- ``close-session ID``: refuses an unknown id;
- ``set-config --section S --key K VALUE``.

Failures exit 1 with a one-line message on stderr, as the reference suggests.

Its whole world lives in the folder the wrapper names (the agent runs ``dcv``
with a minimal environment of its own, so the wrapper, not the caller's
environment, says where): ``state.json`` (sessions, settings), ``argv.log``
(one JSON array per call, appended), ``control.json`` (test hooks, read at each
call) and ``pids`` (grandchildren it forked, for clean-up).

``control.json``::

    {"timestamps": "micro" | "seconds" | "empty",
     "commands": {"<command>" or "*": {
         "exit": N, "stderr": "...", "stdout": "...",   # replace the normal work
         "delay": S,                                     # sleep first, then work
         "hang": {"seconds": S, "grandchild": "group" | "escape"}}}}

``hang`` forks a grandchild that keeps stdout and stderr open and sleeps, and
sleeps itself; with ``escape`` the grandchild leaves the process group first
(``setsid``), so killing the group does not close the pipes. Both pids go to
``pids``, so that a test can end what an agent stopped in between left behind.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

HOME_VARIABLE = "FAKE_DCV_HOME"
SESSION_OPTIONS_WITH_VALUE = {
    "--type",
    "--owner",
    "--user",
    "--name",
    "--permissions-file",
    "--storage-root",
    "--gl",
    "--max-concurrent-clients",
    "--init",
}


# ------------------------------------------------------------ the executable


def _read_json(path: Path, default: Any) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return default


def _write_json(path: Path, value: Any) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}")
    temporary.write_text(json.dumps(value, indent=2))
    temporary.replace(path)


def _dcv_json(value: Any, indent: int = 0) -> str:
    """JSON as ``dcv`` prints it: two-space indent, a space each side of ``:``."""
    pad, inner = "  " * indent, "  " * (indent + 1)
    if isinstance(value, dict):
        if not value:
            return "{ }"
        members = [
            f"{inner}{json.dumps(k)} : {_dcv_json(v, indent + 1)}"
            for k, v in value.items()
        ]
        return "{\n" + ",\n".join(members) + f"\n{pad}}}"
    if isinstance(value, list):
        if not value:
            return "[ ]"
        items = [f"{inner}{_dcv_json(v, indent + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(value)


def _time(moment: float | None, style: str) -> str:
    if moment is None or style == "empty":
        return ""
    value = dt.datetime.fromtimestamp(moment, dt.UTC)
    if style == "seconds":
        return value.strftime("%Y-%m-%dT%H:%M:%SZ")
    return value.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _session_json(session: dict[str, Any], style: str) -> dict[str, Any]:
    shown = {
        "id": session["id"],
        "owner": session["owner"],
        "name": session.get("name") or session["id"],
        "num-of-connections": session.get("connections", 0),
        "creation-time": _time(session.get("created"), style),
        "last-disconnection-time": _time(session.get("disconnected"), style),
        "licensing-mode": "DEMO",
        "licenses": [
            {
                "product": "dcv",
                "status": "LICENSED",
                "check-timestamp": _time(session.get("created"), style),
                "expiration-date": "2099-01-01T00:00:00Z",
            }
        ],
        "storage-root": "",
        "type": session["type"],
    }
    if session["type"] == "virtual":
        shown["x11-display"] = session.get("display", ":1")
        shown["x11-authority"] = f"/run/user/1000/dcv/{session['id']}.xauth"
    shown["display-layout"] = [{"width": 1920, "height": 1080, "x": 0, "y": 0}]
    return shown


class _Usage(Exception):
    pass


def _options(args: list[str]) -> tuple[dict[str, str], list[str]]:
    options: dict[str, str] = {}
    positional: list[str] = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in SESSION_OPTIONS_WITH_VALUE or arg in ("--section", "--key"):
            if index + 1 >= len(args):
                raise _Usage(f"option {arg} needs a value")
            options[arg] = args[index + 1]
            index += 2
        elif arg in ("--json", "-j"):
            options["--json"] = ""
            index += 1
        elif arg.startswith("-"):
            raise _Usage(f"unknown option {arg}")
        else:
            positional.append(arg)
            index += 1
    return options, positional


def _fail(message: str) -> int:
    sys.stderr.write(message + "\n")
    return 1


def _hang(home: Path, hang: dict[str, Any]) -> None:
    seconds = float(hang.get("seconds", 60))
    child = os.fork()
    if child == 0:  # the grandchild: keeps stdout and stderr open
        try:
            if hang.get("grandchild") == "escape":
                os.setsid()
            time.sleep(seconds)
        finally:
            os._exit(0)
    with (home / "pids").open("a") as pids:
        pids.write(f"{os.getpid()}\n{child}\n")
    sys.stdout.write("[\n")  # a started answer that never ends
    sys.stdout.flush()
    time.sleep(seconds)


def run(home: Path, args: list[str]) -> int:
    """One ``dcv`` call; the exit status."""
    with (home / "argv.log").open("a") as log:
        log.write(json.dumps(args) + "\n")
    control = _read_json(home / "control.json", {})
    command = args[0] if args else ""
    commands = control.get("commands", {})
    hook = commands.get(command, commands.get("*", {}))
    if "hang" in hook:
        _hang(home, hook["hang"])
    if "delay" in hook:
        time.sleep(float(hook["delay"]))
    if "exit" in hook or "stdout" in hook or "stderr" in hook:
        sys.stdout.write(hook.get("stdout", ""))
        sys.stderr.write(hook.get("stderr", ""))
        return int(hook.get("exit", 0))
    style = control.get("timestamps", "micro")
    try:
        options, positional = _options(args[1:])
    except _Usage as error:
        return _fail(f"dcv: {error}")
    with (home / "state.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        state = _read_json(home / "state.json", {})
        sessions: list[dict[str, Any]] = state.setdefault("sessions", [])
        if command == "list-sessions":
            if "--json" in options:
                print(_dcv_json([_session_json(s, style) for s in sessions]))
            else:
                for s in sessions:
                    print(
                        f"Session: {s['id']} (owner:{s['owner']} type:{s['type']} "
                        f"name:'{s.get('name') or s['id']}')"
                    )
            return 0
        if command == "describe-session":
            if len(positional) != 1:
                return _fail("dcv describe-session: one session id expected")
            found = [s for s in sessions if s["id"] == positional[0]]
            if not found:
                return _fail(f"Could not find session '{positional[0]}'")
            print(_dcv_json(_session_json(found[0], style)))
            return 0
        if command == "create-session":
            if len(positional) != 1:
                return _fail("dcv create-session: one session id expected")
            session_id = positional[0]
            kind = options.get("--type", "console").lower()
            if kind not in ("console", "virtual"):
                return _fail(f"Invalid session type '{options['--type']}'")
            if any(s["id"] == session_id for s in sessions):
                return _fail(f"A session with id '{session_id}' already exists")
            if kind == "console" and any(s["type"] == "console" for s in sessions):
                return _fail("A console session is already running")
            sessions.append(
                {
                    "id": session_id,
                    "owner": options.get("--owner", "root"),
                    "user": options.get("--user", ""),
                    "name": options.get("--name", ""),
                    "type": kind,
                    "created": time.time(),
                    "connections": 0,
                    "disconnected": None,
                    "display": f":{len(sessions) + 1}",
                }
            )
            _write_json(home / "state.json", state)
            return 0
        if command == "close-session":
            if len(positional) != 1:
                return _fail("dcv close-session: one session id expected")
            kept = [s for s in sessions if s["id"] != positional[0]]
            if len(kept) == len(sessions):
                return _fail(f"Could not find session '{positional[0]}'")
            state["sessions"] = kept
            _write_json(home / "state.json", state)
            return 0
        if command == "set-config":
            if "--section" not in options or "--key" not in options:
                return _fail("dcv set-config: --section and --key are required")
            if len(positional) != 1:
                return _fail("dcv set-config: one value expected")
            section = state.setdefault("config", {}).setdefault(
                options["--section"], {}
            )
            section[options["--key"]] = positional[0]
            _write_json(home / "state.json", state)
            return 0
    return _fail(f"dcv: unknown command '{command}'")


def main() -> int:
    """Entry point of the executable: the folder comes from the wrapper."""
    return run(Path(os.environ[HOME_VARIABLE]), sys.argv[1:])


# --------------------------------------------------------- the test's helper


class FakeDcv:
    """One fake ``dcv`` in ``home``: install it, set hooks, read what it saw.

    Args:
        home: its folder; :attr:`path` is the executable to give as ``dcv_path``.
    """

    def __init__(self, home: Path) -> None:
        self.home = home

    @property
    def path(self) -> Path:
        """The ``dcv`` wrapper script."""
        return self.home / "dcv"

    def install(self) -> FakeDcv:
        """Write the wrapper (``#!/bin/sh``, the folder fixed in it), empty state."""
        self.home.mkdir(parents=True, exist_ok=True)
        self.path.write_text(
            "#!/bin/sh\n"
            f"{HOME_VARIABLE}='{self.home}' exec '{sys.executable}' -I -S "
            f"'{Path(__file__).resolve()}' \"$@\"\n"
        )
        self.path.chmod(0o755)
        self.reset()
        return self

    def reset(self) -> None:
        """No sessions, no settings, no hooks, an empty argv log; kill hangers."""
        self.kill_grandchildren()
        _write_json(self.home / "state.json", {"sessions": [], "config": {}})
        _write_json(self.home / "control.json", {})
        (self.home / "argv.log").write_text("")

    def control(self, **control: Any) -> None:
        """Replace ``control.json`` (``timestamps=``, ``commands=``)."""
        _write_json(self.home / "control.json", control)

    def hook(self, command: str, **hook: Any) -> None:
        """Hooks for one command (or ``*``), keeping the timestamp style."""
        control = _read_json(self.home / "control.json", {})
        control.setdefault("commands", {})[command] = hook
        _write_json(self.home / "control.json", control)

    def calls(self) -> list[list[str]]:
        """Every argv so far (after the program name), oldest first."""
        text = (self.home / "argv.log").read_text()
        return [json.loads(line) for line in text.splitlines() if line]

    def mutations(self) -> list[list[str]]:
        """The calls other than ``list-sessions`` (which the updater runs often)."""
        return [c for c in self.calls() if c[:1] != ["list-sessions"]]

    def state(self) -> dict[str, Any]:
        """``state.json`` as it is now."""
        return dict(_read_json(self.home / "state.json", {}))

    def session_ids(self) -> list[str]:
        """The ids of the sessions it holds."""
        return [s["id"] for s in self.state().get("sessions", [])]

    def add_session(
        self,
        session_id: str,
        owner: str,
        kind: str = "virtual",
        *,
        created: float | None = None,
        connections: int = 0,
        disconnected: float | None = None,
    ) -> None:
        """Put a session in the state, as if someone had created it."""
        with (self.home / "state.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            state = self.state()
            state.setdefault("sessions", []).append(
                {
                    "id": session_id,
                    "owner": owner,
                    "user": "",
                    "name": "",
                    "type": kind,
                    "created": time.time() if created is None else created,
                    "connections": connections,
                    "disconnected": disconnected,
                }
            )
            _write_json(self.home / "state.json", state)

    def forked(self) -> list[int]:
        """Pids of every hanging call and its grandchild (since the last reset)."""
        path = self.home / "pids"
        return [int(p) for p in path.read_text().split()] if path.exists() else []

    def grandchildren(self) -> list[int]:
        """Pids of hanging calls and their grandchildren that still run."""
        alive = []
        for pid in self.forked():
            try:
                cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            except OSError:
                continue
            if b"fake_dcv.py" in cmdline and _status(pid) != "Z":
                alive.append(pid)
        return alive

    def kill_grandchildren(self) -> None:
        """SIGKILL every hanging call and grandchild still there (by pid)."""
        for pid in self.grandchildren():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(FileNotFoundError):
            (self.home / "pids").unlink()


def _status(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return text.rsplit(")", 1)[1].split()[0]


if __name__ == "__main__":
    sys.exit(main())
