"""The director behind a TCP balancer that sends PROXY headers.

A real director; the "balancer" connects from 127.0.0.2 (the harness checks
health from 127.0.0.1, which is not one), writes a PROXY header (v1 text or v2
binary) as HAProxy ``send-proxy`` does, then speaks TLS over the same
connection. ``[gateway] gateways_list`` is the proof that the address in
the header is the client's: only the address named there may resolve a session.
"""

from __future__ import annotations

import http.client
import socket
import ssl
import struct
from typing import Any

import pytest

from fleet import Director, Fleet

GATEWAY = "203.0.113.7"
RESOLVE = "/resolveSession?sessionId=no-such-session"


def v1(source: str) -> bytes:
    return f"PROXY TCP4 {source} 127.0.0.1 50000 8445\r\n".encode()


def v2(source: str) -> bytes:
    """A PROXY v2 header: PROXY command, TCP over IPv4."""
    addresses = socket.inet_aton(source) + socket.inet_aton("127.0.0.1")
    body = addresses + struct.pack("!HH", 50000, 8445)
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    return signature + bytes([0x21, 0x11]) + struct.pack("!H", len(body)) + body


class ProxiedConnection(http.client.HTTPSConnection):
    """HTTPS after ``header``, as a balancer with ``send-proxy`` relays it."""

    def __init__(self, header: bytes, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header = header

    def connect(self) -> None:
        http.client.HTTPConnection.connect(self)
        self.sock.sendall(self._header)
        self.sock = self._context.wrap_socket(  # type: ignore[attr-defined]
            self.sock, server_hostname=self.host
        )


BALANCER = "127.0.0.2"


def post(director: Director, path: str, header: bytes = b"") -> int:
    """The status of a POST from the balancer's address, after ``header``."""
    context = ssl.create_default_context(cafile=str(director.ca_file))
    where: dict[str, Any] = {
        "context": context,
        "timeout": 30,
        "source_address": (BALANCER, 0),
    }
    link = (
        ProxiedConnection(header, "127.0.0.1", director.port, **where)
        if header
        else http.client.HTTPSConnection("127.0.0.1", director.port, **where)
    )
    try:
        link.request("POST", path)
        return link.getresponse().status
    finally:
        link.close()


def proxied_director(fleet: Fleet, proxies: str) -> Director:
    director = fleet.director(start=False, proxy_addresses=proxies)
    director.extra["gateway"] = {"gateways_list": GATEWAY}
    fleet.start(director)
    return director


@pytest.mark.parametrize("header", [v1, v2], ids=["v1", "v2"])
def test_a_trusted_balancer_names_the_client(fleet: Fleet, header: Any) -> None:
    director = proxied_director(fleet, BALANCER)
    mark = director.mark()
    # The gateway's address comes from the header: it may resolve (an unknown
    # session is its answer), where the balancer's own address may not.
    assert post(director, RESOLVE, header(GATEWAY)) == 404
    assert post(director, RESOLVE, header("198.51.100.1")) == 403
    director.wait_log("from 198.51.100.1: it is not in", since=mark)
    assert f"from {BALANCER}" not in director.log_since(mark)


def test_a_trusted_balancer_must_send_the_header(fleet: Fleet) -> None:
    director = proxied_director(fleet, "127.0.0.2/32")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        post(director, RESOLVE)


def test_headers_from_anyone_else_are_not_read(fleet: Fleet) -> None:
    director = proxied_director(fleet, "10.0.0.0/8")
    # A client cannot claim the gateway's address: its header is not TLS.
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        post(director, RESOLVE, v1(GATEWAY))
    # Without a header it is served, as itself.
    assert post(director, RESOLVE) == 403
