"""A small privacyIDEA for tests: ``/validate/check`` as privacyIDEA 3.x answers it.

The answers follow privacyIDEA's documented ``/validate/check`` (and what a real
3.14 server was seen to send, ../shared/RECIPES.md §5): HTTP 200 with
``result.status`` true and ``result.value`` true (accept) or false (reject, or a
challenge when only the PIN was sent), HTTP 400 with ``status`` false for an
unknown user, HTTP 500 with ``status`` false when ``pass`` is missing.

Each user has a PIN and a list of OTPs, each good once. ``mode`` breaks it on
purpose: ``hang`` (never answers), ``status-false`` (HTTP 200, ``status``
false), ``not-json``, ``bad-gateway`` (a proxy's HTTP 502), ``huge`` (a body
over the client's cap), ``truthy`` (``"true"`` strings instead of JSON true).
Every request is recorded, answered or not; a held one fires its
:attr:`FakePrivacyIdea.gone` Deferred when the client hangs up.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IListeningPort
from twisted.internet.ssl import CertificateOptions
from twisted.web.http import Request
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Site

import certs

MODES = ("normal", "hang", "status-false", "not-json", "bad-gateway", "huge", "truthy")


@dataclass
class FakeUser:
    """A privacyIDEA user with one token: its PIN and the OTPs still good."""

    pin: str
    otps: list[str]
    used: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Seen:
    """One request as the fake received it."""

    method: str
    path: str
    content_type: str
    accept: str
    body: Any


def _header(request: Request, name: bytes) -> str:
    value = request.getHeader(name)
    return value.decode("latin-1") if value is not None else ""


class FakePrivacyIdea(Resource):
    """The ``/validate/check`` endpoint, with users, modes and a request log."""

    isLeaf = True

    def __init__(self, users: dict[str, FakeUser] | None = None) -> None:
        super().__init__()
        self.users = users if users is not None else {}
        self.mode = "normal"
        self.requests: list[Seen] = []
        self.hanging: list[Request] = []
        self.gone: list[Deferred[None]] = []

    def render(self, request: Request) -> bytes | int:
        raw = request.content.read() if request.content is not None else b""
        content_type = _header(request, b"content-type")
        try:
            body = (
                json.loads(raw) if content_type.startswith("application/json") else None
            )
        except ValueError:
            body = None
        assert request.method is not None and request.path is not None
        self.requests.append(
            Seen(
                request.method.decode(),
                request.path.decode(),
                content_type,
                _header(request, b"accept"),
                body,
            )
        )
        if request.path != b"/validate/check" or request.method not in (
            b"POST",
            b"GET",
        ):
            return self._reply(request, 404, {"status": False}, None)
        if self.mode == "hang":
            self.hanging.append(request)
            gone: Deferred[None] = Deferred()
            request.notifyFinish().addBoth(lambda _: gone.callback(None))
            self.gone.append(gone)
            return NOT_DONE_YET
        if self.mode == "bad-gateway":
            request.setResponseCode(502)
            request.setHeader(b"content-type", b"text/html")
            return b"<html><body>502 Bad Gateway</body></html>"
        if self.mode == "not-json":
            request.setResponseCode(200)
            request.setHeader(b"content-type", b"text/html")
            return b"<html><body>privacyIDEA</body></html>"
        if self.mode == "huge":
            padding = "x" * (128 * 1024)
            return self._accept(request, True, {"message": padding})
        if self.mode == "status-false":
            return self._error(request, 200, 905, "ERR905: something went wrong")
        if self.mode == "truthy":
            result = {"authentication": "ACCEPT", "status": "true", "value": "true"}
            return self._reply(request, 200, result, {"message": "matching 1 tokens"})
        return self._check(request, body if isinstance(body, dict) else {})

    def _check(self, request: Request, args: dict[str, Any]) -> bytes:
        user, password = args.get("user"), args.get("pass")
        found = self.users.get(user) if isinstance(user, str) else None
        if found is None:
            message = f"ERR904: User <{user}@dcvix> does not exist."
            return self._error(request, 400, 904, message)
        if not isinstance(password, str):
            return self._error(request, 500, -500, "500 Internal Server Error")
        if password == found.pin:
            challenge = {"transaction_id": "01234567890123456789", "type": "hotp"}
            detail = {
                "message": "please enter otp: ",
                "transaction_id": challenge["transaction_id"],
                "multi_challenge": [challenge],
            }
            return self._auth(request, False, detail, "CHALLENGE")
        otp = password[len(found.pin) :] if password.startswith(found.pin) else ""
        if otp in found.otps:
            found.otps.remove(otp)
            found.used.append(otp)
            return self._accept(request, True, {"message": "matching 1 tokens"})
        message = "wrong otp value"
        if otp in found.used:
            message += ". previous otp used again"
        return self._accept(request, False, {"message": message})

    def _accept(self, request: Request, value: bool, detail: dict[str, Any]) -> bytes:
        return self._auth(request, value, detail, "ACCEPT" if value else "REJECT")

    def _auth(
        self, request: Request, value: bool, detail: dict[str, Any], outcome: str
    ) -> bytes:
        result = {"authentication": outcome, "status": True, "value": value}
        return self._reply(request, 200, result, detail)

    def _error(self, request: Request, code: int, number: int, message: str) -> bytes:
        result = {"error": {"code": number, "message": message}, "status": False}
        return self._reply(request, code, result, None)

    def _reply(
        self,
        request: Request,
        code: int,
        result: dict[str, Any],
        detail: dict[str, Any] | None,
    ) -> bytes:
        request.setResponseCode(code)
        request.setHeader(b"content-type", b"application/json")
        answer = {
            "detail": detail,
            "id": 1,
            "jsonrpc": "2.0",
            "result": result,
            "version": "privacyIDEA 3.14",
            "signature": "rsa_sha256_pss:fake",
        }
        return json.dumps(answer).encode()

    def release_hanging(self) -> None:
        """Close the requests held by ``hang`` that are still open."""
        for request in self.hanging:
            if not request.finished and request.channel is not None:
                request.channel.transport.abortConnection()  # type: ignore[union-attr]
        self.hanging.clear()


def listen(
    reactor: Any, fake: FakePrivacyIdea, leaf: certs.Leaf | None = None
) -> IListeningPort:
    """Serve ``fake`` on 127.0.0.1: HTTPS with ``leaf``'s certificate, else HTTP."""
    site = Site(fake)
    if leaf is None:
        port: IListeningPort = reactor.listenTCP(0, site, interface="127.0.0.1")
        return port
    options = CertificateOptions(
        privateKey=leaf.key,  # type: ignore[arg-type]
        certificate=leaf.certificate,  # type: ignore[arg-type]
    )
    port = reactor.listenSSL(0, site, options, interface="127.0.0.1")
    return port
