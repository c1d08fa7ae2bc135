"""Logins, logout and auth-health: the ``dcvix_session`` cookie's life."""

from __future__ import annotations

import datetime as dt
from typing import cast

from twisted.web.iweb import IRequest
from twisted.web.server import Request

from dcvix.common.errors import Unauthorized
from dcvix.common.http import client_address, json_response, read_json
from dcvix.common.jsonfields import decode
from dcvix.director.api.authz import COOKIE, Role, authorized, login_cookie
from dcvix.director.login import LoginService
from dcvix.director.requests import LoginRequest
from dcvix.director.tokens import Claims


def _set_cookie(request: IRequest, value: bytes, expires: dt.datetime | None) -> None:
    """The cookie as CONTRACT §4 has it; no expiry clears it."""
    options: dict[str, bytes] = (
        {"max_age": b"0"}
        if expires is None
        else {"expires": expires.strftime("%a, %d %b %Y %H:%M:%S GMT").encode()}
    )
    cast(Request, request).addCookie(
        COOKIE,
        value,
        path=b"/",
        secure=True,
        httpOnly=True,
        sameSite="strict",
        **options,
    )


class AuthRoutes:
    """``/v1/user/login``, ``/v1/admin/login``, ``/v1/logout``, ``/v1/auth-health``.

    Args:
        logins: the login service.
        otp: whether the login form needs an OTP field: ``required`` (LDAP
            with a second factor), ``optional`` (RADIUS appends one when
            given) or ``none``.
    """

    def __init__(self, logins: LoginService, otp: str = "none") -> None:
        self._logins = logins
        self._otp = otp

    async def _login(self, request: IRequest, admin: bool) -> bytes:
        body = decode(LoginRequest, read_json(request))
        token, expires = await self._logins.login(body, client_address(request), admin)
        _set_cookie(request, token.encode("ascii"), expires)
        return json_response(request, 200, {})

    @authorized("POST", "/v1/user/login", role=Role.PUBLIC)
    async def user_login(self, request: IRequest) -> bytes:
        """``{"userID", "password", "otp"}``: the ``dcvix_session`` cookie.

        200 ``{}``; 401 ``authentication failed`` whatever the reason; 429
        while throttled; 400 for a bad body.
        """
        return await self._login(request, admin=False)

    @authorized("POST", "/v1/admin/login", role=Role.PUBLIC)
    async def admin_login(self, request: IRequest) -> bytes:
        """As user login, for ``admin: true`` users only."""
        return await self._login(request, admin=True)

    @authorized("POST", "/v1/logout", role=Role.PUBLIC)
    async def logout(self, request: IRequest) -> bytes:
        """Revoke the cookie's token (if valid) and clear the cookie."""
        await self._logins.logout(login_cookie(request), client_address(request))
        _set_cookie(request, b"", None)
        return json_response(request, 200, {})

    @authorized("GET", "/v1/auth-health", role=Role.USER)
    async def auth_health(self, request: IRequest, caller: Claims) -> bytes:
        """200 while the cookie is valid: Go's ``status``, and who is calling.

        ``admin`` is true for an admin login of a user still admin in the
        policy (the web UI picks its area from it without probing).
        """
        return json_response(
            request,
            200,
            {
                "status": "healthy",
                "user": caller.user,
                "admin": self._logins.holds_admin(caller),
            },
        )

    @authorized("GET", "/v1/ui-config", role=Role.PUBLIC)
    async def ui_config(self, request: IRequest) -> bytes:
        """What the web UI needs before anything else, for anyone.

        ``{"otp": "required"|"optional"|"none", "user": id or null, "admin"}``:
        whether the login form asks for an OTP, and who the cookie (if any,
        and valid) logs in, as auth-health would say, so that opening the UI
        logged out costs no refused request.
        """
        try:
            caller: Claims | None = await self._logins.identify(login_cookie(request))
        except Unauthorized:
            caller = None
        return json_response(
            request,
            200,
            {
                "otp": self._otp,
                "user": caller.user if caller else None,
                "admin": caller is not None and self._logins.holds_admin(caller),
            },
        )
