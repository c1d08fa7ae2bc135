"""The token verifier and the Gateway resolver over the whole director in memory.

``ws-1`` reports bob's session ``s-bob``; ``ws-2`` (behind NAT: it advertises
``203.0.113.7``) reports carol's ``s-carol``. StubTreq's peer is 127.0.0.1,
the default ``gateways_list``.
"""

from __future__ import annotations

import json
import urllib.parse
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from stub_api import BASE, Answer, call, login_cookie, result_of
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, LogEvent, formatEvent, globalLogPublisher

from dcvix.ctl import wait as done
from dcvix.director.api.authz import Gate, Gateways
from dcvix.director.api.dcv import REFUSED, DcvRoutes
from dcvix.director.api.root import DirectorRoot
from dcvix.director.resolver import SessionResolver
from dcvix.director.runtime import HostStats, ServerState, Session
from dcvix.testing import DirectorHarness, director_harness
from dcvix.testing.director import NOW
from dcvix.testing.reports import session

FORM = "application/x-www-form-urlencoded"
XML = "text/xml; charset=utf-8"
YES_BOB = b'<auth result="yes"><username>bob</username></auth>'


def report(hostname: str, *sessions: Session, advertised: str = "") -> ServerState:
    return ServerState(
        guid=f"guid-{hostname}",
        hostname=hostname,
        address=advertised or "192.0.2.10",
        agent_port=8446,
        update_interval=30.0,
        last_seen=NOW,
        stats=HostStats(0, 0, 0, 0.0, 0.0, 0.0, 0.0),
        sessions=sessions,
        advertised=bool(advertised),
    )


def fill(director: DirectorHarness) -> DirectorHarness:
    for state in (
        report("ws-1", session("s-bob", "bob")),
        report("ws-2", session("s-carol", "carol"), advertised="203.0.113.7"),
    ):
        result_of(Deferred.fromCoroutine(director.runtime.put(state)))
    return director


@pytest.fixture
def director(tmp_path: Path) -> Iterator[DirectorHarness]:
    with director_harness(tmp_path) as harness:
        yield fill(harness)


@pytest.fixture
def stub(director: DirectorHarness) -> StubTreq:
    return StubTreq(director.resource())


@pytest.fixture
def lines() -> Iterator[list[str]]:
    found: list[str] = []

    def observe(event: LogEvent) -> None:
        if str(event.get("log_namespace", "")).startswith("dcvix."):
            found.append(formatEvent(event))

    observer = cast(ILogObserver, observe)
    globalLogPublisher.addObserver(observer)
    yield found
    globalLogPublisher.removeObserver(observer)


def post(stub: StubTreq, path: str, body: bytes, content_type: str) -> Answer:
    # StubTreq sets its treq methods in __init__, out of the type checker's view.
    d = stub.request(  # type: ignore[attr-defined]
        "POST", BASE + path, data=body, headers={"Content-Type": content_type}
    )
    stub.flush()
    response = result_of(d)
    content = response.content()
    stub.flush()
    return Answer(response.code, response.headers, result_of(content))


def form(**fields: str) -> bytes:
    return urllib.parse.urlencode(fields).encode()


def content_type(answer: Answer) -> str:
    return str(answer.headers.getRawHeaders("Content-Type")[0])


# ----------------------------------------------------------------- verifier


def test_the_dcv_server_learns_the_user_of_a_connection_token(
    director: DirectorHarness, stub: StubTreq
) -> None:
    token = director.connections.issue("bob", "ws-1", "s-bob").token
    body = form(sessionId="s-bob", authenticationToken=token, clientAddress="10.1.1.1")

    answer = post(stub, "/v1/user/authtokenverify", body, FORM)
    assert (answer.code, answer.body, content_type(answer)) == (200, YES_BOB, XML)

    # Go's form reading also took the fields from the query string.
    query = body.decode()
    answer = post(stub, f"/v1/user/authtokenverify?{query}", b"", FORM)
    assert (answer.code, answer.body) == (200, YES_BOB)


def test_every_refusal_is_the_same_xml(
    director: DirectorHarness, stub: StubTreq, lines: list[str]
) -> None:
    token = director.connections.issue("bob", "ws-1", "s-bob").token
    login = login_cookie(stub, "bob", "bob-pw", admin=False)
    refusals = [
        form(sessionId="s-carol", authenticationToken=token, clientAddress="10.1.1.1"),
        form(sessionId="s-bob", authenticationToken=login, clientAddress="10.1.1.1"),
        form(sessionId="s-bob", clientAddress="10.1.1.1"),
        form(authenticationToken=token, clientAddress="10.1.1.1"),
        b"sessionId=s-bob&authenticationToken=%ff",
        b"",
    ]
    for body in refusals:
        answer = post(stub, "/v1/user/authtokenverify", body, FORM)
        assert (answer.code, answer.body, content_type(answer)) == (200, REFUSED, XML)
    # A JSON body is not a form: nothing is read from it.
    json_body = json.dumps({"sessionId": "s-bob", "authenticationToken": token})
    answer = post(stub, "/v1/user/authtokenverify", json_body.encode(), "text/json")
    assert (answer.code, answer.body) == (200, REFUSED)

    # The verifier's own lines (the audit trail's start with its actor).
    refused = [
        line for line in lines if "refused" in line and not line.startswith("dcv ")
    ]
    # The trail: the first refusal from this address at once, the rest counted.
    trail = [
        (e.action, e.address, e.outcome, e.detail)
        for e in done(director.registry.latest())
        if e.action == "dcv token refused"
    ]
    assert trail == [("dcv token refused", "127.0.0.1", "refused", "result=no count=1")]
    director.clock.advance(60)
    done(director.audit.flush_refusals())
    assert done(director.registry.latest(1))[0].detail == "result=no count=6"
    assert [line.rsplit(": ", 1)[1] for line in refused] == [
        "token is for another session",
        "token does not decrypt",
        "a field is missing",
        "a field is missing",
        "a field is missing",
        "a field is missing",
        "a field is missing",
    ]
    assert all("(asked by 127.0.0.1)" in line for line in refused)
    assert not any(token in line or login in line for line in lines)
    # None of it used the token up, nor changed a login.
    answer = post(
        stub,
        "/v1/user/authtokenverify",
        form(sessionId="s-bob", authenticationToken=token),
        FORM,
    )
    assert answer.body == YES_BOB


def test_a_form_with_more_fields_than_dcv_sends_is_refused(
    director: DirectorHarness, stub: StubTreq
) -> None:
    token = director.connections.issue("bob", "ws-1", "s-bob").token
    fields = form(sessionId="s-bob", authenticationToken=token)
    padding = b"".join(b"&x%d=1" % n for n in range(40))
    answer = post(stub, "/v1/user/authtokenverify", fields + padding, FORM)
    assert (answer.code, answer.body) == (200, REFUSED)
    answer = post(stub, "/v1/user/authtokenverify", fields + padding[:60], FORM)
    assert (answer.code, answer.body) == (200, YES_BOB)


class Broken:
    """A ConnectionTokens whose store fails."""

    async def verify(self, token: str, session_id: str, address: str) -> str | None:
        raise OSError("disk I/O error")


def test_a_verification_that_breaks_answers_no_in_xml(
    director: DirectorHarness, lines: list[str]
) -> None:
    routes = DcvRoutes(
        cast(Any, Broken()),
        SessionResolver(director.runtime, director.connections, 90.0, director.clock),
        8443,
    )
    gate = Gate(director.logins, director.enrolment, Gateways((), director.clock))
    stub = StubTreq(DirectorRoot(1048576, gate, [routes]).resource())
    answer = post(
        stub,
        "/v1/user/authtokenverify",
        form(sessionId="s", authenticationToken="t"),
        FORM,
    )
    assert (answer.code, answer.body, content_type(answer)) == (200, REFUSED, XML)
    assert "verifying a DCV connection token failed" in lines


# ----------------------------------------------------------------- resolver


def resolved(session_id: str, endpoint: str, transport: str = "HTTP") -> Any:
    return (
        200,
        {
            "SessionId": session_id,
            "TransportProtocol": transport,
            "DcvServerEndpoint": endpoint,
            "Port": 8443,
            "WebUrlPath": "/",
        },
    )


def test_the_gateway_asks_in_the_query_string(stub: StubTreq) -> None:
    asked = "/resolveSession?sessionId=s-bob&transport=QUIC&clientIpAddress=10.9.9.9"
    answer = call(stub, "POST", asked)
    assert answer.outcome == resolved("s-bob", "ws-1", "QUIC")
    assert content_type(answer) == "application/json"
    # Behind NAT the agent's advertised address is where DCV is.
    assert call(stub, "POST", "/resolveSession?sessionId=s-carol").outcome == (
        resolved("s-carol", "203.0.113.7")
    )
    assert call(
        stub,
        "POST",
        "/resolveSession?sessionId=s-bob&clientIpAddress=2001%3Adb8%3A%3A1",
    ).outcome == resolved("s-bob", "ws-1")


def test_the_seeds_json_body_works_too(stub: StubTreq) -> None:
    body = {"sessionId": "s-bob", "transport": "XXXX", "clientIpAddress": "127.0.0.1"}
    answer = call(stub, "POST", "/resolveSession", json.dumps(body).encode())
    assert answer.outcome == resolved("s-bob", "ws-1", "XXXX")
    # Go's key matching: any case.
    answer = call(stub, "POST", "/resolveSession", b'{"SESSIONID": "s-carol"}')
    assert answer.outcome == resolved("s-carol", "203.0.113.7")
    # The query wins over a body.
    answer = call(
        stub, "POST", "/resolveSession?sessionId=s-carol", json.dumps(body).encode()
    )
    assert answer.outcome == resolved("s-carol", "203.0.113.7")


@pytest.mark.parametrize(
    ("path", "body", "outcome"),
    [
        ("/resolveSession?sessionId=s-nobody", b"", (404, "session not found")),
        ("/resolveSession", b'{"sessionId": "s-nobody"}', (404, "session not found")),
        ("/resolveSession", b"", (400, "sessionId is required")),
        ("/resolveSession?transport=HTTP", b"", (400, "sessionId is required")),
        ("/resolveSession?sessionId=", b"", (400, "sessionId is required")),
        ("/resolveSession", b'{"transport": "HTTP"}', (400, "sessionId is required")),
        ("/resolveSession?sessionId=-rf", b"", (400, "invalid sessionId")),
        ("/resolveSession?sessionId=a%2Fb", b"", (400, "invalid sessionId")),
        (
            "/resolveSession?sessionId=s-bob&transport=a+b",
            b"",
            (400, "invalid transport"),
        ),
        (
            "/resolveSession?sessionId=s-bob&transport=" + "Q" * 33,
            b"",
            (400, "invalid transport"),
        ),
        ("/resolveSession?sessionId=%ff", b"", (400, "query string is not UTF-8")),
        (
            "/resolveSession",
            b"sessionId=s-bob",
            (400, "request body is not valid JSON"),
        ),
        (
            "/resolveSession",
            b'{"sessionId": 7}',
            (400, "field 'sessionId' must be a string"),
        ),
        ("/resolveSession", b'["s-bob"]', (400, "request body must be a JSON object")),
    ],
)
def test_what_the_resolver_refuses(
    stub: StubTreq, path: str, body: bytes, outcome: tuple[int, str]
) -> None:
    status, error = outcome
    assert call(stub, "POST", path, body).outcome == (status, {"error": error})


def test_only_post(stub: StubTreq) -> None:
    assert call(stub, "GET", "/resolveSession?sessionId=s-bob").outcome == (
        405,
        {"error": "method not allowed"},
    )
    assert call(stub, "GET", "/v1/user/authtokenverify").outcome == (
        405,
        {"error": "method not allowed"},
    )


@pytest.mark.parametrize(
    ("gateways", "why"),
    [
        (("10.0.0.0/8", "::1"), "it is not in [gateway] gateways_list"),
        ((), "[gateway] gateways_list is empty"),
    ],
)
def test_only_gateways_may_resolve(
    tmp_path: Path, lines: list[str], gateways: tuple[str, ...], why: str
) -> None:
    with director_harness(tmp_path, gateways=gateways) as director:
        stub = StubTreq(fill(director).resource())
        for _ in range(Gateways.REFUSALS_LOGGED + 3):
            answer = call(stub, "POST", "/resolveSession?sessionId=s-bob")
            assert answer.outcome == (403, {"error": "forbidden"})
        warned = [line for line in lines if "session resolution" in line]
        assert (
            warned
            == [f"refused a session resolution from 127.0.0.1: {why}"]
            * Gateways.REFUSALS_LOGGED
        )

        director.clock.advance(60)
        call(stub, "POST", "/resolveSession?sessionId=s-bob")
        assert lines[-1] == (
            f"refused a session resolution from 127.0.0.1: {why} "
            "(3 more refusals not logged)"
        )
        # The verifier stays open to every DCV server.
        token = director.connections.issue("bob", "ws-1", "s-bob").token
        answer = post(
            stub,
            "/v1/user/authtokenverify",
            form(sessionId="s-bob", authenticationToken=token),
            FORM,
        )
        assert answer.body == YES_BOB


def test_a_gateway_in_a_network_may_resolve(tmp_path: Path) -> None:
    with director_harness(tmp_path, gateways=("10.0.0.0/8", "127.0.0.0/30")) as d:
        stub = StubTreq(fill(d).resource())
        assert call(stub, "POST", "/resolveSession?sessionId=s-bob").outcome == (
            resolved("s-bob", "ws-1")
        )


def test_checks_and_resolutions_are_counted_and_timed(
    director: DirectorHarness, stub: StubTreq
) -> None:
    def counted(name: str, **labels: str) -> float:
        found = director.metrics.registry.get_sample_value(name, labels)
        return 0.0 if found is None else found

    token = director.connections.issue("bob", "ws-1", "s-bob").token
    good = form(sessionId="s-bob", authenticationToken=token, clientAddress="10.1.1.1")
    bad = form(sessionId="s-bob", authenticationToken="nope", clientAddress="10.1.1.1")
    for body in (good, bad, bad):
        post(stub, "/v1/user/authtokenverify", body, FORM)
    for asked in ("sessionId=s-bob", "sessionId=s-nobody", "sessionId=-rf"):
        call(stub, "POST", f"/resolveSession?{asked}")

    assert [
        counted("dcvix_dcv_verifications_total", result=r) for r in ["yes", "no"]
    ] == [1, 2]
    assert counted("dcvix_dcv_verification_seconds_count") == 3
    results = ("found", "not_found", "invalid")
    assert [counted("dcvix_gateway_resolutions_total", result=r) for r in results] == [
        1,
        1,
        1,
    ]
    assert counted("dcvix_gateway_resolution_seconds_count") == 2  # the valid ones
