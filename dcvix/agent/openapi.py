"""The agent's OpenAPI 3.1 document, from its Klein routes and the table below.

The document ships in the package as ``dcvix/agent/openapi.json`` (the agent
does not serve it: only the director may call the agent). This module is its
source: ``python -m dcvix.agent.openapi`` rewrites the file, and a test fails
when the file differs, when a route lacks an entry or an entry has no route.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from werkzeug.routing import Rule

from dcvix import __version__
from dcvix.agent.api import AgentAPI
from dcvix.common.openapi import (
    Answer,
    Body,
    Operation,
    Schema,
    array,
    closed,
    document,
    go_session_properties,
    merge_errors,
    operation,
    ref,
)

DOCUMENT_FILE = Path(__file__).with_name("openapi.json")
DIRECTOR_SCHEME = "directorCertificate"
PUBLIC = "public"
DIRECTOR = "director"

_COUNT = {"type": "integer", "minimum": 0}
_AMOUNT = {"type": "number", "minimum": 0}
_STRING = {"type": "string"}

SCHEMAS: dict[str, Schema] = {
    "Health": closed({"status": {"const": "healthy"}}),
    "Session": closed(
        go_session_properties(), description="A DCV session, Go's keys and order."
    ),
    "Stats": closed(
        {
            "hostname": {
                "type": "string",
                "description": "The configured `hostname`.",
            },
            "free_memory": {
                **_COUNT,
                "description": "Bytes available to new work (`MemAvailable`).",
            },
            "total_memory": _COUNT,
            "cores": {**_COUNT, "description": "Physical cores."},
            "cpu_usage": {**_AMOUNT, "description": "Percent since the last sample."},
            "load1": _AMOUNT,
            "load5": _AMOUNT,
            "load15": _AMOUNT,
        },
    ),
    "Report": closed(
        {
            "sessions": array(ref("Session")),
            "stats": ref("Stats"),
            "tags": array(_STRING, description="The configured tags, then the OS."),
            "update_interval": {"type": "number"},
            "agent_port": {"type": "integer"},
            "advertise_address": _STRING,
            "version": _STRING,
            "dcv_error": {
                "type": "string",
                "description": "Why `sessions` is left out: dcv failed.",
            },
            "reaped": array(
                closed({"id": _STRING, "owner": _STRING, "reason": _STRING}),
                description="Sessions the idle reaper closed since the last "
                "delivered report, for the director's audit trail.",
            ),
        },
        optional=["sessions", "advertise_address", "dcv_error", "reaped"],
        description="The body of every `POST /v1/agent/update` to the director.",
    ),
    "SessionMade": closed({"sessionID": _STRING}),
    "CreateSessionRequest": {
        "type": "object",
        "properties": {
            "userId": {"type": "string", "description": "The owner."},
            "sessionType": {
                "type": "string",
                "description": "`console` or `virtual`, any case.",
            },
            "sessionId": {"type": "string", "description": "The new session's id."},
        },
        "required": ["userId", "sessionType", "sessionId"],
    },
    "ConfigRequest": {
        "type": "object",
        "properties": {
            "config": array(
                {
                    "type": "object",
                    "properties": {
                        "section": _STRING,
                        "key": _STRING,
                        "value": _STRING,
                    },
                    "required": ["section", "key", "value"],
                }
            )
        },
        "required": ["config"],
    },
}

_DCV_ERRORS = {
    502: "dcv failed (its first line of stderr)",
    503: "dcv is not there",
    504: "dcv did not answer in time",
}

OPERATIONS: dict[tuple[str, str], tuple[str, Operation]] = {
    ("GET", "/v1/health"): (
        PUBLIC,
        Operation(
            "health",
            "The agent is up",
            "meta",
            (Answer(200, "OK", ref("Health")),),
        ),
    ),
    ("GET", "/v1/stats"): (
        DIRECTOR,
        Operation(
            "stats",
            "The report the updater sends the director",
            "agent",
            (Answer(200, "OK", ref("Report")),),
        ),
    ),
    ("GET", "/v1/sessions"): (
        DIRECTOR,
        Operation(
            "sessions",
            "Every DCV session",
            "agent",
            (Answer(200, "OK", array(ref("Session"))),),
            errors=_DCV_ERRORS,
        ),
    ),
    ("POST", "/v1/sessions"): (
        DIRECTOR,
        Operation(
            "createSession",
            "The owner's session of that type, else a new one",
            "agent",
            (Answer(201, "The session, reused or created.", ref("SessionMade")),),
            errors={
                400: "a bad owner, type or id, or an owner who may not run a "
                "virtual session here",
                409: "another session has that id, or (console) the console "
                "session is someone else's",
                **_DCV_ERRORS,
            },
            body=Body(ref("CreateSessionRequest")),
        ),
    ),
    ("DELETE", "/v1/sessions/<string:session_id>"): (
        DIRECTOR,
        Operation(
            "closeSession",
            "Close a session",
            "agent",
            (Answer(200, "Closed.", ref("Empty")),),
            errors={
                400: "an invalid session id",
                404: "no such session",
                **_DCV_ERRORS,
            },
            path={"session_id": "The DCV session id."},
        ),
    ),
    ("POST", "/v1/config"): (
        DIRECTOR,
        Operation(
            "configure",
            "Push DCV settings",
            "agent",
            (Answer(200, "Applied.", ref("Empty")),),
            errors={
                400: "a bad entry or value (nothing is applied)",
                403: "a setting outside `config_allow`",
                **_DCV_ERRORS,
            },
            body=Body(ref("ConfigRequest")),
        ),
    ),
}
"""What each route takes and answers, and who may call it."""

ROLE_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    PUBLIC: [],
    DIRECTOR: [{DIRECTOR_SCHEME: []}],
}
ROLE_ERRORS = {
    PUBLIC: {},
    DIRECTOR: {
        401: "client certificate required",
        403: "only the director may call this",
    },
}
BODY_ERRORS = {
    400: "a body that is not a JSON object of the declared fields",
    413: "request body too large",
}
CSRF_ERRORS = {403: "cross-site request refused (a browser's, from another origin)"}

DESCRIPTION = """\
The dcvix agent's HTTPS API (see README.md). Only `GET /v1/health` answers anyone;
every other operation needs the director's client certificate (CN and SAN
`dcvix-director`, from the CA in the agent's `ca.pem`): none is 401, another
certificate of that CA 403.

Errors are always `{"error": "<message>"}` with their status. JSON bodies are read
as Go reads them: keys match in any case, unknown keys are ignored, `null` or a
missing key is the zero value.
"""


def routes() -> list[tuple[str, str]]:
    """(method, Klein path) of every route the agent serves (HEAD aside)."""
    rules: list[Rule] = list(AgentAPI.app.url_map.iter_rules())
    return sorted(
        (method, rule.rule)
        for rule in rules
        for method in (rule.methods or set()) - {"HEAD"}
    )


def agent_document() -> Schema:
    """The OpenAPI document of the agent's routes.

    Raises:
        KeyError: a route has no entry in :data:`OPERATIONS`.
    """
    paths: dict[str, dict[str, Schema]] = {}
    for method, klein_path in routes():
        found = OPERATIONS.get((method, klein_path))
        if found is None:
            raise KeyError(f"{method} {klein_path} is not in the API document")
        role, entry = found
        body = BODY_ERRORS if entry.body is not None else {}
        csrf = CSRF_ERRORS if method not in ("GET", "HEAD", "OPTIONS") else {}
        path, described = operation(
            entry,
            klein_path,
            security=ROLE_SECURITY[role],
            errors=merge_errors(ROLE_ERRORS[role], body, csrf),
            extensions={"x-dcvix-role": role},
        )
        paths.setdefault(path, {})[method.lower()] = described
    return document(
        title="dcvix agent",
        version=__version__,
        description=DESCRIPTION,
        paths=paths,
        schemas=SCHEMAS,
        security_schemes={
            DIRECTOR_SCHEME: {
                "type": "mutualTLS",
                "description": "The director's client certificate.",
            }
        },
        tags={
            "meta": "Health.",
            "agent": "What the director calls.",
        },
    )


def render() -> str:
    """The document as the package ships it."""
    return json.dumps(agent_document(), indent=2) + "\n"


def main() -> None:
    """Rewrite ``dcvix/agent/openapi.json`` (or the file named)."""
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else DOCUMENT_FILE
    path.write_text(render(), encoding="utf-8")


if __name__ == "__main__":
    main()
