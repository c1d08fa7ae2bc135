"""Logins, logouts and who is calling: the rules between the routes and the back ends.

Every failure gets the same answer, whatever happened (wrong password, unknown
user, back end down, not an admin): ``401 authentication failed``. Failures are
throttled per user and per address (429 while locked). Every success and
failure is audited with user, address, back end and result.
"""

from __future__ import annotations

import datetime as dt

from twisted.internet.defer import CancelledError, ensureDeferred
from twisted.logger import Logger

from dcvix.common.errors import BadRequest, Forbidden, TooManyRequests, Unauthorized
from dcvix.director.audit import Audit
from dcvix.director.auth import Authenticator, AuthUnavailable
from dcvix.director.metrics import DirectorMetrics
from dcvix.director.policy import PolicyHolder, valid_id
from dcvix.director.registry import RevokedTokens, SharedFailures
from dcvix.director.requests import LoginRequest
from dcvix.director.throttle import LoginThrottle
from dcvix.director.tokens import ADMIN, USER, Claims, InvalidToken, TokenService
from dcvix.director.tokens import token_hash as hash_of

log = Logger()

FAILED = "authentication failed"


class LoginService:
    """Checks credentials, issues and revokes login tokens, identifies callers."""

    def __init__(
        self,
        authenticator: Authenticator,
        tokens: TokenService,
        policy: PolicyHolder,
        revoked: RevokedTokens,
        throttle: LoginThrottle,
        audit: Audit,
        shared: SharedFailures | None = None,
        metrics: DirectorMetrics | None = None,
    ) -> None:
        self._authenticator = authenticator
        self._tokens = tokens
        self._policy = policy
        self._revoked = revoked
        self._throttle = throttle
        self._audit = audit
        # With several directors on one store: their failures count here too.
        self._shared = shared
        self._metrics = metrics if metrics is not None else DirectorMetrics()

    async def login(
        self, body: LoginRequest, address: str, admin: bool
    ) -> tuple[str, dt.datetime]:
        """A login token (and its expiry) for good credentials.

        Raises:
            BadRequest: the body is not a login request.
            TooManyRequests: too many recent failures for this user or address.
            Unauthorized: anything else that is not a success, always the same text.
        """
        user = body.user_id
        backend = self._authenticator.name
        counted = self._metrics.logins.labels
        if not valid_id(user):
            counted(backend, "invalid").inc()
            raise BadRequest("invalid userID")
        route = "admin login" if admin else "login"
        keys = self._throttle.keys(user, address)
        if self._shared is not None:
            failures, locks = await self._shared.login_failures(
                keys, self._throttle.horizon()
            )
            self._throttle.adopt(keys, failures, locks)
        if self._throttle.locked(user, address):
            # At most a line a minute per address: a locked account being
            # hammered must not grow the store.
            await self._audit.refused(
                user,
                f"{route} refused",
                "",
                f"backend={backend} result=locked",
                address=address,
            )
            counted(backend, "locked").inc()
            raise TooManyRequests(
                "too many failed logins; try again later",
                self._throttle.retry_after(user, address),
            )
        self._throttle.started(user, address)
        try:
            result, canonical = await self._check(user, body.password, body.otp, admin)
        except CancelledError:
            # The client hung up; its guess still reached the back end.
            counted(backend, "abandoned").inc()
            at = self._throttle.failed(user, address)
            if self._shared is not None:
                ensureDeferred(self._share(user, address, at)).addErrback(
                    lambda failure: log.failure("login failure not shared", failure)
                )
            raise
        finally:
            self._throttle.ended(user, address)
        if result != "ok":
            unavailable = result == "backend unavailable"
            counted(backend, "unavailable" if unavailable else "rejected").inc()
            await self._share(user, address, self._throttle.failed(user, address))
            await self._audit.record(
                user,
                f"{route} failed",
                "",
                f"backend={backend} result={result}",
                address=address,
                outcome="failed",
            )
            raise Unauthorized(FAILED)
        self._throttle.succeeded(user, address)
        counted(backend, "ok").inc()
        if self._shared is not None:
            await self._shared.clear_login_failures(keys[0])
        token, expires = self._tokens.issue(canonical, ADMIN if admin else USER)
        detail = f"backend={backend} result=ok"
        if canonical != user:
            detail += f" as {canonical}"
        await self._audit.record(user, route, "", detail, address=address)
        return token, expires

    async def _share(self, user: str, address: str, at: float) -> None:
        """Record a failure (and the locks it set) for the other directors."""
        if self._shared is not None:
            await self._shared.add_login_failure(
                self._throttle.keys(user, address),
                at,
                self._throttle.locks(user, address),
            )

    async def _check(
        self, user: str, password: str, otp: str, admin: bool
    ) -> tuple[str, str]:
        """("ok", the canonical user id), or (why it failed, "")."""
        if not password:
            # Never handed to a back end: for LDAP it would be an anonymous bind.
            return "empty password", ""
        try:
            canonical = await self._authenticator.authenticate(user, password, otp)
        except AuthUnavailable as error:
            log.error(
                "login back end could not decide for {user}: {error}",
                user=user,
                error=str(error),
            )
            return "backend unavailable", ""
        if canonical is None:
            return "rejected", ""
        if not valid_id(canonical):
            log.error(
                "login back end answered an unusable user id for {user}", user=user
            )
            return "backend unavailable", ""
        if admin and not self._policy.current.is_admin(canonical):
            return "not an admin", ""
        return "ok", canonical

    async def logout(self, token: str | None, address: str) -> None:
        """Revoke a valid login token until it would have expired."""
        if not token:
            return
        try:
            claims = self._tokens.check(token)
        except InvalidToken:
            return
        await self._revoked.revoke_token(hash_of(token), claims.expires)
        await self._audit.record(claims.user, "logout", "", address=address)

    async def identify(self, token: str | None) -> Claims:
        """The caller of a cookie-authenticated route.

        Raises:
            Unauthorized: no token, or one that is invalid, expired or logged out.
        """
        if not token:
            raise Unauthorized("login required")
        try:
            claims = self._tokens.check(token)
        except InvalidToken:
            raise Unauthorized("login required") from None
        if await self._revoked.token_revoked(hash_of(token)):
            raise Unauthorized("login required")
        return claims

    def holds_admin(self, claims: Claims) -> bool:
        """Whether a valid login is an admin login of a user still admin now."""
        return claims.category == ADMIN and self._policy.current.is_admin(claims.user)

    async def require_admin(self, token: str | None) -> Claims:
        """The caller, who must hold an admin login and still be admin now.

        Raises:
            Unauthorized: not logged in.
            Forbidden: logged in, but not (or no longer) an admin.
        """
        claims = await self.identify(token)
        if not self.holds_admin(claims):
            raise Forbidden("admin rights required")
        return claims
