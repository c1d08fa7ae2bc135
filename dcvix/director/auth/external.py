"""Logins checked by an external command, with Go dcvix's stdin protocol.

The command gets three lines on stdin (user, password, OTP), no shell, an explicit
environment, a time limit, and capped output. Exit status 0 accepts, 1 refuses,
anything else (another status, a signal, a timeout) means it could not decide.
Its stderr is logged at debug level only: it may echo what it was given.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from twisted.logger import Logger

from dcvix.common.process import CommandError, run_command
from dcvix.director.auth import AuthUnavailable, refused_before_asking

log = Logger()

EXTERNAL_TIMEOUT = 10.0
OUTPUT_CAP = 64 * 1024


class ExternalAuthenticator:
    """``auth_type = external``: ``external_command args...``."""

    name = "external"

    def __init__(
        self,
        reactor: Any,
        command: str,
        args: Sequence[str] = (),
        timeout: float = EXTERNAL_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._argv = [command, *args]
        self._timeout = timeout

    async def authenticate(self, user: str, password: str, otp: str) -> str | None:
        """Run the command once; refuse CR, LF, NUL or a lone surrogate before."""
        if refused_before_asking(user, password, otp):
            return None
        stdin = f"{user}\n{password}\n{otp}\n".encode()
        try:
            result = await run_command(
                self._reactor,
                self._argv,
                timeout=self._timeout,
                stdin=stdin,
                output_cap=OUTPUT_CAP,
            )
        except CommandError as error:
            raise AuthUnavailable(str(error)) from None
        if result.stderr:
            log.debug(
                "{command} stderr: {stderr}",
                command=self._argv[0],
                stderr=result.stderr.decode("utf-8", "replace"),
            )
        if result.timed_out:
            raise AuthUnavailable(f"{self._argv[0]} timed out after {self._timeout} s")
        if result.exit_code == 0:
            return user
        if result.exit_code == 1:
            return None
        raise AuthUnavailable(
            f"{self._argv[0]} ended with status {result.exit_code}, "
            f"signal {result.signal}"
        )
