"""One spelling per client address, whatever the transport or PROXY header wrote."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcvix.common.http import canonical_ip


@pytest.mark.parametrize(
    ("host", "expected"),
    [
        ("203.0.113.7", "203.0.113.7"),
        ("::ffff:203.0.113.7", "203.0.113.7"),
        ("0:0:0:0:0:ffff:cb00:7107", "203.0.113.7"),  # a PROXY v2 header's
        ("2001:DB8:0:0:0:0:0:1", "2001:db8::1"),
        ("::1", "::1"),
        ("", ""),
        ("not-an-address", "not-an-address"),
    ],
)
def test_canonical_spelling(host: str, expected: str) -> None:
    assert canonical_ip(host) == expected


@given(st.ip_addresses(v=4))
def test_an_ipv4_mapped_address_is_its_ipv4_however_written(
    address: ipaddress.IPv4Address,
) -> None:
    mapped = ipaddress.IPv6Address(f"::ffff:{address}")
    for spelling in (str(mapped), mapped.exploded, mapped.exploded.upper()):
        assert canonical_ip(spelling) == str(address)


@given(st.ip_addresses(v=6))
def test_an_ipv6_address_has_one_spelling(address: ipaddress.IPv6Address) -> None:
    assert canonical_ip(address.exploded) == canonical_ip(str(address))
