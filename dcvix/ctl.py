"""``dcvixctl``: the director's admin command line.

``dcvixctl --conf FILE agents list [--state S]``, ``agents approve GUID...
[--replace]``, ``agents deny|revoke|reactivate|delete GUID``, ``policy check``.
Agent commands work on the director's ``agents.db`` directly, safe while the
director runs (SQLite locks; the director reads agent state per request). Every
action is audited with the OS user who ran it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import os
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from dcvix.common.config import (
    ConfigError,
    candidate_paths,
    load_config,
)
from dcvix.common.errors import ApiError
from dcvix.director import store
from dcvix.director.ca import own_host_names
from dcvix.director.config import DirectorConfig
from dcvix.director.policy import PolicyError, load_policy


def _actor() -> str:
    user = getpass.getuser()
    sudo = os.environ.get("SUDO_USER")
    return f"os:{user}" + (f" (sudo by {sudo})" if sudo and sudo != user else "")


def _load(conf: str | None) -> DirectorConfig:
    if conf is not None:
        return load_config(DirectorConfig, Path(conf))
    for path in candidate_paths("director", Path.cwd()):
        if path.is_file():
            return load_config(DirectorConfig, path)
    raise ConfigError("no config file found: pass --conf FILE")


def _open(config: DirectorConfig) -> sqlite3.Connection:
    path = Path(config.director.data_dir) / "agents.db"
    if not path.exists():
        raise ConfigError(f"{path} does not exist: has the director been started?")
    return store.connect(path)


def _when(moment: dt.datetime | None) -> str:
    return moment.astimezone().isoformat(timespec="seconds") if moment else "-"


def list_agents(connection: sqlite3.Connection, state: str | None) -> str:
    """The ``agents list`` table."""
    records = store.list_txn(connection, state)
    if not records:
        return f"no {state or ''} agents".replace("  ", " ")
    duplicates = store.duplicate_hostnames_txn(connection)
    rows = [("GUID", "HOSTNAME", "STATE", "SINCE", "ADDRESS", "KEY", "CERT UNTIL")]
    for record in records:
        hostname = record.hostname
        if record.state == store.REGISTERED and hostname.lower() in duplicates:
            hostname += " (duplicate!)"
        rows.append(
            (
                record.guid,
                hostname,
                record.state
                if record.key_fingerprint or record.state != store.REGISTERED
                else "registered (unpinned)",
                _when(record.state_changed_at or record.created_at),
                record.address or "-",
                record.key_fingerprint[:16] or "-",
                _when(record.cert_expires_at),
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(
            cell.ljust(width) for cell, width in zip(row, widths, strict=True)
        ).rstrip()
        for row in rows
    )


def _own_names() -> frozenset[str]:
    # The names the director itself takes as its own: host name and FQDN.
    return frozenset(name.lower() for name in own_host_names())


def _act(
    connection: sqlite3.Connection,
    action: Callable[..., store.ActionResult],
    guids: Sequence[str],
    past: str,
    **options: object,
) -> int:
    status = 0
    now = dt.datetime.now(dt.UTC)
    for guid in guids:
        try:
            result = action(connection, guid, _actor(), now, **options)
        except ApiError as error:
            print(f"{guid}: {error.message}", file=sys.stderr)
            status = 1
            continue
        print(f"agent {guid} ({result.record.hostname}) {past}")
        for old in result.replaced:
            print(f"agent {old} revoked: replaced by {guid}")
        if result.warning:
            print(f"warning: {result.warning}")
    return status


def build_parser() -> argparse.ArgumentParser:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="dcvixctl", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--conf", help="the director's config file")
    commands = parser.add_subparsers(dest="command", required=True)
    agents = commands.add_parser("agents", help="list and manage agents")
    actions = agents.add_subparsers(dest="action", required=True)
    listing = actions.add_parser("list", help="list agents")
    listing.add_argument("--state", choices=store.STATES)
    approve = actions.add_parser("approve", help="approve pending agents")
    approve.add_argument("guids", nargs="+", metavar="GUID")
    approve.add_argument(
        "--replace",
        action="store_true",
        help="revoke a registered agent that already has the same hostname",
    )
    for name, text in (
        ("deny", "deny a pending agent (kept as denied until deleted)"),
        ("revoke", "revoke a registered agent"),
        ("reactivate", "reactivate a revoked (or denied) agent"),
        ("delete", "forget an agent (the remedy for a 409 key mismatch)"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("guids", nargs="+", metavar="GUID")
    policy = commands.add_parser("policy", help="check the policy files")
    policy_actions = policy.add_subparsers(dest="action", required=True)
    policy_actions.add_parser("check", help="validate users.json and pools.json")
    return parser


def check_policy(config: DirectorConfig) -> int:
    """``policy check``: 0 and a summary when both files are valid, else 1."""
    folder = Path(config.director.policydb_folder)
    try:
        policy = load_policy(folder)
    except PolicyError as error:
        print(error, file=sys.stderr)
        return 1
    for warning in policy.warnings:
        print(f"warning: {warning}")
    admins = sorted(u.id for u in policy.users.values() if u.admin)
    print(
        f"{folder}: {len(policy.users)} users, {len(policy.pools)} pools; "
        f"admins: {', '.join(admins) or 'none'}"
    )
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; 0 on success, 1 when an action failed, 2 on bad use."""
    options = build_parser().parse_args(argv)
    try:
        return _run(options)
    except ConfigError as error:
        print(error, file=sys.stderr)
        return 2
    except sqlite3.Error as error:
        print(f"agents.db: {error}", file=sys.stderr)
        return 2


def _run(options: argparse.Namespace) -> int:
    config = _load(options.conf)
    if options.command == "policy":
        return check_policy(config)
    connection = _open(config)
    try:
        if options.action == "list":
            print(list_agents(connection, options.state))
            return 0
        if options.action == "approve":
            return _act(
                connection,
                store.approve_txn,
                options.guids,
                "approved",
                replace_existing=options.replace,
                own_names=_own_names(),
            )
        verbs = {
            "deny": (store.deny_txn, "denied"),
            "revoke": (store.revoke_txn, "revoked"),
            "reactivate": (store.reactivate_txn, "reactivated"),
            "delete": (store.delete_txn, "deleted"),
        }
        function, past = verbs[options.action]
        return _act(connection, function, options.guids, past)
    finally:
        connection.close()


if __name__ == "__main__":
    raise SystemExit(main())
