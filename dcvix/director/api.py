"""The director's HTTPS API: thin routes over the enrolment and login services."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from typing import Any, cast

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.web.iweb import IRequest
from twisted.web.server import Request

from dcvix.common.errors import BadRequest, NotFound
from dcvix.common.http import (
    client_address,
    install_error_handlers,
    json_response,
    peer_certificate,
    read_json,
)
from dcvix.common.pki import certificate_fingerprint, load_certificates
from dcvix.common.validate import canonical_guid
from dcvix.director import store
from dcvix.director.enrolment import Enrolment
from dcvix.director.login import LoginService
from dcvix.director.runtime import Runtime, server_json, session_json
from dcvix.director.sessions import SessionControl
from dcvix.director.store import AgentRecord, AgentStore

audit_log = Logger(namespace="dcvix.audit")

REGISTER_BODY_LIMIT = 16 * 1024
COOKIE = b"dcvix_session"


def _time(moment: Any) -> str | None:
    return moment.isoformat() if moment is not None else None


def agent_json(
    record: AgentRecord,
    duplicates: set[str],
    own_names: frozenset[str],
    pending_duplicates: set[str] | None = None,
) -> dict[str, Any]:
    """An agent as the admin API shows it (Go's keys, then ours).

    ``duplicates``: lower-case hostnames of more than one registered agent;
    ``pending_duplicates``: those a pending agent shares with another pending or
    registered one (approving it will need ``replace``).
    """
    name = record.hostname.lower()
    if record.state == store.REGISTERED:
        duplicate = name in duplicates
    else:
        duplicate = record.state == store.PENDING and name in (pending_duplicates or ())
    return {
        "guid": record.guid,
        "hostname": record.hostname,
        "state": record.state,
        "created_at": _time(record.created_at),
        "registered_at": _time(record.registered_at),
        "last_seen_at": _time(record.last_seen_at),
        "cert_serial": record.cert_serial,
        "tags": None,
        "state_changed_at": _time(record.state_changed_at),
        "cert_expires_at": _time(record.cert_expires_at),
        "address": record.address,
        "key_fingerprint": record.key_fingerprint,
        "pinned": record.pinned,
        "duplicate_hostname": duplicate,
        "director_host": name in own_names,
    }


async def _duplicates(registry: AgentStore) -> tuple[set[str], set[str]]:
    """Hostnames to flag (CONTRACT §3), lower case: registered, pending.

    Registered agents sharing one (adopted Go rows); pending agents sharing one
    with another pending or registered agent.
    """
    registered: set[str] = await registry.run(store.duplicate_hostnames_txn)
    records = await registry.run(store.list_txn)
    held = {r.hostname.lower() for r in records if r.state == store.REGISTERED}
    pending = Counter(r.hostname.lower() for r in records if r.state == store.PENDING)
    return registered, {n for n, count in pending.items() if count > 1 or n in held}


class DirectorAPI:
    """Routes of the director.

    Args:
        max_body_bytes: the request body cap (register has its own, 16 KiB).
        enrolment: agent registration and renewal.
        logins: logins, logouts and callers.
        registry: the agent registry, for the admin agent routes.
        ca_pem: the CA certificate, for ``GET /v1/admin/ca``.
        own_names: the director's host names (approving one warns).
    """

    app = Klein()
    install_error_handlers(app)

    def __init__(
        self,
        max_body_bytes: int,
        enrolment: Enrolment | None = None,
        logins: LoginService | None = None,
        registry: AgentStore | None = None,
        ca_pem: bytes = b"",
        own_names: frozenset[str] = frozenset(),
        clock: IReactorTime | None = None,
        runtime: Runtime | None = None,
        control: SessionControl | None = None,
    ) -> None:
        self.max_body_bytes = max_body_bytes
        self._enrolment = enrolment
        self._logins = logins
        self._registry = registry
        self._ca_pem = ca_pem
        self._own_names = own_names
        self._clock = clock
        self._runtime = runtime
        self._control = control

    def body_limit(self, path: bytes) -> int:
        """Bytes a request body to ``path`` may have (register: 16 KiB)."""
        if path.rstrip(b"/") == b"/v1/agent/register":
            return REGISTER_BODY_LIMIT
        return self.max_body_bytes

    def _need(self, service: Any) -> Any:
        if service is None:
            raise NotFound("not found")
        return service

    # ------------------------------------------------------------- health

    @app.route("/v1/health", methods=["GET"])
    def health(self, request: IRequest) -> bytes:
        """``GET /v1/health``, no auth: the director is up."""
        return json_response(request, 200, {"status": "healthy"})

    # ------------------------------------------------------------- agents

    @app.route("/v1/agent/register", methods=["POST"])
    async def register(self, request: IRequest) -> bytes:
        """``POST /v1/agent/register``, no auth (TOFU): enrol an agent.

        Body ``{"csr", "guid", "hostname", "registrationToken"?}``. 200 with
        ``{"certificate", "ca", "agentId", "renewalIntervalSeconds"}``; 403
        ``pending approval`` or ``agent denied``; 400, 401, 409, 413, 429.
        """
        enrolment: Enrolment = self._need(self._enrolment)
        answer = await enrolment.register(read_json(request), client_address(request))
        return json_response(request, 200, answer)

    @app.route("/v1/agent/renew", methods=["POST"])
    async def renew(self, request: IRequest) -> bytes:
        """``POST /v1/agent/renew``, agent certificate: a new certificate.

        Body ``{"csr"}``. 200 with ``{"certificate", "renewalIntervalSeconds"}``;
        403 while pending; 401 when revoked, denied or unknown; 409 key mismatch.
        """
        enrolment: Enrolment = self._need(self._enrolment)
        answer = await enrolment.renew(
            peer_certificate(request), read_json(request), client_address(request)
        )
        return json_response(request, 200, answer)

    @app.route("/v1/agent/update", methods=["POST"])
    async def update(self, request: IRequest) -> bytes:
        """``POST /v1/agent/update``, agent certificate: sessions, stats, tags.

        Stored under the hostname registered for the certificate's GUID. 200
        ``{}``; 400 for a body that does not validate (nothing is stored); 401
        for an agent that is not registered with this key.
        """
        enrolment: Enrolment = self._need(self._enrolment)
        runtime: Runtime = self._need(self._runtime)
        record = await enrolment.authenticate(peer_certificate(request))
        runtime.record(
            record.guid,
            record.hostname,
            read_json(request),
            client_address(request),
            self._now(),
        )
        return json_response(request, 200, {})

    def _now(self) -> dt.datetime:
        clock: IReactorTime = self._need(self._clock)
        return dt.datetime.fromtimestamp(clock.seconds(), dt.UTC)

    # -------------------------------------------------------------- logins

    def _cookie(self, request: IRequest) -> str | None:
        value = request.getCookie(COOKIE)
        return value.decode("ascii", "replace") if value else None

    async def _login(self, request: IRequest, admin: bool) -> bytes:
        logins: LoginService = self._need(self._logins)
        token, expires = await logins.login(
            read_json(request), client_address(request), admin
        )
        cast(Request, request).addCookie(
            COOKIE,
            token.encode("ascii"),
            expires=expires.strftime("%a, %d %b %Y %H:%M:%S GMT").encode(),
            path=b"/",
            secure=True,
            httpOnly=True,
            sameSite="strict",
        )
        return json_response(request, 200, {})

    @app.route("/v1/user/login", methods=["POST"])
    async def user_login(self, request: IRequest) -> bytes:
        """``POST /v1/user/login``, no auth: ``{"userID", "password", "otp"}``.

        200 ``{}`` with the ``dcvix_session`` cookie; 401 ``authentication
        failed`` whatever the reason; 429 while throttled; 400 for a bad body.
        """
        return await self._login(request, admin=False)

    @app.route("/v1/admin/login", methods=["POST"])
    async def admin_login(self, request: IRequest) -> bytes:
        """``POST /v1/admin/login``: as user login, for ``admin: true`` users only."""
        return await self._login(request, admin=True)

    @app.route("/v1/logout", methods=["POST"])
    async def logout(self, request: IRequest) -> bytes:
        """``POST /v1/logout``: revoke the cookie's token and clear the cookie."""
        logins: LoginService = self._need(self._logins)
        await logins.logout(self._cookie(request), client_address(request))
        cast(Request, request).addCookie(
            COOKIE,
            b"",
            max_age=b"0",
            path=b"/",
            secure=True,
            httpOnly=True,
            sameSite="strict",
        )
        return json_response(request, 200, {})

    @app.route("/v1/auth-health", methods=["GET"])
    async def auth_health(self, request: IRequest) -> bytes:
        """``GET /v1/auth-health``, any login: 200 while the cookie is valid."""
        logins: LoginService = self._need(self._logins)
        await logins.identify(self._cookie(request))
        return json_response(request, 200, {"status": "healthy"})

    # --------------------------------------------------------- admin agents

    async def _admin(self, request: IRequest) -> str:
        logins: LoginService = self._need(self._logins)
        claims = await logins.require_admin(self._cookie(request))
        return claims.user

    @app.route("/v1/admin/agents", methods=["GET"])
    async def list_agents(self, request: IRequest) -> bytes:
        """``GET /v1/admin/agents[?state=S]``, admin: the registry, oldest first."""
        await self._admin(request)
        registry: AgentStore = self._need(self._registry)
        raw = request.args.get(b"state", [b""])[0].decode("utf-8", "replace")
        if raw and raw not in store.STATES:
            raise BadRequest(f"state must be one of {', '.join(store.STATES)}")
        records = await registry.run(store.list_txn, raw or None)
        registered, pending = await _duplicates(registry)
        return json_response(
            request,
            200,
            [agent_json(r, registered, self._own_names, pending) for r in records],
        )

    @app.route(
        "/v1/admin/agents/<string:guid>/<any(approve,deny,revoke,reactivate,delete):action>",
        methods=["POST"],
    )
    async def agent_action(self, request: IRequest, guid: str, action: str) -> bytes:
        """``POST /v1/admin/agents/{guid}/{approve|deny|revoke|reactivate|delete}``.

        Admin. ``approve?replace=true`` revokes a registered agent holding the
        same hostname (else 409). 404 for an unknown GUID, 409 for a wrong state.
        """
        actor = await self._admin(request)
        registry: AgentStore = self._need(self._registry)
        canonical = canonical_guid(guid)
        if canonical is None:
            raise BadRequest("guid must be a UUID")
        now = self._now()
        if action == "approve":
            replace = request.args.get(b"replace", [b""])[0].lower() in (b"true", b"1")
            result = await registry.run(
                store.approve_txn,
                canonical,
                f"admin:{actor}",
                now,
                replace,
                self._own_names,
            )
            for old in result.replaced:
                if self._control is not None:
                    self._control.forget(old, deleted=False)
        else:
            function = {
                "deny": store.deny_txn,
                "revoke": store.revoke_txn,
                "reactivate": store.reactivate_txn,
                "delete": store.delete_txn,
            }[action]
            result = await registry.run(function, canonical, f"admin:{actor}", now)
            if action in ("revoke", "delete") and self._control is not None:
                # Never call it again on a pooled connection; forget its reports.
                self._control.forget(canonical, deleted=action == "delete")
        # The audit table has the row; operators reading the log see it too.
        audit_log.info(
            "{actor} {action} {target} hostname={hostname} now={state}{replaced}",
            actor=f"admin:{actor}",
            action=action,
            target=canonical,
            hostname=result.record.hostname,
            state="deleted" if action == "delete" else result.record.state,
            replaced="".join(f" replaced={g}" for g in result.replaced),
        )
        registered, pending = await _duplicates(registry)
        answer: dict[str, Any] = {
            "agent": agent_json(result.record, registered, self._own_names, pending),
            "replaced": list(result.replaced),
        }
        if result.warning:
            answer["warning"] = result.warning
        return json_response(request, 200, answer)

    # ------------------------------------------------------ servers, sessions

    async def _fleet(self) -> tuple[Runtime, dict[str, str]]:
        runtime: Runtime = self._need(self._runtime)
        registry: AgentStore = self._need(self._registry)
        states = {r.guid: r.state for r in await registry.run(store.list_txn, None)}
        return runtime, states

    @app.route("/v1/servers", methods=["GET"])
    async def servers(self, request: IRequest) -> bytes:
        """``GET /v1/servers``, admin: every reporting server with its sessions.

        Go's keys (hostname descending), plus ``guid``, ``agent_state``,
        ``online`` and more; servers gone quiet are shown ``online: false``.
        """
        await self._admin(request)
        runtime, states = await self._fleet()
        now = self._now()
        listed = sorted(runtime.servers(), key=lambda s: s.hostname, reverse=True)
        return json_response(
            request,
            200,
            [
                server_json(s, runtime.online(s, now), states.get(s.guid, "unknown"))
                for s in listed
            ],
        )

    @app.route("/v1/sessions", methods=["GET"])
    async def sessions(self, request: IRequest) -> bytes:
        """``GET /v1/sessions``, admin: every session of every server (Go's shape)."""
        await self._admin(request)
        runtime, _ = await self._fleet()
        found = [
            session_json(server, session)
            for server in runtime.live_servers(self._now())
            for session in server.sessions
        ]
        found.sort(key=lambda s: (s["user"], s["uid"]))
        return json_response(request, 200, found)

    @app.route("/v1/sessions", methods=["POST"])
    async def create_session(self, request: IRequest) -> bytes:
        """``POST /v1/sessions``, admin: a session on a registered, online agent.

        Body ``{"serverId", "userId", "sessionId"?, "sessionType"}``; a valid
        ``sessionId`` is kept, else ``dcvix_<uuid4>``. 200 ``{"sessionID",
        "serverId"}``; 404 unknown server; 409 offline; 502/504 agent trouble.
        """
        actor = await self._admin(request)
        control: SessionControl = self._need(self._control)
        answer = await control.create(read_json(request))
        await self._audit(
            actor, "create session", answer["sessionID"], f"server={answer['serverId']}"
        )
        return json_response(request, 200, answer)

    @app.route("/v1/sessions/<string:session_id>", methods=["DELETE"])
    async def close_session(self, request: IRequest, session_id: str) -> bytes:
        """``DELETE /v1/sessions/{id}[?serverId=<hostname>]``, admin: close it.

        200 ``{"status": "success", "code": 200, "message"}``; 404 unknown; 409
        when the id is on two servers and no ``serverId`` says which; 502, 504.
        """
        actor = await self._admin(request)
        control: SessionControl = self._need(self._control)
        raw = request.args.get(b"serverId", [b""])[0].decode("utf-8", "replace")
        answer = await control.close(session_id, raw or None)
        await self._audit(actor, "close session", session_id, f"server={raw or '-'}")
        return json_response(request, 200, answer)

    @app.route("/v1/servers/<string:server>/config", methods=["POST"])
    async def configure_server(self, request: IRequest, server: str) -> bytes:
        """``POST /v1/servers/{server}/config``, admin: push allowed DCV settings.

        Body ``{"config": [{"section", "key", "value"}]}``; a setting outside
        ``config_allow`` → 403, on this side and on the agent's.
        """
        actor = await self._admin(request)
        control: SessionControl = self._need(self._control)
        answer = await control.configure(server, read_json(request))
        await self._audit(actor, "configure server", server)
        return json_response(request, 200, answer)

    async def _audit(
        self, actor: str, action: str, target: str, detail: str = ""
    ) -> None:
        logins: LoginService = self._need(self._logins)
        await logins.audit.record(f"admin:{actor}", action, target, detail)

    @app.route("/v1/admin/ca", methods=["GET"])
    async def ca(self, request: IRequest) -> bytes:
        """``GET /v1/admin/ca``, admin: the CA certificate and its SHA-256."""
        await self._admin(request)
        certificate = load_certificates(self._ca_pem)[0]
        return json_response(
            request,
            200,
            {
                "certificate": self._ca_pem.decode(),
                "fingerprint": certificate_fingerprint(certificate),
            },
        )
