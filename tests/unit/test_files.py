"""atomic_write and ensure_private_dir: whole files, private folders."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher

from dcvix.common.files import (
    atomic_write,
    ensure_private_dir,
    remove_interrupted_writes,
)


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask() -> Iterator[None]:
    """Choose a umask for one test and put the old one back after it."""
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def events() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o077])
def test_atomic_write_is_0600_by_default_whatever_the_umask(
    tmp_path: Path, umask: None, mask: int
) -> None:
    os.umask(mask)
    target = tmp_path / "token.key"
    atomic_write(target, b"secret\n")
    assert target.read_bytes() == b"secret\n"
    assert mode_of(target) == 0o600


@pytest.mark.parametrize("mask", [0o000, 0o077])
def test_atomic_write_uses_the_mode_asked_for(
    tmp_path: Path, umask: None, mask: int
) -> None:
    os.umask(mask)
    target = tmp_path / "agent.crt"
    atomic_write(target, b"-----BEGIN CERTIFICATE-----\n", 0o644)
    assert target.read_bytes() == b"-----BEGIN CERTIFICATE-----\n"
    assert mode_of(target) == 0o644


def test_atomic_write_replaces_an_existing_file_and_leaves_nothing_else(
    tmp_path: Path,
) -> None:
    target = tmp_path / "agent.key"
    target.write_bytes(b"old key, longer than the new one\n")
    target.chmod(0o644)
    atomic_write(target, b"new key\n")
    assert target.read_bytes() == b"new key\n"
    assert mode_of(target) == 0o600
    assert sorted(os.listdir(tmp_path)) == ["agent.key"]


def test_atomic_write_failing_midway_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "agents.json"
    target.write_bytes(b'{"old": true}\n')
    target.chmod(0o640)

    def broken_fsync(descriptor: int) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="Input/output error"):
        atomic_write(target, b'{"new": true}\n')
    assert target.read_bytes() == b'{"old": true}\n'
    assert mode_of(target) == 0o640
    assert sorted(os.listdir(tmp_path)) == ["agents.json"]


def test_atomic_write_into_a_missing_folder_fails_and_creates_nothing(
    tmp_path: Path,
) -> None:
    with pytest.raises(FileNotFoundError):
        atomic_write(tmp_path / "missing" / "token.key", b"secret\n")
    assert os.listdir(tmp_path) == []


def test_remove_interrupted_writes_takes_only_atomic_write_temp_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A write killed after mkstemp: its temp file stays beside the target.
    (tmp_path / "agent.crt").write_bytes(b"whole\n")
    monkeypatch.setattr(os, "replace", lambda *_: None)
    atomic_write(tmp_path / "agent.crt", b"new\n")
    monkeypatch.undo()
    (left,) = [p.name for p in tmp_path.iterdir() if p.name != "agent.crt"]
    assert left.startswith(".agent.crt.") and left.endswith(".tmp")
    # Files that only look alike are someone else's.
    others = [".agent.crt.tmp", "agent.crt.abcdefgh.tmp", ".x.abc.tmp", ".x.abcdefgh"]
    for name in others:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / ".folder.abcdefgh.tmp").mkdir()

    assert remove_interrupted_writes(tmp_path) == [tmp_path / left]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [".folder.abcdefgh.tmp", "agent.crt", *others]
    )
    assert (tmp_path / "agent.crt").read_bytes() == b"whole\n"
    assert remove_interrupted_writes(tmp_path / "missing") == []


def test_ensure_private_dir_creates_nested_folders_0700(
    tmp_path: Path, umask: None
) -> None:
    target = tmp_path / "var" / "lib" / "dcvix-director"
    ensure_private_dir(target)
    assert target.is_dir()
    assert mode_of(target) == 0o700
    assert mode_of(tmp_path / "var" / "lib") == 0o700
    assert mode_of(tmp_path / "var") == 0o700


def test_ensure_private_dir_leaves_existing_parents_alone(
    tmp_path: Path, umask: None
) -> None:
    parent = tmp_path / "lib"
    parent.mkdir(mode=0o755)
    ensure_private_dir(parent / "dcvix-agent")
    assert mode_of(parent) == 0o755
    assert mode_of(parent / "dcvix-agent") == 0o700


def test_ensure_private_dir_tightens_a_go_folder_and_says_so(
    tmp_path: Path, events: EventLoggingObserver
) -> None:
    target = tmp_path / "data"
    target.mkdir()
    target.chmod(0o755)
    (target / "agent.key").write_bytes(b"kept\n")
    ensure_private_dir(target)
    assert mode_of(target) == 0o700
    assert (target / "agent.key").read_bytes() == b"kept\n"
    tightened = [
        event for event in events if event.get("log_namespace") == "dcvix.common.files"
    ]
    assert len(tightened) == 1
    assert tightened[0]["log_level"] == LogLevel.info
    assert tightened[0]["log_format"] == "tightened {path} from {old:o} to {new:o}"
    assert (tightened[0]["path"], tightened[0]["old"], tightened[0]["new"]) == (
        str(target),
        0o755,
        0o700,
    )


def test_ensure_private_dir_keeps_a_private_folder_quietly(
    tmp_path: Path, events: EventLoggingObserver
) -> None:
    target = tmp_path / "data"
    target.mkdir()
    target.chmod(0o700)
    ensure_private_dir(target)
    assert mode_of(target) == 0o700
    assert [e for e in events if e.get("log_namespace") == "dcvix.common.files"] == []
