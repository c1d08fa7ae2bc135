"""Run a command without blocking the reactor, and never let it outlive its time.

Every subprocess dcvix starts (``dcv``, external login and OTP commands) goes
through :func:`run_command`: its own process group (so a timeout kills the
children it forked too), an explicit environment, stdout and stderr kept apart
and capped, optional stdin bytes, and a timeout after which the whole group gets
SIGKILL. The group gets SIGKILL too when the reactor shuts down: a command
that hangs (and ignores SIGTERM) must not outlive the daemon that started it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.error import ProcessDone, ProcessExitedAlready
from twisted.internet.interfaces import (
    IDelayedCall,
    IReactorCore,
    IReactorProcess,
    IReactorTime,
)
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

DEFAULT_ENV = {
    "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
    "LANG": "C.UTF-8",
}
DEFAULT_OUTPUT_CAP = 1024 * 1024
# After the group is killed, how long to wait for the pipes to close before
# giving up on a descendant that left the group but still holds them.
_PIPE_GRACE = 2.0


class CommandError(Exception):
    """The command could not be started at all."""


@dataclass(frozen=True)
class CommandResult:
    """What a finished (or killed) command produced."""

    stdout: bytes
    stderr: bytes
    exit_code: int | None
    signal: int | None
    timed_out: bool
    truncated: bool

    @property
    def ok(self) -> bool:
        """Exited by itself with status 0."""
        return self.exit_code == 0 and not self.timed_out


class _Collector(ProcessProtocol):
    def __init__(
        self,
        stdin: bytes,
        cap: int,
        clock: IReactorTime,
        timeout: float,
        done: Deferred[CommandResult],
        core: IReactorCore | None,
    ) -> None:
        self._stdin = stdin
        self._cap = cap
        self._clock = clock
        self._timeout = timeout
        self._done = done
        self._out = bytearray()
        self._err = bytearray()
        self._truncated = False
        self._timed_out = False
        self._timer: IDelayedCall | None = None
        self._grace: IDelayedCall | None = None
        self._core = core
        self._shutdown: Any = None
        self._group: int | None = None

    def connectionMade(self) -> None:
        assert self.transport is not None
        # Kept: Twisted forgets the pid once the leader exits, while others
        # of its group may live on (the kernel reuses no id a group holds).
        self._group = self.transport.pid
        self._timer = self._clock.callLater(self._timeout, self._expire)
        if self._core is not None:
            self._shutdown = self._core.addSystemEventTrigger(
                "before", "shutdown", self._kill_at_shutdown
            )
        if self._stdin:
            self.transport.write(self._stdin)
        self.transport.closeStdin()

    def outReceived(self, data: bytes) -> None:
        self._keep(self._out, data)

    def errReceived(self, data: bytes) -> None:
        self._keep(self._err, data)

    def _keep(self, buffer: bytearray, data: bytes) -> None:
        room = self._cap - len(buffer)
        if len(data) > room:
            self._truncated = True
        buffer.extend(data[: max(room, 0)])

    def _expire(self) -> None:
        self._timer = None
        self._timed_out = True
        self._kill_group()
        self._grace = self._clock.callLater(_PIPE_GRACE, self._abandon)

    def _kill_group(self) -> None:
        assert self.transport is not None
        if self._group is None:
            return
        try:
            os.killpg(self._group, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessExitedAlready):
                self.transport.signalProcess("KILL")

    def _kill_at_shutdown(self) -> None:
        """The daemon stops: nothing will wait for the command any more."""
        self._shutdown = None
        self._kill_group()

    def _abandon(self) -> None:
        """A descendant escaped the group and holds our pipes: stop waiting."""
        self._grace = None
        assert self.transport is not None
        self.transport.loseConnection()
        self._finish(None)

    def processEnded(self, reason: Failure) -> None:
        self._finish(reason)

    def _finish(self, reason: Failure | None) -> None:
        for call in (self._timer, self._grace):
            if call is not None and call.active():
                call.cancel()
        self._timer = self._grace = None
        if self._shutdown is not None and self._core is not None:
            self._core.removeSystemEventTrigger(self._shutdown)
            self._shutdown = None
        if self._done.called:
            return
        exit_code, signal_number = None, None
        if reason is not None:
            if reason.check(ProcessDone):
                exit_code = 0
            else:
                exit_code = getattr(reason.value, "exitCode", None)
                signal_number = getattr(reason.value, "signal", None)
        self._done.callback(
            CommandResult(
                bytes(self._out),
                bytes(self._err),
                exit_code,
                signal_number,
                self._timed_out,
                self._truncated,
            )
        )


def run_command(
    reactor: IReactorProcess,
    argv: Sequence[str],
    *,
    timeout: float,
    clock: IReactorTime | None = None,
    env: Mapping[str, str] | None = None,
    stdin: bytes = b"",
    output_cap: int = DEFAULT_OUTPUT_CAP,
) -> Deferred[CommandResult]:
    """Run ``argv`` in its own process group and collect its output.

    Args:
        reactor: spawns the process.
        argv: the program (a path, or a name found on the explicit ``PATH``) and
            its arguments; never a shell.
        timeout: seconds before the whole process group is killed.
        clock: where the timeout is counted (the reactor by default).
        env: the complete environment; :data:`DEFAULT_ENV` when not given.
        stdin: bytes written to the command's stdin, which is then closed.
        output_cap: bytes kept of stdout and of stderr each; the rest is dropped.

    Raises:
        CommandError: the program does not exist or cannot be started.
    """
    environment = dict(DEFAULT_ENV if env is None else env)
    program = argv[0]
    if os.sep not in program:
        found = shutil.which(program, path=environment.get("PATH", ""))
        if found is None:
            raise CommandError(f"{program}: command not found")
        program = found
    if not os.path.exists(program):
        raise CommandError(f"{program}: no such file")
    if not os.access(program, os.X_OK):
        raise CommandError(f"{program}: not an executable file")
    setsid = shutil.which("setsid")
    if setsid is None:
        raise CommandError("setsid (util-linux) is needed to run commands")
    done: Deferred[CommandResult] = Deferred()
    timer_clock = clock if clock is not None else reactor
    assert IReactorTime.providedBy(timer_clock)
    core = reactor if IReactorCore.providedBy(reactor) else None
    protocol = _Collector(stdin, output_cap, timer_clock, timeout, done, core)
    # setsid execs the program as the leader of a new session and process group
    # (it only forks when it already leads one, which a child of ours never does),
    # so the group id is the pid Twisted knows.
    try:
        reactor.spawnProcess(
            protocol,
            setsid,
            [setsid, program, *argv[1:]],
            env=environment,
            childFDs={0: "w", 1: "r", 2: "r"},
        )
    except OSError as error:
        raise CommandError(f"{program}: {error.strerror}") from None
    return done
