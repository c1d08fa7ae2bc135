"""The API documents say what the daemons really do (StubTreq).

``GET /v1/openapi.json`` serves the director's document. Each request type a
document declares is the one its route decodes: a field of the wrong type is
the decoder's own 400, naming that field. And a director in use answers, on
every route, statuses and bodies its document allows.
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import uuid
from collections.abc import Coroutine, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.x509.oid import NameOID
from openapi_schema_validator import OAS31Validator, oas31_format_checker
from openapi_spec_validator import validate
from stub_api import Answer, call, login_cookie, result_of
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.web.iweb import IRequest
from werkzeug.routing import Rule

from dcvix.agent import openapi as agent_openapi
from dcvix.agent.api import AgentAPI
from dcvix.common.openapi import path_template
from dcvix.common.webclient import Answer as AgentAnswer
from dcvix.director.openapi import director_document
from dcvix.director.runtime import HostStats, ServerState, Session
from dcvix.director.schemas import REQUESTS
from dcvix.testing import DirectorHarness, director_harness
from dcvix.testing.director import METRICS_TOKEN, NOW
from dcvix.testing.reports import session

T = TypeVar("T")
JSON = "application/json"
USERS = (
    {"id": "alice", "admin": True},
    {"id": "bob", "workstations": ["ws-1"], "pools": ["gpu"]},
)
POOLS = ({"id": "gpu", "workstations": ["ws-2"]},)
PASSWORDS = {"alice": "a-pw", "bob": "b-pw"}
HOSTS = {
    "ws-1": "00000000-0000-4000-8000-000000000001",
    "ws-2": "00000000-0000-4000-8000-000000000002",
}
WRONG = {"string": 7, "array": "x", "integer": "x", "boolean": "x", "object": "x"}
KIND_NAMES = {
    "string": "a string",
    "array": "a list",
    "integer": "an integer",
    "boolean": "a boolean",
    "object": "an object",
}
# Only a real TLS connection carries an agent's client certificate.
NEEDS_A_CLIENT_CERTIFICATE = {
    ("POST", "/v1/agent/renew"),
    ("POST", "/v1/agent/update"),
}


def done(work: Coroutine[Any, Any, T]) -> T:
    value: T = result_of(Deferred.fromCoroutine(work))
    return value


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, described in item.items():
            yield method.upper(), path, described


def concrete(template: str, values: dict[str, str]) -> str:
    for name, value in values.items():
        template = template.replace("{" + name + "}", value)
    return template


def schema_errors(doc: dict[str, Any], schema: dict[str, Any], value: Any) -> list[str]:
    """Why ``value`` breaks ``schema`` (its references are the document's)."""
    rooted = {**schema, "components": doc["components"]}
    checker = OAS31Validator(rooted, format_checker=oas31_format_checker)
    return [f"{e.json_path}: {e.message}" for e in checker.iter_errors(value)]


def breaks(doc: dict[str, Any], method: str, template: str, answer: Answer) -> str:
    """Why an answer is not one the document allows ("" when it is)."""
    described = doc["paths"][template][method.lower()]
    documented = described["responses"].get(str(answer.code))
    if documented is None:
        return f"status {answer.code} is not documented ({answer.body[:200]!r})"
    if not answer.body:
        return ""
    kind = (answer.headers.getRawHeaders("Content-Type") or [""])[0]
    media = kind.split(";")[0].strip()
    content = documented.get("content", {})
    if media not in content:
        return f"{answer.code} {media} is not documented"
    if media != JSON:
        return ""
    problems = schema_errors(doc, content[media]["schema"], json.loads(answer.body))
    return f"{answer.code}: {problems}" if problems else ""


# ----------------------------------------------------------------- director


@pytest.fixture
def director(tmp_path: Path) -> Iterator[DirectorHarness]:
    with director_harness(
        tmp_path, users=USERS, pools=POOLS, passwords=PASSWORDS
    ) as harness:
        yield harness


def test_the_director_serves_its_document_to_anyone(director: DirectorHarness) -> None:
    stub = StubTreq(director.resource())
    answer = call(stub, "GET", "/v1/openapi.json")

    assert answer.code == 200
    assert answer.headers.getRawHeaders("Content-Type") == [JSON]
    served = answer.json()
    assert served == json.loads(json.dumps(director_document(director.root.routes)))
    validate(served)
    assert served["paths"]["/v1/openapi.json"]["get"]["x-dcvix-role"] == "public"


def test_the_document_is_the_routes_klein_serves(director: DirectorHarness) -> None:
    served = call(StubTreq(director.resource()), "GET", "/v1/openapi.json").json()
    rules: list[Rule] = list(director.root.app.url_map.iter_rules())
    routed = {
        (method, path_template(rule.rule)[0])
        for rule in rules
        for method in (rule.methods or set()) - {"HEAD"}
    }
    assert {(m, p) for m, p, _ in operations(served)} == routed


def wrong_bodies(doc: dict[str, Any], schema: dict[str, Any]) -> Iterator[Any]:
    """A body per property, that property of the wrong type, and its error."""
    target = schema.get("$ref", "")
    declared = doc["components"]["schemas"][target.rsplit("/", 1)[1]]
    for name, prop in declared["properties"].items():
        kind = prop["type"]
        yield {name: WRONG[kind]}, f"field {name!r} must be {KIND_NAMES[kind]}"


def test_each_route_decodes_the_request_type_its_document_names(
    director: DirectorHarness,
) -> None:
    stub = StubTreq(director.resource())
    cookies = {
        "user": login_cookie(stub, "bob", "b-pw", admin=False),
        "admin": login_cookie(stub, "alice", "a-pw", admin=True),
        "public": None,
        "gateway": None,  # StubTreq's peer is 127.0.0.1, the default list
    }
    doc = director_document(director.root.routes)
    checked = set()
    for method, template, described in operations(doc):
        body = described.get("requestBody", {}).get("content", {}).get(JSON)
        if body is None or (method, template) in {
            (m, path_template(p)[0]) for m, p in NEEDS_A_CLIENT_CERTIFICATE
        }:
            continue
        path = concrete(template, {"server": "ws-1"})
        cookie = cookies[described["x-dcvix-role"]]
        for wrong, message in wrong_bodies(doc, body["schema"]):
            answer = call(stub, method, path, json.dumps(wrong).encode(), cookie)
            assert answer.outcome == (400, {"error": message}), (method, path, wrong)
        checked.add(body["schema"]["$ref"].rsplit("/", 1)[1])
    assert checked == set(REQUESTS) - {"RenewRequest"}


class DirectorOnly(AgentAPI):
    """The agent's routes, as if the caller held the director's certificate."""

    def _require_director(self, request: IRequest) -> None:
        return None


def test_each_agent_route_decodes_the_body_its_document_names() -> None:
    stub = StubTreq(DirectorOnly(hostname="ws-1").app.resource())
    doc = agent_openapi.agent_document()
    checked = []
    for method, path, described in operations(doc):
        body = described.get("requestBody", {}).get("content", {}).get(JSON)
        if body is None:
            continue
        for wrong, message in wrong_bodies(doc, body["schema"]):
            answer = call(stub, method, path, json.dumps(wrong).encode())
            assert answer.outcome == (400, {"error": message}), (method, path, wrong)
            assert not breaks(doc, method, path, answer)
        checked.append((method, path))
    assert sorted(checked) == [("POST", "/v1/config"), ("POST", "/v1/sessions")]


def test_the_agents_answers_without_dcv_follow_its_document() -> None:
    doc = agent_openapi.agent_document()
    stub = StubTreq(AgentAPI(hostname="ws-1").app.resource())
    # No client certificate here: the director-only routes refuse.
    for method, path, _described in operations(doc):
        answer = call(stub, method, concrete(path, {"session_id": "s-1"}))
        assert not breaks(doc, method, path, answer), (method, path)
        expected = 200 if path == "/v1/health" else 401
        assert answer.code == expected, (method, path)


# ------------------------------------------------------ a director in use


def csr(guid: str) -> str:
    key = ed25519.Ed25519PrivateKey.generate()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"dcvix-agent-{guid}")])
    request = x509.CertificateSigningRequestBuilder().subject_name(name).sign(key, None)
    return base64.b64encode(request.public_bytes(serialization.Encoding.DER)).decode()


def report(director: DirectorHarness, hostname: str, *sessions: Session) -> None:
    now = dt.datetime.fromtimestamp(director.clock.seconds(), dt.UTC)
    done(
        director.runtime.put(
            ServerState(
                guid=HOSTS[hostname],
                hostname=hostname,
                address="10.0.0.1",
                agent_port=8446,
                update_interval=30.0,
                last_seen=now,
                stats=HostStats(8 << 30, 16 << 30, 4, 3.5, 0.25, 0.5, 0.75),
                tags=("gpu", "linux"),
                sessions=sessions,
                version="1.2.3",
            )
        )
    )


@dataclass
class Calls:
    """Calls made, each with the route it meant and what came back."""

    director: DirectorHarness
    stub: StubTreq
    cookies: dict[str, str]
    seen: list[tuple[str, str, str, Answer]] = field(default_factory=list)

    def ask(
        self,
        method: str,
        template: str,
        values: dict[str, str] | None = None,
        query: str = "",
        body: Any = None,
        who: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Answer:
        path = concrete(template, values or {})
        data = b"" if body is None else json.dumps(body).encode()
        cookie = self.cookies[who] if who else None
        answer = call(self.stub, method, path + query, data, cookie, headers)
        self.seen.append((method, template, path + query, answer))
        return answer

    def agent_answers(self, status: int, body: Any) -> None:
        self.director.agent_client.answer = AgentAnswer(
            status, json.dumps(body).encode()
        )


def test_a_director_in_use_answers_as_its_document_says(
    director: DirectorHarness,
) -> None:
    for hostname, guid in HOSTS.items():
        assert done(
            director.registry.create_registered(
                guid, hostname, f"key-{hostname}", "", NOW, "setup"
            )
        )
    report(
        director, "ws-1", session("s-bob", "bob"), session("c-1", "carol", "console")
    )
    report(director, "ws-2")
    stub = StubTreq(director.resource())
    cookies = {
        "bob": login_cookie(stub, "bob", "b-pw", admin=False),
        "alice": login_cookie(stub, "alice", "a-pw", admin=True),
        "leaving": login_cookie(stub, "bob", "b-pw", admin=False),
    }
    world = Calls(director, stub, cookies)
    ask = world.ask

    # Anyone.
    ask("GET", "/v1/health")
    ask("GET", "/v1/openapi.json")
    ask("GET", "/metrics")
    ask("GET", "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    ask("GET", "/v1/ui-config")
    ask("GET", "/v1/ui-config", who="bob")
    ask("GET", "/")
    ask("GET", "/{area}", {"area": "portal"})
    ask("GET", "/admin/{screen}", {"screen": "agents"})
    ask("GET", "/assets/{name}", {"name": "js/app.js"})
    ask("GET", "/assets/{name}", {"name": "js/nothing.js"})
    ask("POST", "/v1/user/login", body={"userID": "bob", "password": "no"})
    ask("POST", "/v1/user/login", body={"userID": "bob", "password": "b-pw"})
    ask("POST", "/v1/admin/login", body={"userID": "bob", "password": "b-pw"})
    ask("POST", "/v1/admin/login", body={"userID": "alice", "password": "a-pw"})
    ask("POST", "/v1/logout", who="leaving")
    ask("POST", "/v1/agent/renew", body={"csr": "x"})
    ask("POST", "/v1/agent/update", body={"stats": {}})

    # An agent enrols: pending, approved, then its certificate.
    guid = str(uuid.uuid4())
    enrol = {"csr": csr(guid), "guid": guid, "hostname": "ws-9"}
    assert ask("POST", "/v1/agent/register", body=enrol).code == 403
    ask("POST", "/v1/agent/register", body={**enrol, "guid": "nope"})
    ask("GET", "/v1/admin/agents", who="alice")
    ask("GET", "/v1/admin/agents", query="?state=pending", who="alice")
    ask("GET", "/v1/admin/agents", query="?state=bogus", who="alice")
    action = "/v1/admin/agents/{guid}/{action}"
    assert (
        ask("POST", action, {"guid": guid, "action": "approve"}, who="alice").code
        == 200
    )
    ask("POST", action, {"guid": guid, "action": "approve"}, who="alice")
    ask("POST", action, {"guid": str(uuid.uuid4()), "action": "revoke"}, who="alice")
    ask("POST", action, {"guid": "nope", "action": "deny"}, who="alice")
    ask("POST", action, {"guid": guid, "action": "approve"}, who="bob")
    assert ask("POST", "/v1/agent/register", body=enrol).code == 200
    ask("GET", "/v1/admin/ca", who="alice")
    ask("GET", "/v1/admin/audit", query="?limit=2", who="alice")
    ask("GET", "/v1/admin/audit", query="?format=csv&actor=alice", who="alice")
    ask("GET", "/v1/admin/audit", query="?since=yesterday", who="alice")
    ask("GET", "/v1/admin/ca")

    # A user.
    ask("GET", "/v1/auth-health", who="bob")
    ask("GET", "/v1/auth-health")
    ask("GET", "/v1/user/servers", who="bob")
    ask("GET", "/v1/user/sessions", who="bob")
    wanted = "?serverId=ws-1&sessionId=s-bob"
    token = ask("GET", "/v1/user/connectiontoken", query=wanted, who="bob")
    ask("GET", "/v1/user/connectiontoken", query="?serverId=ws-1", who="bob")
    ask(
        "GET", "/v1/user/connectiontoken", query="?serverId=ws-2&sessionId=x", who="bob"
    )
    ask("GET", "/v1/user/connectionfile", query=wanted, who="bob")
    ask("GET", "/v1/user/connectionfile", query="?serverId=ws-9&sessionId=x", who="bob")
    verify = "?sessionId=s-bob&authenticationToken="
    ask("POST", "/v1/user/authtokenverify", query=verify + quote(token.json()["token"]))
    ask("POST", "/v1/user/authtokenverify", query=verify + "forged")
    ask("POST", "/resolveSession", query="?sessionId=s-bob&transport=QUIC")
    ask("POST", "/resolveSession", body={"sessionId": "s-bob"})
    ask("POST", "/resolveSession", query="?sessionId=nobody")
    ask("POST", "/resolveSession")
    world.agent_answers(201, {"sessionID": "s-new"})
    made = {"serverId": "ws-1", "sessionType": "console"}
    ask("POST", "/v1/user/sessions", body=made, who="bob")
    ask(
        "POST",
        "/v1/user/sessions",
        body={"poolId": "gpu", "sessionType": "virtual"},
        who="bob",
    )
    ask("POST", "/v1/user/sessions", body={"sessionType": "virtual"}, who="bob")
    ask("POST", "/v1/user/sessions", body={**made, "serverId": "ws-2"}, who="bob")
    world.agent_answers(200, {})
    config = {"config": [{"section": "display", "key": "quality", "value": "80"}]}
    server_config = "/v1/user/servers/{server}/config"
    ask("POST", server_config, {"server": "ws-1"}, body=config, who="bob")
    ask("POST", server_config, {"server": "ws-2"}, body=config, who="bob")
    ask("DELETE", "/v1/user/sessions/{session_id}", {"session_id": "s-bob"}, who="bob")
    ask("DELETE", "/v1/user/sessions/{session_id}", {"session_id": "c-1"}, who="bob")
    ask("GET", "/v1/servers", who="bob")

    # An admin.
    ask("GET", "/v1/servers", who="alice")
    page = ask("GET", "/v1/servers", query="?limit=1&online=TRUE", who="alice")
    assert page.json()["next"] == "ws-2"
    ask("GET", "/v1/servers", query="?limit=1&after=ws-2&pool=gpu&q=ws", who="alice")
    ask("GET", "/v1/servers", query="?online=maybe", who="alice")
    ask("GET", "/v1/sessions", who="alice")
    world.agent_answers(201, {"sessionID": "s-alice"})
    create = {"serverId": "ws-2", "userId": "bob", "sessionType": "virtual"}
    ask("POST", "/v1/sessions", body=create, who="alice")
    ask("POST", "/v1/sessions", body={**create, "serverId": "ws-7"}, who="alice")
    ask("POST", "/v1/sessions", body={**create, "sessionType": "x"}, who="alice")
    world.agent_answers(200, {})
    ask("DELETE", "/v1/sessions/{session_id}", {"session_id": "c-1"}, who="alice")
    ask("DELETE", "/v1/sessions/{session_id}", {"session_id": "gone"}, who="alice")
    ask(
        "POST",
        "/v1/servers/{server}/config",
        {"server": "ws-2"},
        body=config,
        who="alice",
    )
    secret = {"config": [{"section": "security", "key": "x", "value": "1"}]}
    ask(
        "POST",
        "/v1/servers/{server}/config",
        {"server": "ws-2"},
        body=secret,
        who="alice",
    )
    world.agent_answers(502, {"error": "dcv failed"})
    ask(
        "POST",
        "/v1/servers/{server}/config",
        {"server": "ws-1"},
        body=config,
        who="alice",
    )

    doc = call(stub, "GET", "/v1/openapi.json").json()
    problems = [
        f"{method} {path}: {why}"
        for method, template, path, answer in world.seen
        if (why := breaks(doc, method, template, answer))
    ]
    assert problems == []
    succeeded = {
        (method, template)
        for method, template, _path, answer in world.seen
        if 200 <= answer.code < 300
    }
    documented = {(m, p) for m, p, _ in operations(doc)}
    assert documented - succeeded == NEEDS_A_CLIENT_CERTIFICATE
    statuses = sorted({answer.code for *_, answer in world.seen})
    assert statuses == [200, 400, 401, 403, 404, 409, 502]
