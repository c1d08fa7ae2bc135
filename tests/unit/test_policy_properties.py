"""Properties of the policy loader and of what it grants users (hypothesis).

Whatever JSON sits in ``users.json`` and ``pools.json``, loading either gives
a policy or a :class:`PolicyError` naming the file, never another exception;
and a user reaches exactly the servers their entry names directly or
through their pools, or any server with ``ALLOW_CUSTOM``.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any, cast

from hypothesis import given, settings
from hypothesis import strategies as st

from dcvix.director.policy import (
    ALLOW_CUSTOM,
    PolicyError,
    PolicyHolder,
    load_policy,
)
from dcvix.director.portal import Portal

NAMES = st.sampled_from(["ws-1", "WS-2", "ws-3", "gpu-1", "gpu-2", ALLOW_CUSTOM])
IDS = st.sampled_from(["alice", "bob", "Bob", "carol", "gpu", "cpu", "none"])
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
KEYS = st.sampled_from(
    ["id", "ID", "UserID", "PoolID", "admin", "workstations", "Pools", "pools", "x"]
)
ITEMS = st.dictionaries(
    KEYS,
    IDS | st.lists(NAMES | IDS, max_size=4) | st.booleans() | JSON_VALUES,
    max_size=5,
)
FILES = st.lists(ITEMS, max_size=5) | JSON_VALUES


def _write(folder: Path, users: Any, pools: Any) -> None:
    (folder / "users.json").write_text(json.dumps(users))
    (folder / "pools.json").write_text(json.dumps(pools))


@settings(max_examples=300, deadline=None)
@given(users=FILES, pools=FILES, ignore_case=st.booleans())
def test_any_json_loads_or_is_refused_with_the_file_named(
    users: Any, pools: Any, ignore_case: bool
) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        _write(folder, users, pools)
        try:
            policy = load_policy(folder, ignore_case)
        except PolicyError as error:
            assert str(folder) in str(error)
            return
        for user in policy.users.values():
            assert policy.user(user.id) == user
            assert len(set(user.workstations)) == len(user.workstations)


USER_ENTRIES = st.fixed_dictionaries(
    {
        "workstations": st.lists(NAMES, unique=True, max_size=4),
        "pools": st.lists(st.sampled_from(["gpu", "cpu", "ghost"]), unique=True),
    }
)
POOL_MEMBERS = st.lists(NAMES.filter(lambda n: n != ALLOW_CUSTOM), unique=True)


@settings(max_examples=200, deadline=None)
@given(
    entry=USER_ENTRIES,
    gpu=POOL_MEMBERS,
    cpu=POOL_MEMBERS,
    asked=NAMES.filter(lambda n: n != ALLOW_CUSTOM),
)
def test_a_user_reaches_exactly_what_the_policy_names(
    entry: dict[str, list[str]], gpu: list[str], cpu: list[str], asked: str
) -> None:
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        _write(
            folder,
            [{"id": "bob", **entry}],
            [{"id": "gpu", "workstations": gpu}, {"id": "cpu", "workstations": cpu}],
        )
        portal = Portal(PolicyHolder(folder), cast(Any, None), cast(Any, None), 8443)
        pools = {"gpu": gpu, "cpu": cpu}
        reachable = {
            n.lower()
            for n in entry["workstations"]
            + [m for p in entry["pools"] for m in pools.get(p, [])]
        }
        expected = ALLOW_CUSTOM in entry["workstations"] or asked.lower() in reachable
        assert portal.grant("bob").allows(asked) is expected
        assert portal.grant("nobody").allows(asked) is False
        listed = portal.listed_servers("bob")
        assert len({n.lower() for n in listed}) == len(listed)
        assert {n.lower() for n in listed} - {ALLOW_CUSTOM.lower()} == (
            reachable - {ALLOW_CUSTOM.lower()}
        )
