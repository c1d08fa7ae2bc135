"""A TCP listening endpoint several processes of one machine may share.

With ``SO_REUSEPORT`` set before ``bind``, Linux lets every process that sets
it listen on the same address and port, and spreads new connections between
them: one director process per core behind one port, without a balancer.
Only processes of the same user may join (the kernel's own rule).
"""

from __future__ import annotations

import socket
from typing import Any

from twisted.internet import tcp
from twisted.internet.defer import Deferred, execute
from twisted.internet.interfaces import (
    IListeningPort,
    IProtocolFactory,
    IStreamServerEndpoint,
)
from zope.interface import implementer


class _SharedPort(tcp.Port):
    """A listening port whose socket allows other processes on the same port."""

    def createInternetSocket(self) -> socket.socket:
        """The socket, with ``SO_REUSEPORT`` before Twisted binds it."""
        sock: socket.socket = super().createInternetSocket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        return sock


@implementer(IStreamServerEndpoint)
class SharedPortEndpoint:
    """Listen on ``interface:port`` with ``SO_REUSEPORT`` (IPv4 or IPv6)."""

    def __init__(
        self, reactor: Any, port: int, interface: str, backlog: int = 50
    ) -> None:
        self._reactor = reactor
        self._port = port
        self._interface = interface
        self._backlog = backlog

    def listen(self, factory: IProtocolFactory) -> Deferred[IListeningPort]:
        """Bind and listen, as Twisted's TCP endpoints do."""

        def start() -> IListeningPort:
            port = _SharedPort(
                self._port, factory, self._backlog, self._interface, self._reactor
            )
            port.startListening()
            return port

        return execute(start)
