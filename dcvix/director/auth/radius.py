"""RADIUS logins: one PAP Access-Request, with the BlastRADIUS defences.

The request carries User-Name, User-Password (the password, then the OTP when
there is one, as the Go director sent it) and NAS-Identifier, and a
Message-Authenticator first. A reply counts only with a valid Response
Authenticator *and* a valid Message-Authenticator: without the latter an
attacker on the path could forge an Accept from an MD5 collision
(CVE-2024-3596). Any other datagram is dropped, as RFC 2865 asks, and the
wait goes on; when time is up the error names what was dropped, so a server
that does not sign its replies, or a wrong secret, shows in the log.

Each login sends from a UDP socket of its own, connected to the server, so
concurrent logins never see each other's replies and datagrams from other
addresses never arrive. It runs in an auth pool thread; the request is sent
``radius_retries`` more times (byte for byte, as RFC 5080 asks, so a late
reply to any copy counts), ``radius_timeout`` seconds apart, and the whole
exchange ends after ``radius_timeout * (radius_retries + 1)``.

Access-Challenge is a refusal: dcvix has no way to put the server's question
to the user.
"""

from __future__ import annotations

import socket
import struct
import time
from collections import Counter
from importlib.resources import as_file, files

from pyrad.dictionary import Dictionary
from pyrad.packet import (
    AccessAccept,
    AccessChallenge,
    AccessReject,
    AccessRequest,
    AuthPacket,
    PacketError,
)
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.logger import Logger

from dcvix.common.threads import ThreadPoolService
from dcvix.director.auth import AuthUnavailable, refused_before_asking
from dcvix.director.config import RadiusSection

log = Logger()

DICTIONARY = "radius.dictionary"
# RFC 2865 §5.2: User-Password hides at most 128 octets; §5: 253 per attribute.
MAX_PASSWORD = 128
MAX_TEXT = 253
# RFC 2865 §3: the largest RADIUS packet.
MAX_PACKET = 4096
# Invalid datagrams read in one login before it gives up (a flood).
MAX_DROPPED = 1000
# The pool's own timeout only backs up the exchange's deadline, for a name
# lookup that hangs beyond it.
GRACE = 0.5
ANSWERS = frozenset({AccessAccept, AccessReject, AccessChallenge})


def load_dictionary() -> Dictionary:
    """The attributes dcvix uses, from the file shipped in this package."""
    with as_file(files(__package__).joinpath(DICTIONARY)) as path:
        return Dictionary(str(path))


def where(host: str, port: int) -> str:
    """``host:port``, with an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Dropped(Exception):
    """A datagram that is not a valid reply; the message says why."""


def reply_code(request: AuthPacket, raw: bytes) -> int:
    """The code of ``raw`` if it is a valid reply to ``request``.

    Raises:
        Dropped: it is not.
    """
    try:
        reply = request.CreateReply(packet=raw)
    except (PacketError, ValueError, LookupError, struct.error):
        raise Dropped("an undecodable datagram") from None
    if reply.id != request.id:
        raise Dropped("a reply to another request")
    if not request.VerifyReply(reply, raw):
        raise Dropped(
            "a reply with a wrong Response Authenticator or Message-Authenticator "
            "(is radius_secret the server's?)"
        )
    if not reply.message_authenticator:
        raise Dropped(
            "a reply without a Message-Authenticator (refused against "
            "BlastRADIUS, CVE-2024-3596: make the server sign every reply)"
        )
    if reply.code not in ANSWERS:
        raise Dropped(f"a reply with code {reply.code}")
    return int(reply.code)


def exchange(
    host: str,
    port: int,
    request: AuthPacket,
    timeout: float,
    attempts: int,
    deadline: float,
) -> int:
    """Send ``request`` until a valid reply comes; its code (blocking).

    At most ``attempts`` sends, ``timeout`` seconds apart, and nothing after
    ``deadline`` (on the ``time.monotonic`` clock).

    Raises:
        AuthUnavailable: no valid reply in time, or the network failed.
    """
    server = where(host, port)
    started = time.monotonic()
    data = request.RequestPacket()
    dropped: Counter[str] = Counter()
    sent = 0
    try:
        family, kind, protocol, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_DGRAM
        )[0]
        with socket.socket(family, kind, protocol) as sock:
            sock.connect(address)
            while sent < attempts and (now := time.monotonic()) < deadline:
                sock.send(data)
                sent += 1
                wait_until = min(now + timeout, deadline)
                while (left := wait_until - time.monotonic()) > 0:
                    sock.settimeout(left)
                    try:
                        raw = sock.recv(MAX_PACKET)
                    except TimeoutError:
                        break
                    try:
                        return reply_code(request, raw)
                    except Dropped as problem:
                        dropped[str(problem)] += 1
                        if dropped.total() >= MAX_DROPPED:
                            # A flood, not a server: stop reading it.
                            raise AuthUnavailable(
                                f"RADIUS server {server}: {MAX_DROPPED} invalid "
                                "datagrams, giving up"
                            ) from None
    except OSError as error:
        raise AuthUnavailable(f"RADIUS server {server}: {error}") from None
    spent = time.monotonic() - started
    text = (
        f"no valid answer from RADIUS server {server} to {sent} request(s) "
        f"in {spent:.1f} s"
    )
    if dropped:
        text += "; dropped " + ", ".join(f"{n} x {p}" for p, n in dropped.items())
    raise AuthUnavailable(text)


class RadiusAuthenticator:
    """``auth_type = radius``: PAP against one RADIUS server.

    Raises:
        ValueError: settings that no RADIUS server could accept.
    """

    name = "radius"

    def __init__(self, settings: RadiusSection, pool: ThreadPoolService) -> None:
        if not settings.radius_secret:
            raise ValueError("radius_secret is empty")
        nas = settings.radius_nas_identifier.encode()
        if not 0 < len(nas) <= MAX_TEXT:
            raise ValueError(f"radius_nas_identifier must be 1 to {MAX_TEXT} bytes")
        self._settings = settings
        self._secret = settings.radius_secret.encode()
        self._pool = pool
        self._dictionary = load_dictionary()
        self._attempts = settings.radius_retries + 1
        self._bound = settings.radius_timeout * self._attempts

    def _request(self, user: str, password: str) -> AuthPacket:
        """A new request: a new identifier and Request Authenticator."""
        request = AuthPacket(
            code=AccessRequest,
            secret=self._secret,
            dict=self._dictionary,
            message_authenticator=True,
        )
        request["User-Name"] = user
        request["NAS-Identifier"] = self._settings.radius_nas_identifier
        request["User-Password"] = request.PwCrypt(password)
        return request

    async def authenticate(self, user: str, password: str, otp: str) -> str | None:
        """Ask the server; ``user`` as typed on Access-Accept."""
        if not user or refused_before_asking(user, password, otp):
            return None
        user_password = password + otp
        if len(user_password.encode()) > MAX_PASSWORD:
            log.warn(
                "refused {user} without asking RADIUS: the password and OTP "
                "exceed the {limit} bytes User-Password can carry",
                user=user,
                limit=MAX_PASSWORD,
            )
            return None
        if len(user.encode()) > MAX_TEXT:
            log.warn(
                "refused a RADIUS login: the user id exceeds {limit} bytes",
                limit=MAX_TEXT,
            )
            return None
        settings = self._settings
        request = self._request(user, user_password)
        try:
            code = await self._pool.run(
                self._bound + GRACE,
                exchange,
                settings.radius_server,
                settings.radius_port,
                request,
                settings.radius_timeout,
                self._attempts,
                time.monotonic() + self._bound,
            )
        except DeferredTimeout:
            raise AuthUnavailable(
                f"RADIUS server {where(settings.radius_server, settings.radius_port)}"
                f" gave no answer in {self._bound:g} s"
            ) from None
        if code == AccessChallenge:
            log.warn(
                "RADIUS server challenged {user} (Access-Challenge): "
                "challenge-response is not supported, so the login is refused",
                user=user,
            )
        elif code == AccessReject:
            log.debug("RADIUS server rejected {user}", user=user)
        return user if code == AccessAccept else None
