"""The director's OpenAPI 3.1 document, from its routes and the table below.

Every route the director serves (``DirectorRoot.routes``: method, Klein path,
role) must have an entry in :data:`OPERATIONS`, which says what it takes and
answers (its bodies' schemas are in :mod:`dcvix.director.schemas`); the role
adds its security requirement and the errors it implies (:data:`ROLES`).
:func:`director_document` refuses a route without an entry, and a test
refuses an entry without a route.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from dcvix import __version__
from dcvix.common.openapi import (
    JSON,
    Answer,
    Body,
    Operation,
    Parameter,
    Schema,
    array,
    document,
    merge_errors,
    operation,
    ref,
)
from dcvix.director.agent_admin import ACTIONS
from dcvix.director.api.audit import DEFAULT_LIMIT as AUDIT_DEFAULT
from dcvix.director.api.audit import MAX_CSV_LIMIT as AUDIT_CSV_MAX
from dcvix.director.api.authz import COOKIE, Role, RouteSpec
from dcvix.director.api.web import TYPES
from dcvix.director.listing import MAX_LIMIT
from dcvix.director.registry import STATES
from dcvix.director.schemas import REQUESTS, SCHEMAS, SESSION_ID

COOKIE_SCHEME = "loginCookie"
AGENT_SCHEME = "agentCertificate"
XML = "text/xml"
FORM = "application/x-www-form-urlencoded"

# -------------------------------------------------------------- the roles

ROLES: dict[Role, tuple[list[dict[str, list[str]]], dict[int, str]]] = {
    Role.PUBLIC: ([], {}),
    Role.AGENT_CERTIFICATE: (
        [{AGENT_SCHEME: []}],
        {401: "no client certificate our CA issued to an agent, or it expired"},
    ),
    Role.AGENT: (
        [{AGENT_SCHEME: []}],
        {
            401: "no valid agent certificate, or its agent is not registered "
            "with that key (pending, revoked, denied, unknown)"
        },
    ),
    Role.USER: ([{COOKIE_SCHEME: []}], {401: "login required"}),
    Role.ADMIN: (
        [{COOKIE_SCHEME: []}],
        {401: "login required", 403: "admin rights required"},
    ),
    Role.GATEWAY: (
        [],
        {403: "forbidden: the peer is not in `[gateway] gateways_list`"},
    ),
}
"""Each role's security requirements and the errors it implies."""

BODY_ERRORS = {
    400: "a body that is not a JSON object of the declared fields",
    413: "request body too large",
}
CSRF_ERRORS = {403: "cross-site request refused (a browser's, from another origin)"}
STORE_ERRORS = {
    507: "the director's disk is full: nothing was recorded; "
    "the same call works once space is freed"
}

# --------------------------------------------------------------- the table


def _ok(schema: Schema | None, description: str = "OK", **more: Any) -> Answer:
    return Answer(200, description, schema, **more)


_JSON_BODY = {name: Body(ref(name)) for name in REQUESTS}
_SESSION_PATH = {"session_id": "The DCV session id."}
_SERVER_QUERY = Parameter(
    "serverId", "The registered hostname that holds it, when two do."
)
_CONNECTION_QUERY = (
    Parameter(
        "serverId",
        "The server (registered hostname).",
        {"type": "string", "minLength": 1},
        required=True,
    ),
    Parameter("sessionId", "The caller's session there.", SESSION_ID, required=True),
)
_AGENT_CALL_ERRORS = {
    502: "the agent refused or could not be reached",
    504: "the agent did not answer in time",
}
_CONFIG_ERRORS = {
    400: "an entry without section, key and value strings, or a bad value",
    403: "a setting outside `config_allow` (here or on the agent)",
    404: "a server that never reported",
    409: "the server is offline or not a registered agent",
    **_AGENT_CALL_ERRORS,
}
_LOGIN_ANSWER = _ok(
    ref("Empty"),
    "Logged in.",
    headers={
        "Set-Cookie": f"`{COOKIE.decode()}=<token>; Expires=<2 h>; Path=/; "
        "Secure; HttpOnly; SameSite=Strict`"
    },
)
_LOGIN_ERRORS = {
    400: "invalid userID",
    401: "authentication failed (whatever the reason)",
    429: "too many failed logins; `Retry-After` says when to try again",
    503: "too many logins at once; try again shortly",
}
_PAGE = _ok(
    {"type": "string"},
    "The web UI's page.",
    media_types=("text/html",),
    headers={"ETag": "The page's version."},
)
_NOT_MODIFIED = Answer(304, "Not modified (`If-None-Match`).")
_ETAG = Parameter("If-None-Match", "An ETag the browser holds.", where="header")
_NO_UI = {404: "the web UI is not installed"}
_ASSET_TYPES = tuple(dict.fromkeys(t.decode().split(";")[0] for t in TYPES.values()))

OPERATIONS: dict[tuple[str, str], Operation] = {
    # ---------------------------------------------------------------- meta
    ("GET", "/v1/health"): Operation(
        "health",
        "The director is up (or, with ready=1, ready for traffic)",
        "meta",
        (_ok(ref("Health")),),
        errors={
            503: "with `ready=1`: not ready (the store does not answer, or a "
            "certificate expired); the error names what failed"
        },
        parameters=(
            Parameter(
                "ready",
                "`1` or `true`: also check the store and the certificates, "
                "for load balancers.",
            ),
        ),
    ),
    ("GET", "/v1/openapi.json"): Operation(
        "openapi",
        "This document",
        "meta",
        (_ok({"type": "object"}, "The OpenAPI 3.1 document of the director's API."),),
    ),
    # ---------------------------------------------------------------- web
    ("GET", "/"): Operation(
        "webHome",
        "The web UI",
        "web",
        (_PAGE, _NOT_MODIFIED),
        errors=_NO_UI,
        parameters=(_ETAG,),
    ),
    ("GET", "/<any(login,portal,admin):area>"): Operation(
        "webArea",
        "The web UI at one of its screens (a reload, a bookmark)",
        "web",
        (_PAGE, _NOT_MODIFIED),
        errors=_NO_UI,
        parameters=(_ETAG,),
    ),
    ("GET", "/admin/<any(agents,sessions,servers,audit):screen>"): Operation(
        "webAdminScreen",
        "The web UI at an admin screen (its data needs an admin login)",
        "web",
        (_PAGE, _NOT_MODIFIED),
        errors=_NO_UI,
        parameters=(_ETAG,),
    ),
    ("GET", "/assets/<path:name>"): Operation(
        "webAsset",
        "A file of the web UI",
        "web",
        (
            _ok(
                {},
                "The file.",
                media_types=_ASSET_TYPES,
                headers={"ETag": "The file's version."},
            ),
            _NOT_MODIFIED,
        ),
        errors={404: "not found"},
        parameters=(_ETAG,),
        path={"name": "The file's path below `assets/`, slashes included."},
    ),
    # ------------------------------------------------------------- agents
    ("POST", "/v1/agent/register"): Operation(
        "registerAgent",
        "Enrol an agent (trust on first use: no certificate yet)",
        "agents",
        (_ok(ref("Enrolled"), "Approved: the agent's certificate and the CA."),),
        errors={
            400: "a bad CSR, a GUID that is not a UUID, an invalid or reserved "
            "hostname",
            401: "invalid registration token, csr guid mismatch, agent revoked",
            403: "pending approval (the agent asks again), or agent denied",
            409: "key mismatch",
            413: "over 16 KiB",
            429: "too many new agents from this address, or too many pending",
        },
        body=_JSON_BODY["RegisterRequest"],
    ),
    ("POST", "/v1/agent/renew"): Operation(
        "renewAgent",
        "A new certificate for the same key",
        "agents",
        (_ok(ref("Renewed")),),
        errors={
            400: "a bad CSR",
            401: "csr guid mismatch; the agent is revoked, denied or unknown",
            403: "pending approval",
            409: "key mismatch",
        },
        body=_JSON_BODY["RenewRequest"],
        description="Any unexpired certificate our CA issued to an agent may "
        "ask; the registry then decides.",
    ),
    ("POST", "/v1/agent/update"): Operation(
        "agentUpdate",
        "An agent's sessions, stats and tags",
        "agents",
        (_ok(ref("Empty"), "Stored under the agent's registered hostname."),),
        errors={400: "a report that does not validate (nothing is stored)"},
        body=Body(ref("Update")),
    ),
    # ------------------------------------------------------------- logins
    ("POST", "/v1/user/login"): Operation(
        "userLogin",
        "Log in as a user: the `dcvix_session` cookie",
        "logins",
        (_LOGIN_ANSWER,),
        errors=_LOGIN_ERRORS,
        body=_JSON_BODY["LoginRequest"],
    ),
    ("POST", "/v1/admin/login"): Operation(
        "adminLogin",
        "Log in as an admin (`admin: true` in users.json)",
        "logins",
        (_LOGIN_ANSWER,),
        errors=_LOGIN_ERRORS,
        body=_JSON_BODY["LoginRequest"],
    ),
    ("POST", "/v1/logout"): Operation(
        "logout",
        "Revoke the cookie's token (if valid) and clear the cookie",
        "logins",
        (
            _ok(
                ref("Empty"),
                "Logged out.",
                headers={"Set-Cookie": f"`{COOKIE.decode()}=; Max-Age=0; ...`"},
            ),
        ),
        security=({}, {COOKIE_SCHEME: []}),
    ),
    ("GET", "/v1/auth-health"): Operation(
        "authHealth",
        "Whether the cookie is valid, and whose it is",
        "logins",
        (_ok(ref("AuthHealth")),),
        description="`admin` is true for an admin login of a user still admin.",
    ),
    ("GET", "/v1/ui-config"): Operation(
        "uiConfig",
        "What the web UI needs first: the OTP field, who the cookie is",
        "logins",
        (_ok(ref("UiConfig")),),
        description="`user` is null without a valid cookie; never refused.",
        security=({}, {COOKIE_SCHEME: []}),
    ),
    # --------------------------------------------------------------- user
    ("GET", "/v1/user/servers"): Operation(
        "userServers",
        "The caller's workstations and pools",
        "user",
        (_ok(ref("UserServers")),),
    ),
    ("POST", "/v1/user/sessions"): Operation(
        "userCreateSession",
        "The caller's session on a workstation or in a pool",
        "user",
        (_ok(ref("SessionMade"), "The caller's session of that type, reused or new."),),
        errors={
            400: "neither or both of serverId and poolId, or a bad sessionType",
            403: "a server or pool the policy does not grant",
            404: "a server that never reported",
            409: "the workstation is offline, or its console is someone else's",
            503: "no server of the pool is online, or every console is in use",
            **_AGENT_CALL_ERRORS,
        },
        body=_JSON_BODY["UserSessionRequest"],
    ),
    ("GET", "/v1/user/sessions"): Operation(
        "userSessions",
        "The caller's sessions on online servers",
        "user",
        (_ok(array(ref("Session"))),),
    ),
    ("DELETE", "/v1/user/sessions/<string:session_id>"): Operation(
        "userCloseSession",
        "Close one of the caller's sessions",
        "user",
        (_ok(ref("SessionClosed")),),
        errors={
            404: "session not found (another user's too)",
            409: "on two of the caller's servers and no serverId, or the server "
            "is no longer a registered agent",
            **_AGENT_CALL_ERRORS,
        },
        parameters=(_SERVER_QUERY,),
        path=_SESSION_PATH,
    ),
    ("GET", "/v1/user/connectiontoken"): Operation(
        "userConnectionToken",
        "A connection token for the caller's own session",
        "user",
        (_ok(ref("ConnectionToken")),),
        errors={
            400: "a missing or invalid serverId or sessionId",
            403: "a server the policy does not grant",
            404: "no such session of the caller's there, or the server is offline",
        },
        parameters=_CONNECTION_QUERY,
    ),
    ("GET", "/v1/user/connectionfile"): Operation(
        "userConnectionFile",
        "The same as a `.dcv` file for the native client",
        "user",
        (
            _ok(
                {"type": "string"},
                "An INI file: `[version]`, `[connect]` with the token, `[options]`.",
                media_types=("application/x-dcv",),
                headers={"Content-Disposition": 'attachment; filename="<session>.dcv"'},
            ),
        ),
        errors={
            400: "a missing or invalid serverId or sessionId",
            403: "a server the policy does not grant",
            404: "no such session of the caller's there, or the server is offline",
            502: "a value unfit for a .dcv file",
        },
        parameters=_CONNECTION_QUERY,
    ),
    ("POST", "/v1/user/servers/<string:server>/config"): Operation(
        "userConfigureServer",
        "Push allowed DCV settings to a granted server",
        "user",
        (_ok(ref("Empty")),),
        errors={
            **_CONFIG_ERRORS,
            403: "a server the policy does not grant, or " + _CONFIG_ERRORS[403],
        },
        body=_JSON_BODY["ConfigRequest"],
        path={"server": "The registered hostname."},
    ),
    # -------------------------------------------------------------- admin
    ("GET", "/v1/admin/agents"): Operation(
        "listAgents",
        "The agent registry, oldest first",
        "admin",
        (_ok(array(ref("Agent"))),),
        errors={400: "an unknown state"},
        parameters=(
            Parameter(
                "state",
                "Only the agents in this state.",
                {"type": "string", "enum": ["", *STATES]},
            ),
        ),
    ),
    (
        "POST",
        "/v1/admin/agents/<string:guid>/<any(approve,deny,revoke,reactivate,delete):action>",
    ): Operation(
        "agentAction",
        "Approve, deny, revoke, reactivate or delete an agent",
        "admin",
        (_ok(ref("AgentAction")),),
        errors={
            400: "a GUID that is not a UUID",
            404: "an unknown GUID",
            409: "a wrong state; a registered agent holds the hostname (approve "
            "without replace); a key that is not the current claim; what the "
            "admin saw changed",
        },
        parameters=(
            Parameter(
                "replace",
                "`true` or `1`: approving revokes the registered agent holding "
                "the same hostname.",
            ),
            Parameter(
                "key",
                "Approve an adopted agent's claim for the key of this SHA-256 "
                "fingerprint.",
            ),
            Parameter(
                "hostname",
                "The hostname the admin saw (approve): 409 if it changed.",
            ),
            Parameter(
                "fingerprint",
                "The key fingerprint the admin saw (approve): 409 if it changed.",
            ),
            Parameter(
                "replaces",
                "With `replace`: the GUIDs (comma-separated) the admin saw "
                "holding the hostname: 409 if others do.",
            ),
        ),
        path={
            "guid": "The agent's GUID.",
            "action": "What to do: " + ", ".join(ACTIONS),
        },
    ),
    ("GET", "/v1/admin/audit"): Operation(
        "audit",
        "The audit trail, newest first",
        "admin",
        (
            _ok(
                ref("AuditPage"),
                "A page; `format=csv`: the same lines as a CSV file.",
                other_media={"text/csv": {"type": "string"}},
            ),
        ),
        errors={400: "a filter, limit, after or format that is not one"},
        parameters=(
            Parameter(
                "since",
                "Lines at or after this RFC 3339 time, or this long ago (`24h`).",
            ),
            Parameter("until", "Lines before this time (RFC 3339, or `1h` ago)."),
            Parameter("actor", "Lines whose actor contains this text (any case)."),
            Parameter("action", "Lines of this action (`login failed`, `approve`)."),
            Parameter(
                "outcome",
                "Lines of this outcome.",
                {"enum": ["ok", "failed", "refused"]},
            ),
            Parameter(
                "limit",
                f"At most this many lines (default {AUDIT_DEFAULT}; a CSV export "
                f"up to {AUDIT_CSV_MAX}).",
                {"type": "integer", "minimum": 1, "maximum": AUDIT_CSV_MAX},
            ),
            Parameter(
                "after",
                "The page after this line id (the last page's `next`).",
                {"type": "integer", "minimum": 0},
            ),
            Parameter(
                "format", "`json` (default) or `csv`.", {"enum": ["json", "csv"]}
            ),
        ),
    ),
    ("GET", "/metrics"): Operation(
        "metrics",
        "Prometheus metrics, with `[metrics] https` on",
        "health",
        (
            _ok(
                {"type": "string"},
                "Prometheus's text format (the `[metrics] listen` page's).",
                media_types=("text/plain",),
            ),
        ),
        errors={
            401: "no `Authorization: Bearer <[metrics] token_file's token>`",
            404: "`[metrics] https` is off",
        },
        parameters=(
            Parameter(
                "Authorization",
                "`Bearer <token>`, the first line of `[metrics] token_file`.",
                where="header",
            ),
        ),
    ),
    ("GET", "/v1/admin/ca"): Operation(
        "ca", "The CA certificate and its fingerprint", "admin", (_ok(ref("CA")),)
    ),
    # -------------------------------------------------------------- fleet
    ("GET", "/v1/servers"): Operation(
        "servers",
        "Every server that reported, hostname descending",
        "fleet",
        (
            _ok(
                {"oneOf": [array(ref("Server")), ref("ServerPage")]},
                "Go's full array; with `limit`, a page.",
            ),
        ),
        errors={400: "a bad online or limit value, or after without limit"},
        parameters=(
            Parameter(
                "online",
                "Only the servers online (`true`, `1`) or not (`false`, `0`), "
                "any case.",
                {
                    "type": "string",
                    "pattern": "^([Tt][Rr][Uu][Ee]|[Ff][Aa][Ll][Ss][Ee]|1|0)$",
                },
            ),
            Parameter("pool", "Only the members of this pool."),
            Parameter(
                "q",
                "Only the servers with this text in their hostname, a tag or "
                "their agent state (any case).",
            ),
            Parameter(
                "limit",
                "Answer a page of at most this many servers.",
                {"type": "integer", "minimum": 1, "maximum": MAX_LIMIT},
            ),
            Parameter(
                "after",
                "With `limit`: the page after this hostname (the last page's `next`).",
            ),
        ),
        description="Servers gone quiet are listed `online: false`, without sessions.",
    ),
    ("GET", "/v1/sessions"): Operation(
        "sessions",
        "Every session of every online server",
        "fleet",
        (_ok(array(ref("Session"))),),
    ),
    ("POST", "/v1/sessions"): Operation(
        "createSession",
        "A session for a user on a registered, online agent",
        "fleet",
        (_ok(ref("SessionMade")),),
        errors={
            400: "an invalid userId, sessionType or sessionId; the agent refused",
            404: "a server that never reported",
            409: "the server is offline or not a registered agent; the session "
            "id, or the console, is someone else's there",
            **_AGENT_CALL_ERRORS,
        },
        body=_JSON_BODY["CreateSessionRequest"],
    ),
    ("DELETE", "/v1/sessions/<string:session_id>"): Operation(
        "closeSession",
        "Close a session",
        "fleet",
        (_ok(ref("SessionClosed")),),
        errors={
            404: "session not found (here or on the agent)",
            409: "on two servers and no serverId, or the server is no longer a "
            "registered agent",
            **_AGENT_CALL_ERRORS,
        },
        parameters=(_SERVER_QUERY,),
        path=_SESSION_PATH,
    ),
    ("POST", "/v1/servers/<string:server>/config"): Operation(
        "configureServer",
        "Push allowed DCV settings to a server",
        "fleet",
        (_ok(ref("Empty")),),
        errors=_CONFIG_ERRORS,
        body=_JSON_BODY["ConfigRequest"],
        path={"server": "The registered hostname."},
    ),
    # ---------------------------------------------------------------- dcv
    ("POST", "/v1/user/authtokenverify"): Operation(
        "verifyToken",
        "DCV's auth-token-verifier: whose connection token is this",
        "dcv",
        (
            _ok(
                {"type": "string"},
                '`<auth result="yes"><username>USER</username></auth>` for a '
                "valid connection token of that session, else "
                '`<auth result="no"><message>...</message></auth>`; why is '
                "logged, never answered.",
                media_types=(XML,),
            ),
        ),
        errors={413: "request body too large"},
        body=Body(
            {
                "type": "object",
                "properties": {
                    "sessionId": {"type": "string"},
                    "authenticationToken": {"type": "string"},
                    "clientAddress": {"type": "string"},
                },
            },
            media_types=(FORM,),
            required=False,
            description="DCV's form; the same fields in the query are read too.",
        ),
        parameters=tuple(
            Parameter(name, "As the form field of that name.")
            for name in ("sessionId", "authenticationToken", "clientAddress")
        ),
    ),
    ("POST", "/resolveSession"): Operation(
        "resolveSession",
        "The DCV server of a session, for the Connection Gateway",
        "dcv",
        (_ok(ref("Resolved")),),
        errors={
            400: "a missing or invalid sessionId or transport",
            404: "session not found: no online server holds it (or two do and "
            "no connection token says which)",
        },
        body=Body(
            ref("ResolveSessionRequest"),
            required=False,
            description="Read only when the query has no `sessionId`.",
        ),
        parameters=(
            Parameter("sessionId", "The session.", SESSION_ID),
            Parameter(
                "transport",
                "`HTTP` or `QUIC` (any printable value up to 32 characters is "
                "echoed); `HTTP` when absent.",
                {"type": "string", "pattern": "^[\\x21-\\x7e]{0,32}$"},
            ),
            Parameter("clientIpAddress", "The client's address, for the log."),
        ),
        description="Only peers in `[gateway] gateways_list` (addresses and "
        "CIDR networks, matched against the connection's peer address, never a "
        "header) may ask; the answer comes from the agents' last reports.",
    ),
}
"""What each route takes and answers, by method and Klein path."""

TAGS = {
    "meta": "The document and health.",
    "logins": "The `dcvix_session` cookie's life.",
    "agents": "What agents call: enrolment (register, renew) and updates.",
    "user": "What users call with their login cookie.",
    "admin": "The agent registry and the CA, for admins.",
    "fleet": "Servers and sessions, for admins.",
    "dcv": "What Amazon DCV calls: the token verifier and the Gateway resolver.",
    "web": "The web UI's files.",
}

DESCRIPTION = """\
The dcvix director's HTTPS API (see README.md).

Callers, by operation (`x-dcvix-role`):
- `public`: anyone;
- `user`, `admin`: the `dcvix_session` cookie of a login (`POST /v1/user/login`,
  `POST /v1/admin/login`); admin routes need an admin login of a user still admin;
- `agent_certificate`, `agent`: TLS client certificates our CA issued to agents
  (`agent`: of a registered agent with that pinned key);
- `gateway`: peers whose address is in `[gateway] gateways_list`.

Errors are always `{"error": "<message>"}` with their status. JSON bodies are read
whatever the Content-Type and as Go reads them: keys match in any case, unknown keys
are ignored, `null` or a missing key is the zero value. A state-changing request a
browser sends from another origin is refused with 403.
"""

SECURITY_SCHEMES = {
    COOKIE_SCHEME: {
        "type": "apiKey",
        "in": "cookie",
        "name": COOKIE.decode(),
        "description": "A login token (PASETO), set by the login routes.",
    },
    AGENT_SCHEME: {
        "type": "mutualTLS",
        "description": "A client certificate the director's CA issued to an agent.",
    },
}


def implied_errors(spec: RouteSpec, entry: Operation) -> dict[int, str]:
    """The errors a route answers for its role, its body and its method."""
    body = {}
    if entry.body is not None:
        body = (
            BODY_ERRORS if JSON in entry.body.media_types else {413: BODY_ERRORS[413]}
        )
    changes = spec.method not in ("GET", "HEAD", "OPTIONS")
    csrf = CSRF_ERRORS if changes else {}
    store = STORE_ERRORS if changes else {}
    return merge_errors(ROLES[spec.role][1], body, csrf, store)


def director_document(routes: Iterable[RouteSpec]) -> Schema:
    """The OpenAPI document of the director serving ``routes``.

    Raises:
        KeyError: a route has no entry in :data:`OPERATIONS`.
    """
    paths: dict[str, dict[str, Schema]] = {}
    for spec in sorted(routes, key=lambda s: (s.path, s.method)):
        entry = OPERATIONS.get((spec.method, spec.path))
        if entry is None:
            raise KeyError(f"{spec.method} {spec.path} is not in the API document")
        path, described = operation(
            entry,
            spec.path,
            security=ROLES[spec.role][0],
            errors=implied_errors(spec, entry),
            extensions={"x-dcvix-role": spec.role.name.lower()},
        )
        paths.setdefault(path, {})[spec.method.lower()] = described
    return document(
        title="dcvix director",
        version=__version__,
        description=DESCRIPTION,
        paths=paths,
        schemas=SCHEMAS,
        security_schemes=SECURITY_SCHEMES,
        tags=TAGS,
    )
