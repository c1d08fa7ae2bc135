"""The RADIUS back end against a small RADIUS server inside the test.

The server is a Twisted datagram protocol on loopback built on pyrad's packet
classes: it records what each Access-Request carried and answers as the test
says (or not at all). The back end's exchange runs in a real auth pool thread.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_twisted
from pyrad.packet import AccessAccept, AccessChallenge, AccessReject, AuthPacket
from services import idle_pool_after
from twisted.internet import reactor
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.interfaces import IListeningPort, IReactorUDP
from twisted.internet.protocol import DatagramProtocol
from twisted.internet.task import deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import globalLogPublisher

from dcvix.common.threads import ThreadPoolService
from dcvix.director.auth import AuthUnavailable
from dcvix.director.auth import radius as radius_module
from dcvix.director.auth.radius import RadiusAuthenticator, load_dictionary
from dcvix.director.config import RadiusSection

SECRET = "s3cret-shared"
DICTIONARY = load_dictionary()
CODES = {"accept": AccessAccept, "reject": AccessReject, "challenge": AccessChallenge}


FLOOD = 100  # junk datagrams a "flood" server sends for each request


@dataclass(frozen=True)
class Seen:
    """What one Access-Request carried, as the server decoded it."""

    raw: bytes
    user: str
    password: str
    nas_identifier: list[str]
    signed_first: bool


class Server(DatagramProtocol):
    """Answers every request with ``answer`` ("silent": no answer).

    "unsigned" is an Accept without a Message-Authenticator. With ``secret``
    other than the client's, the replies' authenticators are wrong.
    """

    def __init__(self, answer: str = "accept", secret: str = SECRET) -> None:
        self.answer = answer
        self.secret = secret.encode()
        self.seen: list[Seen] = []

    def datagramReceived(self, datagram: bytes, addr: Any) -> None:
        request = AuthPacket(packet=datagram, secret=self.secret, dict=DICTIONARY)
        self.seen.append(
            Seen(
                datagram,
                request["User-Name"][0],
                request.PwDecrypt(request["User-Password"][0]),
                request.get("NAS-Identifier", []),
                datagram[20] == 80 and request.verify_message_authenticator(),
            )
        )
        if self.answer == "silent":
            return
        assert self.transport is not None
        if self.answer == "flood":
            for _ in range(FLOOD):
                self.transport.write(b"\x02" + bytes(40), addr)
            return
        signed = self.answer != "unsigned"
        reply = request.CreateReply(message_authenticator=signed)
        reply.code = CODES.get(self.answer, AccessAccept)
        if self.answer == "challenge":
            reply["Reply-Message"] = "Enter OTP"
            reply["State"] = b"dcvix"
        assert self.transport is not None
        self.transport.write(reply.ReplyPacket(), addr)


@dataclass
class Running:
    server: Server
    port: IListeningPort

    @property
    def number(self) -> int:
        address = self.port.getHost()
        assert isinstance(address, IPv4Address | IPv6Address)
        return address.port


@pytest.fixture
def pool() -> Iterator[ThreadPoolService]:
    yield from idle_pool_after("dcvix-test-radius", 10)


@pytest.fixture
def listening() -> Iterator[list[IListeningPort]]:
    ports: list[IListeningPort] = []
    yield ports
    for port in ports:
        port.stopListening()


def serve(
    listening: list[IListeningPort], server: Server, interface: str = "127.0.0.1"
) -> Running:
    port = IReactorUDP(reactor).listenUDP(
        0, server, interface=interface, maxPacketSize=8192
    )
    listening.append(port)
    return Running(server, port)


def backend(
    pool: ThreadPoolService,
    running: Running,
    host: str = "127.0.0.1",
    timeout: float = 5.0,
    retries: int = 2,
    nas_identifier: str = "dcvix-test",
) -> RadiusAuthenticator:
    settings = RadiusSection(
        radius_server=host,
        radius_port=running.number,
        radius_secret=SECRET,
        radius_timeout=timeout,
        radius_retries=retries,
        radius_nas_identifier=nas_identifier,
    )
    return RadiusAuthenticator(settings, pool)


@pytest.fixture
def events() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


def logged(events: EventLoggingObserver, text: str) -> bool:
    return any(text in event.get("log_format", "") for event in events)


async def eventually(condition: Any, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await deferLater(reactor, 0.02, lambda: None)


# ------------------------------------------------------------------- answers


@pytest_twisted.ensureDeferred
async def test_accept_is_the_user_as_typed(
    pool: ThreadPoolService, listening: list[IListeningPort]
) -> None:
    running = serve(listening, Server("accept"))
    radius = backend(pool, running)
    assert radius.name == "radius"
    assert await radius.authenticate("Alice", "pw", "") == "Alice"
    [seen] = running.server.seen
    assert (seen.user, seen.password) == ("Alice", "pw")


@pytest_twisted.ensureDeferred
async def test_request_carries_nas_identifier_and_a_message_authenticator_first(
    pool: ThreadPoolService, listening: list[IListeningPort]
) -> None:
    running = serve(listening, Server("reject"))
    await backend(pool, running, nas_identifier="broker-1").authenticate(
        "alice", "pw", ""
    )
    [seen] = running.server.seen
    assert seen.nas_identifier == ["broker-1"]
    assert seen.signed_first


@pytest_twisted.ensureDeferred
async def test_otp_is_appended_to_the_password(
    pool: ThreadPoolService, listening: list[IListeningPort]
) -> None:
    running = serve(listening, Server("accept"))
    radius = backend(pool, running)
    assert await radius.authenticate("alice", "pw-ü", "123456") == "alice"
    assert await radius.authenticate("alice", "pw-ü", "") == "alice"
    assert [seen.password for seen in running.server.seen] == ["pw-ü123456", "pw-ü"]


@pytest_twisted.ensureDeferred
async def test_each_login_gets_a_new_request(
    pool: ThreadPoolService, listening: list[IListeningPort]
) -> None:
    running = serve(listening, Server("accept"))
    radius = backend(pool, running)
    for _ in range(2):
        assert await radius.authenticate("alice", "pw", "") == "alice"
    first, second = (seen.raw for seen in running.server.seen)
    assert first[1:2] + first[4:20] != second[1:2] + second[4:20]


@pytest_twisted.ensureDeferred
async def test_reject_is_none(
    pool: ThreadPoolService, listening: list[IListeningPort]
) -> None:
    running = serve(listening, Server("reject"))
    assert await backend(pool, running).authenticate("alice", "pw", "") is None


@pytest_twisted.ensureDeferred
async def test_challenge_is_a_refusal_and_says_why(
    pool: ThreadPoolService,
    listening: list[IListeningPort],
    events: EventLoggingObserver,
) -> None:
    running = serve(listening, Server("challenge"))
    assert await backend(pool, running).authenticate("carol", "pw", "") is None
    assert logged(events, "challenge-response is not supported")
    assert len(running.server.seen) == 1


# ------------------------------------------------------- replies not trusted


@pytest_twisted.ensureDeferred
async def test_accept_without_message_authenticator_is_unavailable(
    pool: ThreadPoolService, listening: list[IListeningPort]
) -> None:
    running = serve(listening, Server("unsigned"))
    radius = backend(pool, running, timeout=0.2, retries=1)
    with pytest.raises(AuthUnavailable) as raised:
        await radius.authenticate("alice", "pw", "")
    message = str(raised.value)
    assert "2 x a reply without a Message-Authenticator" in message
    assert "BlastRADIUS" in message


@pytest_twisted.ensureDeferred
async def test_a_flood_of_junk_ends_the_login_without_waiting(
    pool: ThreadPoolService,
    listening: list[IListeningPort],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Forged datagrams are counted, not kept: past a cap the login gives up.

    The cap is lowered so that the flood fits in the socket's buffer.
    """
    monkeypatch.setattr(radius_module, "MAX_DROPPED", FLOOD // 2)
    running = serve(listening, Server("flood"))
    radius = backend(pool, running, timeout=60.0, retries=0)
    with pytest.raises(AuthUnavailable) as raised:
        await radius.authenticate("alice", "pw", "")
    assert f"{FLOOD // 2} invalid datagrams, giving up" in str(raised.value)


@pytest_twisted.ensureDeferred
async def test_reply_signed_with_another_secret_is_unavailable(
    pool: ThreadPoolService, listening: list[IListeningPort]
) -> None:
    running = serve(listening, Server("accept", secret="not-" + SECRET))
    radius = backend(pool, running, timeout=0.2, retries=0)
    with pytest.raises(AuthUnavailable) as raised:
        await radius.authenticate("alice", "pw", "")
    assert "wrong Response Authenticator" in str(raised.value)
    assert "radius_secret" in str(raised.value)


@pytest_twisted.ensureDeferred
async def test_silent_server_is_unavailable_after_every_retry(
    pool: ThreadPoolService, listening: list[IListeningPort]
) -> None:
    running = serve(listening, Server("silent"))
    radius = backend(pool, running, timeout=0.2, retries=2)
    with pytest.raises(AuthUnavailable) as raised:
        await radius.authenticate("alice", "pw", "")
    assert "no valid answer" in str(raised.value)
    assert "to 3 request(s)" in str(raised.value)
    await eventually(lambda: len(running.server.seen) == 3)
    # Retransmissions are the same packet: the same id and authenticator.
    assert len({seen.raw for seen in running.server.seen}) == 1


@pytest_twisted.ensureDeferred
async def test_closed_port_is_unavailable(pool: ThreadPoolService) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    settings = RadiusSection(
        radius_server="127.0.0.1", radius_port=closed, radius_timeout=5.0
    )
    with pytest.raises(AuthUnavailable) as raised:
        await RadiusAuthenticator(settings, pool).authenticate("alice", "pw", "")
    assert f"127.0.0.1:{closed}" in str(raised.value)


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest_twisted.ensureDeferred
async def test_ipv6_server(
    pool: ThreadPoolService, listening: list[IListeningPort]
) -> None:
    if not ipv6_loopback():
        pytest.skip("this machine has no IPv6 loopback (::1)")
    running = serve(listening, Server("accept"), interface="::1")
    assert (
        await backend(pool, running, host="::1").authenticate("alice", "pw", "")
        == "alice"
    )


# ------------------------------------------------------ refused before asking


@pytest.mark.parametrize(
    ("user", "password", "otp"),
    [
        ("alice", "", ""),
        ("", "pw", ""),
        ("alice\n", "pw", ""),
        ("alice", "p\x00w", ""),
        ("alice", "pw", "12\r34"),
        ("alice", "\ud800", ""),
    ],
)
@pytest_twisted.ensureDeferred
async def test_refused_without_asking(
    pool: ThreadPoolService,
    listening: list[IListeningPort],
    user: str,
    password: str,
    otp: str,
) -> None:
    running = serve(listening, Server("accept"))
    assert await backend(pool, running).authenticate(user, password, otp) is None
    assert running.server.seen == []


@pytest_twisted.ensureDeferred
async def test_password_longer_than_128_bytes_is_refused(
    pool: ThreadPoolService,
    listening: list[IListeningPort],
    events: EventLoggingObserver,
) -> None:
    running = serve(listening, Server("accept"))
    radius = backend(pool, running)
    assert await radius.authenticate("alice", "p" * 128, "") == "alice"
    assert await radius.authenticate("alice", "p" * 122, "123456") == "alice"
    assert await radius.authenticate("alice", "p" * 123, "123456") is None
    assert await radius.authenticate("alice", "ü" * 65, "") is None
    assert len(running.server.seen) == 2
    assert logged(events, "exceed the {limit} bytes")


@pytest.mark.parametrize(
    ("keys", "problem"),
    [
        ({"radius_secret": ""}, "radius_secret is empty"),
        ({"radius_nas_identifier": ""}, "radius_nas_identifier"),
    ],
)
def test_unusable_settings(
    pool: ThreadPoolService, keys: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ValueError, match=problem):
        RadiusAuthenticator(RadiusSection(**keys), pool)
