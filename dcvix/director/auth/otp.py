"""A second factor for LDAP logins: a one-time password, checked after the password.

``[ldap_auth] otp_type`` picks the checker: ``privacyidea`` asks a privacyIDEA
server (``POST /validate/check``), ``external`` runs ``otp_external_command``
with the external login command's rules. Go dcvix checked the OTP first; here
the password comes first, so someone without the password cannot reach the OTP
service, where failed attempts count against the user's token (and may lock
it). An empty OTP is refused without asking it.

Both checkers get the canonical user id the first factor answered, not what was
typed. privacyIDEA (or the command) usually resolves users from the same
directory, by the same attribute; the canonical id names the entry whose
password was just proved, so the OTP is checked for that person and no other.
What was typed may have matched another attribute (``uid`` where privacyIDEA
looks at ``sAMAccountName``), naming someone else or no one there. With Go's
default filter the two differ only in case, which directory resolvers ignore.
"""

from __future__ import annotations

import ipaddress
import json
from typing import Any
from urllib.parse import urlsplit

import treq
from OpenSSL import SSL
from twisted.internet.defer import ensureDeferred
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.ssl import (
    CertificateOptions,
    TLSVersion,
    optionsForClientTLS,
    platformTrust,
)
from twisted.logger import Logger
from twisted.protocols.tls import TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool
from twisted.web.http_headers import Headers
from twisted.web.iweb import IPolicyForHTTPS
from zope.interface import implementer

from dcvix.common.webclient import AnswerTooLarge, read_capped
from dcvix.director.auth import (
    Authenticator,
    AuthUnavailable,
    refused_before_asking,
)
from dcvix.director.auth.external import ExternalAuthenticator
from dcvix.director.config import LdapSection

log = Logger()

MESSAGE_CAP = 200
PRIVACYIDEA_TIMEOUT = 10.0
PRIVACYIDEA_ANSWER_CAP = 64 * 1024


class SecondFactor:
    """The password with ``first``, then, only if it was right, the OTP with ``second``.

    ``second`` answers for the canonical id ``first`` gave; the login's answer
    is that id. An empty OTP refuses the login without asking ``second``.
    """

    def __init__(self, first: Authenticator, second: Authenticator) -> None:
        self.first = first
        self.second = second
        self.name = f"{first.name}+{second.name}"

    async def authenticate(self, user: str, password: str, otp: str) -> str | None:
        """The first factor's canonical id if the password and the OTP are right."""
        if refused_before_asking(user, password, otp):
            return None
        canonical = await self.first.authenticate(user, password, "")
        if canonical is None:
            return None
        if not otp:
            log.info("{user}: right password, but no OTP given", user=canonical)
            return None
        if await self.second.authenticate(canonical, password, otp) is None:
            log.info("{user}: right password, wrong OTP", user=canonical)
            return None
        return canonical


def with_second_factor(
    first: Authenticator, settings: LdapSection, reactor: Any
) -> Authenticator:
    """``first`` behind the OTP check ``settings.otp_type`` asks for, if any."""
    if settings.otp_type == "privacyidea":
        return SecondFactor(
            first,
            PrivacyIdea(
                reactor, settings.privacyidea_url, settings.privacyidea_tls_strict
            ),
        )
    if settings.otp_type == "external":
        return SecondFactor(
            first,
            ExternalAuthenticator(
                reactor, settings.otp_external_command, settings.otp_external_args
            ),
        )
    return first


def check_url(base: str) -> str:
    """``<base>/validate/check``: one slash between, whatever ``base`` ends in."""
    return base.rstrip("/") + "/validate/check"


def _loggable(text: str) -> str:
    """Text from the OTP server, cut short and with control characters escaped.

    Over plain HTTP (or without TLS checks) anyone on the path writes it, and
    it goes to the log.
    """
    cut = text[:MESSAGE_CAP]
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in cut)


def verdict(status: int, body: bytes) -> tuple[bool, str]:
    """Whether privacyIDEA accepted, and its message (for the log).

    Only ``result.status`` and ``result.value`` both JSON ``true`` accept;
    ``status`` true and ``value`` false refuses (a wrong OTP, a challenge).

    Raises:
        AuthUnavailable: an HTTP error, a body that is not privacyIDEA's JSON,
            ``result.status`` not true (privacyIDEA's own error report).
    """
    try:
        answer = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        answer = None
    result = answer.get("result") if isinstance(answer, dict) else None
    if not isinstance(result, dict):
        raise AuthUnavailable(f"HTTP {status}, not a privacyIDEA answer")
    if result.get("status") is not True:
        error = result.get("error")
        message = error.get("message") if isinstance(error, dict) else None
        shown = message if isinstance(message, str) else repr(error)
        raise AuthUnavailable(f"HTTP {status}, error: {_loggable(shown)}")
    if not 200 <= status < 300:
        raise AuthUnavailable(f"HTTP {status}")
    value = result.get("value")
    if not isinstance(value, bool):
        raise AuthUnavailable(f"result.value is {value!r}, not true or false")
    detail = answer.get("detail")
    detail = detail if isinstance(detail, dict) else {}
    message = _loggable(str(detail.get("message") or ""))
    if not value and (detail.get("transaction_id") or detail.get("multi_challenge")):
        message = f"a challenge (not supported by dcvix): {message}"
    return value, message


@implementer(IOpenSSLClientConnectionCreator)
class _UnverifiedTLS:
    """No certificate check at all, but the host name still sent (SNI)."""

    def __init__(self, host: str) -> None:
        self._options = CertificateOptions(raiseMinimumTo=TLSVersion.TLSv1_2)
        self._server_name = None if _is_ip(host) else host.encode("idna")

    def clientConnectionForTLS(
        self, tlsProtocol: TLSMemoryBIOProtocol
    ) -> SSL.Connection:
        connection = self._options.clientConnectionForTLS(tlsProtocol)
        if self._server_name is not None:
            connection.set_tlsext_host_name(self._server_name)
        return connection


@implementer(IPolicyForHTTPS)
class _PrivacyIdeaTLS:
    """The URL's host name or IP checked against the system's CAs, or nothing.

    The system's CAs are OpenSSL's default paths, so ``SSL_CERT_FILE`` in the
    director's environment names a private CA without a config key.
    """

    def __init__(self, strict: bool) -> None:
        self._strict = strict

    def creatorForNetloc(
        self, hostname: bytes, port: int
    ) -> IOpenSSLClientConnectionCreator:
        host = hostname.decode("ascii")
        if not self._strict:
            return _UnverifiedTLS(host)
        return optionsForClientTLS(
            host,
            trustRoot=platformTrust(),
            extraCertificateOptions={"raiseMinimumTo": TLSVersion.TLSv1_2},
        )


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _why(error: BaseException) -> str:
    """What went wrong, also inside twisted.web's wrappers (``reasons``)."""
    reasons = getattr(error, "reasons", None)
    if isinstance(reasons, list) and reasons:
        parts = [r.getErrorMessage() for r in reasons if isinstance(r, Failure)]
        return f"{type(error).__name__}: {'; '.join(parts)}"
    return f"{type(error).__name__}: {error}"


class PrivacyIdea:
    """``otp_type = privacyidea``: ``POST <url>/validate/check``, as Go dcvix sends it.

    The JSON body is ``{"user": <id>, "pass": <password + OTP>}``: the password
    is the privacyIDEA PIN prefix, so ``otppin=userstore`` setups keep working.
    The request runs on the reactor within ``timeout`` seconds (cancelled
    after), and reads at most 64 KiB of answer.

    Args:
        reactor: for the connection and the time limit.
        url: ``privacyidea_url``.
        tls_strict: verify the certificate (chain to the system's CAs, and
            the URL's host); False: no check at all (warned about here, once).
        timeout: the whole request's time limit.
    """

    name = "privacyidea"

    def __init__(
        self,
        reactor: Any,
        url: str,
        tls_strict: bool = True,
        timeout: float = PRIVACYIDEA_TIMEOUT,
    ) -> None:
        self._reactor = reactor
        self._url = check_url(url)
        self._timeout = timeout
        parts = urlsplit(self._url)
        host = parts.hostname or ""
        if parts.scheme == "https" and not tls_strict:
            log.warn(
                "privacyidea_tls_strict = false: the certificate of {url} is not "
                "verified, so anyone on the path can read passwords and OTPs",
                url=url,
            )
        if parts.scheme == "http" and not _loopback(host):
            log.warn(
                "{url} is plain http: passwords and OTPs cross the network in "
                "clear text",
                url=url,
            )
        pool = HTTPConnectionPool(reactor, persistent=False)
        policy = _PrivacyIdeaTLS(tls_strict)
        self._http = treq.client.HTTPClient(
            Agent(reactor, contextFactory=policy, pool=pool)
        )

    async def authenticate(self, user: str, password: str, otp: str) -> str | None:
        """``user`` if privacyIDEA accepts ``password + otp`` for them, else None."""
        if refused_before_asking(user, password, otp) or not otp:
            return None
        body = json.dumps({"user": user, "pass": password + otp}).encode()
        call = ensureDeferred(self._post(body))
        timer = self._reactor.callLater(self._timeout, call.cancel)
        try:
            status, answer = await call
        except AnswerTooLarge:
            raise AuthUnavailable(
                f"{self._url}: answer over {PRIVACYIDEA_ANSWER_CAP} bytes"
            ) from None
        except Exception as error:
            if not timer.active():
                raise AuthUnavailable(
                    f"{self._url}: no answer within {self._timeout:g} s"
                ) from None
            raise AuthUnavailable(f"{self._url}: {_why(error)}") from None
        finally:
            if timer.active():
                timer.cancel()
        try:
            accepted, message = verdict(status, answer)
        except AuthUnavailable as error:
            raise AuthUnavailable(f"{self._url}: {error}") from None
        if not accepted:
            log.info(
                "privacyIDEA refused the OTP of {user}: {message}",
                user=user,
                message=message,
            )
            return None
        return user

    async def _post(self, body: bytes) -> tuple[int, bytes]:
        headers = Headers(
            {
                b"Content-Type": [b"application/json"],
                b"Accept": [b"application/json"],
            }
        )
        response = await self._http.post(self._url, data=body, headers=headers)
        answer = await read_capped(response, PRIVACYIDEA_ANSWER_CAP)
        return int(response.code), answer
