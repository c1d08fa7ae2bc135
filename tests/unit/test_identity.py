"""Directors sharing a PostgreSQL store share one CA and one token key."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from postgres import Postgres, postgres_fixture  # noqa: F401

from dcvix.common.daemon import StartupError
from dcvix.director.ca import load_or_create_authority
from dcvix.director.datadir import DirectorFiles
from dcvix.director.identity import (
    CA_FINGERPRINT,
    TOKEN_KEY_CHECK,
    check_identity,
    store_claim,
    token_key_check,
)
from dcvix.director.registry.postgres import PostgresEngine
from dcvix.director.registry.sql import identity_txn
from dcvix.director.tokens import load_token_key

NOW = dt.datetime(2026, 12, 7, 12, 0, 0, tzinfo=dt.UTC)
GUID = "11111111-1111-4111-8111-111111111111"


@pytest.fixture
def engine(postgres: Postgres) -> Iterator[PostgresEngine]:
    store = PostgresEngine(postgres.database(), postgres.password, 2)
    yield store
    store.close()


def data_dir(folder: Path) -> DirectorFiles:
    folder.mkdir(mode=0o700)
    return DirectorFiles(folder)


def start(engine: PostgresEngine, files: DirectorFiles) -> str:
    """What a director does at start with a shared store; the CA's fingerprint."""
    with engine.start_lock():
        authority = load_or_create_authority(files, NOW, lambda: store_claim(engine))
        key = load_token_key("", files.data_dir)
        check_identity(engine, authority.fingerprint, key)
    return authority.fingerprint


def copy_identity(source: DirectorFiles, target: DirectorFiles) -> None:
    for name in ("ca.key", "ca.pem", "token.key"):
        shutil.copy2(source.data_dir / name, target.data_dir / name)


def test_the_first_director_records_its_identity_and_others_share_it(
    engine: PostgresEngine, tmp_path: Path
) -> None:
    first = data_dir(tmp_path / "a")
    fingerprint = start(engine, first)

    recorded = engine.call(identity_txn)
    key = load_token_key("", first.data_dir)
    assert recorded == {
        CA_FINGERPRINT: fingerprint,
        TOKEN_KEY_CHECK: token_key_check(key),
    }
    assert key.hex() not in str(recorded)  # a check value, never the key
    second = data_dir(tmp_path / "b")
    copy_identity(first, second)
    assert start(engine, second) == fingerprint
    assert start(engine, first) == fingerprint  # a restart changes nothing
    assert not (first.data_dir / "agents.db").exists()


def test_a_director_without_files_never_makes_a_second_ca(
    engine: PostgresEngine, tmp_path: Path
) -> None:
    fingerprint = start(engine, data_dir(tmp_path / "a"))
    late = data_dir(tmp_path / "b")

    with pytest.raises(StartupError) as raised:
        start(engine, late)

    assert str(raised.value) == (
        f"{late.data_dir} has no CA, but the store belongs to the CA {fingerprint}: "
        "refusing to make a new one. Copy ca.key, ca.pem and token.key from a "
        "director of this store (see the README), or use an empty database."
    )
    assert os.listdir(late.data_dir) == []


def test_another_ca_or_token_key_is_refused_naming_what_differs(
    engine: PostgresEngine, tmp_path: Path
) -> None:
    first = data_dir(tmp_path / "a")
    fingerprint = start(engine, first)
    # A director made with its own CA elsewhere, then pointed at this store.
    stranger = DirectorFiles(tmp_path / "stranger")
    stranger.data_dir.mkdir(mode=0o700)
    other = load_or_create_authority(stranger, NOW)
    load_token_key("", stranger.data_dir)

    with pytest.raises(StartupError) as raised:
        start(engine, stranger)

    assert str(raised.value) == (
        f"{engine.label} is shared with other directors, but its CA is "
        f"{fingerprint}, this director's {other.fingerprint} (ca.key, ca.pem); its "
        "token key is another (token.key, or [director] token_key): refusing to "
        "start; copy ca.key, ca.pem and token.key from a director of this store "
        "(see the README)"
    )
    # The right CA with the wrong token key: only the key is named.
    for name in ("ca.key", "ca.pem"):
        shutil.copy2(first.data_dir / name, stranger.data_dir / name)
    with pytest.raises(StartupError, match=r"but its token key is another \("):
        start(engine, stranger)


def test_agents_without_a_recorded_ca_still_forbid_a_new_one(
    engine: PostgresEngine, tmp_path: Path
) -> None:
    engine.call(
        lambda c: c.execute(
            "INSERT INTO agents (guid, hostname, state) VALUES (?, 'ws1', 'pending')",
            (GUID,),
        )
    )

    assert store_claim(engine) == (
        "the store already holds 1 agents enrolled with another director's CA"
    )
    with pytest.raises(StartupError, match="has no CA, but the store already holds"):
        start(engine, data_dir(tmp_path / "a"))


def test_two_directors_starting_on_an_empty_store_make_one_ca(
    postgres: Postgres, tmp_path: Path
) -> None:
    url = postgres.database()
    engines = [PostgresEngine(url, postgres.password, 1) for _ in range(4)]
    folders = [data_dir(tmp_path / f"d{n}") for n in range(4)]
    outcomes: list[str] = []
    barrier = threading.Barrier(len(engines))

    def run(engine: PostgresEngine, files: DirectorFiles) -> None:
        barrier.wait()
        try:
            outcomes.append(f"made {start(engine, files)}")
        except StartupError:
            outcomes.append("refused")

    threads = [
        threading.Thread(target=run, args=pair)
        for pair in zip(engines, folders, strict=True)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for engine in engines:
        engine.close()

    made = [o for o in outcomes if o.startswith("made")]
    assert len(made) == 1, outcomes
    assert outcomes.count("refused") == 3
    assert sum((f.data_dir / "ca.key").exists() for f in folders) == 1
