"""The PAM and external-command login back ends, for real, on the real reactor.

PAM runs against a throwaway Linux user (``services.pam_user``) and a private
``nodelay`` service (``services.pam_service``); two tests use Debian's ``login``
service for its real 3 s failure delay (``pam_faildelay.so delay=3000000``).
The external command is a small shell script written into ``tmp_path``.
Needs root (PAM checks other users' passwords only as root).
"""

from __future__ import annotations

import itertools
import os
import secrets
import signal
import time
import tracemalloc
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from services import (  # noqa: F401 (fixtures)
    PamUser,
    idle_pool_after,
    pam_service_fixture,
    pam_user_fixture,
    run_tool,
)
from twisted.internet import reactor
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher

from dcvix.common.threads import ThreadPoolService
from dcvix.director.auth import AuthUnavailable
from dcvix.director.auth import pam as pam_backend
from dcvix.director.auth.external import ExternalAuthenticator
from dcvix.director.auth.pam import PamAuthenticator

pytestmark = pytest.mark.service

# --------------------------------------------------------------------- helpers


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def timed(call: Awaitable[str | None]) -> tuple[str | None, float]:
    start = time.monotonic()
    result = await call
    return result, time.monotonic() - start


async def raises_unavailable(call: Awaitable[str | None]) -> float:
    """Seconds until ``call`` raised AuthUnavailable (fails if it did not)."""
    start = time.monotonic()
    with pytest.raises(AuthUnavailable):
        await call
    return time.monotonic() - start


def is_dead(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet (PID 1 in a container may not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] == "Z"


def live_processes_with(cmdline: bytes) -> list[int]:
    """Pids of live processes whose command line is exactly ``cmdline``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "cmdline").read_bytes() == cmdline:
                found.append(int(entry.name))
        except OSError:
            continue
    return found


@pytest.fixture
def events() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def events_mentioning(events: EventLoggingObserver, text: str) -> list[Any]:
    return [
        event
        for event in events
        if any(isinstance(value, str) and text in value for value in event.values())
    ]


# ------------------------------------------------------------------------- PAM


@pytest.fixture
def pam_pool() -> Iterator[ThreadPoolService]:
    """The auth thread pool; stopped once its threads are idle again."""
    yield from idle_pool_after("dcvix-test-pam", 10)


@pytest.fixture
def pam_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    """(service, user) of every call that reached python-pam."""
    calls: list[tuple[str, str]] = []
    real_check = pam_backend._check

    def spy(service: str, user: str, password: str) -> tuple[bool, int, str]:
        calls.append((service, user))
        return real_check(service, user, password)

    monkeypatch.setattr(pam_backend, "_check", spy)
    return calls


@pytest_twisted.ensureDeferred
async def test_pam_accepts_the_right_password(
    pam_user: PamUser, pam_service: str, pam_pool: ThreadPoolService
) -> None:
    backend = PamAuthenticator(pam_service, pam_pool, timeout=10)
    assert backend.name == "pam"
    assert (
        await backend.authenticate(pam_user.name, pam_user.password, "")
        == pam_user.name
    )


@pytest_twisted.ensureDeferred
async def test_pam_ignores_the_otp(
    pam_user: PamUser, pam_service: str, pam_pool: ThreadPoolService
) -> None:
    backend = PamAuthenticator(pam_service, pam_pool, timeout=10)
    assert (
        await backend.authenticate(pam_user.name, pam_user.password, "123456")
        == pam_user.name
    )


@pytest_twisted.ensureDeferred
async def test_pam_rejects_a_wrong_password_fast_on_a_nodelay_service(
    pam_user: PamUser, pam_service: str, pam_pool: ThreadPoolService
) -> None:
    backend = PamAuthenticator(pam_service, pam_pool, timeout=10)
    ok, seconds = await timed(
        backend.authenticate(pam_user.name, pam_user.password + "x", "")
    )
    assert ok is None
    assert seconds < 0.5


@pytest_twisted.ensureDeferred
async def test_pam_rejects_an_unknown_user(
    pam_user: PamUser, pam_service: str, pam_pool: ThreadPoolService
) -> None:
    backend = PamAuthenticator(pam_service, pam_pool, timeout=10)
    ok, seconds = await timed(
        backend.authenticate("dcvixnouser" + secrets.token_hex(4), "whatever", "")
    )
    assert ok is None
    assert seconds < 0.5


@pytest_twisted.ensureDeferred
async def test_pam_refuses_an_empty_password_without_asking_pam(
    pam_user: PamUser,
    pam_service: str,
    pam_pool: ThreadPoolService,
    pam_calls: list[tuple[str, str]],
) -> None:
    backend = PamAuthenticator(pam_service, pam_pool, timeout=10)
    assert await backend.authenticate(pam_user.name, "", "") is None
    assert pam_calls == []
    # The spy does see a real call.
    assert (
        await backend.authenticate(pam_user.name, pam_user.password, "")
        == pam_user.name
    )
    assert pam_calls == [(pam_service, pam_user.name)]


@pytest.mark.parametrize(
    ("user_suffix", "password_suffix"),
    [
        ("", "\x00"),
        ("\x00", ""),
        ("", "\n"),
        ("\r", ""),
        # A lone surrogate: JSON's "\ud800" escape decodes to one.
        ("", "\ud800"),
        ("\udcff", ""),
    ],
    ids=[
        "nul-password",
        "nul-user",
        "lf-password",
        "cr-user",
        "surrogate-password",
        "surrogate-user",
    ],
)
@pytest_twisted.ensureDeferred
async def test_pam_refuses_unusable_characters_without_asking_pam(
    user_suffix: str,
    password_suffix: str,
    pam_user: PamUser,
    pam_service: str,
    pam_pool: ThreadPoolService,
    pam_calls: list[tuple[str, str]],
) -> None:
    # Before the fix NUL raised ValueError and a surrogate UnicodeEncodeError
    # (python-pam), which the login route would have turned into a 500.
    backend = PamAuthenticator(pam_service, pam_pool, timeout=10)
    user = pam_user.name + user_suffix
    password = pam_user.password + password_suffix
    assert await backend.authenticate(user, password, "") is None
    assert pam_calls == []


@pytest_twisted.ensureDeferred
async def test_pam_rejects_a_locked_account(
    pam_user: PamUser, pam_service: str, pam_pool: ThreadPoolService
) -> None:
    backend = PamAuthenticator(pam_service, pam_pool, timeout=10)
    run_tool("usermod", "--lock", pam_user.name)
    try:
        assert await backend.authenticate(pam_user.name, pam_user.password, "") is None
    finally:
        run_tool("usermod", "--unlock", pam_user.name)
    assert (
        await backend.authenticate(pam_user.name, pam_user.password, "")
        == pam_user.name
    )


@pytest_twisted.ensureDeferred
async def test_pam_rejects_an_expired_account(
    pam_user: PamUser, pam_service: str, pam_pool: ThreadPoolService
) -> None:
    backend = PamAuthenticator(pam_service, pam_pool, timeout=10)
    run_tool("chage", "--expiredate", "0", pam_user.name)
    try:
        assert await backend.authenticate(pam_user.name, pam_user.password, "") is None
    finally:
        run_tool("chage", "--expiredate", "-1", pam_user.name)
    assert (
        await backend.authenticate(pam_user.name, pam_user.password, "")
        == pam_user.name
    )


# Debian's `login` service asks for a 3 s delay after a failure
# (pam_faildelay.so delay=3000000). libpam randomises the delay it sleeps by up to
# ±50 % (the mean of three random draws, so mostly near 3 s): 1.5-4.5 s, measured
# 1.97-3.88 s over 12 tries.
FAIL_DELAY_MIN, FAIL_DELAY_MAX = 1.45, 4.8


@pytest_twisted.ensureDeferred
async def test_pam_timeout_gives_unavailable_and_the_thread_finishes_alone(
    pam_user: PamUser, pam_pool: ThreadPoolService
) -> None:
    backend = PamAuthenticator("login", pam_pool, timeout=1.0)
    start = time.monotonic()
    seconds = await raises_unavailable(
        backend.authenticate(pam_user.name, pam_user.password + "x", "")
    )
    assert 0.9 < seconds < 1.5
    assert len(pam_pool.pool.working) == 1  # still sleeping in PAM
    while pam_pool.pool.working and time.monotonic() - start < 10:
        await sleep(0.05)
    assert pam_pool.pool.working == []
    assert FAIL_DELAY_MIN < time.monotonic() - start < FAIL_DELAY_MAX


# The one slow test (~3 s): the real failure delay of Debian's `login` service,
# which also shows that PAM's sleep happens off the reactor thread (at least 1.5 s
# of sleeping leaves room for 15 ticks).
@pytest_twisted.ensureDeferred
async def test_pam_login_service_fails_after_its_delay_without_blocking_reactor(
    pam_user: PamUser, pam_pool: ThreadPoolService
) -> None:
    backend = PamAuthenticator("login", pam_pool, timeout=10)
    ticks: list[float] = []
    ticker = LoopingCall(lambda: ticks.append(time.monotonic()))
    ticker.clock = reactor
    ticking = ticker.start(0.1, now=False)
    try:
        ok, seconds = await timed(
            backend.authenticate(pam_user.name, pam_user.password + "x", "")
        )
        during = ticks[:]
    finally:
        ticker.stop()
    await ticking
    assert ok is None
    assert FAIL_DELAY_MIN < seconds < FAIL_DELAY_MAX
    assert len(during) >= 15
    # No tick waited for PAM: the reactor never stalled.
    assert max(b - a for a, b in itertools.pairwise(during)) < 0.5


# -------------------------------------------------------------- external command


def script(tmp_path: Path, body: str, mode: int = 0o700) -> str:
    """A ``/bin/sh`` script in ``tmp_path`` (mode 700); returns its path."""
    path = tmp_path / "auth.sh"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return str(path)


ScriptFactory = Callable[..., ExternalAuthenticator]


@pytest.fixture
def external(tmp_path: Path) -> ScriptFactory:
    def make(body: str, timeout: float = 10.0) -> ExternalAuthenticator:
        return ExternalAuthenticator(reactor, script(tmp_path, body), timeout=timeout)

    return make


@pytest_twisted.ensureDeferred
async def test_external_exit_0_accepts(external: ScriptFactory) -> None:
    backend = external("exit 0\n")
    assert backend.name == "external"
    assert await backend.authenticate("alice", "s3cret", "") == "alice"


@pytest_twisted.ensureDeferred
async def test_external_exit_1_rejects(external: ScriptFactory) -> None:
    assert await external("exit 1\n").authenticate("alice", "s3cret", "") is None


@pytest.mark.parametrize("body", ["exit 3\n", "exit 255\n", "kill -KILL $$\n"])
@pytest_twisted.ensureDeferred
async def test_external_other_status_or_signal_is_unavailable(
    body: str, external: ScriptFactory
) -> None:
    await raises_unavailable(external(body).authenticate("alice", "s3cret", ""))


@pytest_twisted.ensureDeferred
async def test_external_receives_exactly_three_lines_on_stdin(
    external: ScriptFactory, tmp_path: Path
) -> None:
    got = tmp_path / "stdin"
    backend = external(f'cat > "{got}"\nexit 0\n')
    assert await backend.authenticate("alice", "pass word; $(x)", "123456") == "alice"
    assert got.read_bytes() == b"alice\npass word; $(x)\n123456\n"


@pytest_twisted.ensureDeferred
async def test_external_empty_otp_is_an_empty_third_line(
    external: ScriptFactory, tmp_path: Path
) -> None:
    got = tmp_path / "stdin"
    backend = external(f'cat > "{got}"\nexit 1\n')
    assert await backend.authenticate("bob", "pw", "") is None
    assert got.read_bytes() == b"bob\npw\n\n"


@pytest.mark.parametrize("field", ["user", "password", "otp"])
@pytest.mark.parametrize(
    "bad", ["\n", "\r", "\x00", "\ud800"], ids=["lf", "cr", "nul", "surrogate"]
)
@pytest_twisted.ensureDeferred
async def test_external_refuses_bad_characters_before_running(
    field: str, bad: str, external: ScriptFactory, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    backend = external(f'touch "{marker}"\nexit 0\n')
    fields = {"user": "alice", "password": "s3cret", "otp": "123456"}
    fields[field] = fields[field][:2] + bad + fields[field][2:]
    assert await backend.authenticate(**fields) is None
    assert not marker.exists()
    # The same script does run for clean fields.
    assert await backend.authenticate("alice", "s3cret", "123456") == "alice"
    assert marker.exists()


@pytest_twisted.ensureDeferred
async def test_external_hanging_command_is_killed_with_its_children(
    external: ScriptFactory, tmp_path: Path
) -> None:
    # A unique argument, so that we can look for leftovers by command line.
    seconds = f"60.{secrets.randbelow(10**6):06d}"
    child_pid, grandchild_pid = tmp_path / "child.pid", tmp_path / "grandchild.pid"
    backend = external(
        f'echo $$ > "{child_pid}"\n'
        f"sleep {seconds} &\n"
        f'echo $! > "{grandchild_pid}"\n'
        f"sleep {seconds}\n"
        "exit 0\n",
        timeout=0.5,
    )
    try:
        elapsed = await raises_unavailable(backend.authenticate("alice", "pw", ""))
        assert 0.4 < elapsed < 3
        pids = [int(child_pid.read_text()), int(grandchild_pid.read_text())]
        for _ in range(50):
            if all(is_dead(pid) for pid in pids):
                break
            await sleep(0.02)
        assert [pid for pid in pids if not is_dead(pid)] == []
        assert live_processes_with(b"sleep\x00" + seconds.encode() + b"\x00") == []
    finally:
        leftovers = live_processes_with(b"sleep\x00" + seconds.encode() + b"\x00")
        for path in (child_pid, grandchild_pid):
            if path.exists() and not is_dead(pid := int(path.read_text())):
                leftovers.append(pid)
        for pid in set(leftovers):
            os.kill(pid, signal.SIGKILL)


@pytest_twisted.ensureDeferred
async def test_external_noisy_command_output_is_capped(
    external: ScriptFactory, events: EventLoggingObserver
) -> None:
    backend = external(
        "head -c 10485760 /dev/zero | tr '\\0' o\n"
        "head -c 10485760 /dev/zero | tr '\\0' e >&2\n"
        "exit 0\n"
    )
    tracemalloc.start()
    try:
        ok = await backend.authenticate("alice", "s3cret", "")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert ok == "alice"
    # 20 MB went through the pipes; only the 64 KiB caps were ever held.
    assert peak < 2 * 1024 * 1024
    logged = [event["stderr"] for event in events if "stderr" in event]
    assert logged == ["e" * 65536]


@pytest_twisted.ensureDeferred
async def test_external_runs_with_an_explicit_environment(
    external: ScriptFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DCVIX_TEST_MARKER", "leaked-" + secrets.token_hex(4))
    dump = tmp_path / "env"
    backend = external(f'env > "{dump}"\nexit 0\n')
    assert await backend.authenticate("alice", "s3cret", "") == "alice"
    variables = dict(line.split("=", 1) for line in dump.read_text().splitlines())
    assert "DCVIX_TEST_MARKER" not in variables
    assert "leaked-" not in dump.read_text()
    # sh adds PWD itself; everything else is dcvix's fixed environment.
    assert sorted(variables) == ["LANG", "PATH", "PWD"]
    assert variables["PATH"] == "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
    assert variables["LANG"] == "C.UTF-8"


@pytest_twisted.ensureDeferred
async def test_external_stderr_is_logged_only_at_debug(
    external: ScriptFactory, events: EventLoggingObserver
) -> None:
    secret = "stderr-" + secrets.token_hex(6)
    backend = external(
        f'echo "{secret}" >&2\nread user; read password; echo "$password" >&2\nexit 1\n'
    )
    password = "pw-" + secrets.token_hex(6)
    assert await backend.authenticate("alice", password, "") is None
    mentioning = events_mentioning(events, secret)
    assert len(mentioning) == 1
    assert mentioning[0]["log_level"] == LogLevel.debug
    assert mentioning[0]["stderr"] == f"{secret}\n{password}\n"
    # The password shows up nowhere else either.
    assert [e["log_level"] for e in events_mentioning(events, password)] == [
        LogLevel.debug
    ]


@pytest_twisted.ensureDeferred
async def test_external_stderr_of_a_failing_command_is_not_in_the_error(
    external: ScriptFactory, events: EventLoggingObserver
) -> None:
    secret = "stderr-" + secrets.token_hex(6)
    backend = external(f'echo "{secret}" >&2\nexit 3\n')
    with pytest.raises(AuthUnavailable) as raised:
        await backend.authenticate("alice", "pw", "")
    assert secret not in str(raised.value)
    assert [e["log_level"] for e in events_mentioning(events, secret)] == [
        LogLevel.debug
    ]


@pytest.mark.parametrize(
    "command", ["/nonexistent/dcvix-no-such-auth", "dcvix-no-such-auth-command"]
)
@pytest_twisted.ensureDeferred
async def test_external_missing_command_is_unavailable(command: str) -> None:
    backend = ExternalAuthenticator(reactor, command, timeout=5)
    await raises_unavailable(backend.authenticate("alice", "pw", ""))


@pytest_twisted.ensureDeferred
async def test_external_non_executable_command_is_unavailable(tmp_path: Path) -> None:
    command = script(tmp_path, "exit 0\n", mode=0o600)
    backend = ExternalAuthenticator(reactor, command, timeout=5)
    await raises_unavailable(backend.authenticate("alice", "pw", ""))


@pytest_twisted.ensureDeferred
async def test_external_passes_its_arguments(tmp_path: Path) -> None:
    got = tmp_path / "argv"
    command = script(tmp_path, f'printf "%s\\n" "$@" > "{got}"\nexit 0\n')
    backend = ExternalAuthenticator(reactor, command, ["--mode", "a b"], timeout=5)
    assert await backend.authenticate("alice", "pw", "") == "alice"
    assert got.read_text() == "--mode\na b\n"
