"""Addresses and CIDR networks: gateways_list entries, and the peers checked."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcvix.common.networks import (
    AddressList,
    network_text,
    parse_address,
    parse_network,
)


@pytest.mark.parametrize(
    ("entry", "written"),
    [
        ("127.0.0.1", "127.0.0.1"),
        ("10.0.0.0/8", "10.0.0.0/8"),
        ("10.1.2.3/8", "10.0.0.0/8"),  # host bits ignored, as the operator meant
        ("10.1.2.3/32", "10.1.2.3"),
        ("2001:DB8::1", "2001:db8::1"),
        ("[::1]", "::1"),
        ("2001:db8::/32", "2001:db8::/32"),
        ("::ffff:192.0.2.7", "192.0.2.7"),
        ("::ffff:10.0.0.0/104", "10.0.0.0/8"),
        ("0.0.0.0/0", "0.0.0.0/0"),
    ],
)
def test_entries_are_read_and_written_back(entry: str, written: str) -> None:
    assert network_text(parse_network(entry)) == written


@pytest.mark.parametrize(
    "entry", ["gw.example", "10.0.0.0/33", "10.0.0.0/x", "", "10.0.0", "::1/129"]
)
def test_bad_entries_are_refused(entry: str) -> None:
    with pytest.raises(ValueError):
        parse_network(entry)


def test_peers_as_a_socket_shows_them() -> None:
    gateways = AddressList(["127.0.0.1", "::1", "10.0.0.0/8", "fe80::/10"])

    assert "127.0.0.1" in gateways
    # An IPv4 client of a dual-stack listener.
    assert "::ffff:127.0.0.1" in gateways
    assert "::ffff:10.200.0.1" in gateways
    assert "::1" in gateways
    assert "fe80::1%eth0" in gateways
    assert "10.255.255.255" in gateways
    assert "11.0.0.1" not in gateways
    assert "127.0.0.2" not in gateways
    assert "::2" not in gateways
    assert "" not in gateways
    assert "gw.example" not in gateways
    assert None not in gateways
    assert bool(gateways)
    assert len(list(gateways)) == 4


def test_an_empty_list_admits_nobody() -> None:
    nobody = AddressList([])
    assert not nobody
    assert "127.0.0.1" not in nobody
    assert "::1" not in nobody


def test_parse_address_drops_what_a_socket_adds() -> None:
    assert parse_address("::ffff:192.0.2.1") == ipaddress.IPv4Address("192.0.2.1")
    assert parse_address("[2001:db8::1]") == ipaddress.IPv6Address("2001:db8::1")
    assert parse_address("fe80::1%eth0") == ipaddress.IPv6Address("fe80::1")
    with pytest.raises(ValueError):
        parse_address("192.0.2.1:80")


@given(st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1), st.integers(0, 32))
def test_ipv4_matching_is_prefix_equality(network: int, peer: int, prefix: int) -> None:
    entry = f"{ipaddress.IPv4Address(network)}/{prefix}"
    address = ipaddress.IPv4Address(peer)
    expected = (network >> (32 - prefix)) == (peer >> (32 - prefix))
    gateways = AddressList([entry])
    assert (str(address) in gateways) is expected
    # The same client seen through a dual-stack listener.
    assert (f"::ffff:{address}" in gateways) is expected


@given(st.integers(0, 2**128 - 1), st.integers(0, 2**128 - 1), st.integers(0, 128))
def test_ipv6_matching_is_prefix_equality(network: int, peer: int, prefix: int) -> None:
    entry = f"{ipaddress.IPv6Address(network)}/{prefix}"
    address = ipaddress.IPv6Address(peer)
    expected = (network >> (128 - prefix)) == (peer >> (128 - prefix))
    if address.ipv4_mapped is not None:
        return  # compared as IPv4 (above)
    assert (str(address) in AddressList([entry])) is expected


@given(st.integers(0, 2**32 - 1))
def test_an_ipv4_entry_never_admits_ipv6_peers_but_its_mapped_form(peer: int) -> None:
    v4 = ipaddress.IPv4Address(peer)
    gateways = AddressList([str(v4)])
    assert str(v4) in gateways
    assert f"::ffff:{v4}" in gateways
    assert f"64:ff9b::{v4}" not in gateways
