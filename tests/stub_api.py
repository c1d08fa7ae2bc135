"""Calls to a director's API in memory (treq's StubTreq), as route tests make them."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

BASE = "http://director.test"


def result_of(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has already fired."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


@dataclass(frozen=True)
class Answer:
    code: int
    headers: Any
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def outcome(self) -> tuple[int, Any]:
        """The status and the body: JSON decoded, other types as text."""
        if not self.body:
            return (self.code, None)
        kind = (self.headers.getRawHeaders("Content-Type") or [""])[0]
        return (self.code, self.json() if "json" in kind else self.body.decode())


def call(
    stub: StubTreq,
    method: str,
    path: str,
    body: bytes = b"",
    cookie: str | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    headers = dict(headers or {})
    if cookie:
        headers["Cookie"] = f"dcvix_session={cookie}"
    # StubTreq sets its treq methods in __init__, out of the type checker's view.
    d = stub.request(method, BASE + path, data=body or None, headers=headers)  # type: ignore[attr-defined]
    stub.flush()
    response = result_of(d)
    content = response.content()
    stub.flush()
    return Answer(response.code, response.headers, result_of(content))


def login_cookie(stub: StubTreq, user: str, password: str, admin: bool) -> str:
    """Log in through the API; the ``dcvix_session`` cookie's value."""
    path = "/v1/admin/login" if admin else "/v1/user/login"
    body = json.dumps({"userID": user, "password": password}).encode()
    answer = call(stub, "POST", path, body)
    assert answer.outcome == (200, {})
    (set_cookie,) = answer.headers.getRawHeaders("Set-Cookie")
    name, value = set_cookie.split(";")[0].split("=", 1)
    assert name == "dcvix_session"
    assert value
    return str(value)
