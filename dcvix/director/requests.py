"""The request bodies the director's routes take, declared once.

Decoded at the route with :func:`dcvix.common.jsonfields.decode` (Go's lenient
key matching), handed to the domain as these frozen values: the domain never
reads HTTP, and the API document can be made from the same declarations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dcvix.common.jsonfields import json_name


@dataclass(frozen=True)
class RegisterRequest:
    """``POST /v1/agent/register``: a CSR (base64 DER) for a GUID and hostname."""

    csr: str
    guid: str
    hostname: str
    registration_token: str = field(default="", metadata=json_name("registrationToken"))


@dataclass(frozen=True)
class RenewRequest:
    """``POST /v1/agent/renew``: a CSR for the same key."""

    csr: str


@dataclass(frozen=True)
class LoginRequest:
    """``POST /v1/admin/login``, ``POST /v1/user/login``."""

    user_id: str = field(metadata=json_name("userID"))
    password: str
    otp: str = ""


@dataclass(frozen=True)
class CreateSessionRequest:
    """``POST /v1/sessions``: a session on a server, for a user."""

    server_id: str = field(metadata=json_name("serverId"))
    user_id: str = field(metadata=json_name("userId"))
    session_type: str = field(metadata=json_name("sessionType"))
    session_id: str = field(default="", metadata=json_name("sessionId"))


@dataclass(frozen=True)
class ConfigRequest:
    """``POST /v1/servers/{server}/config``: ``[{"section", "key", "value"}]``."""

    config: list[Any]


def config_detail(body: ConfigRequest) -> str:
    """The settings a config push changed, for the audit trail (keys only)."""
    keys = [
        f"{entry.get('section')}/{entry.get('key')}"
        for entry in body.config
        if isinstance(entry, dict)
    ]
    return ("keys=" + ",".join(keys))[:300]


@dataclass(frozen=True)
class UserSessionRequest:
    """``POST /v1/user/sessions``: a workstation (``serverId``) or a pool.

    The Go launcher also sends ``userId``; it is ignored (the caller is the
    user).
    """

    session_type: str = field(metadata=json_name("sessionType"))
    server_id: str = field(default="", metadata=json_name("serverId"))
    pool_id: str = field(default="", metadata=json_name("poolId"))
