"""The OTP second factor: order, refusals, privacyIDEA's verdict, and the wiring.

Both factors are fakes here; every coroutine completes at once. privacyIDEA
over the network (the fake server), slapd and a real director are in
tests/integration/test_otp.py.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.testing import MemoryReactorClock

from dcvix.common.config import load_config
from dcvix.ctl import wait
from dcvix.director.auth import AuthUnavailable
from dcvix.director.auth.external import ExternalAuthenticator
from dcvix.director.auth.ldap import LdapAuthenticator
from dcvix.director.auth.otp import (
    PrivacyIdea,
    SecondFactor,
    check_url,
    verdict,
    with_second_factor,
)
from dcvix.director.config import DirectorConfig, LdapSection
from dcvix.director.registry.engine import inline_runner
from dcvix.director.service import Dependencies, _authenticator, build_director
from dcvix.testing import PasswordAuthenticator


class Directory(PasswordAuthenticator):
    """An LDAP-like first factor: answers the directory's spelling of the id."""

    def __init__(self) -> None:
        super().__init__({"ALICE": "pw"}, name="ldap")
        self.unavailable = False

    async def authenticate(self, user: str, password: str, otp: str) -> str | None:
        found = await super().authenticate(user, password, otp)
        if self.unavailable:
            raise AuthUnavailable("ldap down")
        return None if found is None else "alice"


class Otps:
    """A second factor that knows one good OTP per user."""

    name = "privacyidea"

    def __init__(self) -> None:
        self.good = {"alice": "123456"}
        self.calls: list[tuple[str, str, str]] = []
        self.unavailable = False

    async def authenticate(self, user: str, password: str, otp: str) -> str | None:
        self.calls.append((user, password, otp))
        if self.unavailable:
            raise AuthUnavailable("privacyIDEA down")
        return user if self.good.get(user) == otp else None


@pytest.fixture
def first() -> Directory:
    return Directory()


@pytest.fixture
def second() -> Otps:
    return Otps()


@pytest.fixture
def both(first: Directory, second: Otps) -> SecondFactor:
    return SecondFactor(first, second)


# ------------------------------------------------------------ SecondFactor


def test_password_then_otp_for_the_canonical_id(
    both: SecondFactor, first: Directory, second: Otps
) -> None:
    assert both.name == "ldap+privacyidea"
    assert wait(both.authenticate("ALICE", "pw", "123456")) == "alice"
    # The first factor never sees the OTP; the second gets the directory's id.
    assert first.calls == [("ALICE", "pw", "")]
    assert second.calls == [("alice", "pw", "123456")]


def test_a_wrong_otp_is_refused(both: SecondFactor, second: Otps) -> None:
    assert wait(both.authenticate("ALICE", "pw", "654321")) is None
    assert second.calls == [("alice", "pw", "654321")]


def test_a_wrong_password_never_reaches_the_otp_check(
    both: SecondFactor, second: Otps
) -> None:
    assert wait(both.authenticate("ALICE", "wrong", "123456")) is None
    assert second.calls == []


def test_an_empty_otp_is_refused_without_asking(
    both: SecondFactor, first: Directory, second: Otps
) -> None:
    assert wait(both.authenticate("ALICE", "pw", "")) is None
    assert first.calls == [("ALICE", "pw", "")]
    assert second.calls == []


def test_either_factor_unavailable_is_unavailable(
    both: SecondFactor, first: Directory, second: Otps
) -> None:
    second.unavailable = True
    with pytest.raises(AuthUnavailable, match="privacyIDEA down"):
        wait(both.authenticate("ALICE", "pw", "123456"))
    first.unavailable = True
    second.calls.clear()
    with pytest.raises(AuthUnavailable, match="ldap down"):
        wait(both.authenticate("ALICE", "pw", "123456"))
    assert second.calls == []


@pytest.mark.parametrize("field", [0, 1, 2], ids=["user", "password", "otp"])
@pytest.mark.parametrize(
    "bad", ["\n", "\r", "\x00", "\ud800"], ids=["lf", "cr", "nul", "surrogate"]
)
def test_forbidden_characters_are_refused_before_asking(
    both: SecondFactor, first: Directory, second: Otps, field: int, bad: str
) -> None:
    fields = ["ALICE", "pw", "123456"]
    fields[field] += bad
    assert wait(both.authenticate(*fields)) is None
    assert first.calls == [] and second.calls == []


# --------------------------------------------------------- privacyIDEA rules


def answer(result: Any, detail: Any = None) -> bytes:
    return json.dumps({"result": result, "detail": detail, "id": 1}).encode()


def test_check_url_joins_with_one_slash() -> None:
    assert check_url("https://pi.example") == "https://pi.example/validate/check"
    assert check_url("https://pi.example/") == "https://pi.example/validate/check"
    assert check_url("https://h/pi/") == "https://h/pi/validate/check"


def test_only_status_and_value_json_true_accept() -> None:
    accepted = answer({"status": True, "value": True}, {"message": "matching 1 tokens"})
    assert verdict(200, accepted) == (True, "matching 1 tokens")


def test_status_true_value_false_refuses() -> None:
    refused = answer({"status": True, "value": False}, {"message": "wrong otp value"})
    assert verdict(200, refused) == (False, "wrong otp value")


def test_a_challenge_refuses_and_says_so() -> None:
    detail = {"message": "please enter otp: ", "transaction_id": "0123"}
    assert verdict(200, answer({"status": True, "value": False}, detail)) == (
        False,
        "a challenge (not supported by dcvix): please enter otp: ",
    )


@pytest.mark.parametrize(
    ("status", "body"),
    [
        # privacyIDEA's own error reports
        (400, answer({"status": False, "error": {"code": 904, "message": "ERR904"}})),
        (200, answer({"status": False, "error": {"code": 905, "message": "ERR905"}})),
        (500, answer({"status": False})),
        # truthy is not true
        (200, answer({"status": "true", "value": True})),
        (200, answer({"status": 1, "value": True})),
        (200, answer({"status": True, "value": "true"})),
        (200, answer({"status": True, "value": 1})),
        (200, answer({"status": True})),
        # not privacyIDEA's JSON
        (200, b"<html>privacyIDEA</html>"),
        (200, b"\xff\xfe"),
        (200, b"[true]"),
        (200, json.dumps({"result": True}).encode()),
        (200, b""),
        # an HTTP error around a body that says yes
        (502, answer({"status": True, "value": True})),
        (302, answer({"status": True, "value": True})),
    ],
)
def test_anything_else_is_unavailable(status: int, body: bytes) -> None:
    with pytest.raises(AuthUnavailable):
        verdict(status, body)


def test_the_error_message_is_kept_for_the_log() -> None:
    error = {"code": 904, "message": "ERR904: User <x@dcvix> does not exist."}
    with pytest.raises(AuthUnavailable, match="ERR904: User <x@dcvix>"):
        verdict(400, answer({"status": False, "error": error}))


# ------------------------------------------------------------------- wiring


def ldap_settings(**changes: Any) -> LdapSection:
    return LdapSection(**changes)


def test_disabled_is_the_first_factor_alone(first: Directory) -> None:
    reactor = MemoryReactorClock()
    assert with_second_factor(first, ldap_settings(), reactor) is first


def test_privacyidea_and_external_wrap_the_first_factor(first: Directory) -> None:
    reactor = MemoryReactorClock()
    pi = with_second_factor(first, ldap_settings(otp_type="privacyidea"), reactor)
    assert isinstance(pi, SecondFactor) and isinstance(pi.second, PrivacyIdea)
    assert pi.first is first and pi.name == "ldap+privacyidea"
    settings = ldap_settings(otp_type="external", otp_external_command="/bin/true")
    command = with_second_factor(first, settings, reactor)
    assert isinstance(command, SecondFactor)
    assert isinstance(command.second, ExternalAuthenticator)
    assert command.name == "ldap+external"


def director_config(tmp_path: Path, otp_type: str) -> DirectorConfig:
    path = tmp_path / "dcvix-director.conf"
    path.write_text(
        "[director]\n"
        "director_host = 127.0.0.1\n"
        "director_port = 18445\n"
        "auth_type = ldap\n"
        f"data_dir = {tmp_path / 'data'}\n"
        f"policydb_folder = {tmp_path / 'policydb'}\n"
        "[ldap_auth]\n"
        "ldap_address = ldaps://ldap.example\n"
        f"otp_type = {otp_type}\n"
        "privacyidea_url = https://pi.example/\n"
        "[log]\n"
        f"directory = {tmp_path / 'log'}\n"
    )
    path.chmod(0o600)
    return load_config(DirectorConfig, path)


@pytest.mark.parametrize("otp_type", ["disabled", "privacyidea", "external"])
def test_the_director_still_closes_the_ldap_connection(
    tmp_path: Path, otp_type: str
) -> None:
    config = director_config(tmp_path, otp_type)
    made: list[Any] = []

    def authenticator(config: DirectorConfig, reactor: Any, pool: Any) -> Any:
        made.append(_authenticator(config, reactor, pool))
        return made[-1]

    deps = Dependencies(
        host_names=lambda: ["director1"],
        authenticator=authenticator,
        db_runner=lambda pool: inline_runner,
    )
    root = build_director(config, MemoryReactorClock(), None, deps)
    (backend,) = made
    ldap = backend.first if otp_type != "disabled" else backend
    assert isinstance(ldap, LdapAuthenticator)
    assert "_LdapCloser" in [type(service).__name__ for service in root]
