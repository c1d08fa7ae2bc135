"""OpenAPI 3.1 documents of the daemons' HTTPS APIs: the parts both share.

Each daemon describes its routes in a table of :class:`Operation` keyed by
method and Klein path; :func:`operation` turns an entry into an OpenAPI
operation and :func:`document` assembles the whole. Request bodies are
described from the frozen request types the routes decode
(:func:`request_schema`), so a field added to one reaches the document.
Answers are described closed (``additionalProperties: false``): an answer
that grows a key the document lacks is a failing test, not a silent drift.
"""

from __future__ import annotations

import dataclasses
import re
import typing
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Schema = dict[str, Any]

OPENAPI_VERSION = "3.1.0"
JSON = "application/json"

_TYPES = {
    str: "string",
    int: "integer",
    float: "number",
    bool: "boolean",
    list: "array",
    dict: "object",
}
# <kind(args):name> or <name>, as werkzeug writes a rule's variable parts.
_VARIABLE = re.compile(r"<(?:(?P<kind>\w+)(?:\((?P<args>[^)]*)\))?:)?(?P<name>\w+)>")


def ref(name: str) -> Schema:
    """A reference to the schema ``name`` of the document's components."""
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: Schema) -> Schema:
    """``schema`` or ``null``."""
    return {"anyOf": [schema, {"type": "null"}]}


def array(items: Schema, **limits: Any) -> Schema:
    """A list of ``items``, with JSON Schema limits such as ``maxItems``."""
    return {"type": "array", "items": items, **limits}


def closed(
    properties: Mapping[str, Schema],
    optional: Iterable[str] = (),
    description: str = "",
) -> Schema:
    """An object with exactly these keys, each required but the ``optional`` ones."""
    left_out = set(optional)
    schema: Schema = {
        "type": "object",
        "properties": dict(properties),
        "required": [name for name in properties if name not in left_out],
        "additionalProperties": False,
    }
    if description:
        schema["description"] = description
    return schema


ERROR = closed(
    {"error": {"type": "string"}},
    description='Every error of both daemons: `{"error": "<message>"}`.',
)
EMPTY = {"type": "object", "maxProperties": 0, "description": "`{}`."}
TIME = {
    "type": "string",
    "format": "date-time",
    "description": "RFC 3339 in UTC, as Go writes it; no time is "
    "`0001-01-01T00:00:00Z`, never an empty string.",
}


def go_session_properties() -> dict[str, Schema]:
    """A DCV session as agents report it: Go's keys, in Go's order."""
    return {
        "id": {"type": "string"},
        "owner": {"type": "string"},
        "user": {"type": "string"},
        "num-of-connections": {"type": "integer", "minimum": 0},
        "creation-time": TIME,
        "last-disconnection-time": TIME,
        "licensing-mode": {"type": "string"},
        "storage-root": {"type": "string"},
        "type": {"type": "string"},
        "status": {"type": "string"},
        "x11-display": {"type": "string"},
        "x11-authority": {"type": "string"},
    }


def json_key(item: dataclasses.Field[Any]) -> str:
    """A request field's JSON key (see :func:`dcvix.common.jsonfields.json_name`)."""
    return str(item.metadata.get("json", item.name))


def request_schema(
    kind: type, refine: Mapping[str, Schema] | None = None, description: str = ""
) -> Schema:
    """The JSON body a frozen request type is decoded from.

    Each field becomes a property named by its JSON key, typed by its
    annotation; fields without a default are required (the others take Go's
    zero value when left out). ``refine`` adds to a property's schema (items,
    limits); it cannot change its type.
    """
    hints = typing.get_type_hints(kind)
    extra = refine or {}
    properties: dict[str, Schema] = {}
    required = []
    for item in dataclasses.fields(kind):
        key = json_key(item)
        hint = hints[item.name]
        properties[key] = {
            **extra.get(key, {}),
            "type": _TYPES[typing.get_origin(hint) or hint],
        }
        if (
            item.default is dataclasses.MISSING
            and item.default_factory is dataclasses.MISSING
        ):
            required.append(key)
    unknown = set(extra) - set(properties)
    if unknown:
        raise ValueError(f"{kind.__name__} has no field {sorted(unknown)}")
    schema: Schema = {"type": "object", "properties": properties, "required": required}
    if description:
        schema["description"] = description
    return schema


def path_template(klein_path: str) -> tuple[str, list[Schema]]:
    """A Klein (werkzeug) rule as an OpenAPI path and its path parameters.

    ``<string:x>`` and ``<x>`` are one segment, ``<any(a,b):x>`` one of the
    words listed, ``<path:x>`` the rest of the path, slashes included.
    """
    parameters: list[Schema] = []

    def variable(match: re.Match[str]) -> str:
        kind, name = match["kind"] or "string", match["name"]
        schema: Schema
        if kind == "string":
            schema = {"type": "string", "pattern": "^[^/]+$"}
        elif kind == "any":
            words = (w.strip().strip("'\"") for w in (match["args"] or "").split(","))
            schema = {"type": "string", "enum": [w for w in words if w]}
        elif kind == "path":
            schema = {"type": "string", "minLength": 1}
        elif kind == "int":
            schema = {"type": "integer", "minimum": 0}
        else:
            raise ValueError(f"no OpenAPI form for the rule part {match[0]}")
        parameters.append(
            {"name": name, "in": "path", "required": True, "schema": schema}
        )
        return "{" + name + "}"

    return _VARIABLE.sub(variable, klein_path), parameters


@dataclass(frozen=True)
class Answer:
    """A success answer: status, what it means, its media types and schema.

    ``schema`` None: no body (a 304, say).
    """

    status: int
    description: str
    schema: Schema | None = None
    media_types: tuple[str, ...] = (JSON,)
    headers: Mapping[str, str] = field(default_factory=dict)
    # Other media types the same status may answer, each with its own schema.
    other_media: Mapping[str, Schema] = field(default_factory=dict)


@dataclass(frozen=True)
class Body:
    """A request body."""

    schema: Schema
    media_types: tuple[str, ...] = (JSON,)
    required: bool = True
    description: str = ""


@dataclass(frozen=True)
class Parameter:
    """A query or header parameter."""

    name: str
    description: str
    schema: Schema = field(default_factory=lambda: {"type": "string"})
    where: str = "query"
    required: bool = False


@dataclass(frozen=True)
class Operation:
    """What the document says of one route (its role comes from the route).

    ``errors``: status → when the route answers it, besides those its role,
    its body and its method imply. ``security``: instead of the role's (an
    optional cookie, say). ``path``: descriptions of the path parameters.
    """

    operation_id: str
    summary: str
    tag: str
    answers: tuple[Answer, ...]
    errors: Mapping[int, str] = field(default_factory=dict)
    body: Body | None = None
    parameters: tuple[Parameter, ...] = ()
    path: Mapping[str, str] = field(default_factory=dict)
    description: str = ""
    security: tuple[Mapping[str, list[str]], ...] | None = None


# What the HTTP layer (:class:`~dcvix.common.http.DcvixChannel`) may answer on
# any route before the route runs.
PROTOCOL_ERRORS = {
    400: "a request the HTTP/1.1 parser refuses (then the connection closes)",
    408: "a request not whole within `request_timeout` (then the connection closes)",
    431: "a request line or header section over 16 KiB (then the connection closes)",
}


def merge_errors(*tables: Mapping[int, str]) -> dict[int, str]:
    """Error statuses and their reasons; the reasons of one status joined."""
    merged: dict[int, list[str]] = {}
    for table in tables:
        for status, reason in table.items():
            reasons = merged.setdefault(status, [])
            if reason not in reasons:
                reasons.append(reason)
    return {status: "; ".join(merged[status]) for status in sorted(merged)}


def operation(
    entry: Operation,
    klein_path: str,
    *,
    security: Iterable[Mapping[str, list[str]]],
    errors: Mapping[int, str],
    extensions: Mapping[str, Any] | None = None,
) -> tuple[str, Schema]:
    """The OpenAPI path of ``klein_path`` and the operation object of ``entry``.

    Args:
        entry: the route's table entry.
        klein_path: the route's rule.
        security: the requirements of the route's role (unless the entry has its own).
        errors: the error answers the role, body and method imply (the HTTP
            layer's, :data:`PROTOCOL_ERRORS`, are added to every operation).
        extensions: ``x-`` keys to add.
    """
    path, parameters = path_template(klein_path)
    for parameter in parameters:
        described = entry.path.get(parameter["name"])
        if described:
            parameter["description"] = described
    for extra in entry.parameters:
        declared: Schema = {
            "name": extra.name,
            "in": extra.where,
            "description": extra.description,
            "required": extra.required,
            "schema": extra.schema,
        }
        parameters.append(declared)
    responses: Schema = {}
    for answer in entry.answers:
        described_answer: Schema = {"description": answer.description}
        if answer.schema is not None:
            described_answer["content"] = {
                media: {"schema": answer.schema} for media in answer.media_types
            } | {
                media: {"schema": other} for media, other in answer.other_media.items()
            }
        if answer.headers:
            described_answer["headers"] = {
                name: {"description": text, "schema": {"type": "string"}}
                for name, text in answer.headers.items()
            }
        responses[str(answer.status)] = described_answer
    for status, reason in merge_errors(errors, entry.errors, PROTOCOL_ERRORS).items():
        responses[str(status)] = {
            "description": reason,
            "content": {JSON: {"schema": ref("Error")}},
        }
    result: Schema = {
        "operationId": entry.operation_id,
        "summary": entry.summary,
        "tags": [entry.tag],
    }
    if entry.description:
        result["description"] = entry.description
    if parameters:
        result["parameters"] = parameters
    if entry.body is not None:
        body: Schema = {
            "required": entry.body.required,
            "content": {
                media: {"schema": entry.body.schema} for media in entry.body.media_types
            },
        }
        if entry.body.description:
            body["description"] = entry.body.description
        result["requestBody"] = body
    result["responses"] = responses
    chosen = entry.security if entry.security is not None else security
    result["security"] = [dict(requirement) for requirement in chosen]
    result.update(extensions or {})
    return path, result


def document(
    *,
    title: str,
    version: str,
    description: str,
    paths: Mapping[str, Mapping[str, Schema]],
    schemas: Mapping[str, Schema],
    security_schemes: Mapping[str, Schema],
    tags: Mapping[str, str],
) -> Schema:
    """A whole OpenAPI 3.1 document; paths in order, methods in the given order."""
    return {
        "openapi": OPENAPI_VERSION,
        "info": {
            "title": title,
            "version": version,
            "description": description,
            "license": {"name": "Apache-2.0", "identifier": "Apache-2.0"},
        },
        "tags": [{"name": name, "description": text} for name, text in tags.items()],
        "paths": {path: dict(paths[path]) for path in sorted(paths)},
        "components": {
            "schemas": {"Error": ERROR, "Empty": EMPTY, **schemas},
            "securitySchemes": dict(security_schemes),
        },
    }
