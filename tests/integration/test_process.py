"""run_command with real processes on the real reactor."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.base import DelayedCall
from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import deferLater

from dcvix.common.process import DEFAULT_ENV, CommandError, CommandResult, run_command


def is_dead(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet (PID 1 in a container may not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


async def dies_soon(pid: int, seconds: float = 1.0) -> bool:
    deadline = time.monotonic() + seconds
    while not is_dead(pid):
        if time.monotonic() > deadline:
            return False
        await deferLater(reactor, 0.02, lambda: None)
    return True


def read_pid(path: Path) -> int | None:
    text = path.read_text() if path.exists() else ""
    return int(text) if text.endswith("\n") else None


async def pid_from(path: Path) -> int:
    """The pid a script wrote into ``path`` (waiting a little for it)."""
    for _ in range(100):
        pid = read_pid(path)
        if pid is not None:
            return pid
        await deferLater(reactor, 0.02, lambda: None)
    raise AssertionError(f"{path} was never written")


def process_calls() -> list[DelayedCall]:
    """Pending delayed calls of run_command or of Twisted's process transport.

    Other tests may leave their own calls on the shared reactor; only ours count.
    """
    modules = {"dcvix.common.process", "twisted.internet.process"}
    return [
        call
        for call in reactor.getDelayedCalls()
        if isinstance(call, DelayedCall)
        and call.active()
        and type(getattr(call.func, "__self__", None)).__module__ in modules
    ]


@pytest.fixture(autouse=True)
def no_timer_left_behind() -> Iterator[None]:
    """A finished command leaves no timeout or grace timer on the reactor."""
    yield
    pytest_twisted.blockon(ensureDeferred(settle()))
    assert process_calls() == []


async def settle(turns: int = 50) -> None:
    """Let Twisted finish closing pipes (it does that with callLater(0))."""
    for _ in range(turns):
        if not process_calls():
            return
        await deferLater(reactor, 0.01, lambda: None)


@pytest.fixture
def escaped() -> Iterator[list[int]]:
    """Pids of processes that left our reach; killed after the test."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@pytest_twisted.ensureDeferred
async def test_stdout_and_stderr_are_kept_apart() -> None:
    result = await run_command(
        reactor, ["/bin/sh", "-c", "echo out; echo err >&2; echo more"], timeout=5
    )
    assert result.stdout == b"out\nmore\n"
    assert result.stderr == b"err\n"
    assert (result.exit_code, result.signal) == (0, None)
    assert (result.timed_out, result.truncated) == (False, False)
    assert result.ok


@pytest_twisted.ensureDeferred
async def test_exit_code_is_reported() -> None:
    result = await run_command(reactor, ["/bin/sh", "-c", "exit 3"], timeout=5)
    assert (result.exit_code, result.signal, result.timed_out) == (3, None, False)
    assert not result.ok


@pytest_twisted.ensureDeferred
async def test_death_by_signal_is_reported() -> None:
    result = await run_command(reactor, ["/bin/sh", "-c", "kill -TERM $$"], timeout=5)
    assert (result.exit_code, result.signal, result.timed_out) == (None, 15, False)
    assert not result.ok


@pytest_twisted.ensureDeferred
async def test_program_name_is_found_on_the_given_path() -> None:
    result = await run_command(reactor, ["true"], timeout=5)
    assert (result.exit_code, result.stdout, result.stderr) == (0, b"", b"")


@pytest_twisted.ensureDeferred
async def test_stdin_bytes_are_delivered_and_closed() -> None:
    data = b"user\npass\x00word\n" + bytes(range(256)) * 1000
    result = await run_command(reactor, ["/bin/cat"], timeout=5, stdin=data)
    assert result.stdout == data
    assert result.exit_code == 0


@pytest_twisted.ensureDeferred
async def test_environment_is_exactly_the_one_given() -> None:
    result = await run_command(
        reactor, ["/usr/bin/env"], timeout=5, env={"A": "1", "PATH": "/usr/bin:/bin"}
    )
    assert sorted(result.stdout.splitlines()) == [b"A=1", b"PATH=/usr/bin:/bin"]


@pytest_twisted.ensureDeferred
async def test_environment_defaults_to_default_env_not_ours(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("DCVIX_TEST_MARKER", "leaked")
    result = await run_command(reactor, ["/usr/bin/env"], timeout=5)
    assert DEFAULT_ENV == {
        "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
        "LANG": "C.UTF-8",
    }
    assert sorted(result.stdout.splitlines()) == [
        b"LANG=C.UTF-8",
        b"PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
    ]


@pytest_twisted.ensureDeferred
async def test_output_over_the_cap_is_cut_and_flagged() -> None:
    result = await run_command(
        reactor,
        ["/bin/sh", "-c", "head -c 300000 /dev/zero; head -c 5 /dev/zero >&2"],
        timeout=5,
        output_cap=1000,
    )
    assert result.stdout == b"\x00" * 1000
    assert result.stderr == b"\x00" * 5
    assert result.truncated is True
    assert result.exit_code == 0


@pytest_twisted.ensureDeferred
async def test_output_of_exactly_the_cap_is_not_truncated() -> None:
    result = await run_command(
        reactor, ["/bin/sh", "-c", "head -c 1000 /dev/zero"], timeout=5, output_cap=1000
    )
    assert len(result.stdout) == 1000
    assert result.truncated is False


@pytest.mark.parametrize(
    "argv",
    [["/nonexistent/dcvix-no-such-program"], ["dcvix-no-such-program", "-x"]],
)
def test_missing_program_raises_before_anything_runs(
    argv: list[str], tmp_path: Path
) -> None:
    spawned: list[object] = []

    class Refusing:
        def spawnProcess(self, *args: object, **kwargs: object) -> None:
            spawned.append(args)

    with pytest.raises(CommandError, match="dcvix-no-such-program"):
        run_command(Refusing(), argv, timeout=5)  # type: ignore[arg-type]
    assert spawned == []


def test_file_that_is_not_executable_raises(tmp_path: Path) -> None:
    script = tmp_path / "script.sh"
    script.write_text("#!/bin/sh\necho hi\n")
    script.chmod(0o644)
    with pytest.raises(CommandError, match="not an executable file"):
        run_command(reactor, [str(script)], timeout=5)


def test_name_not_on_the_given_path_raises() -> None:
    with pytest.raises(CommandError, match="env: command not found"):
        run_command(reactor, ["env"], timeout=5, env={"PATH": "/nonexistent"})


@pytest_twisted.ensureDeferred
async def test_child_leads_its_own_process_group_and_session() -> None:
    result = await run_command(
        reactor, ["/bin/sh", "-c", "echo $$; ps -o pgid=,sid= -p $$"], timeout=5
    )
    pid, pgid, sid = (int(word) for word in result.stdout.split())
    assert pgid == pid
    assert sid == pid
    assert pgid != os.getpgrp()


@pytest_twisted.ensureDeferred
async def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild.pid"
    started = time.monotonic()
    result = await run_command(
        reactor,
        ["/bin/sh", "-c", f"sleep 60 & echo $! > {pidfile}; sleep 60"],
        timeout=0.5,
    )
    elapsed = time.monotonic() - started
    assert result.timed_out is True
    assert (result.exit_code, result.signal) == (None, 9)
    assert not result.ok
    assert 0.5 <= elapsed < 3.0
    grandchild = await pid_from(pidfile)
    try:
        assert await dies_soon(grandchild)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(grandchild, signal.SIGKILL)


@pytest_twisted.ensureDeferred
async def test_the_group_is_killed_after_its_leader_has_exited(tmp_path: Path) -> None:
    # Twisted forgets the leader's pid once it exits: the group's id is kept.
    pidfile = tmp_path / "orphan.pid"
    result = await run_command(
        reactor,
        ["/bin/sh", "-c", f"sleep 60 & echo $! > {pidfile}; exit 0"],
        timeout=0.5,
    )
    assert result.timed_out is True
    orphan = await pid_from(pidfile)
    try:
        assert await dies_soon(orphan, 10.0)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(orphan, signal.SIGKILL)


@pytest_twisted.ensureDeferred
async def test_escaped_grandchild_holding_the_pipes_does_not_hang_us(
    tmp_path: Path, escaped: list[int]
) -> None:
    pidfile = tmp_path / "escaped.pid"
    started = time.monotonic()
    pending: Deferred[CommandResult] = run_command(
        reactor,
        [
            "/bin/sh",
            "-c",
            f"setsid sleep 60 & echo $! > {pidfile}; echo partial; sleep 60",
        ],
        timeout=0.5,
    )
    escaped.append(await pid_from(pidfile))
    result = await pending
    elapsed = time.monotonic() - started
    assert result.timed_out is True
    assert result.stdout == b"partial\n"
    assert not result.ok
    assert 0.5 <= elapsed < 3.0
    assert not is_dead(escaped[0])
