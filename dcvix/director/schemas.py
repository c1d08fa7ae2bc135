"""The JSON schemas of the director's request and answer bodies (its API document).

Request bodies are made from the frozen request types their routes decode
(:data:`REQUESTS`); answers follow what the routes render (Go's keys for servers
and sessions, see :mod:`dcvix.director.api.render`), closed so that a new key
is a failing test until the document has it.
"""

from __future__ import annotations

from dcvix.common.openapi import (
    TIME,
    Schema,
    array,
    closed,
    go_session_properties,
    nullable,
    ref,
    request_schema,
)
from dcvix.director.api.dcv import ResolveSessionRequest
from dcvix.director.registry import STATES
from dcvix.director.requests import (
    ConfigRequest,
    CreateSessionRequest,
    LoginRequest,
    RegisterRequest,
    RenewRequest,
    UserSessionRequest,
)
from dcvix.director.runtime import MAX_REAPED, MAX_SESSIONS, MAX_TAGS, MAX_TEXT

_TEXT = {
    "type": "string",
    "maxLength": MAX_TEXT,
    "pattern": "^[^\\x00-\\x1f\\x7f]*$",
}
SESSION_ID = {
    "type": "string",
    "pattern": "^(?!-)(?!\\.+$)[A-Za-z0-9_.@:+=-]{1,256}$",
    "description": "Letters, digits and `_.@:+=-`, not starting with `-`, "
    "not only dots.",
}
_UUID = {"type": "string", "format": "uuid"}
_COUNT = {"type": "integer", "minimum": 0}
_AMOUNT = {"type": "number", "minimum": 0}
_MAYBE_TIME = nullable({"type": "string", "format": "date-time"})
_CONFIG_ENTRY = {
    "type": "object",
    "description": "One DCV setting; `section/key` must be in `config_allow`.",
    "properties": {
        "section": {"type": "string"},
        "key": {"type": "string"},
        "value": _TEXT,
    },
    "required": ["section", "key", "value"],
}

REQUESTS: dict[str, tuple[type, Schema]] = {
    "RegisterRequest": (
        RegisterRequest,
        request_schema(
            RegisterRequest,
            {
                "csr": {"description": "A PKCS#10 request, base64 DER."},
                "guid": {"format": "uuid"},
                "registrationToken": {
                    "description": "When `[enrolment] registration_token` is set."
                },
            },
        ),
    ),
    "RenewRequest": (
        RenewRequest,
        request_schema(RenewRequest, {"csr": {"description": "Base64 DER."}}),
    ),
    "LoginRequest": (LoginRequest, request_schema(LoginRequest)),
    "CreateSessionRequest": (
        CreateSessionRequest,
        request_schema(
            CreateSessionRequest,
            {
                "sessionType": {"description": "`console` or `virtual`, any case."},
                "sessionId": {"description": "Kept when valid, else `dcvix_<uuid4>`."},
            },
        ),
    ),
    "ConfigRequest": (
        ConfigRequest,
        request_schema(ConfigRequest, {"config": {"items": _CONFIG_ENTRY}}),
    ),
    "UserSessionRequest": (
        UserSessionRequest,
        request_schema(
            UserSessionRequest,
            {"sessionType": {"description": "`console` or `virtual`, any case."}},
            "Exactly one of `serverId` (a workstation) and `poolId`.",
        ),
    ),
    "ResolveSessionRequest": (
        ResolveSessionRequest,
        request_schema(
            ResolveSessionRequest,
            {
                "sessionId": SESSION_ID,
                "transport": {"description": "`HTTP` when empty."},
            },
            "The seed's form of the Gateway's query fields.",
        ),
    ),
}
"""Request bodies: the request type each is decoded into, and its schema."""

_SESSION = closed(
    {
        "uid": {"type": "string", "description": "`<id>-<hostname>`."},
        "server_id": {"type": "string", "description": "The registered hostname."},
        "last-seen": TIME,
        **go_session_properties(),
    },
    description="A session, Go's shape: `uid`, `server_id`, `last-seen`, then "
    "the agent's keys.",
)
_REPORTED_TIME = nullable(
    {"anyOf": [{"type": "string", "format": "date-time"}, {"const": ""}]}
)
_REPORTED_SESSION: Schema = {
    "type": "object",
    "properties": {
        "id": SESSION_ID,
        "owner": nullable(_TEXT),
        "user": nullable(_TEXT),
        "num-of-connections": nullable({"type": "integer"}),
        "creation-time": _REPORTED_TIME,
        "last-disconnection-time": _REPORTED_TIME,
        "licensing-mode": nullable(_TEXT),
        "storage-root": nullable(_TEXT),
        "type": {
            "type": "string",
            "description": "`console`, `virtual` (any case) or empty.",
        },
        "status": nullable(_TEXT),
        "x11-display": nullable(_TEXT),
        "x11-authority": nullable(_TEXT),
    },
    "required": ["id", "type"],
}
_UPDATE: Schema = {
    "type": "object",
    "description": "What an agent reports (its `GET /v1/stats`). Keys are read "
    "exactly; a missing `sessions` keeps the sessions last reported (dcv failed "
    "on the agent); absurd `update_interval`, `agent_port` or "
    "`advertise_address` values are ignored.",
    "properties": {
        "sessions": nullable(array(ref("ReportedSession"), maxItems=MAX_SESSIONS)),
        "stats": {
            "type": "object",
            "properties": {
                "hostname": {"description": "Ignored: the registered one counts."},
                **{
                    key: nullable(_COUNT)
                    for key in ("free_memory", "total_memory", "cores")
                },
                **{
                    key: nullable(_AMOUNT)
                    for key in ("cpu_usage", "load1", "load5", "load15")
                },
            },
        },
        "tags": nullable(array(_TEXT, maxItems=MAX_TAGS)),
        "update_interval": {"type": "number"},
        "agent_port": {"type": "integer"},
        "advertise_address": {"type": "string"},
        "version": nullable(_TEXT),
        "dcv_error": {"description": "Shown when a string, printable, capped."},
        "reaped": array(
            {
                "type": "object",
                "properties": {
                    "id": _TEXT,
                    "owner": _TEXT,
                    "reason": _TEXT,
                },
                "required": ["id"],
            },
            maxItems=MAX_REAPED,
            description="Sessions the agent's idle reaper closed: one audit line "
            "each (`reap session`).",
        ),
    },
    "required": ["stats"],
}
_SERVER = closed(
    {
        "last-seen": TIME,
        "hostname": {"type": "string"},
        "agent_ip": {"type": "string"},
        "free_memory": _COUNT,
        "total_memory": _COUNT,
        "cores": _COUNT,
        "cpu_usage": _AMOUNT,
        "load1": _AMOUNT,
        "load5": _AMOUNT,
        "load15": _AMOUNT,
        "tags": array({"type": "string"}),
        "sessions": array(ref("Session"), description="Empty while offline."),
        "guid": _UUID,
        "agent_state": {"type": "string", "enum": [*STATES, "unknown"]},
        "online": {"type": "boolean"},
        "agent_port": {"type": "integer"},
        "version": {"type": "string"},
        "dcv_error": {"type": "string"},
        "pools": array({"type": "string"}),
    },
    description="A server, Go's keys first (`last-seen` to `sessions`), then ours.",
)
_AGENT = closed(
    {
        "guid": _UUID,
        "hostname": {"type": "string"},
        "state": {"type": "string", "enum": list(STATES)},
        "created_at": _MAYBE_TIME,
        "registered_at": _MAYBE_TIME,
        "last_seen_at": _MAYBE_TIME,
        "cert_serial": {"type": "string"},
        "tags": {"type": "null", "description": "Go's key; always null."},
        "state_changed_at": _MAYBE_TIME,
        "cert_expires_at": _MAYBE_TIME,
        "address": {"type": "string"},
        "key_fingerprint": {"type": "string"},
        "pinned": {"type": "boolean"},
        "claimed_key": nullable({"type": "string"}),
        "claimed_at": _MAYBE_TIME,
        "duplicate_hostname": {"type": "boolean"},
        "director_host": {"type": "boolean"},
    },
    description="An agent of the registry: Go's keys (`guid` to `tags`), then ours.",
)
_SESSION_MADE = closed(
    {"sessionID": {"type": "string"}, "serverId": {"type": "string"}},
    description="The session (new or reused) and its server's registered hostname.",
)
_SESSION_CLOSED = closed(
    {
        "status": {"const": "success"},
        "code": {"const": 200},
        "message": {"type": "string"},
    }
)

SCHEMAS: dict[str, Schema] = {
    **{name: schema for name, (_kind, schema) in REQUESTS.items()},
    "Update": _UPDATE,
    "ReportedSession": _REPORTED_SESSION,
    "Health": {
        "oneOf": [
            closed({"status": {"const": "healthy"}}),
            closed(
                {
                    "status": {"const": "ready"},
                    "checks": {
                        "type": "object",
                        "additionalProperties": {"type": "string"},
                    },
                },
                description="With `?ready=1`: each check's finding.",
            ),
        ]
    },
    "UiConfig": closed(
        {
            "otp": {"type": "string", "enum": ["required", "optional", "none"]},
            "user": nullable({"type": "string"}),
            "admin": {"type": "boolean"},
        }
    ),
    "AuthHealth": closed(
        {
            "status": {"const": "healthy"},
            "user": {"type": "string"},
            "admin": {"type": "boolean"},
        }
    ),
    "Enrolled": closed(
        {
            "certificate": {"type": "string", "description": "PEM."},
            "ca": {"type": "string", "description": "The CA certificate, PEM."},
            "agentId": _UUID,
            "renewalIntervalSeconds": {"type": "integer"},
        }
    ),
    "Renewed": closed(
        {
            "certificate": {"type": "string", "description": "PEM."},
            "renewalIntervalSeconds": {"type": "integer"},
        }
    ),
    "Session": _SESSION,
    "Server": _SERVER,
    "ServerPage": closed(
        {
            "servers": array(ref("Server")),
            "next": nullable(
                {"type": "string", "description": "The `after` of the next page."}
            ),
        },
        description="A page of `GET /v1/servers?limit=N`.",
    ),
    "AuditLine": closed(
        {
            "id": {"type": "integer", "description": "`after` pages on it."},
            "time": {"type": "string", "format": "date-time"},
            "actor": {
                "type": "string",
                "description": "A user id, `admin:<id>`, `os:<user>` (dcvixctl), "
                "`address <ip>` (an agent before enrolment), `auto_approve`, "
                "`sighup`, `housekeeper`, `dcv server`, `gateway <name>`.",
            },
            "action": {"type": "string"},
            "target": {"type": "string"},
            "address": {
                "type": "string",
                "description": "Where the request came from; empty for dcvixctl "
                "and the director's own work.",
            },
            "outcome": {"type": "string", "enum": ["ok", "failed", "refused"]},
            "detail": {"type": "string"},
        }
    ),
    "AuditPage": closed(
        {
            "entries": array(ref("AuditLine")),
            "next": nullable(
                {"type": "integer", "description": "The `after` of the next page."}
            ),
        },
        description="A page of `GET /v1/admin/audit`, newest first.",
    ),
    "Agent": _AGENT,
    "AgentAction": closed(
        {
            "agent": ref("Agent"),
            "replaced": array(_UUID, description="Agents revoked by `replace`."),
            "warning": {"type": "string"},
        },
        optional=["warning"],
    ),
    "CA": closed(
        {
            "certificate": {"type": "string", "description": "PEM."},
            "fingerprint": {"type": "string", "description": "SHA-256, hex."},
        }
    ),
    "SessionMade": _SESSION_MADE,
    "SessionClosed": _SESSION_CLOSED,
    "UserServers": closed(
        {
            "servers": array(
                {"type": "string"},
                description="Go's list: workstations, then pool members, each "
                "once; `ALLOW_CUSTOM` passed through.",
            ),
            "details": closed(
                {
                    "workstations": array(ref("Workstation")),
                    "pools": array(ref("PoolSummary")),
                }
            ),
        }
    ),
    "Workstation": closed(
        {
            "hostname": {"type": "string"},
            "pools": array({"type": "string"}),
            "online": {"type": "boolean"},
            "sessions": array({"type": "string"}),
            "sessionCount": _COUNT,
            "freeMemory": _COUNT,
            "totalMemory": _COUNT,
        }
    ),
    "PoolSummary": closed(
        {"id": {"type": "string"}, "members": _COUNT, "online": _COUNT}
    ),
    "ConnectionToken": closed(
        {
            "token": {"type": "string"},
            "expiresAt": {"type": "string", "format": "date-time"},
            "webUrl": {"type": "string", "format": "uri"},
        }
    ),
    "Resolved": closed(
        {
            "SessionId": {"type": "string"},
            "TransportProtocol": {"type": "string"},
            "DcvServerEndpoint": {"type": "string"},
            "Port": {"type": "integer"},
            "WebUrlPath": {"type": "string"},
        }
    ),
}
