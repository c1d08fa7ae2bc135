"""The LDAP login back end against a real, throwaway slapd, on the real reactor.

``services.slapd`` serves a small AD-like directory (``sAMAccountName``) over
ldap://, ldaps:// and ldapi://, and logs every operation it receives, so a test
can read the search filter the server really got. Servers that are down or that
never answer are a closed port and a socket that is listening but never read.
"""

from __future__ import annotations

import dataclasses
import itertools
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from services import (  # noqa: F401 (fixtures)
    LDAP_ALICE,
    LDAP_BOB,
    LDAP_CAROL,
    LDAP_DAVE,
    LDAP_TWINS,
    Slapd,
    idle_pool_after,
    own_slapd_fixture,
    slapd_fixture,
)
from twisted.internet import defer, reactor
from twisted.internet.task import LoopingCall, deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher

import certs
from daemons import free_port
from dcvix.common.threads import ThreadPoolService
from dcvix.director.auth import AuthUnavailable
from dcvix.director.auth.ldap import LdapAuthenticator
from dcvix.director.config import LdapSection

pytestmark = pytest.mark.service

TIMEOUT = 5.0
SERVICE_BIND = 'BIND dn="cn=svc-dcvix,dc=dcvix,dc=test" method=128'


# --------------------------------------------------------------------- helpers


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


async def unavailable(call: Awaitable[str | None]) -> tuple[str, float]:
    """The AuthUnavailable message, and the seconds until it was raised."""
    start = time.monotonic()
    with pytest.raises(AuthUnavailable) as raised:
        await call
    return str(raised.value), time.monotonic() - start


def searches(slapd: Slapd, since: int) -> list[str]:
    """The filters of the searches slapd received after log offset ``since``."""
    return re.findall(
        r' SRCH base="[^"]*" scope=2 deref=0 filter="(.*)"\n', slapd.log_text()[since:]
    )


def settings(slapd: Slapd | None = None, **changes: Any) -> LdapSection:
    """``[ldap_auth]`` for ``slapd`` (plain ldap://), with ``changes``."""
    base = LdapSection(ldap_timeout=TIMEOUT)
    if slapd is not None:
        base = dataclasses.replace(
            base,
            ldap_address=slapd.ldap_url,
            ldap_base_dn=slapd.base_dn,
            ldap_bind_user=slapd.bind_dn,
            ldap_bind_password=slapd.bind_password,
        )
    return dataclasses.replace(base, **changes)


Backend = Callable[..., LdapAuthenticator]


@pytest.fixture
def auth_pool() -> Iterator[ThreadPoolService]:
    """The auth thread pool; stopped once its threads are idle again."""
    yield from idle_pool_after("dcvix-test-ldap", 15)


@pytest.fixture
def backend(auth_pool: ThreadPoolService) -> Iterator[Backend]:
    """Makes LdapAuthenticators; each one's service connection is closed after."""
    made: list[LdapAuthenticator] = []

    def make(slapd: Slapd | None = None, **changes: Any) -> LdapAuthenticator:
        authenticator = LdapAuthenticator(settings(slapd, **changes), auth_pool)
        made.append(authenticator)
        return authenticator

    yield make
    for authenticator in made:
        authenticator.close()


@pytest.fixture
def events() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def logged(events: EventLoggingObserver) -> list[tuple[LogLevel, str]]:
    return [(event["log_level"], formatEvent(event)) for event in events]


@pytest.fixture
def silent_server() -> Iterator[socket.socket]:
    """Listens on 127.0.0.1 and never accepts: the kernel completes the TCP
    handshake, and nothing ever answers."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    yield listener
    listener.close()


def connections_waiting(listener: socket.socket) -> int:
    """How many connections reached ``listener`` (accepted and closed here)."""
    listener.setblocking(False)
    count = 0
    try:
        while True:
            connection, _ = listener.accept()
            connection.close()
            count += 1
    except BlockingIOError:
        return count
    finally:
        listener.setblocking(True)


# ------------------------------------------------------------------ accepting


@pytest_twisted.ensureDeferred
async def test_accepts_and_answers_the_directory_spelling(
    slapd: Slapd, backend: Backend
) -> None:
    # Every search also meets a reference to another server (as AD's do):
    # it is not an entry, and is not followed.
    ldap = backend(slapd)
    assert ldap.name == "ldap"
    assert await ldap.authenticate("ALICE", LDAP_ALICE.password, "") == "alice"
    assert await ldap.authenticate("alice", LDAP_ALICE.password, "") == "alice"
    assert await ldap.authenticate("aLiCe", LDAP_ALICE.password, "123456") == "alice"
    # A password that needs UTF-8; the id keeps the directory's mixed case.
    assert await ldap.authenticate("bob.jones", LDAP_BOB.password, "") == "Bob.Jones"


@pytest_twisted.ensureDeferred
async def test_the_id_is_the_user_attribute_not_what_matched(
    slapd: Slapd, backend: Backend
) -> None:
    ldap = backend(slapd, ldap_filter="(uid=%s)")
    assert await ldap.authenticate("ASmith", LDAP_ALICE.password, "") == "alice"
    by_uid = backend(slapd, ldap_filter="(uid=%s)", ldap_user_attribute="uid")
    assert await by_uid.authenticate("CAROL", LDAP_CAROL.password, "") == "carol"


@pytest_twisted.ensureDeferred
async def test_every_percent_s_is_replaced(slapd: Slapd, backend: Backend) -> None:
    ldap = backend(
        slapd,
        ldap_filter="(&(objectClass=person)(|(sAMAccountName=%s)(userPrincipalName=%s)))",
    )
    mark = len(slapd.log_text())
    assert (
        await ldap.authenticate("Alice@DCVIX.test", LDAP_ALICE.password, "") == "alice"
    )
    assert await ldap.authenticate("alice", LDAP_ALICE.password, "") == "alice"
    # slapd logs values normalised by their matching rule (caseIgnoreMatch).
    assert searches(slapd, mark) == [
        "(&(objectClass=person)(|(sAMAccountName=alice@dcvix.test)"
        "(userPrincipalName=alice@dcvix.test)))",
        "(&(objectClass=person)(|(sAMAccountName=alice)(userPrincipalName=alice)))",
    ]


@pytest_twisted.ensureDeferred
async def test_the_service_connection_is_reused(slapd: Slapd, backend: Backend) -> None:
    ldap = backend(slapd)
    mark = len(slapd.log_text())
    for _ in range(3):
        assert await ldap.authenticate("alice", LDAP_ALICE.password, "") == "alice"
    assert await ldap.authenticate("alice", "wrong", "") is None
    log = slapd.log_text()[mark:]
    assert log.count(SERVICE_BIND) == 1
    # Each user bind had a connection of its own, unbound afterwards. An
    # unbind has no answer, so slapd may log it after we read: wait for it.
    user_binds = re.findall(
        rf'conn=(\d+) op=\d+ BIND dn="{re.escape(LDAP_ALICE.dn)}" method=128', log
    )
    assert len(set(user_binds)) == 4

    def unbound() -> set[str]:
        return set(re.findall(r"conn=(\d+) op=\d+ UNBIND", slapd.log_text()[mark:]))

    deadline = time.monotonic() + 15
    while not set(user_binds) <= unbound() and time.monotonic() < deadline:
        await sleep(0.05)
    assert set(user_binds) <= unbound()


@pytest_twisted.ensureDeferred
async def test_simultaneous_logins_share_the_service_connection(
    slapd: Slapd, backend: Backend
) -> None:
    ldap = backend(slapd)
    users = [
        ("alice", LDAP_ALICE.password, "alice"),
        ("bob.jones", LDAP_BOB.password, "Bob.Jones"),
        ("alice", "wrong", None),
        ("nobody", "x", None),
    ] * 4
    results = await defer.gatherResults(
        [
            defer.Deferred.fromCoroutine(ldap.authenticate(user, password, ""))
            for user, password, _ in users
        ]
    )
    assert results == [expected for _, _, expected in users]


@pytest_twisted.ensureDeferred
async def test_ldapi_socket(slapd: Slapd, backend: Backend) -> None:
    ldap = backend(slapd, ldap_address=slapd.ldapi_url)
    assert slapd.ldapi_url.startswith("ldapi://%2F")
    assert await ldap.authenticate("ALICE", LDAP_ALICE.password, "") == "alice"
    assert await ldap.authenticate("ALICE", "wrong", "") is None
    unencoded = backend(slapd, ldap_address=f"ldapi://{slapd.socket}")
    assert await unencoded.authenticate("alice", LDAP_ALICE.password, "") == "alice"


# ------------------------------------------------------------------- refusing


@pytest_twisted.ensureDeferred
async def test_wrong_password_and_unknown_user_are_refused(
    slapd: Slapd, backend: Backend, events: EventLoggingObserver
) -> None:
    ldap = backend(slapd)
    assert await ldap.authenticate("alice", LDAP_ALICE.password + "x", "") is None
    assert await ldap.authenticate("nobody", LDAP_ALICE.password, "") is None
    lines = logged(events)
    assert (
        LogLevel.info,
        f"LDAP refused alice ({LDAP_ALICE.dn}): bind refused: invalidCredentials (49)",
    ) in lines
    assert (
        LogLevel.info,
        "LDAP refused nobody: no entry matches (sAMAccountName=nobody)",
    ) in lines
    assert not [line for _, line in lines if LDAP_ALICE.password in line]


@pytest.mark.parametrize(
    ("typed", "received"),
    [
        ("*", r"(sAMAccountName=\2A)"),
        ("al*", r"(sAMAccountName=al\2A)"),
        ("alice)(|(uid=*", r"(sAMAccountName=alice\29\28|\28uid=\2A)"),
        ("*)(sAMAccountName=alice", r"(sAMAccountName=\2A\29\28samaccountname=alice)"),
        (r"\2a", r"(sAMAccountName=\5C2a)"),
        ("alice\\", r"(sAMAccountName=alice\5C)"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_filter_injection_is_plain_text(
    typed: str, received: str, slapd: Slapd, backend: Backend
) -> None:
    ldap = backend(slapd)
    mark = len(slapd.log_text())
    assert await ldap.authenticate(typed, LDAP_ALICE.password, "") is None
    assert searches(slapd, mark) == [received]


@pytest_twisted.ensureDeferred
async def test_two_matching_entries_are_refused(
    slapd: Slapd, backend: Backend, events: EventLoggingObserver
) -> None:
    ldap = backend(slapd)
    mark = len(slapd.log_text())
    assert await ldap.authenticate("twin", LDAP_TWINS[0].password, "") is None
    assert await ldap.authenticate("TWIN", LDAP_TWINS[1].password, "") is None
    # Nobody was bound as either twin.
    assert "uid=twin" not in "\n".join(
        line for line in slapd.log_text()[mark:].splitlines() if " BIND " in line
    )
    errors = [line for level, line in logged(events) if level == LogLevel.error]
    assert errors == [
        "LDAP refused twin: more than one entry matches (sAMAccountName=twin)",
        "LDAP refused TWIN: more than one entry matches (sAMAccountName=TWIN)",
    ]


@pytest.mark.parametrize(
    ("user", "password"),
    [
        ("alice", ""),
        ("alice\n", LDAP_ALICE.password),
        ("alice", LDAP_ALICE.password + "\r"),
        ("alice", "pass\x00word"),
        ("ali\ud800ce", LDAP_ALICE.password),
        ("alice", "\udcff"),
        ("-alice", LDAP_ALICE.password),
        ("", LDAP_ALICE.password),
        ("a" * 300, LDAP_ALICE.password),
        ("al\tice", LDAP_ALICE.password),
    ],
    ids=[
        "empty-password",
        "lf-user",
        "cr-password",
        "nul-password",
        "surrogate-user",
        "surrogate-password",
        "leading-dash",
        "empty-user",
        "too-long",
        "tab-user",
    ],
)
@pytest_twisted.ensureDeferred
async def test_refused_before_any_network_call(
    user: str, password: str, backend: Backend, silent_server: socket.socket
) -> None:
    # Had it connected, the silent server would have made it hang and then
    # raise AuthUnavailable; instead the answer is an immediate refusal.
    port = silent_server.getsockname()[1]
    ldap = backend(ldap_address=f"ldap://127.0.0.1:{port}", ldap_timeout=2.0)
    assert await ldap.authenticate(user, password, "") is None
    assert connections_waiting(silent_server) == 0


@pytest_twisted.ensureDeferred
async def test_the_silent_server_does_see_a_plausible_login(
    backend: Backend, silent_server: socket.socket
) -> None:
    # The control for the test above.
    port = silent_server.getsockname()[1]
    ldap = backend(ldap_address=f"ldap://127.0.0.1:{port}", ldap_timeout=1.0)
    await unavailable(ldap.authenticate("alice", "pw", ""))
    assert connections_waiting(silent_server) == 1


# ----------------------------------------------------------------------- TLS


@pytest_twisted.ensureDeferred
async def test_ldaps_with_the_ca_file(slapd: Slapd, backend: Backend) -> None:
    ldap = backend(slapd, ldap_address=slapd.ldaps_url, ldap_ca_file=str(slapd.ca_file))
    assert await ldap.authenticate("ALICE", LDAP_ALICE.password, "") == "alice"
    assert await ldap.authenticate("ALICE", "wrong", "") is None


@pytest_twisted.ensureDeferred
async def test_starttls_with_the_ca_file(slapd: Slapd, backend: Backend) -> None:
    ldap = backend(slapd, ldap_starttls=True, ldap_ca_file=str(slapd.ca_file))
    mark = len(slapd.log_text())
    assert await ldap.authenticate("ALICE", LDAP_ALICE.password, "") == "alice"
    assert await ldap.authenticate("ALICE", "wrong", "") is None
    # The service connection and both user connections started TLS first.
    assert slapd.log_text()[mark:].count("EXT oid=1.3.6.1.4.1.1466.20037") == 3


@pytest.fixture
def foreign_ca_file(tmp_path: Path) -> Path:
    return certs.foreign_ca().write(tmp_path, "foreign.pem")


@pytest.mark.parametrize("starttls", [False, True], ids=["ldaps", "starttls"])
@pytest_twisted.ensureDeferred
async def test_a_server_the_ca_did_not_sign_is_unavailable(
    starttls: bool, slapd: Slapd, backend: Backend, foreign_ca_file: Path
) -> None:
    address = slapd.ldap_url if starttls else slapd.ldaps_url
    for ca_file in (str(foreign_ca_file), ""):  # "": the system's CAs
        ldap = backend(
            slapd, ldap_address=address, ldap_starttls=starttls, ldap_ca_file=ca_file
        )
        message, _ = await unavailable(
            ldap.authenticate("alice", LDAP_ALICE.password, "")
        )
        assert "CERTIFICATE_VERIFY_FAILED" in message


@pytest_twisted.ensureDeferred
async def test_a_certificate_for_another_name_is_unavailable(
    slapd: Slapd, backend: Backend
) -> None:
    # slapd's ldaps port also listens on 127.0.0.2, which its certificate
    # (localhost, 127.0.0.1) does not name.
    ldap = backend(
        slapd,
        ldap_address=f"ldaps://127.0.0.2:{slapd.tls_port}",
        ldap_ca_file=str(slapd.ca_file),
    )
    message, _ = await unavailable(ldap.authenticate("alice", LDAP_ALICE.password, ""))
    assert "IP address mismatch" in message


@pytest_twisted.ensureDeferred
async def test_a_missing_ca_file_is_unavailable(
    slapd: Slapd, backend: Backend, tmp_path: Path
) -> None:
    missing = tmp_path / "no-such-ca.pem"
    ldap = backend(slapd, ldap_address=slapd.ldaps_url, ldap_ca_file=str(missing))
    message, _ = await unavailable(ldap.authenticate("alice", LDAP_ALICE.password, ""))
    assert message.startswith(f"ldap_ca_file {missing}: ")


# --------------------------------------------------------- could not decide


@pytest_twisted.ensureDeferred
async def test_a_server_that_is_down_is_unavailable_at_once(backend: Backend) -> None:
    ldap = backend(ldap_address=f"ldap://127.0.0.1:{free_port()}")
    message, seconds = await unavailable(
        ldap.authenticate("alice", LDAP_ALICE.password, "")
    )
    assert "Connection refused" in message
    assert seconds < 10  # an answer, not the default ldap_timeout of 10 s


@pytest.mark.parametrize("scheme", ["ldap", "ldaps"])
@pytest_twisted.ensureDeferred
async def test_a_server_that_never_answers_is_unavailable_after_the_timeout(
    scheme: str, backend: Backend, silent_server: socket.socket
) -> None:
    port = silent_server.getsockname()[1]
    ldap = backend(ldap_address=f"{scheme}://127.0.0.1:{port}", ldap_timeout=1.0)
    message, seconds = await unavailable(
        ldap.authenticate("alice", LDAP_ALICE.password, "")
    )
    assert "timed out" in message
    assert 0.9 < seconds < 1.0 + 5


@pytest_twisted.ensureDeferred
async def test_logins_waiting_for_a_hung_service_connection_give_up_too(
    backend: Backend, silent_server: socket.socket
) -> None:
    # The first login holds the service connection while its bind hangs (1 s);
    # three more arrive 0.3 s later. When it gives up, one of them takes the
    # connection over and hangs in turn; the others stop waiting 1 s after
    # they began, with the service connection still busy.
    port = silent_server.getsockname()[1]
    ldap = backend(ldap_address=f"ldap://127.0.0.1:{port}", ldap_timeout=1.0)

    def attempt(n: int) -> defer.Deferred[tuple[str, float]]:
        return defer.Deferred.fromCoroutine(
            unavailable(ldap.authenticate(f"user{n}", "pw", ""))
        )

    first = attempt(0)
    await sleep(0.3)
    outcomes = await defer.gatherResults([first] + [attempt(n) for n in (1, 2, 3)])
    messages = [message for message, _ in outcomes]
    # Which login holds the connection first is the machine's choice.
    assert any("timed out" in message for message in messages)
    assert "the service connection stayed busy for 1.0 s" in messages
    assert max(seconds for _, seconds in outcomes) < 2 * 1.0 + 5


@pytest_twisted.ensureDeferred
async def test_the_pool_limit_backs_up_the_socket_timeouts(
    backend: Backend, silent_server: socket.socket
) -> None:
    port = silent_server.getsockname()[1]
    ldap = backend(ldap_address=f"ldap://127.0.0.1:{port}", ldap_timeout=5.0)
    ldap._limit = 0.3  # far shorter than the socket's own timeout
    message, seconds = await unavailable(ldap.authenticate("alice", "pw", ""))
    assert message == f"ldap://127.0.0.1:{port} gave no answer in 0.3 s"
    assert 0.25 < seconds < 5


@pytest_twisted.ensureDeferred
async def test_the_reactor_runs_while_a_login_hangs(
    backend: Backend, silent_server: socket.socket
) -> None:
    port = silent_server.getsockname()[1]
    ldap = backend(ldap_address=f"ldap://127.0.0.1:{port}", ldap_timeout=3.0)
    ticks: list[float] = []
    ticker = LoopingCall(lambda: ticks.append(time.monotonic()))
    ticker.clock = reactor
    ticking = ticker.start(0.1, now=False)
    try:
        _, seconds = await unavailable(
            ldap.authenticate("alice", LDAP_ALICE.password, "")
        )
        during = ticks[:]
    finally:
        ticker.stop()
    await ticking
    assert 2.9 < seconds < 3.0 + 5
    # A blocked reactor would show one gap as long as the whole login (3 s).
    assert len(during) >= 3
    assert max(b - a for a, b in itertools.pairwise(during)) < 2.0


@pytest_twisted.ensureDeferred
async def test_a_wrong_service_password_is_unavailable_not_a_refusal(
    slapd: Slapd, backend: Backend
) -> None:
    ldap = backend(slapd, ldap_bind_password="not-" + slapd.bind_password)
    message, _ = await unavailable(ldap.authenticate("alice", LDAP_ALICE.password, ""))
    assert message == (
        f"the service bind as {slapd.bind_dn} (ldap_bind_user) failed: "
        "invalidCredentials (49)"
    )
    empty = backend(slapd, ldap_bind_password="")
    message, _ = await unavailable(empty.authenticate("alice", LDAP_ALICE.password, ""))
    assert message == "ldap_bind_password is empty"


@pytest_twisted.ensureDeferred
async def test_a_missing_search_base_is_unavailable(
    slapd: Slapd, backend: Backend
) -> None:
    ldap = backend(slapd, ldap_base_dn="ou=nowhere,dc=dcvix,dc=test")
    message, _ = await unavailable(ldap.authenticate("alice", LDAP_ALICE.password, ""))
    assert message == (
        "the search base ou=nowhere,dc=dcvix,dc=test (ldap_base_dn) does not exist"
    )


@pytest_twisted.ensureDeferred
async def test_a_broken_filter_is_unavailable(slapd: Slapd, backend: Backend) -> None:
    ldap = backend(slapd, ldap_filter="(sAMAccountName=%s")
    message, _ = await unavailable(ldap.authenticate("alice", LDAP_ALICE.password, ""))
    assert message.startswith("LDAPInvalidFilterError")


@pytest_twisted.ensureDeferred
async def test_no_single_user_attribute_is_unavailable_after_the_bind(
    slapd: Slapd, backend: Backend
) -> None:
    # carol has no sAMAccountName; dave has two uids.
    no_sam = backend(slapd, ldap_filter="(uid=%s)")
    assert await no_sam.authenticate("carol", "wrong", "") is None
    message, _ = await unavailable(
        no_sam.authenticate("carol", LDAP_CAROL.password, "")
    )
    assert message == (
        f"{LDAP_CAROL.dn} has 0 values of sAMAccountName (ldap_user_attribute), not one"
    )
    two_uids = backend(
        slapd, ldap_filter="(sAMAccountName=%s)", ldap_user_attribute="uid"
    )
    message, _ = await unavailable(
        two_uids.authenticate("dave", LDAP_DAVE.password, "")
    )
    assert (
        message == f"{LDAP_DAVE.dn} has 2 values of uid (ldap_user_attribute), not one"
    )


# ------------------------------------------------------------------ restarts


@pytest_twisted.ensureDeferred
async def test_the_service_connection_survives_a_server_restart(
    own_slapd: Slapd, backend: Backend, events: EventLoggingObserver
) -> None:
    ldap = backend(own_slapd)
    assert await ldap.authenticate("ALICE", LDAP_ALICE.password, "") == "alice"
    own_slapd.restart()
    assert await ldap.authenticate("ALICE", LDAP_ALICE.password, "") == "alice"
    reopened = [line for _, line in logged(events) if "LDAP service connection" in line]
    assert reopened == [
        f"LDAP service connection to {own_slapd.ldap_url} opened again after: "
        "LDAPSessionTerminatedByServerError: session terminated by server"
    ]
    # The fixture's readiness probe (ldapwhoami) binds as the service too.
    log = own_slapd.log_text()
    assert log.count(SERVICE_BIND) - log.count(" WHOAMI") == 2


@pytest_twisted.ensureDeferred
async def test_logins_work_again_once_a_stopped_server_is_back(
    own_slapd: Slapd, backend: Backend
) -> None:
    ldap = backend(own_slapd, ldap_starttls=True, ldap_ca_file=str(own_slapd.ca_file))
    assert await ldap.authenticate("alice", LDAP_ALICE.password, "") == "alice"
    own_slapd.stop()
    for _ in range(2):
        await unavailable(ldap.authenticate("alice", LDAP_ALICE.password, ""))
    own_slapd.start()
    assert await ldap.authenticate("alice", LDAP_ALICE.password, "") == "alice"
    assert await ldap.authenticate("alice", "wrong", "") is None


# ----------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"ldap_filter": "(sAMAccountName=alice)"}, "has no %s"),
        ({"ldap_address": "ldap://127.0.0.1:99999"}, "invalid port"),
        ({"ldap_address": "http://127.0.0.1"}, "is not an ldap, ldaps or ldapi URL"),
    ],
)
def test_unusable_settings_are_refused_at_start(
    changes: dict[str, str], problem: str, auth_pool: ThreadPoolService
) -> None:
    with pytest.raises(ValueError, match=problem):
        LdapAuthenticator(settings(None, **changes), auth_pool)


@pytest.mark.parametrize(
    ("address", "warned"),
    [
        ("ldap://ldap.example.com", True),
        ("ldap://127.0.0.1", False),
        ("ldap://localhost:3389", False),
        ("ldap://[::1]", False),
        ("ldaps://ldap.example.com", False),
        ("ldapi://%2Frun%2Fslapd%2Fldapi", False),
    ],
)
def test_cleartext_to_another_machine_is_warned_about(
    address: str,
    warned: bool,
    auth_pool: ThreadPoolService,
    events: EventLoggingObserver,
) -> None:
    LdapAuthenticator(settings(ldap_address=address), auth_pool)
    warnings = [line for level, line in logged(events) if level == LogLevel.warn]
    expected = (
        f"{address} without ldap_starttls: passwords cross the network in clear text"
    )
    assert warnings == ([expected] if warned else [])
