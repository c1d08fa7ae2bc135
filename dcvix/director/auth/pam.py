"""PAM logins, in the auth thread pool, with the account check (locked, expired)."""

from __future__ import annotations

import pam
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.logger import Logger

from dcvix.common.threads import ThreadPoolService
from dcvix.director.auth import AuthUnavailable, refused_before_asking

log = Logger()

PAM_TIMEOUT = 15.0


def _check(service: str, user: str, password: str) -> tuple[bool, int, str]:
    # A new authenticator per call: python-pam keeps per-call state in it.
    authenticator = pam.PamAuthenticator()
    ok = authenticator.authenticate(user, password, service=service)
    return bool(ok), int(authenticator.code), str(authenticator.reason)


class PamAuthenticator:
    """``auth_type = pam``: pam_authenticate then pam_acct_mgmt on ``service``.

    Note that PAM falls back to ``/etc/pam.d/other`` for an unknown service
    name, so a typo in ``pam_service_name`` does not fail loudly.
    """

    name = "pam"

    def __init__(
        self, service: str, pool: ThreadPoolService, timeout: float = PAM_TIMEOUT
    ) -> None:
        self._service = service
        self._pool = pool
        self._timeout = timeout

    async def authenticate(self, user: str, password: str, otp: str) -> str | None:
        """Ask PAM; the OTP is not used (PAM modules prompt for what they need)."""
        if refused_before_asking(user, password):
            # python-pam raises on NUL and on text without a UTF-8 form.
            return None
        try:
            ok, code, reason = await self._pool.run(
                self._timeout, _check, self._service, user, password
            )
        except DeferredTimeout:
            raise AuthUnavailable(f"PAM gave no answer in {self._timeout} s") from None
        if not ok:
            log.debug(
                "PAM refused {user}: {code} {reason}",
                user=user,
                code=code,
                reason=reason,
            )
        return user if ok else None
