"""The Go launcher's calls to a director, byte for byte (original-director.md §13).

No Go toolchain runs here, so this client sends what the launcher's Go HTTP
client puts on the wire: TLS 1.3 at least, HTTP/1.1, Go's header order and
default headers, compact JSON in the launcher's struct key order, the
``dcvix_session`` cookie copied by hand (it keeps no cookie jar), query keys
sorted as ``url.Values.Encode`` sorts them, and anything but 200 an error.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import ssl
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

# Quality option "medium", the launcher's default.
MEDIUM_QUALITY = "(30, 80)"


class LauncherError(Exception):
    """What the launcher would show in its error dialog."""


def _compact(value: Any) -> bytes:
    """JSON as Go's ``json.Marshal`` writes it (no spaces, no HTML escapes)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@dataclass
class GoLauncher:
    """One launcher window logged in to ``https://127.0.0.1:port``.

    Args:
        port: the director's port.
        ca_file: the director's CA (the launcher verifies the certificate).
    """

    port: int
    ca_file: Path
    cookie: str = ""
    sent: list[bytes] = field(default_factory=list)

    def _context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=str(self.ca_file))
        context.minimum_version = ssl.TLSVersion.TLSv1_3
        return context

    def _exchange(
        self, method: str, target: str, body: bytes | None
    ) -> tuple[int, dict[str, list[str]], bytes]:
        """One request on a fresh connection, as Go's transport writes it."""
        lines = [
            f"{method} {target} HTTP/1.1",
            f"Host: 127.0.0.1:{self.port}",
            "User-Agent: Go-http-client/1.1",
        ]
        if body is not None:
            lines.append(f"Content-Length: {len(body)}")
            lines.append("Content-Type: application/json")
        if self.cookie:
            lines.append(f"Cookie: dcvix_session={self.cookie}")
        lines.append("Accept-Encoding: gzip")
        raw = ("\r\n".join(lines) + "\r\n\r\n").encode() + (body or b"")
        self.sent.append(raw)
        with (
            socket.create_connection(("127.0.0.1", self.port), timeout=30) as plain,
            self._context().wrap_socket(plain, server_hostname="127.0.0.1") as tls,
        ):
            assert tls.version() == "TLSv1.3"
            tls.sendall(raw)
            response = http.client.HTTPResponse(tls, method=method)
            response.begin()
            headers: dict[str, list[str]] = {}
            for name, value in response.getheaders():
                headers.setdefault(name.lower(), []).append(value)
            return response.status, headers, response.read()

    def _expect_200(self, method: str, target: str, body: bytes | None) -> Any:
        status, _headers, answer = self._exchange(method, target, body)
        if status != 200:
            raise LauncherError(f"status code {status}:\n{answer.decode()}")
        return json.loads(answer) if answer.strip() else None

    def login(self, user: str, password: str, otp: str = "") -> None:
        """Step 1: ``POST /v1/user/login``; keep the cookie's value."""
        body = _compact({"userID": user, "password": password, "otp": otp})
        status, headers, answer = self._exchange("POST", "/v1/user/login", body)
        if status != 200:
            raise LauncherError(f"login failed: {answer.decode().strip()}")
        for value in headers.get("set-cookie", []):
            name, _, rest = value.partition("=")
            if name == "dcvix_session":
                self.cookie = rest.split(";", 1)[0]
        if not self.cookie:
            raise LauncherError("login: server did not return a session cookie")

    def servers(self) -> list[str]:
        """Step 2: ``GET /v1/user/servers``, sorted, as the launcher lists them."""
        answer = self._expect_200("GET", "/v1/user/servers", None)
        return sorted(str(s) for s in answer["servers"])

    def connect(self, server: str, typed_user: str) -> tuple[str, str]:
        """Steps 3a to 3c: config, session, connection token; (session id, token).

        A config failure is shown but the flow goes on, as in the launcher.
        """
        config = _compact(
            {
                "config": [
                    {"section": "display", "key": "quality", "value": MEDIUM_QUALITY}
                ]
            }
        )
        with contextlib.suppress(LauncherError):
            self._expect_200("POST", f"/v1/user/servers/{server}/config", config)
        created = self._expect_200(
            "POST",
            "/v1/user/sessions",
            _compact(
                {"serverId": server, "userId": typed_user, "sessionType": "Console"}
            ),
        )
        failure = (created.get("unsuccessful_list") or [{}])[0].get("failure_reason")
        if failure:
            raise LauncherError(str(failure))
        session = created.get("sessionID")
        if not isinstance(session, str) or not session:
            raise LauncherError("no sessionID in response")
        query = urlencode(
            sorted(
                {"serverId": server, "sessionId": session, "userId": typed_user}.items()
            )
        )
        answer = self._expect_200("GET", f"/v1/user/connectiontoken?{query}", None)
        return session, str(answer.get("token", ""))
