"""How ``ldap_address`` and ``ldap_filter`` are read (no server needed)."""

from __future__ import annotations

import pytest

from dcvix.director.auth.ldap import (
    DEFAULT_LDAPI_SOCKET,
    LdapAddress,
    parse_address,
    user_filter,
)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("ldap://127.0.0.1", LdapAddress("ldap", "127.0.0.1", 389)),
        ("ldap://dc1.example.com:3268/", LdapAddress("ldap", "dc1.example.com", 3268)),
        ("LDAPS://DC1.Example.COM", LdapAddress("ldaps", "dc1.example.com", 636)),
        ("ldaps://[::1]:6360", LdapAddress("ldaps", "::1", 6360)),
        (
            "ldap://ldap.example.com/dc=example,dc=com?uid",
            LdapAddress("ldap", "ldap.example.com", 389),
        ),
        ("ldapi://%2Frun%2Fslapd%2Fldapi", LdapAddress("ldapi", "/run/slapd/ldapi")),
        ("ldapi://%2Frun%2Fslapd%2Fldapi/", LdapAddress("ldapi", "/run/slapd/ldapi")),
        ("ldapi://%2ftmp%2fa%20b%25c", LdapAddress("ldapi", "/tmp/a b%c")),
        ("ldapi:///run/slapd/ldapi", LdapAddress("ldapi", "/run/slapd/ldapi")),
        ("ldapi://", LdapAddress("ldapi", DEFAULT_LDAPI_SOCKET)),
        ("ldapi:///", LdapAddress("ldapi", DEFAULT_LDAPI_SOCKET)),
    ],
)
def test_addresses(text: str, expected: LdapAddress) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("http://ldap.example.com", "is not an ldap, ldaps or ldapi URL"),
        ("ldap.example.com", "is not an ldap, ldaps or ldapi URL"),
        ("ldap://", "names no host"),
        ("ldap://host:99999", "invalid port"),
        ("ldap://host:port", "invalid port"),
        ("ldapi://%2Frun/slapd", "percent-encode the socket path"),
        ("ldapi://relative%2Fsocket", "must be absolute"),
        ("ldapi://%2Ftmp%2Fx%00y", "must be absolute"),
    ],
)
def test_unusable_addresses(text: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_address(text)


@pytest.mark.parametrize(
    ("address", "loopback"),
    [
        ("ldap://127.0.0.1", True),
        ("ldap://127.1.2.3", True),
        ("ldap://[::1]", True),
        ("ldap://localhost", True),
        ("ldapi://", True),
        ("ldap://10.0.0.1", False),
        ("ldap://ldap.example.com", False),
    ],
)
def test_loopback(address: str, loopback: bool) -> None:
    assert parse_address(address).loopback is loopback


@pytest.mark.parametrize(
    ("template", "user", "expected"),
    [
        ("(sAMAccountName=%s)", "alice", "(sAMAccountName=alice)"),
        ("(sAMAccountName=%s)", "*", r"(sAMAccountName=\2a)"),
        ("(uid=%s)", "a)(|(uid=*", r"(uid=a\29\28|\28uid=\2a)"),
        ("(uid=%s)", r"\2a", r"(uid=\5c2a)"),
        (
            "(|(sAMAccountName=%s)(userPrincipalName=%s))",
            "al*ce",
            r"(|(sAMAccountName=al\2ace)(userPrincipalName=al\2ace))",
        ),
        ("(cn=%s)", "Jürgen Müller", "(cn=Jürgen Müller)"),
    ],
)
def test_every_percent_s_is_the_escaped_user(
    template: str, user: str, expected: str
) -> None:
    assert user_filter(template, user) == expected
