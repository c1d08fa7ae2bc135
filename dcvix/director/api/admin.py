"""The agent registry and the CA, for admins."""

from __future__ import annotations

import datetime as dt
from typing import Any

from twisted.web.iweb import IRequest

from dcvix.common.http import client_address, json_response
from dcvix.common.pki import certificate_fingerprint, load_certificates
from dcvix.director.agent_admin import AgentAdmin
from dcvix.director.api.authz import Role, authorized
from dcvix.director.registry import AgentRecord, Seen
from dcvix.director.tokens import Claims


def _time(moment: dt.datetime | None) -> str | None:
    return moment.isoformat() if moment is not None else None


def agent_json(record: AgentRecord, on_director: bool) -> dict[str, Any]:
    """An agent as the admin API shows it (Go's keys, then ours)."""
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
        "claimed_key": record.claimed_key or None,
        "claimed_at": _time(record.claimed_at),
        "duplicate_hostname": record.duplicate_hostname,
        "director_host": on_director,
    }


def _text(request: IRequest, name: bytes) -> str:
    value: bytes = request.args.get(name, [b""])[0]
    return value.decode("ascii", "replace")


def _flag(request: IRequest, name: bytes) -> bool:
    return request.args.get(name, [b""])[0].lower() in (b"true", b"1")


class AdminRoutes:
    """``/v1/admin/agents``, ``/v1/admin/ca``.

    Args:
        admin: the agent administration service.
        ca_pem: the CA certificate.
    """

    def __init__(self, admin: AgentAdmin, ca_pem: bytes) -> None:
        self._admin = admin
        self._ca_pem = ca_pem
        self._ca_fingerprint = certificate_fingerprint(load_certificates(ca_pem)[0])

    @authorized("GET", "/v1/admin/agents", role=Role.ADMIN)
    async def list_agents(self, request: IRequest, caller: Claims) -> bytes:
        """``?state=S``: the registry, oldest first."""
        raw = request.args.get(b"state", [b""])[0].decode("utf-8", "replace")
        records = await self._admin.list(raw or None)
        return json_response(
            request,
            200,
            [agent_json(r, self._admin.runs_on_director(r)) for r in records],
        )

    @authorized(
        "POST",
        "/v1/admin/agents/<string:guid>/<any(approve,deny,revoke,reactivate,delete):action>",
        role=Role.ADMIN,
    )
    async def agent_action(
        self, request: IRequest, caller: Claims, guid: str, action: str
    ) -> bytes:
        """An admin action: approve, deny, revoke, reactivate or delete.

        ``approve?replace=true`` revokes a registered agent holding the same hostname
        (else 409). ``approve?key=F`` approves an adopted agent's claim for the key of
        SHA-256 fingerprint F, which becomes its pin (409, naming the claim,
        when F is not the current claim). ``approve?hostname=H&fingerprint=F``
        (and ``&replaces=G1,G2`` with replace) say what the admin saw: 409 and
        nothing changed when the pending agent now asks for another hostname
        or key, or other agents hold the hostname. 404 for an unknown GUID,
        409 for a wrong state, 400 for a GUID not a UUID.
        """
        key = _text(request, b"key")
        replaces = _text(request, b"replaces")
        seen = Seen(
            hostname=_text(request, b"hostname"),
            key=_text(request, b"fingerprint"),
            holders=(
                tuple(g.strip().lower() for g in replaces.split(",") if g.strip())
                if b"replaces" in request.args
                else None
            ),
        )
        outcome = await self._admin.act(
            action,
            guid,
            f"admin:{caller.user}",
            _flag(request, b"replace"),
            key,
            seen,
            client_address(request),
        )
        answer: dict[str, Any] = {
            "agent": agent_json(
                outcome.record, self._admin.runs_on_director(outcome.record)
            ),
            "replaced": list(outcome.replaced),
        }
        if outcome.warning:
            answer["warning"] = outcome.warning
        return json_response(request, 200, answer)

    @authorized("GET", "/v1/admin/ca", role=Role.ADMIN)
    def ca(self, request: IRequest, caller: Claims) -> bytes:
        """The CA certificate and its SHA-256 fingerprint."""
        return json_response(
            request,
            200,
            {"certificate": self._ca_pem.decode(), "fingerprint": self._ca_fingerprint},
        )
