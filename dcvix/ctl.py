"""``dcvixctl``: the director's admin command line.

``dcvixctl --conf FILE agents list [--state S]``, ``agents approve GUID...
[--replace]``, ``agents deny|revoke|reactivate|delete GUID``, ``policy check``,
``store copy --from URL --to URL``, ``status``. Agent commands work on the
director's store (``[store] url``: ``agents.db`` or PostgreSQL) directly, safe
while the director runs (writers take turns; the director follows every commit). Every
action is audited with the OS user who ran it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import getpass
import os
import sys
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any, TypeVar

from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from dcvix.common.config import (
    ConfigError,
    candidate_paths,
    load_config,
)
from dcvix.common.errors import ApiError
from dcvix.director import status
from dcvix.director.agent_admin import AgentAdmin, forget_nothing
from dcvix.director.audit import Audit
from dcvix.director.audit_export import open_sinks
from dcvix.director.config import DirectorConfig, StoreSection
from dcvix.director.hostnames import own_host_names
from dcvix.director.policy import PolicyError, load_policy
from dcvix.director.registry import (
    NOTHING_SEEN,
    REGISTERED,
    STATES,
    AgentRecord,
    Seen,
    StoreError,
    StoreFull,
)
from dcvix.director.registry.copy import copy_store
from dcvix.director.registry.engine import inline_runner
from dcvix.director.registry.sql import SqlRegistry
from dcvix.director.registry.stores import (
    describe_store,
    director_files,
    is_postgres,
    open_engine,
    open_registry,
    store_password,
)

T = TypeVar("T")


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


def _open(config: DirectorConfig) -> SqlRegistry:
    path = director_files(config).agents_db
    if not is_postgres(config.store) and not path.exists():
        raise ConfigError(f"{path} does not exist: has the director been started?")
    return open_registry(config, inline_runner)


def _wall_clock() -> Clock:
    clock = Clock()
    clock.advance(dt.datetime.now(dt.UTC).timestamp())
    return clock


def wait(coroutine: Coroutine[Any, Any, T]) -> T:
    """The result of a coroutine whose every step completes at once.

    The registry runs inline here, so its Deferreds have fired before they are
    awaited and the coroutine finishes within this call.
    """
    results: list[T | Failure] = []
    Deferred.fromCoroutine(coroutine).addBoth(results.append)
    assert results, "the coroutine waited for something that never came"
    outcome = results[0]
    if isinstance(outcome, Failure):
        outcome.raiseException()
    return outcome


def _when(moment: dt.datetime | None) -> str:
    return moment.astimezone().isoformat(timespec="seconds") if moment else "-"


def _state(record: AgentRecord) -> str:
    if record.state != REGISTERED or record.key_fingerprint:
        return record.state
    if record.claimed_key:
        return f"registered (unpinned, claim {record.claimed_key[:16]})"
    return "registered (unpinned)"


def list_agents(admin: AgentAdmin, state: str | None) -> str:
    """The ``agents list`` table."""
    records = wait(admin.list(state))
    if not records:
        return f"no {state or ''} agents".replace("  ", " ")
    rows = [("GUID", "HOSTNAME", "STATE", "SINCE", "ADDRESS", "KEY", "CERT UNTIL")]
    for record in records:
        hostname = record.hostname
        if record.state == REGISTERED and record.duplicate_hostname:
            hostname += " (duplicate!)"
        rows.append(
            (
                record.guid,
                hostname,
                _state(record),
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


PAST = {
    "approve": "approved",
    "deny": "denied",
    "revoke": "revoked",
    "reactivate": "reactivated",
    "delete": "deleted",
}


def act(
    admin: AgentAdmin,
    action: str,
    guids: Sequence[str],
    replace: bool = False,
    claimed_key: str = "",
    seen: Seen = NOTHING_SEEN,
) -> int:
    """Apply one action to each GUID; 0 when all succeeded, else 1."""
    status = 0
    for guid in guids:
        try:
            outcome = wait(
                admin.act(action, guid, _actor(), replace, claimed_key, seen)
            )
        except ApiError as error:
            print(f"{guid}: {error.message}", file=sys.stderr)
            status = 1
            continue
        print(f"agent {guid} ({outcome.record.hostname}) {PAST[action]}")
        for old in outcome.replaced:
            print(f"agent {old} revoked: replaced by {guid}")
        if outcome.warning:
            print(f"warning: {outcome.warning}")
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
    listing.add_argument("--state", choices=STATES)
    approve = actions.add_parser("approve", help="approve pending agents")
    approve.add_argument("guids", nargs="+", metavar="GUID")
    approve.add_argument(
        "--replace",
        action="store_true",
        help="revoke a registered agent that already has the same hostname",
    )
    approve.add_argument(
        "--key",
        default="",
        metavar="FINGERPRINT",
        help="approve an adopted agent's claim for this key (SHA-256, hex)",
    )
    approve.add_argument(
        "--hostname",
        default="",
        help="refuse unless the agent still asks for this hostname (as listed)",
    )
    approve.add_argument(
        "--fingerprint",
        default="",
        help="refuse unless the agent still has this key (SHA-256, hex, as listed"
        " or as the agent logs it)",
    )
    for name, text in (
        ("deny", "deny a pending agent (kept as denied until deleted)"),
        ("revoke", "revoke a registered agent"),
        ("reactivate", "reactivate a revoked (or denied) agent"),
        ("delete", "forget an agent (the remedy for a 409 key mismatch)"),
    ):
        action = actions.add_parser(name, help=text)
        action.add_argument("guids", nargs="+", metavar="GUID")
    store = commands.add_parser("store", help="copy a store into another")
    store_actions = store.add_subparsers(dest="action", required=True)
    copy = store_actions.add_parser(
        "copy",
        help="copy agents, revoked tokens and the audit trail (again: only what "
        "is missing)",
    )
    copy.add_argument(
        "--from",
        dest="source",
        required=True,
        metavar="URL",
        help="sqlite:///… or postgresql://…",
    )
    copy.add_argument(
        "--to",
        dest="target",
        required=True,
        metavar="URL",
        help="sqlite:///… or postgresql://…",
    )
    copy.add_argument(
        "--password-file",
        default="",
        metavar="FILE",
        help="PostgreSQL password (first line; else PGPASSWORD or ~/.pgpass)",
    )
    commands.add_parser(
        "status",
        help="one screen on the director: version, uptime, certificates, agents, "
        "servers, sessions, last errors; exit 1 when something needs attention",
    )
    policy = commands.add_parser("policy", help="check the policy files")
    policy_actions = policy.add_subparsers(dest="action", required=True)
    policy_actions.add_parser("check", help="validate users.json and pools.json")
    return parser


def check_policy(config: DirectorConfig) -> int:
    """``policy check``: 0 and a summary when both files are valid, else 1."""
    folder = Path(config.director.policydb_folder)
    try:
        policy = load_policy(folder, config.director.auth_type == "ldap")
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
    except StoreFull as error:
        # Nothing was changed; the same command works once space is freed.
        print(f"{error}: nothing was changed (free space and retry)", file=sys.stderr)
        return 1
    except StoreError as error:
        print(error, file=sys.stderr)
        return 2


def copy_stores(source: str, target: str, password_file: str) -> int:
    """``store copy``: 0 and what was copied, 1 when a store failed."""
    password = store_password(StoreSection(password_file=password_file))
    opened = []
    try:
        opened.append(open_engine(source, password, must_exist=True))
        opened.append(open_engine(target, password))
        report = copy_store(*opened)
    finally:
        for engine in opened:
            engine.close()
    print(f"copied {describe_store(source)} into {describe_store(target)}")
    for line in report.lines():
        print(f"  {line}")
    return 0


def show_status(config: DirectorConfig) -> int:
    """``status``: the screen; 0 when all is well, 1 when something needs attention."""
    now = dt.datetime.now(dt.UTC)
    report = status.Report()
    status.running_lines(config, now, report)
    files = director_files(config)
    status.certificate_lines(files.ca_pem, files.server_crt, now, report)
    registry = _open(config)
    try:
        status.agent_lines(wait(registry.states()), report)
        failed, refused = (
            len(wait(registry.audit_query(status.outcome_query(outcome, now))))
            for outcome in ("failed", "refused")
        )
    finally:
        registry.close()
    status.refusal_lines(failed, refused, report)
    status.error_lines(status.last_errors(status.log_file(config)), now, report)
    print(report.render())
    return 1 if report.attention else 0


def _run(options: argparse.Namespace) -> int:
    if options.command == "store":
        return copy_stores(options.source, options.target, options.password_file)
    config = _load(options.conf)
    if options.command == "policy":
        return check_policy(config)
    if options.command == "status":
        return show_status(config)
    clock = _wall_clock()
    # An action by dcvixctl is exported like the director's own ([audit]).
    try:
        sinks = open_sinks(
            config.audit.file, config.audit.syslog, config.audit.syslog_address, clock
        )
    except ValueError as error:
        raise ConfigError(f"[audit] {error}") from None
    registry = _open(config)
    audit = Audit(registry, clock, sinks)
    admin = AgentAdmin(registry, audit, clock, _own_names(), forget_nothing)
    try:
        if options.action == "list":
            print(list_agents(admin, options.state))
            return 0
        approving = options.action == "approve"
        seen = (
            Seen(hostname=options.hostname, key=options.fingerprint)
            if approving
            else NOTHING_SEEN
        )
        return act(
            admin,
            options.action,
            options.guids,
            approving and options.replace,
            options.key if approving else "",
            seen,
        )
    finally:
        audit.close()
        registry.close()


if __name__ == "__main__":
    raise SystemExit(main())
