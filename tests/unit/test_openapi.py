"""The OpenAPI documents: every route and nothing else, valid, each role's errors.

The director's document is built from the routes a real director installs;
the agent's from its Klein app, and the copy shipped in the package must be
what ``python -m dcvix.agent.openapi`` writes.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate
from stub_api import call
from treq.testing import StubTreq
from twisted.internet.testing import MemoryReactorClock
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.web.server import Site

from dcvix.agent import openapi as agent_openapi
from dcvix.common.config import load_config
from dcvix.common.openapi import json_key, path_template, request_schema
from dcvix.director import openapi as director_openapi
from dcvix.director import schemas
from dcvix.director.api.authz import Role, RouteSpec
from dcvix.director.config import DirectorConfig
from dcvix.director.registry.engine import inline_runner
from dcvix.director.service import Dependencies, build_director
from dcvix.testing import PasswordAuthenticator, director_harness

TYPES = {str: "string", int: "integer", float: "number", bool: "boolean", list: "array"}
METHODS = ("get", "put", "post", "delete", "patch", "head", "options")


@pytest.fixture(scope="module")
def director_routes(tmp_path_factory: pytest.TempPathFactory) -> list[RouteSpec]:
    with director_harness(tmp_path_factory.mktemp("director")) as harness:
        return list(harness.root.routes)


@pytest.fixture(scope="module")
def director_doc(director_routes: list[RouteSpec]) -> dict[str, Any]:
    return director_openapi.director_document(director_routes)


def operations(doc: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in doc["paths"].items():
        for method, described in item.items():
            if method in METHODS:
                yield method.upper(), path, described


# ----------------------------------------------------- every route, no other


def test_the_director_table_names_exactly_the_routes(
    director_routes: list[RouteSpec],
) -> None:
    routes = {(r.method, r.path) for r in director_routes}
    table = set(director_openapi.OPERATIONS)
    assert table - routes == set(), "documented, but no such route"
    assert routes - table == set(), "routes the document lacks"


def test_a_route_without_an_entry_cannot_be_documented(
    director_routes: list[RouteSpec],
) -> None:
    extra = RouteSpec("GET", "/v1/new-thing", Role.USER)
    with pytest.raises(KeyError, match="GET /v1/new-thing is not in the API document"):
        director_openapi.director_document([*director_routes, extra])


def test_the_director_document_holds_each_route_once(
    director_routes: list[RouteSpec], director_doc: dict[str, Any]
) -> None:
    documented = sorted((m, p) for m, p, _ in operations(director_doc))
    expected = sorted((r.method, path_template(r.path)[0]) for r in director_routes)
    assert documented == expected


def test_the_agent_table_names_exactly_the_routes() -> None:
    routes = set(agent_openapi.routes())
    assert routes == {
        ("GET", "/v1/health"),
        ("GET", "/v1/stats"),
        ("GET", "/v1/sessions"),
        ("POST", "/v1/sessions"),
        ("DELETE", "/v1/sessions/<string:session_id>"),
        ("POST", "/v1/config"),
    }
    table = set(agent_openapi.OPERATIONS)
    assert table - routes == set(), "documented, but no such route"
    assert routes - table == set(), "routes the document lacks"
    documented = {(m, p) for m, p, _ in operations(agent_openapi.agent_document())}
    assert documented == {(m, path_template(p)[0]) for m, p in routes}


def test_the_packaged_agent_document_is_up_to_date() -> None:
    shipped = agent_openapi.DOCUMENT_FILE.read_text(encoding="utf-8")
    assert shipped == agent_openapi.render(), (
        "dcvix/agent/openapi.json is stale: run python -m dcvix.agent.openapi"
    )


def test_the_agent_document_can_be_written_elsewhere(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "agent.json"
    monkeypatch.setattr("sys.argv", ["openapi", str(target)])
    agent_openapi.main()
    assert target.read_text(encoding="utf-8") == agent_openapi.render()


def test_the_director_service_serves_the_document_of_its_routes(
    tmp_path: Path, director_doc: dict[str, Any]
) -> None:
    config = tmp_path / "dcvix-director.conf"
    config.write_text(
        "[director]\n"
        "director_host = 127.0.0.1\n"
        "director_port = 18445\n"
        f"data_dir = {tmp_path / 'data'}\n"
        f"policydb_folder = {tmp_path / 'policydb'}\n"
        "[log]\n"
        f"directory = {tmp_path / 'log'}\n"
    )
    config.chmod(0o600)
    reactor = MemoryReactorClock()
    deps = Dependencies(
        host_names=lambda: ["director1"],
        authenticator=lambda _config, _reactor, _pool: PasswordAuthenticator({}),
        db_runner=lambda _pool: inline_runner,
    )
    root = build_director(load_config(DirectorConfig, config), reactor, None, deps)
    root.privilegedStartService()
    root.startService()
    try:
        factory = reactor.tcpServers[0][1]
        assert isinstance(factory, TLSMemoryBIOFactory)
        site = factory.wrappedFactory
        assert isinstance(site, Site)
        answer = call(StubTreq(site.resource), "GET", "/v1/openapi.json")
    finally:
        root.stopService()
    assert answer.code == 200
    assert answer.json() == json.loads(json.dumps(director_doc))


# --------------------------------------------------------------- validity


def test_both_documents_are_valid_openapi_3_1(director_doc: dict[str, Any]) -> None:
    for doc in (director_doc, agent_openapi.agent_document()):
        assert doc["openapi"] == "3.1.0"
        validate(doc)


def test_every_operation_lists_the_http_layers_refusals(
    director_doc: dict[str, Any],
) -> None:
    # DcvixChannel answers these before any route runs, on every path.
    for doc in (director_doc, agent_openapi.agent_document()):
        for method, path, described in operations(doc):
            assert {"400", "408", "431"} <= set(described["responses"]), (method, path)


def test_operation_ids_are_unique(director_doc: dict[str, Any]) -> None:
    for doc in (director_doc, agent_openapi.agent_document()):
        ids = [o["operationId"] for _, _, o in operations(doc)]
        assert len(ids) == len(set(ids))


def test_klein_paths_become_templates_with_their_values() -> None:
    path, parameters = path_template(
        "/v1/admin/agents/<string:guid>/<any(approve,deny):action>"
    )
    assert path == "/v1/admin/agents/{guid}/{action}"
    assert parameters == [
        {
            "name": "guid",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "pattern": "^[^/]+$"},
        },
        {
            "name": "action",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "enum": ["approve", "deny"]},
        },
    ]
    assert path_template("/assets/<path:name>") == (
        "/assets/{name}",
        [
            {
                "name": "name",
                "in": "path",
                "required": True,
                "schema": {"type": "string", "minLength": 1},
            }
        ],
    )
    with pytest.raises(ValueError, match="no OpenAPI form"):
        path_template("/v1/<uuid:guid>")


# ------------------------------------------------------------ what answers


def test_every_operation_answers_a_success_and_its_roles_errors(
    director_doc: dict[str, Any],
) -> None:
    implied = {
        "user": {"401"},
        "admin": {"401", "403"},
        "agent": {"401"},
        "agent_certificate": {"401"},
        "gateway": {"403"},
        "public": set(),
        "director": {"401", "403"},
    }
    for doc in (director_doc, agent_openapi.agent_document()):
        for method, path, described in operations(doc):
            where = f"{method} {path}"
            statuses = set(described["responses"])
            assert any(s.startswith("2") for s in statuses), where
            assert implied[described["x-dcvix-role"]] <= statuses, where
            body = described.get("requestBody")
            if body is not None:
                assert "413" in statuses, where
                if "application/json" in body["content"]:
                    assert "400" in statuses, where
            if method in ("POST", "DELETE"):
                assert "403" in statuses, f"{where}: the CSRF refusal"
            for status, answer in described["responses"].items():
                if status[0] in "45":
                    assert answer["content"] == {
                        "application/json": {
                            "schema": {"$ref": "#/components/schemas/Error"}
                        }
                    }, where


def test_state_changing_director_routes_document_a_full_disk(
    director_doc: dict[str, Any],
) -> None:
    # A write to agents.db on a full disk answers 507 (test_fault_files).
    for method, path, described in operations(director_doc):
        changes = method not in ("GET", "HEAD", "OPTIONS")
        assert ("507" in described["responses"]) == changes, f"{method} {path}"


def test_each_role_has_its_security(director_doc: dict[str, Any]) -> None:
    cookie: list[dict[str, list[str]]] = [{"loginCookie": []}]
    certificate: list[dict[str, list[str]]] = [{"agentCertificate": []}]
    expected = {
        "user": cookie,
        "admin": cookie,
        "agent": certificate,
        "agent_certificate": certificate,
        "gateway": [],
        "public": [],
    }
    optional_cookie: list[dict[str, list[str]]] = [{}, {"loginCookie": []}]
    for method, path, described in operations(director_doc):
        if (method, path) in (("POST", "/v1/logout"), ("GET", "/v1/ui-config")):
            assert described["security"] == optional_cookie
        else:
            assert described["security"] == expected[described["x-dcvix-role"]], path
    schemes = director_doc["components"]["securitySchemes"]
    assert schemes["loginCookie"] == {
        "type": "apiKey",
        "in": "cookie",
        "name": "dcvix_session",
        "description": "A login token (PASETO), set by the login routes.",
    }
    assert schemes["agentCertificate"]["type"] == "mutualTLS"
    for _method, path, described in operations(agent_openapi.agent_document()):
        want: list[dict[str, list[str]]] = (
            [] if path == "/v1/health" else [{"directorCertificate": []}]
        )
        assert described["security"] == want


def test_the_roles_match_the_routes(director_routes: list[RouteSpec]) -> None:
    doc = director_openapi.director_document(director_routes)
    for route in director_routes:
        path = path_template(route.path)[0]
        described = doc["paths"][path][route.method.lower()]
        assert described["x-dcvix-role"] == route.role.name.lower()


# --------------------------------------------------------- request bodies


@pytest.mark.parametrize("name", sorted(schemas.REQUESTS))
def test_each_request_schema_is_its_request_types_fields(
    name: str, director_doc: dict[str, Any]
) -> None:
    kind, _schema = schemas.REQUESTS[name]
    schema = director_doc["components"]["schemas"][name]
    hints = typing.get_type_hints(kind)
    fields = dataclasses.fields(kind)
    assert {
        json_key(f): TYPES[typing.get_origin(hints[f.name]) or hints[f.name]]
        for f in fields
    } == {k: v["type"] for k, v in schema["properties"].items()}
    assert schema["required"] == [
        json_key(f)
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    ]
    assert "additionalProperties" not in schema, "unknown keys are ignored"


def test_a_refinement_cannot_name_a_missing_field_or_change_a_type() -> None:
    @dataclasses.dataclass(frozen=True)
    class Probe:
        name: str
        count: int = 0

    assert request_schema(Probe, {"count": {"type": "string", "minimum": 1}}) == {
        "type": "object",
        "properties": {
            "name": {"type": "string"},
            "count": {"type": "integer", "minimum": 1},
        },
        "required": ["name"],
    }
    with pytest.raises(ValueError, match=r"Probe has no field \['other'\]"):
        request_schema(Probe, {"other": {}})


def test_request_bodies_refer_to_declared_schemas(
    director_doc: dict[str, Any],
) -> None:
    declared = director_doc["components"]["schemas"]
    for doc in (director_doc, agent_openapi.agent_document()):
        for _method, _path, described in operations(doc):
            body = described.get("requestBody")
            for media in (body or {}).get("content", {}).values():
                target = media["schema"].get("$ref", "")
                if target:
                    name = target.rsplit("/", 1)[1]
                    assert name in doc["components"]["schemas"]
    used = {
        media["schema"]["$ref"].rsplit("/", 1)[1]
        for _, _, described in operations(director_doc)
        for media in described.get("requestBody", {}).get("content", {}).values()
        if "$ref" in media["schema"]
    }
    assert set(schemas.REQUESTS) <= used
    assert set(schemas.REQUESTS) <= set(declared)
