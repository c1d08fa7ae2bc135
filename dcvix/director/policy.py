"""The JSON policy: who may log in as admin, which workstations and pools users get.

``policydb_folder/users.json`` and ``pools.json`` are arrays of objects, read
with both key spellings in use: the Go code's (``id``, ``admin``,
``workstations``, ``pools``, in any case) and its docs' (``UserID``, ``PoolID``,
``Workstations``, ``Pools``). A file that does not validate is refused whole,
with a message naming the file, the item and the key; at start that stops the
director, on SIGHUP the last good policy stays.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from twisted.logger import Logger

from dcvix.common.files import atomic_write

log = Logger()

ALLOW_CUSTOM = "ALLOW_CUSTOM"
MAX_ID_LENGTH = 256


class PolicyError(ValueError):
    """A policy file that cannot be used; ``str()`` says where and why."""


@dataclass(frozen=True)
class UserPolicy:
    """One entry of ``users.json``."""

    id: str
    admin: bool = False
    workstations: tuple[str, ...] = ()
    pools: tuple[str, ...] = ()


@dataclass(frozen=True)
class PoolPolicy:
    """One entry of ``pools.json``."""

    id: str
    workstations: tuple[str, ...] = ()


@dataclass(frozen=True)
class Policy:
    """Both files, validated."""

    users: dict[str, UserPolicy] = field(default_factory=dict)
    pools: dict[str, PoolPolicy] = field(default_factory=dict)
    warnings: tuple[str, ...] = ()
    ignore_case: bool = False

    def user(self, user_id: str) -> UserPolicy | None:
        """The entry of ``user_id``, or None.

        Matched exactly, as Go does; with ``ignore_case`` (LDAP logins), in
        any ASCII case (see :func:`ascii_fold`).
        """
        entry = self.users.get(user_id)
        if entry is None and self.ignore_case:
            folded = ascii_fold(user_id)
            entry = next(
                (u for u in self.users.values() if ascii_fold(u.id) == folded), None
            )
        return entry

    @cached_property
    def pools_by_host(self) -> dict[str, tuple[str, ...]]:
        """Each workstation (lower case) and the pools holding it.

        Worked out once per policy: listing 10,000 servers must not walk
        every pool for each.
        """
        found: dict[str, list[str]] = {}
        for pool in self.pools.values():
            for member in dict.fromkeys(w.lower() for w in pool.workstations):
                found.setdefault(member, []).append(pool.id)
        return {host: tuple(ids) for host, ids in found.items()}

    def is_admin(self, user: str) -> bool:
        """Whether ``users.json`` says ``user`` is an admin."""
        entry = self.user(user)
        return entry is not None and entry.admin


_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def ascii_fold(text: str) -> str:
    """``text`` with A-Z lowered and nothing else changed.

    Full case folding would match ids a directory keeps apart (``ß`` and
    ``ss``), letting one account pass for another's policy entry; ids that
    differ beyond ASCII case must match exactly.
    """
    return text.translate(_ASCII_LOWER)


def valid_id(text: str) -> bool:
    """A user, pool or session id: not empty, plain text, no leading ``-``.

    Plain text: no control character, and no lone surrogate (a JSON escape
    that is not a character).
    """
    return (
        0 < len(text) <= MAX_ID_LENGTH
        and not text.startswith("-")
        and all(unicodedata.category(c) not in ("Cc", "Cs") for c in text)
    )


def _fold(item: dict[str, Any]) -> dict[str, Any]:
    folded: dict[str, Any] = {}
    for key, value in item.items():
        folded.setdefault(key.lower(), value)
    return folded


def _strings(value: Any, where: str, key: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise PolicyError(f"{where}: {key!r} must be a list of strings")
    for entry in value:
        if not valid_id(entry):
            raise PolicyError(f"{where}: {key!r} holds an invalid entry {entry!r}")
    duplicates = sorted({v for v in value if value.count(v) > 1})
    if duplicates:
        raise PolicyError(f"{where}: {key!r} lists {', '.join(duplicates)} twice")
    return tuple(value)


def _id(item: dict[str, Any], where: str, alias: str) -> str:
    candidates = {k: item[k] for k in ("id", alias) if k in item}
    values = set(map(str, candidates.values()))
    if not candidates:
        raise PolicyError(f"{where}: no 'id'")
    if len(values) > 1:
        raise PolicyError(f"{where}: 'id' and {alias!r} differ")
    value = next(iter(candidates.values()))
    if not isinstance(value, str) or not valid_id(value):
        raise PolicyError(f"{where}: 'id' must be a valid id, not {value!r}")
    return value


def _items(path: Path) -> list[dict[str, Any]]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as error:
        raise PolicyError(f"{path}: {error.strerror}") from None
    except (ValueError, UnicodeDecodeError) as error:
        raise PolicyError(f"{path}: not valid JSON: {error}") from None
    except RecursionError:
        raise PolicyError(f"{path}: not valid JSON: nested too deeply") from None
    if not isinstance(data, list):
        raise PolicyError(f"{path}: must be a JSON array of objects")
    for number, item in enumerate(data, start=1):
        if not isinstance(item, dict):
            raise PolicyError(f"{path}: item {number} is not an object")
    return data


def _unique(ids: Iterable[str], path: Path) -> None:
    seen: dict[str, int] = {}
    for number, item_id in enumerate(ids, start=1):
        if item_id in seen:
            raise PolicyError(
                f"{path}: item {number}: 'id' {item_id!r} repeats item {seen[item_id]}"
            )
        seen[item_id] = number


def parse_users(path: Path) -> list[UserPolicy]:
    """``users.json``, validated."""
    users = []
    for number, raw in enumerate(_items(path), start=1):
        item = _fold(raw)
        where = f"{path}: item {number}"
        user_id = _id(item, where, "userid")
        where = f"{where} ({user_id})"
        admin = item.get("admin", False)
        if admin is None:
            admin = False
        if not isinstance(admin, bool):
            raise PolicyError(f"{where}: 'admin' must be true or false")
        users.append(
            UserPolicy(
                user_id,
                admin,
                _strings(item.get("workstations"), where, "workstations"),
                _strings(item.get("pools"), where, "pools"),
            )
        )
    _unique((u.id for u in users), path)
    return users


def parse_pools(path: Path) -> list[PoolPolicy]:
    """``pools.json``, validated."""
    pools = []
    for number, raw in enumerate(_items(path), start=1):
        item = _fold(raw)
        where = f"{path}: item {number}"
        pool_id = _id(item, where, "poolid")
        pools.append(
            PoolPolicy(
                pool_id,
                _strings(
                    item.get("workstations"), f"{where} ({pool_id})", "workstations"
                ),
            )
        )
    _unique((p.id for p in pools), path)
    return pools


def load_policy(folder: Path, ignore_case: bool = False) -> Policy:
    """Read and check both files.

    ``ignore_case``: user ids are matched in any case (LDAP logins), so two
    users whose ids differ only in case are refused.

    Raises:
        PolicyError: the first problem found.
    """
    users = parse_users(folder / "users.json")
    if ignore_case:
        _unique((ascii_fold(u.id) for u in users), folder / "users.json")
    pools = parse_pools(folder / "pools.json")
    known = {p.id for p in pools}
    warnings = tuple(
        f"{folder / 'users.json'}: user {u.id!r} refers to unknown pool {p!r}"
        for u in users
        for p in u.pools
        if p not in known
    )
    return Policy(
        {u.id: u for u in users}, {p.id: p for p in pools}, warnings, ignore_case
    )


def ensure_policy_files(folder: Path) -> None:
    """Create the folder and empty ``[]`` files when missing, as Go dcvix does."""
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    for name in ("users.json", "pools.json"):
        path = folder / name
        if not path.exists():
            atomic_write(path, b"[]\n", 0o644)
            log.info("created an empty {path}", path=str(path))


class PolicyHolder:
    """The policy in force; :meth:`reload` keeps it when the files are bad."""

    def __init__(self, folder: Path, ignore_case: bool = False) -> None:
        self.folder = folder
        self._ignore_case = ignore_case
        self.current = load_policy(folder, ignore_case)
        # Why the last reload was refused ("" after a good one).
        self.reload_error = ""
        self._announce()

    def _announce(self) -> None:
        for warning in self.current.warnings:
            log.warn("{warning}", warning=warning)
        log.info(
            "policy: {users} users ({admins} admins), {pools} pools from {folder}",
            users=len(self.current.users),
            admins=sum(u.admin for u in self.current.users.values()),
            pools=len(self.current.pools),
            folder=str(self.folder),
        )

    def reload(self) -> bool:
        """Re-read the files; on failure log it and keep the last good policy."""
        try:
            fresh = load_policy(self.folder, self._ignore_case)
        except PolicyError as error:
            log.error(
                "policy not reloaded, keeping the last good one: {error}",
                error=str(error),
            )
            self.reload_error = str(error)
            return False
        self.current = fresh
        self.reload_error = ""
        self._announce()
        return True
