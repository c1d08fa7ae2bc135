"""Every route of the director's API is behind the role it declares (StubTreq).

The route table is written out here, so a new route cannot arrive without
this file saying who may call it. Each route is then called for real, with
no credentials, with a plain user's login cookie and with an admin's:
only the public routes answer anyone; a login cookie never stands in for an
agent's client certificate; a user login is never an admin's.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from klein import Klein
from stub_api import BASE, call, login_cookie, result_of
from treq.testing import StubTreq
from twisted.web.iweb import IRequest
from werkzeug.routing import Rule

from dcvix.common.http import json_response
from dcvix.director.api.authz import Gate, Gateways, Role, RouteSpec, authorized
from dcvix.director.api.root import STORE_DOWN, DirectorRoot
from dcvix.director.api.web import web_root
from dcvix.director.openapi import director_document
from dcvix.testing import DirectorHarness, director_harness
from dcvix.testing.director import METRICS_TOKEN

GUID = "0b6f3a52-8d1e-4c3b-9a57-2f4e6d8c1a90"
ACTIONS = ("approve", "deny", "revoke", "reactivate", "delete")
AGENT_ACTION = (
    "/v1/admin/agents/<string:guid>/<any(approve,deny,revoke,reactivate,delete):action>"
)

ROUTES = {
    ("GET", "/v1/health", Role.PUBLIC),
    ("GET", "/v1/ui-config", Role.PUBLIC),
    ("GET", "/v1/openapi.json", Role.PUBLIC),
    ("GET", "/metrics", Role.PUBLIC),
    ("GET", "/", Role.PUBLIC),
    ("GET", "/<any(login,portal,admin):area>", Role.PUBLIC),
    ("GET", "/admin/<any(agents,sessions,servers,audit):screen>", Role.PUBLIC),
    ("GET", "/assets/<path:name>", Role.PUBLIC),
    ("POST", "/v1/agent/register", Role.PUBLIC),
    ("POST", "/v1/user/login", Role.PUBLIC),
    ("POST", "/v1/admin/login", Role.PUBLIC),
    ("POST", "/v1/logout", Role.PUBLIC),
    ("POST", "/v1/agent/renew", Role.AGENT_CERTIFICATE),
    ("POST", "/v1/agent/update", Role.AGENT),
    ("GET", "/v1/auth-health", Role.USER),
    ("GET", "/v1/user/servers", Role.USER),
    ("POST", "/v1/user/sessions", Role.USER),
    ("GET", "/v1/user/sessions", Role.USER),
    ("DELETE", "/v1/user/sessions/<string:session_id>", Role.USER),
    ("GET", "/v1/user/connectiontoken", Role.USER),
    ("GET", "/v1/user/connectionfile", Role.USER),
    ("POST", "/v1/user/servers/<string:server>/config", Role.USER),
    ("GET", "/v1/admin/agents", Role.ADMIN),
    ("GET", "/v1/admin/audit", Role.ADMIN),
    ("POST", AGENT_ACTION, Role.ADMIN),
    ("GET", "/v1/admin/ca", Role.ADMIN),
    ("GET", "/v1/servers", Role.ADMIN),
    ("GET", "/v1/sessions", Role.ADMIN),
    ("POST", "/v1/sessions", Role.ADMIN),
    ("DELETE", "/v1/sessions/<string:session_id>", Role.ADMIN),
    ("POST", "/v1/servers/<string:server>/config", Role.ADMIN),
    ("POST", "/v1/user/authtokenverify", Role.PUBLIC),
    ("POST", "/resolveSession", Role.GATEWAY),
}

# A dummy value for each path converter; several for an ``any``.
PATH_VALUES: dict[str, tuple[str, ...]] = {
    "guid": (GUID,),
    "action": ACTIONS,
    "session_id": ("sess-1",),
    "server": ("ws-1",),
    "area": ("login", "portal", "admin"),
    "screen": ("agents", "sessions", "servers"),
    "name": ("js/app.js",),
}
# What the document route answers, made from this table (JSON's lists, not tuples).
DOCUMENT = json.loads(
    json.dumps(director_document(RouteSpec(m, p, r) for m, p, r in ROUTES))
)
INDEX = (web_root() / "index.html").read_text()
APP_JS = (web_root() / "js" / "app.js").read_text()

LOGIN_REQUIRED = (401, {"error": "login required"})
CERTIFICATE_REQUIRED = (401, {"error": "client certificate required"})
ADMIN_REQUIRED = (403, {"error": "admin rights required"})
EMPTY_BODY = (400, {"error": "request body is empty"})

# What each role's routes answer a caller with no credentials (POST bodies
# are empty); public routes answer for themselves.
ANONYMOUS = {
    ("GET", "/v1/health"): (200, {"status": "healthy"}),
    ("GET", "/v1/ui-config"): (200, {"otp": "none", "user": None, "admin": False}),
    ("GET", "/v1/openapi.json"): (200, DOCUMENT),
    ("GET", "/metrics"): (401, {"error": "a valid bearer token is required"}),
    ("GET", "/"): (200, INDEX),
    ("GET", "/<any(login,portal,admin):area>"): (200, INDEX),
    ("GET", "/admin/<any(agents,sessions,servers,audit):screen>"): (200, INDEX),
    ("GET", "/assets/<path:name>"): (200, APP_JS),
    ("POST", "/v1/agent/register"): EMPTY_BODY,
    ("POST", "/v1/user/login"): EMPTY_BODY,
    ("POST", "/v1/admin/login"): EMPTY_BODY,
    ("POST", "/v1/logout"): (200, {}),
    ("POST", "/v1/user/authtokenverify"): (
        200,
        '<auth result="no"><message>dcvix-director: authentication token '
        "verification failed</message></auth>",
    ),
    # StubTreq's peer is 127.0.0.1, the default gateways_list.
    ("POST", "/resolveSession"): (400, {"error": "sessionId is required"}),
}
REFUSED_ANONYMOUS = {
    Role.AGENT_CERTIFICATE: CERTIFICATE_REQUIRED,
    Role.AGENT: CERTIFICATE_REQUIRED,
    Role.USER: LOGIN_REQUIRED,
    Role.ADMIN: LOGIN_REQUIRED,
    Role.GATEWAY: (403, {"error": "forbidden"}),
}


# ------------------------------------------------------------------ harness


def urls_of(root: DirectorRoot) -> Iterator[tuple[str, str, str]]:
    """(method, path template, concrete path) for every routed method but HEAD."""
    adapter = root.app.url_map.bind("director.test")
    rule: Rule
    for rule in root.app.url_map.iter_rules():
        names = sorted(rule.arguments)
        for values in itertools.product(*(PATH_VALUES[n] for n in names)):
            for method in sorted((rule.methods or set()) - {"HEAD"}):
                path = adapter.build(
                    rule.endpoint, dict(zip(names, values, strict=True)), method=method
                )
                yield method, rule.rule, path


@pytest.fixture
def director(tmp_path: Path) -> Iterator[DirectorHarness]:
    with director_harness(tmp_path) as harness:
        yield harness


@pytest.fixture
def stub(director: DirectorHarness) -> StubTreq:
    return StubTreq(director.resource())


def role_of(method: str, template: str) -> Role:
    (role,) = [r for m, p, r in ROUTES if (m, p) == (method, template)]
    return role


# ------------------------------------------------------------------- table


def test_the_routes_are_exactly_the_declared_table(director: DirectorHarness) -> None:
    declared = [(r.method, r.path, r.role) for r in director.root.routes]
    assert sorted(declared, key=str) == sorted(ROUTES, key=str)
    routed = {
        (method, rule.rule)
        for rule in director.root.app.url_map.iter_rules()
        for method in (rule.methods or set()) - {"HEAD"}
    }
    assert routed == {(m, p) for m, p, _ in ROUTES}


def test_every_route_is_called_below(director: DirectorHarness) -> None:
    called = {(m, t) for m, t, _ in urls_of(director.root)}
    assert called == {(m, p) for m, p, _ in ROUTES}
    actions = sorted(p for m, t, p in urls_of(director.root) if t == AGENT_ACTION)
    assert actions == sorted(f"/v1/admin/agents/{GUID}/{a}" for a in ACTIONS)


# -------------------------------------------------------- who may call what


def test_only_public_routes_answer_a_caller_without_credentials(
    director: DirectorHarness, stub: StubTreq
) -> None:
    seen: dict[tuple[str, str], tuple[int, Any]] = {}
    for method, template, path in urls_of(director.root):
        seen[(method, path)] = call(stub, method, path).outcome
        role = role_of(method, template)
        if role is not Role.PUBLIC:
            head = call(stub, "HEAD", path) if method == "GET" else None
            assert head is None or (head.code, head.body) == (401, b""), path

    refused = {
        (m, t): REFUSED_ANONYMOUS[r] for m, t, r in ROUTES if r is not Role.PUBLIC
    }
    expected = {
        (method, path): ANONYMOUS.get((method, template)) or refused[(method, template)]
        for method, template, path in urls_of(director.root)
    }
    assert seen == expected
    answered = {
        (method, template)
        for method, template, path in urls_of(director.root)
        if seen[(method, path)][0] != 401
    }
    # /metrics is public to the gate, and checks its own bearer token.
    assert answered == set(ANONYMOUS) - {("GET", "/metrics")}


def test_a_user_login_is_refused_every_admin_route(
    director: DirectorHarness, stub: StubTreq
) -> None:
    bob = login_cookie(stub, "bob", "bob-pw", admin=False)
    # An admin's user login is not an admin login either.
    alice = login_cookie(stub, "alice", "alice-pw", admin=False)
    admin_paths = [
        (method, path)
        for method, template, path in urls_of(director.root)
        if role_of(method, template) is Role.ADMIN
    ]
    assert len(admin_paths) == 13

    for cookie in (bob, alice):
        answers = {
            (method, path): call(stub, method, path, b"{}", cookie).outcome
            for method, path in admin_paths
        }
        assert answers == dict.fromkeys(admin_paths, ADMIN_REQUIRED)
        health = call(stub, "GET", "/v1/auth-health", cookie=cookie).json()
        assert (health["status"], health["admin"]) == ("healthy", False)


def test_an_admin_login_reaches_the_admin_routes(
    director: DirectorHarness, stub: StubTreq
) -> None:
    alice = login_cookie(stub, "alice", "alice-pw", admin=True)

    assert call(stub, "GET", "/v1/admin/agents", cookie=alice).outcome == (200, [])
    assert call(stub, "GET", "/v1/servers", cookie=alice).outcome == (200, [])
    assert call(stub, "GET", "/v1/sessions", cookie=alice).outcome == (200, [])
    assert call(
        stub, "POST", f"/v1/admin/agents/{GUID}/approve", b"{}", alice
    ).outcome == (404, {"error": f"agent {GUID} not found"})
    assert call(stub, "GET", "/v1/admin/ca", cookie=alice).outcome == (
        200,
        {
            "certificate": director.authority.pem.decode(),
            "fingerprint": director.authority.fingerprint,
        },
    )
    trail = call(stub, "GET", "/v1/admin/audit?limit=1", cookie=alice).json()
    assert [line["action"] for line in trail["entries"]] == ["admin login"]


def test_a_database_that_fails_is_503_on_both_paths(
    director: DirectorHarness, stub: StubTreq
) -> None:
    """No database: a clear 503 (to come back later), never a 500."""
    alice = login_cookie(stub, "alice", "alice-pw", admin=True)
    director.registry.engine._connection.close()  # type: ignore[attr-defined]

    expected = (503, {"error": STORE_DOWN})
    assert call(stub, "GET", "/v1/admin/agents", cookie=alice).outcome == expected
    # Klein's path (a parameter) answers alike.
    assert (
        call(stub, "POST", f"/v1/admin/agents/{GUID}/approve", b"{}", alice).outcome
        == expected
    )


def test_a_login_cookie_never_stands_in_for_a_client_certificate(
    director: DirectorHarness, stub: StubTreq
) -> None:
    alice = login_cookie(stub, "alice", "alice-pw", admin=True)
    agent_paths = [
        (method, path)
        for method, template, path in urls_of(director.root)
        if role_of(method, template) in (Role.AGENT, Role.AGENT_CERTIFICATE)
    ]
    assert agent_paths == [("POST", "/v1/agent/renew"), ("POST", "/v1/agent/update")]

    for method, path in agent_paths:
        assert call(stub, method, path, b"{}", alice).outcome == CERTIFICATE_REQUIRED


def test_a_refused_caller_changes_nothing(
    director: DirectorHarness, stub: StubTreq
) -> None:
    bob = login_cookie(stub, "bob", "bob-pw", admin=False)
    body = json.dumps(
        {"serverId": "ws-1", "userId": "bob", "sessionType": "virtual"}
    ).encode()

    assert call(stub, "POST", "/v1/sessions", body).outcome == LOGIN_REQUIRED
    assert call(stub, "POST", "/v1/sessions", body, bob).outcome == ADMIN_REQUIRED
    assert director.agent_client.calls == []


# ------------------------------------------------- what the root routes at all


class Probe:
    """An audience with one declared route and two methods that are not."""

    app = Klein()

    @authorized("GET", "/v1/probe/declared", role=Role.PUBLIC)
    def declared(self, request: IRequest) -> bytes:
        return json_response(request, 200, {"route": "declared"})

    @app.route("/v1/probe/klein", methods=["GET"])
    def klein_route(self, request: IRequest) -> bytes:
        return json_response(request, 200, {"route": "klein"})

    def undeclared(self, request: IRequest) -> bytes:
        return json_response(request, 200, {"route": "undeclared"})


def test_a_method_without_authorized_is_not_routed(
    director: DirectorHarness,
) -> None:
    gate = Gate(director.logins, director.enrolment, Gateways((), director.clock))
    root = DirectorRoot(1048576, gate, [Probe()])
    stub = StubTreq(root.resource())

    assert sorted((r.method, r.path, r.role.value) for r in root.routes) == [
        ("GET", "/v1/health", "public"),
        ("GET", "/v1/probe/declared", "public"),
    ]
    assert {r.endpoint for r in root.app.url_map.iter_rules()} == {
        "DirectorRoot.health",
        "Probe.declared",
    }
    assert call(stub, "GET", "/v1/probe/declared").outcome == (
        200,
        {"route": "declared"},
    )
    for path in ("/v1/probe/klein", "/v1/probe/undeclared", "/v1/probe/Probe"):
        assert call(stub, "GET", path).outcome == (404, {"error": "not found"})


def test_metrics_on_the_https_port_need_the_scrape_token(
    director: DirectorHarness,
) -> None:
    stub = StubTreq(director.resource())
    for token in ("", "Bearer wrong", f"Basic {METRICS_TOKEN}"):
        headers = {"Authorization": token} if token else {}
        d = stub.get(BASE + "/metrics", headers=headers)  # type: ignore[attr-defined]
        stub.flush()
        answer = result_of(d)
        assert answer.code == 401
        assert answer.headers.getRawHeaders("WWW-Authenticate") == [
            'Bearer realm="metrics"'
        ]
    d = stub.get(  # type: ignore[attr-defined]
        BASE + "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"}
    )
    stub.flush()
    answer = result_of(d)
    body = result_of(answer.text())
    assert answer.code == 200
    assert "dcvix_logins_total" in body
    assert answer.headers.getRawHeaders("Content-Type")[0].startswith("text/plain")
