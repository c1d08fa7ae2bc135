"""LDAP logins: find the user's entry as a service account, then bind as it.

The search runs on one long-lived service connection, shared by the auth
pool's threads under a lock and opened again when the server has dropped it
(a restart, an idle timeout). The user's own bind runs on a connection of its
own, closed right after. The answer is the entry's ``ldap_user_attribute``,
not what was typed: AD matches ``ALICE`` to ``alice``, and tokens and the
policy must see one spelling.

Refused without asking the server: an empty password (for LDAP that is an
anonymous bind, which "succeeds"), CR, LF, NUL or text without a UTF-8 form,
and a user id that dcvix would not accept anyway. Every ``%s`` of the filter
becomes the user id escaped as RFC 4515 asks, so ``*`` or ``)(`` are plain text.

TLS (``ldaps://`` or StartTLS) is verified by the standard library inside the
handshake: the chain against ``ldap_ca_file`` or the system's CAs, and the
URL's host name or IP address against the certificate.
"""

from __future__ import annotations

import ipaddress
import math
import ssl
import threading
from contextlib import suppress
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from ldap3 import (
    AUTO_BIND_NONE,
    DEREF_NEVER,
    NONE,
    SIMPLE,
    SUBTREE,
    SYNC,
    Connection,
    Server,
    Tls,
)
from ldap3.core.exceptions import (
    LDAPCommunicationError,
    LDAPException,
    LDAPPasswordIsMandatoryError,
)
from ldap3.utils.conv import escape_filter_chars
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.logger import Logger

from dcvix.common.threads import ThreadPoolService
from dcvix.director.auth import AuthUnavailable, refused_before_asking
from dcvix.director.config import LdapSection
from dcvix.director.policy import valid_id

log = Logger()

# Where OpenLDAP's own clients look for ``ldapi://`` without a path (Debian).
DEFAULT_LDAPI_SOCKET = "/var/run/slapd/ldapi"
INVALID_CREDENTIALS = 49
SIZE_LIMIT_EXCEEDED = 4
NO_SUCH_OBJECT = 32


@dataclass(frozen=True)
class LdapAddress:
    """Where the server is: ``host`` is a socket path for ``ldapi``."""

    scheme: str
    host: str
    port: int | None = None

    @property
    def loopback(self) -> bool:
        """A local socket, ``localhost`` or a loopback address."""
        if self.scheme == "ldapi" or self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def parse_address(text: str) -> LdapAddress:
    """``ldap://host[:port]``, ``ldaps://host[:port]`` or ``ldapi://SOCKET``.

    The ``ldapi`` socket path is percent-encoded where the host would be
    (``ldapi://%2Frun%2Fslapd%2Fldapi``); ``ldapi:///run/slapd/ldapi`` is
    understood too. A DN or other parts after the host are ignored.

    Raises:
        ValueError: another scheme, no host, a bad port, an unusable path.
    """
    parts = urlsplit(text.strip())
    scheme = parts.scheme.lower()
    if scheme == "ldapi":
        if parts.netloc:
            if parts.path not in ("", "/"):
                raise ValueError(f"{text!r}: percent-encode the socket path")
            path = unquote(parts.netloc)
        else:
            path = unquote(parts.path) if parts.path != "/" else ""
        path = path or DEFAULT_LDAPI_SOCKET
        if not path.startswith("/") or "\x00" in path:
            raise ValueError(f"{text!r}: the socket path must be absolute")
        return LdapAddress("ldapi", path)
    if scheme not in ("ldap", "ldaps"):
        raise ValueError(f"{text!r} is not an ldap, ldaps or ldapi URL")
    if not parts.hostname:
        raise ValueError(f"{text!r} names no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{text!r} has an invalid port") from None
    return LdapAddress(
        scheme, parts.hostname, port or (636 if scheme == "ldaps" else 389)
    )


def user_filter(template: str, user: str) -> str:
    """``template`` with every ``%s`` replaced by ``user``, escaped (RFC 4515)."""
    return template.replace("%s", escape_filter_chars(user))


def _tls_context(ca_file: str) -> ssl.SSLContext:
    """Chain and name checked in the handshake (TLS 1.2 at least)."""
    try:
        return ssl.create_default_context(cafile=ca_file or None)
    except (OSError, ssl.SSLError) as error:
        raise AuthUnavailable(f"ldap_ca_file {ca_file}: {error}") from None


class _CheckedTls(Tls):
    """ldap3's TLS, wrapped by the standard library with the host name set.

    ldap3 itself checks the name after the handshake, and a refused
    certificate then leaves its socket open; here a failed check fails the
    handshake, which closes the socket.
    """

    def __init__(self, context: ssl.SSLContext, server_name: str) -> None:
        super().__init__(validate=ssl.CERT_REQUIRED)
        self._context = context
        self._server_name = server_name

    def wrap_socket(self, connection: Any, do_handshake: bool = False) -> None:
        """Replace the connection's socket with a TLS one (ldap3 calls this)."""
        connection.socket = self._context.wrap_socket(
            connection.socket,
            server_side=False,
            do_handshake_on_connect=do_handshake,
            server_hostname=self._server_name,
        )


def _close(connection: Any) -> None:
    """Unbind if possible, and close the socket whatever state it is in."""
    with suppress(LDAPException, OSError):
        connection.unbind()
    sock = connection.socket
    if sock is not None:
        with suppress(OSError):
            sock.close()


def _describe(result: dict[str, Any]) -> str:
    text = f"{result.get('description')} ({result.get('result')})"
    message = result.get("message")
    return f"{text}: {message}" if message else text


def _error_text(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


@dataclass(frozen=True)
class _Verdict:
    """What a check found, logged on the reactor thread."""

    user: str | None
    dn: str = ""
    reason: str = ""
    problem: bool = False
    reconnected: str = ""


class _Directory:
    """The blocking part, run in the auth pool's threads."""

    def __init__(self, settings: LdapSection, address: LdapAddress) -> None:
        self._settings = settings
        self._address = address
        self._timeout = settings.ldap_timeout
        # ldap3 hands the receive timeout to setsockopt as a whole number.
        self._receive_timeout = max(1, math.ceil(settings.ldap_timeout))
        self._starttls = address.scheme == "ldap" and settings.ldap_starttls
        self._lock = threading.Lock()
        self._service: Any = None

    # ------------------------------------------------------------ connections

    def _server(self) -> Any:
        # A new Server each time: ldap3 marks an address it failed to reach
        # as unavailable for a while, which would outlast a server restart.
        address = self._address
        if address.scheme == "ldapi":
            return Server(
                "ldapi://" + quote(address.host, safe=""),
                get_info=NONE,
                connect_timeout=self._timeout,
            )
        tls = None
        if address.scheme == "ldaps" or self._starttls:
            tls = _CheckedTls(_tls_context(self._settings.ldap_ca_file), address.host)
        return Server(
            address.host,
            port=address.port,
            use_ssl=address.scheme == "ldaps",
            tls=tls,
            get_info=NONE,
            connect_timeout=self._timeout,
        )

    def _connect(self, dn: str, password: str) -> Any:
        """A connection with a bind attempted as ``dn``: check ``.bound``."""
        connection = Connection(
            self._server(),
            user=dn,
            password=password,
            authentication=SIMPLE,
            client_strategy=SYNC,
            auto_bind=AUTO_BIND_NONE,
            read_only=True,
            receive_timeout=self._receive_timeout,
            auto_referrals=False,
            raise_exceptions=False,
        )
        try:
            connection.open(read_server_info=False)
            if self._starttls and not connection.start_tls(read_server_info=False):
                raise AuthUnavailable(f"StartTLS refused: {connection.last_error}")
            connection.bind(read_server_info=False)
        except BaseException:
            _close(connection)
            raise
        return connection

    def _open_service(self) -> Any:
        bind_user = self._settings.ldap_bind_user
        try:
            connection = self._connect(bind_user, self._settings.ldap_bind_password)
        except LDAPPasswordIsMandatoryError:
            raise AuthUnavailable("ldap_bind_password is empty") from None
        if not connection.bound:
            result = dict(connection.result or {})
            _close(connection)
            raise AuthUnavailable(
                f"the service bind as {bind_user} (ldap_bind_user) failed: "
                f"{_describe(result)}"
            )
        return connection

    def _drop_service(self) -> None:
        if self._service is not None:
            _close(self._service)
            self._service = None

    def close(self) -> None:
        """Unbind the service connection (it is opened again when needed)."""
        if self._lock.acquire(timeout=self._timeout):
            try:
                self._drop_service()
            finally:
                self._lock.release()

    # ----------------------------------------------------------------- search

    def _search(self, search_filter: str) -> tuple[list[dict[str, Any]], str]:
        """The entries found and, if it had to, why it reconnected."""
        if not self._lock.acquire(timeout=self._timeout):
            raise AuthUnavailable(
                f"the service connection stayed busy for {self._timeout} s"
            )
        try:
            reused = self._service is not None
            if not reused:
                self._service = self._open_service()
            try:
                return self._search_on_service(search_filter), ""
            except LDAPCommunicationError as error:
                self._drop_service()
                # A timeout is a server that does not answer: asking it again
                # would only double the wait.
                if not reused or isinstance(error, TimeoutError):
                    raise
                why = _error_text(error)
            except AuthUnavailable:
                raise  # the server answered: the connection is fine
            except BaseException:
                self._drop_service()
                raise
            self._service = self._open_service()
            try:
                return self._search_on_service(search_filter), why
            except AuthUnavailable:
                raise
            except BaseException:
                self._drop_service()
                raise
        finally:
            self._lock.release()

    def _search_on_service(self, search_filter: str) -> list[dict[str, Any]]:
        settings = self._settings
        connection = self._service
        connection.search(
            settings.ldap_base_dn,
            search_filter,
            search_scope=SUBTREE,
            dereference_aliases=DEREF_NEVER,
            attributes=[settings.ldap_user_attribute],
            size_limit=2,
            time_limit=self._receive_timeout,
        )
        result = dict(connection.result or {})
        code = result.get("result")
        if code == NO_SUCH_OBJECT:
            raise AuthUnavailable(
                f"the search base {settings.ldap_base_dn} (ldap_base_dn) does not exist"
            )
        if code not in (0, SIZE_LIMIT_EXCEEDED):
            raise AuthUnavailable(
                f"the search for {search_filter} failed: {_describe(result)}"
            )
        entries = [
            entry
            for entry in connection.response or []
            if entry.get("type") == "searchResEntry"
        ]
        if code == SIZE_LIMIT_EXCEEDED and len(entries) < 2:
            # A server-side size limit cut the answer short: more than one
            # entry matched, whatever came back (the caller refuses then).
            return [{}, {}]
        return entries

    # ------------------------------------------------------------------ login

    def check(self, user: str, password: str) -> _Verdict:
        """Search, then bind as the one entry found."""
        try:
            return self._check(user, password)
        except AuthUnavailable:
            raise
        except (LDAPException, OSError) as error:
            raise AuthUnavailable(_error_text(error)) from None
        except Exception as error:
            # ldap3's decoder raises IndexError, KeyError… on a malformed
            # answer: a server we cannot understand is one that cannot decide.
            raise AuthUnavailable(
                f"unreadable answer from the server: {type(error).__name__}"
            ) from None

    def _check(self, user: str, password: str) -> _Verdict:
        search_filter = user_filter(self._settings.ldap_filter, user)
        entries, reconnected = self._search(search_filter)
        if not entries:
            return _Verdict(
                None,
                reason=f"no entry matches {search_filter}",
                reconnected=reconnected,
            )
        if len(entries) > 1:
            return _Verdict(
                None,
                reason=f"more than one entry matches {search_filter}",
                problem=True,
                reconnected=reconnected,
            )
        entry = entries[0]
        dn = str(entry.get("dn") or "")
        if not dn:
            raise AuthUnavailable(f"the entry matching {search_filter} has no DN")
        connection = self._connect(dn, password)
        try:
            if not connection.bound:
                result = dict(connection.result or {})
                if result.get("result") == INVALID_CREDENTIALS:
                    return _Verdict(
                        None,
                        dn,
                        reason=f"bind refused: {_describe(result)}",
                        reconnected=reconnected,
                    )
                raise AuthUnavailable(f"the bind as {dn} failed: {_describe(result)}")
        finally:
            _close(connection)
        return _Verdict(self._user_id(entry, dn), dn, reconnected=reconnected)

    def _user_id(self, entry: dict[str, Any], dn: str) -> str:
        attribute = self._settings.ldap_user_attribute
        values = (entry.get("raw_attributes") or {}).get(attribute) or []
        if len(values) != 1:
            raise AuthUnavailable(
                f"{dn} has {len(values)} values of {attribute} "
                "(ldap_user_attribute), not one"
            )
        try:
            value = bytes(values[0]).decode("utf-8")
        except UnicodeDecodeError:
            value = ""
        if not valid_id(value):
            raise AuthUnavailable(
                f"the {attribute} of {dn} is not a usable user id: {values[0]!r}"
            )
        return value


class LdapAuthenticator:
    """``auth_type = ldap``: a search as ``ldap_bind_user``, then the user's bind."""

    name = "ldap"

    def __init__(self, settings: LdapSection, pool: ThreadPoolService) -> None:
        """Check the settings that can be checked without the server.

        Raises:
            ValueError: ``ldap_address`` is unusable, or ``ldap_filter`` has
                no ``%s`` (every login would find the same entries).
        """
        address = parse_address(settings.ldap_address)
        if "%s" not in settings.ldap_filter:
            raise ValueError(f"ldap_filter {settings.ldap_filter!r} has no %s")
        self._address = settings.ldap_address
        self._pool = pool
        self._directory = _Directory(settings, address)
        # Each step has ldap_timeout; this bounds them all, and a wait for
        # the service connection that another login holds.
        self._limit = 2 * settings.ldap_timeout + 1.0
        if address.scheme != "ldap" and settings.ldap_starttls:
            log.warn(
                "ldap_starttls applies to ldap:// only; ignored for {address}",
                address=self._address,
            )
        clear = address.scheme == "ldap" and not settings.ldap_starttls
        if clear and not address.loopback:
            log.warn(
                "{address} without ldap_starttls: passwords cross the "
                "network in clear text",
                address=self._address,
            )

    async def authenticate(self, user: str, password: str, otp: str) -> str | None:
        """The entry's ``ldap_user_attribute`` if the password binds as it."""
        if refused_before_asking(user, password):
            return None
        if not valid_id(user):
            log.info("LDAP: refused a login with an unusable user id")
            return None
        try:
            verdict = await self._pool.run(
                self._limit, self._directory.check, user, password
            )
        except DeferredTimeout:
            raise AuthUnavailable(
                f"{self._address} gave no answer in {self._limit} s"
            ) from None
        if verdict.reconnected:
            log.info(
                "LDAP service connection to {address} opened again after: {why}",
                address=self._address,
                why=verdict.reconnected,
            )
        if verdict.user is None:
            if verdict.problem:
                log.error(
                    "LDAP refused {user}: {reason}", user=user, reason=verdict.reason
                )
            else:
                log.info(
                    "LDAP refused {user}{dn}: {reason}",
                    user=user,
                    dn=f" ({verdict.dn})" if verdict.dn else "",
                    reason=verdict.reason,
                )
            return None
        log.debug(
            "LDAP accepted {user} as {dn}, user id {canonical}",
            user=user,
            dn=verdict.dn,
            canonical=verdict.user,
        )
        return verdict.user

    def close(self) -> None:
        """Unbind the service connection; blocks for at most ``ldap_timeout``.

        Call it from the auth pool (``pool.run(None, authenticator.close)``) or
        once the reactor has stopped.
        """
        self._directory.close()
