"""IP addresses and networks, as configured and as seen on a socket.

An IPv4 client of a dual-stack listener shows up as ``::ffff:a.b.c.d``; it is
the IPv4 address ``a.b.c.d`` here, both in configured lists and in peers, so
``127.0.0.1`` matches whichever way the listener was bound.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def parse_address(text: str) -> Address:
    """An IP address; brackets and an IPv6 zone (``%eth0``) are dropped.

    Raises:
        ValueError: not an IP address.
    """
    address = ipaddress.ip_address(text.strip("[]").partition("%")[0])
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        return address.ipv4_mapped
    return address


def parse_network(text: str) -> Network:
    """An address (a network of one) or a CIDR network; host bits are ignored.

    ``10.1.2.3/8`` is ``10.0.0.0/8``, as an operator who wrote it meant.

    Raises:
        ValueError: neither an address nor a network.
    """
    address, slash, prefix = text.partition("/")
    if not slash:
        return ipaddress.ip_network(parse_address(address))
    network = ipaddress.ip_network(f"{address.strip('[]')}/{prefix}", strict=False)
    mapped = network.network_address
    if (
        isinstance(mapped, ipaddress.IPv6Address)
        and mapped.ipv4_mapped
        and network.prefixlen >= 96
    ):
        return ipaddress.IPv4Network((mapped.ipv4_mapped, network.prefixlen - 96))
    return network


def network_text(network: Network) -> str:
    """A network as written back: a lone address without its ``/32`` or ``/128``."""
    if network.prefixlen == network.max_prefixlen:
        return str(network.network_address)
    return network.with_prefixlen


class AddressList:
    """Addresses and networks a peer is checked against.

    Args:
        entries: addresses or CIDR networks, as :func:`parse_network` reads them.

    Raises:
        ValueError: an entry is neither.
    """

    def __init__(self, entries: Iterable[str]) -> None:
        self._networks = tuple(parse_network(entry) for entry in entries)

    def __contains__(self, peer: object) -> bool:
        """Whether ``peer`` (an address as text) is in one of the networks."""
        if not isinstance(peer, str):
            return False
        try:
            address = parse_address(peer)
        except ValueError:
            return False
        return any(
            address in network
            for network in self._networks
            if network.version == address.version
        )

    def __bool__(self) -> bool:
        return bool(self._networks)

    def __iter__(self) -> Iterator[Network]:
        return iter(self._networks)
