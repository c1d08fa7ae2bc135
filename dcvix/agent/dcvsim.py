"""A SIMULATION of the Amazon DCV ``dcv`` command, for demos without DCV.

It imitates the documented CLI (``list-sessions``, ``describe-session``,
``create-session``, ``close-session``, ``set-config``, ``get-config``) with its
state in a JSON file, and says it is a simulation wherever it can: every
session's ``licensing-mode`` is ``SIMULATION`` and text output is prefixed with
``[simulated DCV]``. Two extra commands act out a client: ``connect ID`` and
``disconnect ID``. It never starts a desktop.

Run as ``dcvix-dcv-simulator --state FILE <dcv arguments>`` (``make demo``
points the agent's ``dcv_path`` at a small script that does this).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

LABEL = "[simulated DCV]"


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


@contextlib.contextmanager
def _state(path: Path) -> Iterator[dict[str, Any]]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        text = handle.read()
        state = json.loads(text) if text.strip() else {"sessions": [], "config": {}}
        yield state
        handle.seek(0)
        handle.truncate()
        json.dump(state, handle, indent=2)


def _fail(message: str, code: int = 1) -> int:
    print(f"{LABEL} {message}", file=sys.stderr)
    return code


def _pretty(value: Any) -> str:
    # DCV prints a space on both sides of the colon.
    return json.dumps(value, indent=2).replace('": ', '" : ')


def _find(state: dict[str, Any], session_id: str) -> dict[str, Any] | None:
    return next((s for s in state["sessions"] if s["id"] == session_id), None)


def run(state_path: Path, argv: Sequence[str]) -> int:
    """One simulated ``dcv`` command; the exit status."""
    parser = argparse.ArgumentParser(prog="dcv", add_help=False)
    commands = parser.add_subparsers(dest="command", required=True)
    listing = commands.add_parser("list-sessions")
    listing.add_argument("-j", "--json", action="store_true")
    describe = commands.add_parser("describe-session")
    describe.add_argument("id")
    describe.add_argument("-j", "--json", action="store_true")
    create = commands.add_parser("create-session")
    for option in ("--type", "--owner", "--user", "--name", "--storage-root"):
        create.add_argument(option)
    create.add_argument("id")
    for name in ("close-session", "connect", "disconnect"):
        commands.add_parser(name).add_argument("id")
    setter = commands.add_parser("set-config")
    setter.add_argument("--section", required=True)
    setter.add_argument("--key", required=True)
    setter.add_argument("value")
    getter = commands.add_parser("get-config")
    getter.add_argument("--section")
    getter.add_argument("--key")
    try:
        options = parser.parse_args(argv)
    except SystemExit:
        return 2
    with _state(state_path) as state:
        return _dispatch(state, options)


def _dispatch(state: dict[str, Any], options: argparse.Namespace) -> int:
    command = options.command
    if command == "list-sessions":
        if options.json:
            print(_pretty(state["sessions"]))
        else:
            for s in state["sessions"]:
                owner, kind = s["owner"], s["type"]
                print(f"{LABEL} Session: '{s['id']}' (owner:{owner} type:{kind})")
        return 0
    if command == "describe-session":
        found = _find(state, options.id)
        if found is None:
            return _fail(f"Could not find session '{options.id}'")
        print(_pretty(found) if options.json else f"{LABEL} Session: '{found['id']}'")
        return 0
    if command == "create-session":
        kind = (options.type or "console").lower()
        if kind not in ("console", "virtual"):
            return _fail(f"Invalid session type '{options.type}'")
        if _find(state, options.id) is not None:
            return _fail(f"A session with id '{options.id}' already exists")
        if kind == "console" and any(s["type"] == "console" for s in state["sessions"]):
            return _fail("A console session is already running")
        owner = options.owner or "root"
        display = f":{len(state['sessions']) + 1}" if kind == "virtual" else ""
        state["sessions"].append(
            {
                "id": options.id,
                "owner": owner,
                "name": options.name or options.id,
                "num-of-connections": 0,
                "creation-time": _now(),
                "last-disconnection-time": "",
                "licensing-mode": "SIMULATION",
                "storage-root": options.storage_root or "",
                "type": kind,
                "x11-display": display,
                "x11-authority": f"/run/dcv/{options.id}.xauth" if display else "",
            }
        )
        print(f"{LABEL} Session '{options.id}' created (nothing really runs)")
        return 0
    if command == "close-session":
        found = _find(state, options.id)
        if found is None:
            return _fail(f"Could not find session '{options.id}'")
        state["sessions"].remove(found)
        print(f"{LABEL} Session '{options.id}' closed")
        return 0
    if command in ("connect", "disconnect"):
        found = _find(state, options.id)
        if found is None:
            return _fail(f"Could not find session '{options.id}'")
        if command == "connect":
            found["num-of-connections"] += 1
        elif found["num-of-connections"] > 0:
            found["num-of-connections"] -= 1
            found["last-disconnection-time"] = _now()
        print(f"{LABEL} {found['num-of-connections']} client(s) on '{options.id}'")
        return 0
    if command == "set-config":
        state["config"][f"{options.section}/{options.key}"] = options.value
        return 0
    values = state["config"]
    for key, value in sorted(values.items()):
        section, name = key.split("/", 1)
        if options.section in (None, section) and options.key in (None, name):
            print(f"{LABEL} [{section}] {name} = {value}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``dcvix-dcv-simulator --state FILE <dcv arguments>``."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 2 or args[0] != "--state":
        print(
            "usage: dcvix-dcv-simulator --state FILE <dcv arguments>", file=sys.stderr
        )
        return 2
    return run(Path(args[1]), args[2:])


if __name__ == "__main__":
    raise SystemExit(main())
