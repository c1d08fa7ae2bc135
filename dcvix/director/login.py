"""Logins, logouts and who is calling: the rules between the routes and the back ends.

Every failure gets the same answer, whatever happened (wrong password, unknown
user, back end down, not an admin): ``401 authentication failed``. Failures are
throttled per user and per address (429 while locked). Every success and
failure is audited with user, address, back end and result.
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger

from dcvix.common.errors import BadRequest, Forbidden, TooManyRequests, Unauthorized
from dcvix.common.http import go_fields
from dcvix.director import store
from dcvix.director.auth import Authenticator, AuthUnavailable
from dcvix.director.policy import PolicyHolder, valid_id
from dcvix.director.store import AgentStore
from dcvix.director.throttle import LoginThrottle
from dcvix.director.tokens import ADMIN, USER, Claims, InvalidToken, TokenService
from dcvix.director.tokens import token_hash as hash_of

log = Logger()
audit_log = Logger(namespace="dcvix.audit")

FAILED = "authentication failed"


class Audit:
    """Audit lines: one log line (namespace ``dcvix.audit``) and one table row."""

    def __init__(self, registry: AgentStore, tokens: TokenService) -> None:
        self._registry = registry
        self._tokens = tokens

    async def record(
        self, actor: str, action: str, target: str, detail: str = ""
    ) -> None:
        """Write one audit line."""
        audit_log.info(
            "{actor} {action} {target} {detail}",
            actor=actor,
            action=action,
            target=target,
            detail=detail,
        )
        await self._registry.run(
            store.audit_txn, self._tokens.now(), actor, action, target, detail
        )


class LoginService:
    """Checks credentials, issues and revokes login tokens, identifies callers."""

    def __init__(
        self,
        authenticator: Authenticator,
        tokens: TokenService,
        policy: PolicyHolder,
        registry: AgentStore,
        throttle: LoginThrottle,
    ) -> None:
        self._authenticator = authenticator
        self._tokens = tokens
        self._policy = policy
        self._registry = registry
        self._throttle = throttle
        self.audit = Audit(registry, tokens)

    async def login(self, body: Any, address: str, admin: bool) -> tuple[str, Any]:
        """A login token (and its expiry) for good credentials.

        Raises:
            BadRequest: the body is not a login request.
            TooManyRequests: too many recent failures for this user or address.
            Unauthorized: anything else that is not a success, always the same text.
        """
        fields = go_fields(body, {"userID": str, "password": str, "otp": str})
        user = fields["userID"]
        if not valid_id(user):
            raise BadRequest("invalid userID")
        route = "admin login" if admin else "login"
        backend = self._authenticator.name
        if self._throttle.locked(user, address):
            # Logged, not written to the audit table: a locked account being
            # hammered must not grow agents.db.
            audit_log.info(
                "{user} {route} refused {address} backend={backend} result=locked",
                user=user,
                route=route,
                address=address,
                backend=backend,
            )
            raise TooManyRequests("too many failed logins; try again later")
        self._throttle.started(user, address)
        try:
            result = await self._check(user, fields["password"], fields["otp"], admin)
        finally:
            self._throttle.ended(user, address)
        if result != "ok":
            self._throttle.failed(user, address)
            await self.audit.record(
                user, f"{route} failed", address, f"backend={backend} result={result}"
            )
            raise Unauthorized(FAILED)
        self._throttle.succeeded(user, address)
        token, expires = self._tokens.issue(user, ADMIN if admin else USER)
        await self.audit.record(user, route, address, f"backend={backend} result=ok")
        return token, expires

    async def _check(self, user: str, password: str, otp: str, admin: bool) -> str:
        if not password:
            # Never handed to a back end: for LDAP it would be an anonymous bind.
            return "empty password"
        try:
            ok = await self._authenticator.authenticate(user, password, otp)
        except AuthUnavailable as error:
            log.error(
                "login back end could not decide for {user}: {error}",
                user=user,
                error=str(error),
            )
            return "backend unavailable"
        if not ok:
            return "rejected"
        if admin and not self._policy.current.is_admin(user):
            return "not an admin"
        return "ok"

    async def logout(self, token: str | None, address: str) -> None:
        """Revoke a valid login token until it would have expired."""
        if not token:
            return
        try:
            claims = self._tokens.check(token)
        except InvalidToken:
            return
        await self._registry.run(store.revoke_token_txn, hash_of(token), claims.expires)
        await self.audit.record(claims.user, "logout", address)

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
        if await self._registry.run(store.token_revoked_txn, hash_of(token)):
            raise Unauthorized("login required")
        return claims

    async def require_admin(self, token: str | None) -> Claims:
        """The caller, who must hold an admin login and still be admin now.

        Raises:
            Unauthorized: not logged in.
            Forbidden: logged in, but not (or no longer) an admin.
        """
        claims = await self.identify(token)
        if claims.category != ADMIN or not self._policy.current.is_admin(claims.user):
            raise Forbidden("admin rights required")
        return claims
