"""The HTTP layer both daemons share.

- :class:`DcvixSite` / :class:`DcvixRequest`: request bodies capped while they
  arrive (413 and the connection closed, before anything is spooled to disk),
  security headers on every answer, and the CSRF rule of CONTRACT §3.
- :class:`DcvixChannel`: whatever the HTTP parser refuses (an over-long line or
  header section, a bad ``Content-Length``, a malformed header) is answered
  (431 or 400, JSON) and the connection closed at once; so is an HTTP/1.1
  request without exactly one ``Host``; a connection whose TLS handshake and
  request do not arrive in time (slowloris) is closed.
- :func:`access_log_line`: client text decoded leniently, control characters
  escaped.
- :func:`install_error_handlers`: every error becomes ``{"error": ...}`` JSON with
  its status (404 and 405 included); an unexpected exception is logged with its
  traceback and answered with a generic 500, never the traceback itself.
- :func:`read_json`: a JSON body whatever the Content-Type (fields are picked
  by :mod:`dcvix.common.jsonfields`).
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable
from typing import Any, cast
from urllib.parse import unquote_to_bytes, urlsplit

from cryptography import x509
from klein import Klein
from OpenSSL.crypto import X509
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import (
    IConsumer,
    IDelayedCall,
    IPullProducer,
    ISSLTransport,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import http as twisted_http
from twisted.web.http import HTTPChannel
from twisted.web.iweb import IRequest
from twisted.web.resource import IResource
from twisted.web.server import Request, Site
from werkzeug.exceptions import HTTPException, MethodNotAllowed
from werkzeug.routing import RequestRedirect
from zope.interface import implementer

from dcvix.common.config import POSITIVE_DURATION, setting
from dcvix.common.errors import ApiError, BadRequest
from dcvix.common.logging import escape_control
from dcvix.common.networks import parse_address

log = Logger()
access_log = Logger(namespace="dcvix.access")

DEFAULT_BODY_LIMIT = 1024 * 1024
# A connection that sends nothing for this long is closed: Twisted's default
# (12 h) let idle, slow (slowloris) and never-finished TLS handshakes hold a
# socket for half a day. Above Go's 90 s idle keep-alive and our clients' 60 s
# (CLIENT_IDLE), so a client always drops a kept-alive connection first.
IDLE_TIMEOUT = 120.0
CLIENT_IDLE = 60
# The idle timeout restarts with every byte, so a client trickling one byte at
# a time (slowloris) never meets it: a new connection must also finish its TLS
# handshake and its first request within this, and a later request on a
# kept-alive connection must arrive whole within this of its first byte.
REQUEST_TIMEOUT = 30.0
SAFE_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})
SECURITY_HEADERS = {
    b"X-Content-Type-Options": b"nosniff",
    b"X-Frame-Options": b"DENY",
    b"Strict-Transport-Security": b"max-age=63072000",
    b"Referrer-Policy": b"no-referrer",
    # The web UI has no inline script or style, builds no HTML from strings
    # (Trusted Types refuse it) and talks to this origin only.
    b"Content-Security-Policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; "
        b"img-src 'self'; connect-src 'self'; form-action 'self'; "
        b"frame-ancestors 'none'; base-uri 'none'; "
        b"require-trusted-types-for 'script'; trusted-types 'none'"
    ),
    # No other origin may load an answer (a token, a .dcv file) as a
    # resource, nor share a browsing context group with the UI.
    b"Cross-Origin-Resource-Policy": b"same-origin",
    b"Cross-Origin-Opener-Policy": b"same-origin",
    b"Cache-Control": b"no-store",
}


def request_timeout_setting() -> Any:
    """The ``request_timeout`` key, the same on both daemons."""
    return setting(
        POSITIVE_DURATION,
        REQUEST_TIMEOUT,
        "A new connection's TLS handshake and first request must arrive within "
        "this, a later request within this of its first byte (slowloris); "
        "else the connection is closed.",
    )


def keepalive_timeout_setting() -> Any:
    """The ``keepalive_timeout`` key, the same on both daemons."""
    return setting(
        POSITIVE_DURATION,
        IDLE_TIMEOUT,
        "A connection silent this long is closed. Keep it over 90 s: Go's "
        "clients drop idle connections after 90 s, dcvix's after 60 s.",
    )


def error_body(message: str) -> bytes:
    """The one error shape: ``{"error": message}`` and a newline."""
    return json.dumps({"error": message}).encode() + b"\n"


REASONS = {
    400: b"Bad Request",
    408: b"Request Timeout",
    413: b"Request Entity Too Large",
    431: b"Request Header Fields Too Large",
}


def closing_answer(status: int, message: str) -> bytes:
    """A whole JSON error answer, written before or instead of a ``Request``'s.

    For refusals made while the request is still arriving: the connection is
    closed after it (``Connection: close``).
    """
    body = error_body(message)
    head = [b"HTTP/1.1 %d %s" % (status, REASONS[status]), b"Server: dcvix"]
    head += [b"%s: %s" % item for item in SECURITY_HEADERS.items()]
    head += [
        b"Content-Type: application/json",
        b"Content-Length: %d" % len(body),
        b"Connection: close",
    ]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def json_response(request: IRequest, status: int, body: Any) -> bytes:
    """Set status and JSON content type; the body ends with a newline, as Go's."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body).encode() + b"\n"


# Answers longer than this are written as the connection drains (JSON pieces).
STREAM_OVER = 1024 * 1024


def json_pieces_response(
    request: IRequest, pieces: list[bytes]
) -> Deferred[bytes | None]:
    """A 200 JSON answer given in pieces, with Go's final newline.

    A small answer is joined and returned. A large one (a full fleet listing,
    18 MB at 10,000 servers) is written 64 KiB at a time as the client reads:
    joined, and then encrypted whole into the TLS buffer, it held two more
    copies of itself (the director's peak RSS).
    """
    request.setResponseCode(200)
    request.setHeader(b"Content-Type", b"application/json")
    pieces.append(b"\n")
    size = sum(map(len, pieces))
    if size <= STREAM_OVER:
        done: Deferred[bytes | None] = succeed(b"".join(pieces))
        return done
    request.setHeader(b"Content-Length", str(size).encode("ascii"))
    # twisted.web's Request is the consumer; IRequest does not say so.
    consumer = cast(IConsumer, request)
    writer = _PiecesWriter(consumer, pieces)
    consumer.registerProducer(writer, False)
    return writer.done


@implementer(IPullProducer)
class _PiecesWriter:
    """Writes pieces of an answer a chunk at a time, when the transport asks."""

    CHUNK = 64 * 1024

    def __init__(self, request: IConsumer, pieces: list[bytes]) -> None:
        self._request = request
        self._pieces = iter(pieces)
        # Fires with None once all is written (or the client left): the route's
        # answer, after which the request is finished (if it is still there).
        self.done: Deferred[bytes | None] = Deferred()

    def resumeProducing(self) -> None:
        """Write the next chunk; after the last, let the request finish."""
        chunk: list[bytes] = []
        size = 0
        for piece in self._pieces:
            chunk.append(piece)
            size += len(piece)
            if size >= self.CHUNK:
                break
        if chunk:
            self._request.write(b"".join(chunk))
        if size < self.CHUNK:
            self._request.unregisterProducer()
            if not self.done.called:
                self.done.callback(None)

    def stopProducing(self) -> None:
        """The connection is gone: nothing more to write.

        Unregistered first: the request may be finished as ``done`` fires,
        and Twisted logs a producer still registered then as an error.
        """
        self._pieces = iter(())
        self._request.unregisterProducer()
        if not self.done.called:
            self.done.callback(None)


def error_response(request: IRequest, status: int, message: str) -> bytes:
    """A JSON error answer."""
    request.setResponseCode(status)
    request.setHeader(b"Content-Type", b"application/json")
    return error_body(message)


# ------------------------------------------------------------------ requests


def csrf_violation(request: Request) -> str | None:
    """Why a state-changing request must be refused as cross-site, if it must.

    Browsers send ``Origin`` (and ``Sec-Fetch-Site``) on state-changing requests;
    curl, agents and DCV send neither, so they are never refused. The headers are
    compared as bytes: one that is not UTF-8 must not raise.
    """
    if request.method in SAFE_METHODS:
        return None
    fetch_site = request.getHeader(b"Sec-Fetch-Site")
    if fetch_site is not None and fetch_site.lower() == b"cross-site":
        return "cross-site request refused"
    origin = request.getHeader(b"Origin")
    if origin is None:
        return None
    host = request.getHeader(b"Host") or b""
    if origin.lower() != b"https://" + host.lower():
        return "cross-origin request refused"
    return None


def routed_path(target: bytes) -> bytes:
    """The path a request target is routed to: %-decoded, slashes merged.

    Twisted decodes each segment and werkzeug merges repeated slashes, so
    ``/v1/agent/%72egister`` and ``//v1/agent/register`` reach the same route
    as ``/v1/agent/register``; a per-path cap must see them the same way.
    """
    return re.sub(rb"/{2,}", b"/", unquote_to_bytes(target.split(b"?", 1)[0]))


class DcvixRequest(Request):
    """A request that refuses an oversized body as it arrives.

    The declared length is checked as soon as the headers are in, and the bytes
    actually received are counted (a chunked body has no declared length). The
    body is kept in memory: it is never over the cap, so never spooled to disk.
    """

    _received = 0
    _refused = False

    def _limit(self) -> int:
        site = getattr(self.channel, "site", None)
        path: bytes = getattr(self.channel, "_path", b"") or b""
        if isinstance(site, DcvixSite):
            return site.body_limit(routed_path(path))
        return DEFAULT_BODY_LIMIT

    def gotLength(self, length: int | None) -> None:
        """Refuse at once when the declared length is over the cap."""
        self.content = io.BytesIO()
        if length is not None and length > self._limit():
            self._refuse()

    def handleContentChunk(self, data: bytes) -> None:
        """Keep the chunk, or refuse when the body grows over the cap."""
        if self._refused:
            return
        self._received += len(data)
        if self._received > self._limit():
            self._refuse()
            return
        assert self.content is not None
        self.content.write(data)

    def _refuse(self) -> None:
        self._refused = True
        self.content = io.BytesIO()
        # No "100 Continue" after our answer.
        self.requestHeaders.removeHeader(b"Expect")
        transport = self.channel.transport
        assert transport is not None
        transport.write(closing_answer(413, "request body too large"))
        log.info(
            "refused a request body over {limit} bytes from {peer}",
            limit=self._limit(),
            peer=str(getattr(self.getClientAddress(), "host", "?")),
        )
        self.channel.loseConnection()

    def requestReceived(self, command: bytes, path: bytes, version: bytes) -> None:
        """Dispatch, unless the body was refused (the connection is closing)."""
        if self._refused:
            return
        super().requestReceived(command, path, version)

    def write(self, data: bytes) -> None:
        """Name ourselves plainly, not Twisted's version, in the first write."""
        if not self.startedWriting:
            self.setHeader(b"Server", b"dcvix")
        super().write(data)

    def process(self) -> None:
        """Security headers, then refusals (malformed, cross-site), then dispatch."""
        for name, value in SECURITY_HEADERS.items():
            self.setHeader(name, value)
        problem = malformed_request(self)
        status = 400
        if problem is not None:
            # As the parser's refusals: answered, and the connection closed.
            self.channel.persistent = False
            self.setHeader(b"Connection", b"close")
        else:
            status, problem = 403, csrf_violation(self)
        if problem is not None:
            body = error_body(problem)
            self.setResponseCode(status)
            self.setHeader(b"Content-Type", b"application/json")
            self.setHeader(b"Content-Length", b"%d" % len(body))
            self.write(body)
            self.finish()
            return
        super().process()


def malformed_request(request: Request) -> str | None:
    """Why a request the parser let through must be refused (400), if it must.

    An HTTP/1.1 request needs exactly one ``Host`` (RFC 9112 §3.2); a URL that
    is not UTF-8 would have Klein answer a text page and log a traceback.
    """
    hosts = request.requestHeaders.getRawHeaders(b"Host") or []
    if len(hosts) > 1:
        return "more than one Host header"
    if not hosts and request.clientproto == b"HTTP/1.1":
        return "missing Host header"
    if not _url_is_utf8(request):
        return "request URL is not UTF-8"
    return None


def _url_is_utf8(request: Request) -> bool:
    try:
        unquote_to_bytes(request.path or b"").decode("utf-8")
        request.getRequestHostname().decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class DcvixChannel(HTTPChannel):
    """Twisted's HTTP/1.1 parser, answering every request it refuses.

    Twisted answers most malformed requests with a bare 400, but drops an
    over-long line without a word, and over TLS that close then waits for the
    idle timeout (the line reader closes the transport under the channel's
    registered producer). Here each refusal gets a JSON answer with
    ``Connection: close`` and the connection is closed at once: 431 for a line
    or a header section over the limit (16 KiB), 400 for the rest.

    A request must also arrive whole within the site's ``request_timeout``,
    counted from the connection (so the TLS handshake counts) or from the first
    byte of a later request; else the connection is closed (after a 408 if part
    of a request came), which bounds slowloris clients and stalled handshakes.
    """

    _refused = False
    _deadline: IDelayedCall | None = None
    _partial = False
    # The client certificate, once :func:`peer_certificate` has read it.
    peer: x509.Certificate | None = None

    def connectionMade(self) -> None:
        """Start the clock on the handshake and the first request."""
        super().connectionMade()
        self._start_deadline()

    def dataReceived(self, data: bytes) -> None:
        """Ignore whatever follows a refusal; a new request starts the clock."""
        if self._refused:
            return
        if self._deadline is None and not self._handlingRequest:
            self._start_deadline()
        self._partial = True
        super().dataReceived(data)

    def allContentReceived(self) -> None:
        """The request is whole: its clock stops (answering it is not timed)."""
        self._stop_deadline()
        super().allContentReceived()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        """No deadline outlives the connection."""
        self._stop_deadline()
        super().connectionLost(reason)

    def _start_deadline(self) -> None:
        self._partial = False
        self._deadline = self.callLater(self._timeout(), self._request_timed_out)

    def _timeout(self) -> float:
        site = getattr(self, "site", None)
        return site.request_timeout if isinstance(site, DcvixSite) else REQUEST_TIMEOUT

    def _stop_deadline(self) -> None:
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self._deadline = None

    def _request_timed_out(self) -> None:
        """Close a connection whose handshake or request is too slow.

        Nothing is answered when no request byte came (an idle socket, a stalled
        handshake) or when the connection is already closing (after a 413). A
        client that does not close after the 408 is cut off after Twisted's
        ``abortTimeout``, as on the idle timeout.
        """
        self._deadline = None
        transport = self.transport
        assert transport is not None
        if self._partial and not getattr(transport, "disconnecting", False):
            transport.write(closing_answer(408, "request timeout"))
        self._refused = True
        log.debug(
            "closed a connection from {peer}: {what} after {timeout} s",
            peer=str(getattr(transport.getPeer(), "host", "?")),
            what="a request still incomplete" if self._partial else "no request",
            timeout=self._timeout(),
        )
        if self.abortTimeout is not None and self._abortingCall is None:
            self._abortingCall = self.callLater(
                self.abortTimeout, self.forceAbortClient
            )
        self.loseConnection()

    def lineReceived(self, line: bytes) -> None:
        """Refuse with 431 where Twisted would give a bare 400.

        A request pipelined behind one already answered is parsed from
        Twisted's buffer, without a :meth:`dataReceived`: its clock starts
        with its first line.
        """
        if self._deadline is None:
            self._start_deadline()
            self._partial = True
        if self._receivedHeaderSize + len(line) > self.totalHeadersSize:
            self._refuse(431, "request header fields too large")
            return
        super().lineReceived(line)

    def lineLengthExceeded(self, line: bytes) -> None:
        """A request line or a header line over 16 KiB."""
        self._refuse(431, "request header fields too large")

    def _respondToBadRequestAndDisconnect(self) -> None:
        self._refuse(400, "bad request")

    def _refuse(self, status: int, message: str) -> None:
        if self._refused:
            return
        self._refused = True
        transport = self.transport
        assert transport is not None
        transport.write(closing_answer(status, message))
        log.debug(
            "refused a malformed request from {peer} ({status} {message})",
            peer=str(getattr(transport.getPeer(), "host", "?")),
            status=status,
            message=message,
        )
        # Ours, not the transport's: it unregisters the producer first.
        self.loseConnection()


class DcvixSite(Site):
    """A ``Site`` that builds :class:`DcvixRequest` and knows each path's cap.

    Form bodies are not parsed into ``request.args`` (Twisted would run every
    urlencoded or multipart POST body through the ``email`` package, whoever
    sent it): ``request.args`` holds the query string only, and the one route
    that takes a form (the DCV token verifier) reads its body itself.

    Args:
        resource: the root resource.
        body_limit: bytes allowed for a request to a given path.
        quiet_paths: paths whose answered requests (status below 400) go to the
            access log at ``debug`` instead of ``info`` (agent updates: one per
            agent every 30 s; their caller counts them instead).
        idle_timeout: seconds of silence after which a connection is closed.
        request_timeout: seconds a connection has for its TLS handshake and
            first request, and a later request from its first byte (see
            :class:`DcvixChannel`).
    """

    protocol = DcvixChannel  # type: ignore[assignment]
    requestFactory = DcvixRequest
    displayTracebacks = False

    def __init__(
        self,
        resource: IResource,
        body_limit: Callable[[bytes], int] = lambda _path: DEFAULT_BODY_LIMIT,
        quiet_paths: frozenset[bytes] = frozenset(),
        idle_timeout: float = IDLE_TIMEOUT,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        super().__init__(
            resource,
            logFormatter=access_log_line,
            parsePOSTFormSubmission=False,
            timeout=idle_timeout,
        )
        self.body_limit = body_limit
        self.quiet_paths = quiet_paths
        self.request_timeout = request_timeout
        self.noisy = False

    def log(self, request: twisted_http.Request) -> None:
        """The access log line of ``request``: ``debug`` for a quiet path."""
        if (
            request.code < 400
            and (request.uri or b"").split(b"?", 1)[0] in self.quiet_paths
        ):
            access_log.debug(
                "{line}", line=_QuietLine(self._logDateTime or "-", request)
            )
            return
        super().log(request)


class _QuietLine:
    """An access log line built only if a ``debug`` observer writes it."""

    def __init__(self, timestamp: str, request: twisted_http.Request) -> None:
        self._timestamp = timestamp
        self._request = request

    def __str__(self) -> str:
        return access_log_line(self._timestamp, self._request)

    __repr__ = __str__


def access_log_line(timestamp: str, request: twisted_http.Request) -> str:
    """An access log line without the query string, which may carry tokens.

    What the client sent (method, path, user agent) is decoded whatever its
    bytes and has its control characters escaped.
    """
    path = _loggable((request.uri or b"").split(b"?", 1)[0])
    method = _loggable(request.method or b"-")
    peer = getattr(request.getClientAddress(), "host", "-")
    agents = request.requestHeaders.getRawHeaders(b"User-Agent")
    agent = _loggable(agents[-1]).replace('"', "'") if agents else "-"
    return (
        f'{peer} "{method} {path}" {request.code} {request.sentLength or 0} "{agent}"'
    )


def _loggable(data: bytes) -> str:
    return escape_control(data.decode("utf-8", "backslashreplace"))


def client_address(request: IRequest) -> str:
    """The peer's IP address in one spelling; an IPv4-mapped one as plain IPv4.

    One spelling, as throttles and logs key on it: a PROXY v2 header gives
    IPv6 addresses written out (``0:0:0:0:0:ffff:cb00:7107``).
    """
    return canonical_ip(str(getattr(request.getClientAddress(), "host", "")))


def canonical_ip(host: str) -> str:
    """``host`` as :func:`~dcvix.common.networks.parse_address` reads it; else as is."""
    if ":" not in host:
        return host  # IPv4 (or nothing): already in its one spelling
    try:
        return str(parse_address(host))
    except ValueError:
        return host


def peer_certificate(request: IRequest) -> x509.Certificate | None:
    """The client certificate the TLS layer verified, if the client sent one.

    Read once per connection and kept on its :class:`DcvixChannel`: converting
    it was a twentieth of an agent update's cost, and with renegotiation off
    (:func:`~dcvix.common.tls.harden`) it cannot change on a connection.
    """
    channel = getattr(request, "channel", None)
    if isinstance(channel, DcvixChannel) and channel.peer is not None:
        return channel.peer
    transport = getattr(channel, "transport", None)
    if transport is None or not ISSLTransport.providedBy(transport):
        return None
    certificate = transport.getPeerCertificate()
    peer = certificate.to_cryptography() if isinstance(certificate, X509) else None
    if isinstance(channel, DcvixChannel) and peer is not None:
        channel.peer = peer
    return peer


# ------------------------------------------------------------------- errors


def _request_and_failure(args: tuple[Any, ...]) -> tuple[IRequest, Failure]:
    request, failure = args[-2:]
    assert isinstance(failure, Failure)
    return request, failure


def failure_answer(request: IRequest, failure: Failure) -> bytes:
    """The JSON error answering a route's failure, with its status.

    An :class:`ApiError` says its own; a routing error is 404, 405 (with
    ``Allow``) or a relative redirect; anything else is logged with its
    traceback and answered 500 without one.
    """
    error = failure.value
    if isinstance(error, ApiError):
        wait = getattr(error, "retry_after", None)
        if wait is not None:
            request.setHeader(b"Retry-After", str(max(1, math.ceil(wait))).encode())
        return error_response(request, error.status, error.message)
    if isinstance(error, HTTPException):
        if isinstance(error, MethodNotAllowed) and error.valid_methods:
            request.setHeader(b"Allow", ", ".join(sorted(error.valid_methods)).encode())
        if isinstance(error, RequestRedirect):
            # Relative, so the client's Host header is never echoed back; Klein
            # does not give werkzeug the query string, so it is carried here.
            location = urlsplit(error.new_url).path.encode("utf-8")
            _path, query, string = request.uri.partition(b"?")
            request.setHeader(b"Location", location + query + string)
        status = error.code or 500
        message = {404: "not found", 405: "method not allowed"}.get(
            status, (error.name or "error").lower()
        )
        return error_response(request, status, message)
    log.failure(
        "unexpected error answering {method} {path}",
        failure,
        method=request.method.decode("ascii", "replace"),
        path=request.path.decode("ascii", "replace"),
    )
    return error_response(request, 500, "internal error")


def install_error_handlers(
    app: Klein, answer: Callable[[IRequest, Failure], bytes] = failure_answer
) -> None:
    """Make every failure of ``app``'s routes a JSON error, as ``answer`` says.

    ``app`` may be a class's Klein (handlers then get the instance first) or
    one built at run time (they do not).
    """

    def handler(*args: Any) -> bytes:
        request, failure = _request_and_failure(args)
        return answer(request, failure)

    # Klein's types name either shape, not one that serves both.
    app.handle_errors(Exception)(cast(Any, handler))


# --------------------------------------------------------------- JSON bodies


# Only a ``\\uD800``-``\\uDFFF`` escape can put a surrogate in decoded JSON (UTF-8
# input cannot): without one in the text, the re-encoding below is skipped.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(value: Any) -> bool:
    """A lone surrogate escape: valid JSON, but not text (and not UTF-8)."""
    try:
        json.dumps(value, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def read_json(request: IRequest) -> Any:
    """The first JSON value of the body, whatever the Content-Type (Go's way).

    Raises:
        BadRequest: for an empty body, bad UTF-8 or no JSON value.
    """
    content = request.content
    return parse_json(content.read() if content is not None else b"")


def parse_json(raw: bytes) -> Any:
    """:func:`read_json` on bytes already read (a body kept to pass on).

    Raises:
        BadRequest: as :func:`read_json`.
    """
    if not raw.strip():
        raise BadRequest("request body is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise BadRequest("request body is not UTF-8") from None
    try:
        value, _end = _DECODER.raw_decode(text.lstrip())
    except ValueError:
        # JSONDecodeError, integers over Python's digit limit and the
        # non-finite numbers Go refuses (NaN, Infinity, 1e400).
        raise BadRequest("request body is not valid JSON") from None
    except RecursionError:
        raise BadRequest("request body is nested too deeply") from None
    try:
        surrogate = _SURROGATE_ESCAPE.search(text) is not None and (
            _has_lone_surrogate(value)
        )
    except RecursionError:
        # Re-encoding goes a few frames deeper than decoding did.
        raise BadRequest("request body is nested too deeply") from None
    if surrogate:
        raise BadRequest("request body holds an invalid \\u escape")
    return value


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise ValueError(f"{text} is out of range")
    return number


_DECODER = json.JSONDecoder(parse_constant=_refuse_constant, parse_float=_finite_float)
