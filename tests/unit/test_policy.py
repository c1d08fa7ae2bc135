"""users.json and pools.json: both key spellings, validation, reload, policy check."""

from __future__ import annotations

import json
import stat
from pathlib import Path
from typing import Any, cast

import pytest
from twisted.logger import ILogObserver, Logger, LogLevel, formatEvent

from dcvix import ctl
from dcvix.director import policy
from dcvix.director.policy import (
    Policy,
    PolicyError,
    PolicyHolder,
    PoolPolicy,
    UserPolicy,
    ensure_policy_files,
    load_policy,
)

GO_USERS = [
    {"id": "alice", "admin": True, "workstations": ["ws1", "ALLOW_CUSTOM"]},
    {"ID": "bob", "Admin": False, "Workstations": ["ws2"], "Pools": ["gpu"]},
    {"id": "carol", "pools": ["gpu", "cpu"]},
]
DOCS_USERS = [
    {"UserID": "alice", "admin": True, "Workstations": ["ws1", "ALLOW_CUSTOM"]},
    {"UserID": "bob", "Workstations": ["ws2"], "Pools": ["gpu"]},
    {"UserID": "carol", "Pools": ["gpu", "cpu"]},
]
GO_POOLS = [
    {"id": "gpu", "workstations": ["gpu1", "gpu2"]},
    {"ID": "cpu", "WORKSTATIONS": ["cpu1"]},
]
DOCS_POOLS = [
    {"PoolID": "gpu", "Workstations": ["gpu1", "gpu2"]},
    {"PoolID": "cpu", "Workstations": ["cpu1"]},
]
EXPECTED = Policy(
    {
        "alice": UserPolicy("alice", True, ("ws1", "ALLOW_CUSTOM")),
        "bob": UserPolicy("bob", False, ("ws2",), ("gpu",)),
        "carol": UserPolicy("carol", False, (), ("gpu", "cpu")),
    },
    {
        "gpu": PoolPolicy("gpu", ("gpu1", "gpu2")),
        "cpu": PoolPolicy("cpu", ("cpu1",)),
    },
)


def write(folder: Path, users: Any = (), pools: Any = ()) -> Path:
    """Both files; a str is written as it is, anything else as JSON."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in (("users.json", users), ("pools.json", pools)):
        text = content if isinstance(content, str) else json.dumps(list(content))
        (folder / name).write_text(text)
    return folder


def capture(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = []
    monkeypatch.setattr(
        policy, "log", Logger(observer=cast(ILogObserver, events.append))
    )
    return events


# ------------------------------------------------------------------ spellings


@pytest.mark.parametrize(
    ("users", "pools"),
    [
        pytest.param(GO_USERS, GO_POOLS, id="go"),
        pytest.param(DOCS_USERS, DOCS_POOLS, id="docs"),
        pytest.param(GO_USERS, DOCS_POOLS, id="mixed"),
    ],
)
def test_both_spellings_load_the_same_policy(
    tmp_path: Path, users: Any, pools: Any
) -> None:
    assert load_policy(write(tmp_path, users, pools)) == EXPECTED


def test_id_and_alias_may_both_be_given_when_equal(tmp_path: Path) -> None:
    folder = write(
        tmp_path,
        [{"id": "alice", "UserID": "alice", "admin": True}],
        [{"id": "gpu", "PoolID": "gpu"}],
    )

    assert load_policy(folder) == Policy(
        {"alice": UserPolicy("alice", True)}, {"gpu": PoolPolicy("gpu")}
    )


def test_admin_missing_or_null_is_false(tmp_path: Path) -> None:
    folder = write(tmp_path, [{"id": "bob"}, {"id": "carol", "admin": None}])

    loaded = load_policy(folder)
    assert loaded.users["bob"] == UserPolicy("bob", False)
    assert loaded.users["carol"] == UserPolicy("carol", False)


def test_empty_files_are_an_empty_policy(tmp_path: Path) -> None:
    assert load_policy(write(tmp_path, "[]\n", "[]")) == Policy()


def test_is_admin_matches_the_id_exactly(tmp_path: Path) -> None:
    loaded = load_policy(write(tmp_path, GO_USERS, GO_POOLS))

    assert loaded.is_admin("alice")
    assert not loaded.is_admin("Alice")
    assert not loaded.is_admin("alice ")
    assert not loaded.is_admin("bob")
    assert not loaded.is_admin("carol")
    assert not loaded.is_admin("nobody")
    assert not loaded.is_admin("")


def test_unknown_pool_loads_with_a_warning(tmp_path: Path) -> None:
    folder = write(tmp_path, [{"id": "alice", "pools": ["gpu", "ghost"]}], GO_POOLS)

    loaded = load_policy(folder)
    assert loaded.users["alice"].pools == ("gpu", "ghost")
    assert loaded.warnings == (
        f"{folder}/users.json: user 'alice' refers to unknown pool 'ghost'",
    )


# ----------------------------------------------------------------- refusals

U = "users.json"
P = "pools.json"


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        (U, "not json", "not valid JSON: Expecting value: line 1 column 1 (char 0)"),
        (
            U,
            '[{"id": "alice"',
            "not valid JSON: Expecting ',' delimiter: line 1 column 16 (char 15)",
        ),
        (U, '{"id": "alice"}', "must be a JSON array of objects"),
        (U, '"alice"', "must be a JSON array of objects"),
        (U, '[{"id": "alice"}, "bob"]', "item 2 is not an object"),
        (U, '[{"id": "alice"}, ["bob"]]', "item 2 is not an object"),
        (U, '[{"admin": true}]', "item 1: no 'id'"),
        (U, '[{"id": "alice", "UserID": "bob"}]', "item 1: 'id' and 'userid' differ"),
        (U, '[{"id": ""}]', "item 1: 'id' must be a valid id, not ''"),
        (U, '[{"UserID": ""}]', "item 1: 'id' must be a valid id, not ''"),
        (U, '[{"id": "al\\nice"}]', "item 1: 'id' must be a valid id, not 'al\\nice'"),
        (
            U,
            '[{"id": "al\\u0085ice"}]',
            "item 1: 'id' must be a valid id, not 'al\\x85ice'",
        ),
        (U, '[{"id": "-alice"}]', "item 1: 'id' must be a valid id, not '-alice'"),
        (U, '[{"id": 7}]', "item 1: 'id' must be a valid id, not 7"),
        (U, '[{"id": null}]', "item 1: 'id' must be a valid id, not None"),
        (
            U,
            '[{"id": "bob"}, {"id": "alice", "admin": "yes"}]',
            "item 2 (alice): 'admin' must be true or false",
        ),
        (
            U,
            '[{"id": "alice", "admin": 1}]',
            "item 1 (alice): 'admin' must be true or false",
        ),
        (
            U,
            '[{"id": "alice", "workstations": "ws1"}]',
            "item 1 (alice): 'workstations' must be a list of strings",
        ),
        (
            U,
            '[{"id": "alice", "Workstations": ["ws1", 2]}]',
            "item 1 (alice): 'workstations' must be a list of strings",
        ),
        (
            U,
            '[{"id": "alice", "workstations": ["ws1", "-ws2"]}]',
            "item 1 (alice): 'workstations' holds an invalid entry '-ws2'",
        ),
        (
            U,
            '[{"id": "alice", "workstations": ["ws1", "ws2", "ws1"]}]',
            "item 1 (alice): 'workstations' lists ws1 twice",
        ),
        (
            U,
            '[{"id": "alice", "pools": {"gpu": 1}}]',
            "item 1 (alice): 'pools' must be a list of strings",
        ),
        (
            U,
            '[{"id": "alice", "Pools": ["gpu", "gpu"]}]',
            "item 1 (alice): 'pools' lists gpu twice",
        ),
        (
            U,
            '[{"id": "alice"}, {"id": "bob"}, {"UserID": "alice"}]',
            "item 3: 'id' 'alice' repeats item 1",
        ),
        (U, "[" * 100_000, "not valid JSON: nested too deeply"),
        (P, "[", "not valid JSON: Expecting value: line 1 column 2 (char 1)"),
        (
            P,
            '[{"id": "gpu", "x": ' + "[" * 100_000,
            "not valid JSON: nested too deeply",
        ),
        (P, "{}", "must be a JSON array of objects"),
        (P, "[1]", "item 1 is not an object"),
        (P, '[{"workstations": ["ws1"]}]', "item 1: no 'id'"),
        (P, '[{"id": "gpu", "PoolID": "cpu"}]', "item 1: 'id' and 'poolid' differ"),
        (P, '[{"PoolID": "gpu\\r"}]', "item 1: 'id' must be a valid id, not 'gpu\\r'"),
        (
            P,
            '[{"id": "gpu", "workstations": [null]}]',
            "item 1 (gpu): 'workstations' must be a list of strings",
        ),
        (
            P,
            '[{"id": "gpu", "workstations": ["a", "b", "b", "a"]}]',
            "item 1 (gpu): 'workstations' lists a, b twice",
        ),
        (P, '[{"id": "gpu"}, {"PoolID": "gpu"}]', "item 2: 'id' 'gpu' repeats item 1"),
    ],
)
def test_refusals_name_the_file_the_item_and_the_key(
    tmp_path: Path, name: str, text: str, message: str
) -> None:
    write(tmp_path)
    path = tmp_path / name
    path.write_text(text)

    with pytest.raises(PolicyError) as raised:
        load_policy(tmp_path)
    assert str(raised.value) == f"{path}: {message}"


def test_a_missing_file_is_refused(tmp_path: Path) -> None:
    write(tmp_path)
    (tmp_path / "pools.json").unlink()

    with pytest.raises(PolicyError) as raised:
        load_policy(tmp_path)
    assert str(raised.value) == f"{tmp_path}/pools.json: No such file or directory"


# ------------------------------------------------------------ files on disk


def test_ensure_policy_files_creates_the_folder_and_empty_files(tmp_path: Path) -> None:
    folder = tmp_path / "etc" / "policydb"

    ensure_policy_files(folder)

    assert folder.is_dir()
    for name in ("users.json", "pools.json"):
        assert (folder / name).read_text() == "[]\n"
        assert stat.S_IMODE((folder / name).stat().st_mode) == 0o644
    assert load_policy(folder) == Policy()


def test_ensure_policy_files_keeps_existing_files(tmp_path: Path) -> None:
    users = '[{"id": "alice", "admin": true}]'
    (tmp_path / "users.json").write_text(users)

    ensure_policy_files(tmp_path)
    ensure_policy_files(tmp_path)

    assert (tmp_path / "users.json").read_text() == users
    assert (tmp_path / "pools.json").read_text() == "[]\n"
    assert load_policy(tmp_path).is_admin("alice")


# ------------------------------------------------------------------ reload


def test_reload_keeps_the_last_good_policy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    events = capture(monkeypatch)
    folder = write(tmp_path, GO_USERS, GO_POOLS)
    holder = PolicyHolder(folder)
    assert holder.current == EXPECTED
    assert [formatEvent(e) for e in events] == [
        f"policy: 3 users (1 admins), 2 pools from {folder}"
    ]
    events.clear()

    (folder / "users.json").write_text('[{"id": "alice", "admin": "no"}]')
    assert holder.reload() is False
    assert holder.current == EXPECTED
    assert holder.current.is_admin("alice")
    assert [(e["log_level"], formatEvent(e)) for e in events] == [
        (
            LogLevel.error,
            "policy not reloaded, keeping the last good one: "
            f"{folder}/users.json: item 1 (alice): 'admin' must be true or false",
        )
    ]
    events.clear()

    (folder / "users.json").write_text(
        '[{"id": "alice"}, {"id": "dave", "admin": true, "pools": ["ghost"]}]'
    )
    assert holder.reload() is True
    assert holder.current == Policy(
        {
            "alice": UserPolicy("alice"),
            "dave": UserPolicy("dave", True, (), ("ghost",)),
        },
        EXPECTED.pools,
        (f"{folder}/users.json: user 'dave' refers to unknown pool 'ghost'",),
    )
    assert not holder.current.is_admin("alice")
    assert [(e["log_level"], formatEvent(e)) for e in events] == [
        (
            LogLevel.warn,
            f"{folder}/users.json: user 'dave' refers to unknown pool 'ghost'",
        ),
        (LogLevel.info, f"policy: 2 users (1 admins), 2 pools from {folder}"),
    ]


def test_reload_keeps_the_policy_when_a_file_disappears(tmp_path: Path) -> None:
    folder = write(tmp_path, GO_USERS, GO_POOLS)
    holder = PolicyHolder(folder)

    (folder / "pools.json").unlink()
    assert holder.reload() is False
    assert holder.current == EXPECTED


def test_a_bad_policy_at_start_is_an_error(tmp_path: Path) -> None:
    folder = write(tmp_path, '[{"id": "alice"}, {"id": "alice"}]')

    with pytest.raises(PolicyError) as raised:
        PolicyHolder(folder)
    assert (
        str(raised.value) == f"{folder}/users.json: item 2: 'id' 'alice' repeats item 1"
    )


# ------------------------------------------------------ dcvixctl policy check


def config_file(tmp_path: Path, folder: Path) -> Path:
    path = tmp_path / "dcvix-director.conf"
    path.write_text(
        f"[director]\ndata_dir = {tmp_path / 'data'}\npolicydb_folder = {folder}\n"
    )
    return path


def test_policy_check_prints_a_summary(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write(tmp_path / "policydb", GO_USERS, GO_POOLS)
    conf = config_file(tmp_path, folder)

    assert ctl.main(["--conf", str(conf), "policy", "check"]) == 0
    out, err = capsys.readouterr()
    assert out == f"{folder}: 3 users, 2 pools; admins: alice\n"
    assert err == ""


def test_policy_check_prints_warnings_and_no_admins(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write(tmp_path / "policydb", [{"id": "bob", "pools": ["ghost"]}])
    conf = config_file(tmp_path, folder)

    assert ctl.main(["--conf", str(conf), "policy", "check"]) == 0
    out, err = capsys.readouterr()
    assert out == (
        f"warning: {folder}/users.json: user 'bob' refers to unknown pool 'ghost'\n"
        f"{folder}: 1 users, 0 pools; admins: none\n"
    )
    assert err == ""


def test_policy_check_refuses_a_broken_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = write(tmp_path / "policydb", GO_USERS, '[{"id": "gpu"}, {"id": "gpu"}]')
    conf = config_file(tmp_path, folder)

    assert ctl.main(["--conf", str(conf), "policy", "check"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == f"{folder}/pools.json: item 2: 'id' 'gpu' repeats item 1\n"
    assert not (tmp_path / "data").exists()


def test_a_lone_surrogate_is_not_a_valid_id() -> None:
    assert not policy.valid_id("a\ud800b")
    assert policy.valid_id("alice")


def test_ldap_logins_find_their_policy_in_any_case(tmp_path: Path) -> None:
    folder = write(tmp_path, '[{"id": "Alice", "admin": true}, {"id": "bob"}]', "[]")
    exact = load_policy(folder)
    assert exact.user("alice") is None  # Go's exact match, for other back ends
    assert not exact.is_admin("alice")
    folded = load_policy(folder, ignore_case=True)
    entry = folded.user("alice")
    assert entry is not None and entry.id == "Alice"
    assert folded.is_admin("ALICE")
    assert folded.user("Bob") == folded.user("bob")
    assert folded.user("carol") is None


def test_ids_differing_only_in_case_are_one_user_for_ldap(tmp_path: Path) -> None:
    folder = write(tmp_path, '[{"id": "alice"}, {"id": "ALICE"}]', "[]")
    assert set(load_policy(folder).users) == {"alice", "ALICE"}
    with pytest.raises(PolicyError, match=r"item 2: 'id' 'alice' repeats item 1"):
        load_policy(folder, ignore_case=True)


def test_ldap_ids_fold_only_ascii_case(tmp_path: Path) -> None:
    folder = write(tmp_path, '[{"id": "mstrauss", "admin": true}]', "[]")
    folded = load_policy(folder, ignore_case=True)
    assert folded.is_admin("MStrauss")
    # ß is not ss to a directory: another account must not get this entry.
    assert folded.user("mstrauß") is None
    assert not folded.is_admin("MSTRAUẞ")
