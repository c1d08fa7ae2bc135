"""A real twistd director with ``auth_type = ldap``, logging users in via slapd.

The director talks ldaps:// to the session's throwaway slapd
(``services.slapd``), trusting only that server's test CA; the test talks
HTTPS to the director, trusting only the director's ``ca.pem``.
"""

from __future__ import annotations

import pytest
from director_calls import audit_rows, call
from services import LDAP_ALICE, Slapd, slapd_fixture  # noqa: F401 (fixture)

from fleet import Fleet

pytestmark = pytest.mark.service

FAILED = {"error": "authentication failed"}
HEALTHY = {"status": "healthy"}


def test_user_login_through_ldap(fleet: Fleet, slapd: Slapd) -> None:
    policy = fleet.folder / "policydb"
    policy.mkdir()
    director = fleet.director(
        start=False, auth_type="ldap", policydb_folder=str(policy)
    )
    director.extra["ldap_auth"] = {
        "ldap_address": slapd.ldaps_url,
        "ldap_ca_file": str(slapd.ca_file),
        "ldap_base_dn": slapd.base_dn,
        "ldap_bind_user": slapd.bind_dn,
        "ldap_bind_password": slapd.bind_password,
        "ldap_timeout": "5",
    }
    fleet.start(director)

    answer = call(
        director,
        "POST",
        "/v1/user/login",
        {"userID": "ALICE", "password": LDAP_ALICE.password},
    )
    assert (answer.status, answer.body) == (200, {})
    token = answer.token
    assert token is not None
    health = call(director, "GET", "/v1/auth-health", token=token)
    # The canonical id the directory answered, not the typed ALICE.
    assert (health.status, health.body) == (
        200,
        {**HEALTHY, "user": "alice", "admin": False},
    )

    refused = call(
        director,
        "POST",
        "/v1/user/login",
        {"userID": "ALICE", "password": "not-" + LDAP_ALICE.password},
    )
    assert (refused.status, refused.body, refused.token) == (401, FAILED, None)

    # The token is alice's, as the directory spells her; the password is
    # nowhere in the director's output.
    assert audit_rows(director)[-2:] == [
        ("ALICE", "login", "backend=ldap result=ok as alice"),
        ("ALICE", "login failed", "backend=ldap result=rejected"),
    ]
    assert LDAP_ALICE.password not in director.log_text()
