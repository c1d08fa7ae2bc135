"""The PROXY protocol, from the balancers named in ``proxy_addresses`` only.

Behind a TLS-passthrough TCP balancer (HAProxy ``mode tcp``, AWS NLB, nginx
``stream``), every connection comes from the balancer: the login throttle,
``register_rate``, ``gateways_list`` and the agent address would all see it.
Such a balancer can put the client's address in a PROXY header (v1 text or v2
binary) before the TLS bytes. A connection from an address in
``proxy_addresses`` must start with one, and the address it names is the
client's from then on (Twisted's parser: ``getPeer`` answers it, below TLS,
so every layer above sees it); a connection from anywhere else is taken as it
comes, and a PROXY header from it is just bytes that are not TLS. A header
cannot be forged by clients that do not pass through a trusted balancer.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import IAddress, IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory

# The package exports only proxyEndpoint, which trusts every peer; its factory
# is what that endpoint wraps each listener's factory in.
from twisted.protocols.haproxy._wrapper import HAProxyWrappingFactory
from zope.interface import implementer

from dcvix.common.networks import AddressList


@implementer(IProtocolFactory)
class ProxiedFactory:
    """``wrapped``'s connections, read through a PROXY header from ``proxies``.

    Args:
        wrapped: the factory of every connection (the TLS layer).
        proxies: the balancers' addresses or networks; empty turns it off.
    """

    def __init__(self, wrapped: Factory, proxies: AddressList) -> None:
        self._wrapped = wrapped
        self._proxied = HAProxyWrappingFactory(wrapped)
        self._proxies = proxies

    def buildProtocol(self, addr: IAddress) -> IProtocol | None:
        """A connection from a trusted balancer first reads its header."""
        # AddressList reads an IPv4-mapped peer (a listener on ::) as IPv4.
        if str(getattr(addr, "host", "")) in self._proxies:
            protocol: IProtocol | None = self._proxied.buildProtocol(addr)
            return protocol
        built: IProtocol | None = self._wrapped.buildProtocol(addr)
        return built

    def doStart(self) -> None:
        """Start the wrapped factory (the endpoint starts only this one)."""
        self._wrapped.doStart()

    def doStop(self) -> None:
        """Stop the wrapped factory."""
        self._wrapped.doStop()

    def logPrefix(self) -> Any:
        """As the wrapped factory's."""
        return self._wrapped.logPrefix()
