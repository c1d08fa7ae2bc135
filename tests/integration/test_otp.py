"""The OTP second factor on the real reactor: privacyIDEA, slapd, a real director.

privacyIDEA is ``fake_privacyidea`` served in this process over HTTP or HTTPS
(a certificate from a test CA that nothing trusts unless ``SSL_CERT_FILE``
names it). LDAP is the session's throwaway slapd (``services.slapd``); the
external OTP command is a shell script in ``tmp_path``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from director_calls import audit_rows
from fake_privacyidea import FakePrivacyIdea, FakeUser, Seen, listen
from services import (  # noqa: F401 (fixtures)
    LDAP_ALICE,
    Slapd,
    idle_pool_after,
    slapd_fixture,
)
from twisted.internet import reactor
from twisted.internet.testing import EventLoggingObserver
from twisted.internet.threads import deferToThread
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

import certs
from daemons import free_port
from dcvix.common.threads import ThreadPoolService
from dcvix.director.auth import Authenticator, AuthUnavailable
from dcvix.director.auth.ldap import LdapAuthenticator
from dcvix.director.auth.otp import PrivacyIdea, with_second_factor
from dcvix.director.config import LdapSection
from fleet import Fleet, https

PIN = "pin-1234"
OTPS = ["755224", "287082", "359152"]
FAILED = {"error": "authentication failed"}


def as_json(user: str, password: str) -> Seen:
    """The request privacyIDEA should get: Go's wire format."""
    body = {"user": user, "pass": password}
    return Seen("POST", "/validate/check", "application/json", "application/json", body)


@pytest.fixture
def events() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def warnings(events: EventLoggingObserver) -> list[str]:
    return [formatEvent(e) for e in events if e["log_level"] == LogLevel.warn]


@dataclasses.dataclass
class Pki:
    ca_file: Path
    trusted: certs.Leaf  # localhost and 127.0.0.1
    name_only: certs.Leaf  # localhost only: not valid for 127.0.0.1


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = certs.CA.create("dcvix test privacyIDEA CA")
    return Pki(
        ca.write(tmp_path, "pi-ca.pem"),
        ca.issue("localhost", ["localhost"], ["127.0.0.1"]),
        ca.issue("localhost", ["localhost"]),
    )


@pytest.fixture
def fake() -> FakePrivacyIdea:
    return FakePrivacyIdea({"alice": FakeUser(PIN, list(OTPS))})


Serve = Callable[..., str]


@pytest.fixture
def serve(fake: FakePrivacyIdea) -> Iterator[Serve]:
    """Serve ``fake`` on 127.0.0.1 and answer its base URL; closed after."""
    ports: list[Any] = []

    def start(leaf: certs.Leaf | None = None) -> str:
        port = listen(reactor, fake, leaf)
        ports.append(port)
        scheme = "https" if leaf is not None else "http"
        return f"{scheme}://127.0.0.1:{port.getHost().port}"  # type: ignore[attr-defined]

    yield start
    fake.release_hanging()
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


# --------------------------------------------------------------- privacyIDEA


@pytest_twisted.ensureDeferred
async def test_accepts_and_sends_go_s_request(
    serve: Serve, fake: FakePrivacyIdea
) -> None:
    pi = PrivacyIdea(reactor, serve() + "/")
    assert await pi.authenticate("alice", PIN, OTPS[0]) == "alice"
    assert fake.requests == [as_json("alice", PIN + OTPS[0])]


@pytest_twisted.ensureDeferred
async def test_wrong_and_replayed_otps_are_refused(
    serve: Serve, fake: FakePrivacyIdea
) -> None:
    pi = PrivacyIdea(reactor, serve())
    assert await pi.authenticate("alice", PIN, "000000") is None
    assert await pi.authenticate("alice", PIN, OTPS[0]) == "alice"
    assert await pi.authenticate("alice", PIN, OTPS[0]) is None
    assert await pi.authenticate("alice", "not-" + PIN, OTPS[1]) is None
    assert len(fake.requests) == 4


@pytest_twisted.ensureDeferred
async def test_an_empty_otp_asks_nothing(serve: Serve, fake: FakePrivacyIdea) -> None:
    pi = PrivacyIdea(reactor, serve())
    assert await pi.authenticate("alice", PIN, "") is None
    assert fake.requests == []


@pytest.mark.parametrize(
    "mode", ["status-false", "not-json", "bad-gateway", "huge", "truthy"]
)
@pytest_twisted.ensureDeferred
async def test_broken_answers_are_unavailable(
    serve: Serve, fake: FakePrivacyIdea, mode: str
) -> None:
    fake.mode = mode
    pi = PrivacyIdea(reactor, serve())
    with pytest.raises(AuthUnavailable):
        await pi.authenticate("alice", PIN, OTPS[0])
    assert len(fake.requests) == 1


@pytest_twisted.ensureDeferred
async def test_an_unknown_user_is_unavailable(serve: Serve) -> None:
    pi = PrivacyIdea(reactor, serve())
    with pytest.raises(AuthUnavailable, match="ERR904"):
        await pi.authenticate("nobody", PIN, OTPS[0])


@pytest_twisted.ensureDeferred
async def test_a_server_that_is_down_is_unavailable() -> None:
    pi = PrivacyIdea(reactor, f"http://127.0.0.1:{free_port()}")
    with pytest.raises(AuthUnavailable, match="refused"):
        await pi.authenticate("alice", PIN, OTPS[0])


@pytest_twisted.ensureDeferred
async def test_a_hanging_server_times_out(serve: Serve, fake: FakePrivacyIdea) -> None:
    fake.mode = "hang"
    pi = PrivacyIdea(reactor, serve(), timeout=0.3)
    with pytest.raises(AuthUnavailable, match=r"no answer within 0\.3 s"):
        await pi.authenticate("alice", PIN, OTPS[0])
    assert len(fake.requests) == 1
    # The request was cancelled: the client hangs up on the fake.
    await fake.gone[0].addTimeout(10, reactor)


@pytest_twisted.ensureDeferred
async def test_unverified_tls_is_warned_about_and_works(
    serve: Serve, fake: FakePrivacyIdea, pki: Pki, events: EventLoggingObserver
) -> None:
    url = serve(pki.trusted)
    pi = PrivacyIdea(reactor, url, tls_strict=False)
    assert warnings(events) == [
        f"privacyidea_tls_strict = false: the certificate of {url} is not "
        "verified, so anyone on the path can read passwords and OTPs"
    ]
    assert await pi.authenticate("alice", PIN, OTPS[0]) == "alice"
    assert await pi.authenticate("alice", PIN, OTPS[1]) == "alice"
    assert len(warnings(events)) == 1


@pytest_twisted.ensureDeferred
async def test_strict_tls_refuses_a_certificate_the_system_does_not_trust(
    serve: Serve, fake: FakePrivacyIdea, pki: Pki, events: EventLoggingObserver
) -> None:
    pi = PrivacyIdea(reactor, serve(pki.trusted))
    with pytest.raises(AuthUnavailable):
        await pi.authenticate("alice", PIN, OTPS[0])
    assert fake.requests == []
    assert warnings(events) == []


@pytest_twisted.ensureDeferred
async def test_strict_tls_trusts_the_ca_named_by_ssl_cert_file(
    serve: Serve, fake: FakePrivacyIdea, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    pi = PrivacyIdea(reactor, serve(pki.trusted))
    assert await pi.authenticate("alice", PIN, OTPS[0]) == "alice"


@pytest_twisted.ensureDeferred
async def test_strict_tls_checks_the_url_host(
    serve: Serve, fake: FakePrivacyIdea, pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
    pi = PrivacyIdea(reactor, serve(pki.name_only))
    with pytest.raises(AuthUnavailable):
        await pi.authenticate("alice", PIN, OTPS[0])
    assert fake.requests == []


@pytest_twisted.ensureDeferred
async def test_plain_http_elsewhere_is_warned_about(
    events: EventLoggingObserver,
) -> None:
    PrivacyIdea(reactor, "http://127.0.0.1:1")
    assert warnings(events) == []
    PrivacyIdea(reactor, "http://pi.example")
    assert warnings(events) == [
        "http://pi.example is plain http: passwords and OTPs cross the network "
        "in clear text"
    ]


# --------------------------------------------------- LDAP, then the OTP check


@pytest.fixture
def auth_pool() -> Iterator[ThreadPoolService]:
    yield from idle_pool_after("dcvix-test-otp", 15)


Login = Callable[..., Authenticator]


@pytest.fixture
def ldap_with(slapd: Slapd, auth_pool: ThreadPoolService) -> Iterator[Login]:
    """LDAP on the session's slapd behind the OTP check ``changes`` set up."""
    made: list[LdapAuthenticator] = []

    def make(**changes: Any) -> Authenticator:
        settings = LdapSection(
            ldap_address=slapd.ldap_url,
            ldap_base_dn=slapd.base_dn,
            ldap_bind_user=slapd.bind_dn,
            ldap_bind_password=slapd.bind_password,
            ldap_timeout=5.0,
            **changes,
        )
        made.append(LdapAuthenticator(settings, auth_pool))
        return with_second_factor(made[-1], settings, reactor)

    yield make
    for ldap in made:
        ldap.close()


@pytest.mark.service
@pytest_twisted.ensureDeferred
async def test_ldap_then_privacyidea_with_the_directory_s_id(
    ldap_with: Login, serve: Serve, fake: FakePrivacyIdea
) -> None:
    fake.users = {"alice": FakeUser(LDAP_ALICE.password, list(OTPS))}
    login = ldap_with(otp_type="privacyidea", privacyidea_url=serve())
    assert login.name == "ldap+privacyidea"
    password = LDAP_ALICE.password
    assert await login.authenticate("ALICE", password, OTPS[0]) == "alice"
    assert fake.requests == [as_json("alice", password + OTPS[0])]
    # A wrong password or no OTP: privacyIDEA is not asked.
    assert await login.authenticate("ALICE", "not-" + password, OTPS[1]) is None
    assert await login.authenticate("ALICE", password, "") is None
    assert len(fake.requests) == 1
    assert await login.authenticate("ALICE", password, "000000") is None
    assert len(fake.requests) == 2


@pytest.mark.service
@pytest_twisted.ensureDeferred
async def test_ldap_then_privacyidea_down_is_unavailable(ldap_with: Login) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    login = ldap_with(otp_type="privacyidea", privacyidea_url=url)
    with pytest.raises(AuthUnavailable):
        await login.authenticate("ALICE", LDAP_ALICE.password, OTPS[0])


def otp_script(tmp_path: Path, status: str) -> str:
    path = tmp_path / "otp.sh"
    path.write_text(f'#!/bin/sh\ncat > "{tmp_path}/stdin"\nexit {status}\n')
    path.chmod(0o700)
    return str(path)


@pytest.mark.service
@pytest_twisted.ensureDeferred
async def test_ldap_then_the_external_otp_command(
    ldap_with: Login, tmp_path: Path
) -> None:
    stdin = tmp_path / "stdin"
    login = ldap_with(
        otp_type="external", otp_external_command=otp_script(tmp_path, "0")
    )
    assert login.name == "ldap+external"
    password = LDAP_ALICE.password
    assert await login.authenticate("ALICE", password, "123456") == "alice"
    assert stdin.read_text() == f"alice\n{password}\n123456\n"
    stdin.unlink()
    assert await login.authenticate("ALICE", "not-" + password, "123456") is None
    assert await login.authenticate("ALICE", password, "") is None
    assert not stdin.exists()


@pytest.mark.service
@pytest.mark.parametrize(("status", "accepted"), [("1", False), ("3", None)])
@pytest_twisted.ensureDeferred
async def test_the_external_otp_command_refuses_or_cannot_decide(
    ldap_with: Login, tmp_path: Path, status: str, accepted: bool | None
) -> None:
    login = ldap_with(
        otp_type="external", otp_external_command=otp_script(tmp_path, status)
    )
    call = login.authenticate("ALICE", LDAP_ALICE.password, "123456")
    if accepted is None:
        with pytest.raises(AuthUnavailable, match="status 3"):
            await call
    else:
        assert await call is None


# ------------------------------------------------------------ a real director


@pytest.mark.service
@pytest_twisted.ensureDeferred
async def test_director_login_needs_the_otp(
    fleet: Fleet,
    slapd: Slapd,
    serve: Serve,
    fake: FakePrivacyIdea,
    pki: Pki,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    fake.users = {"alice": FakeUser(LDAP_ALICE.password, list(OTPS))}
    # The director trusts the fake's CA through the system's default paths.
    monkeypatch.setenv("SSL_CERT_FILE", str(pki.ca_file))
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
        "otp_type": "privacyidea",
        "privacyidea_url": serve(pki.trusted),
    }
    fleet.start(director)

    async def login(otp: str | None) -> tuple[int, Any]:
        body = {"userID": "ALICE", "password": LDAP_ALICE.password}
        if otp is not None:
            body["otp"] = otp
        # In a thread: the reactor must stay free to serve privacyIDEA.
        answer: tuple[int, Any] = await deferToThread(
            https,
            director.port,
            "/v1/user/login",
            cafile=director.ca_file,
            method="POST",
            body=body,
        )
        return answer

    assert await login(None) == (401, FAILED)
    assert await login("000000") == (401, FAILED)
    assert await login(OTPS[0]) == (200, {})
    assert fake.requests == [
        as_json("alice", LDAP_ALICE.password + "000000"),
        as_json("alice", LDAP_ALICE.password + OTPS[0]),
    ]
    assert audit_rows(director)[-3:] == [
        ("ALICE", "login failed", "backend=ldap+privacyidea result=rejected"),
        ("ALICE", "login failed", "backend=ldap+privacyidea result=rejected"),
        ("ALICE", "login", "backend=ldap+privacyidea result=ok as alice"),
    ]
    assert LDAP_ALICE.password not in director.log_text()
