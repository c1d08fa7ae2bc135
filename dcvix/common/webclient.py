"""Outbound HTTPS calls with a TLS identity check chosen by the caller.

Both daemons call each other with JSON over HTTPS; the peer's identity is
checked by the connection creator (a CA and a name, or a pinned key), never by
the host in the URL. Answers are read up to a cap, and every call has a timeout.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import treq
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IOpenSSLClientConnectionCreator
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IResponse

from dcvix.common.http import CLIENT_IDLE
from dcvix.common.tls import FixedTLSPolicy

ANSWER_CAP = 1024 * 1024


class AnswerTooLarge(Exception):
    """The peer sent more than :data:`ANSWER_CAP` bytes."""


@dataclass(frozen=True)
class Answer:
    """A peer's answer: status, raw body and the body as JSON (None if not JSON)."""

    status: int
    body: bytes

    @property
    def json(self) -> Any:
        """The body decoded as JSON, or None."""
        try:
            return json.loads(self.body)
        except (ValueError, UnicodeDecodeError):
            return None

    @property
    def error(self) -> str:
        """The ``error`` text of a JSON error body, else the raw text (short)."""
        value = self.json
        if isinstance(value, dict) and isinstance(value.get("error"), str):
            return str(value["error"])
        return self.body[:200].decode("utf-8", "replace").strip()


class _Capped(Protocol):
    def __init__(self, done: Deferred[bytes], cap: int) -> None:
        self._done = done
        self._cap = cap
        self._parts: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > self._cap:
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]
            if not self._done.called:
                self._done.errback(AnswerTooLarge(f"answer over {self._cap} bytes"))
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = ResponseDone) -> None:  # type: ignore[assignment]
        if self._done.called:
            return
        if reason.check(ResponseDone):
            self._done.callback(b"".join(self._parts))
        else:
            self._done.errback(reason)


def read_capped(response: IResponse, cap: int = ANSWER_CAP) -> Deferred[bytes]:
    """The whole body of ``response``, failing with AnswerTooLarge over ``cap``.

    Cancelling the Deferred stops the transfer.
    """
    reader: _Capped

    def cancel(_: Deferred[bytes]) -> None:
        if reader.transport is not None:
            reader.transport.stopProducing()  # type: ignore[attr-defined]

    done: Deferred[bytes] = Deferred(cancel)
    reader = _Capped(done, cap)
    response.deliverBody(reader)
    return done


async def _exchange(
    http: treq.client.HTTPClient, method: str, url: str, payload: Any
) -> Answer:
    data = None if payload is None else json.dumps(payload).encode()
    headers = Headers({b"Content-Type": [b"application/json"]}) if data else None
    response = await http.request(method, url, data=data, headers=headers)
    body = await read_capped(response)
    return Answer(response.code, body)


def _cancelled(error: BaseException) -> bool:
    """Whether ``error`` is the request cancelled (by the timeout).

    twisted.web's client wraps the cancellation (``ResponseNeverReceived`` and
    kin carry it in ``reasons``), so ``Deferred.addTimeout`` does not see a
    ``CancelledError`` and lets the wrapper through instead of a TimeoutError.
    """
    if isinstance(error, CancelledError):
        return True
    reasons = getattr(error, "reasons", None)
    return isinstance(reasons, list) and any(
        isinstance(reason, Failure) and reason.check(CancelledError)
        for reason in reasons
    )


async def json_call(
    http: treq.client.HTTPClient,
    reactor: Any,
    method: str,
    url: str,
    payload: Any,
    timeout: float,
) -> Answer:
    """One JSON request and its whole (capped) answer, within ``timeout`` s."""
    exchange = ensureDeferred(_exchange(http, method, url, payload))
    exchange.addTimeout(timeout, reactor)
    try:
        return await exchange
    except DeferredTimeout:
        raise
    except Exception as error:
        if _cancelled(error):
            raise DeferredTimeout(f"no answer within {timeout:g} s") from None
        raise


def https_url(host: str, port: int, path: str) -> str:
    """``https://host:port/path``, with brackets around an IPv6 address."""
    shown = f"[{host}]" if ":" in host else host
    return f"https://{shown}:{port}{path}"


class JsonClient:
    """POSTs and GETs JSON through one TLS creator, reusing connections.

    Args:
        reactor: for connections and timeouts.
        creator: checks the peer's identity (see :mod:`dcvix.common.tls`).
        persistent: keep connections open between calls.
    """

    def __init__(
        self,
        reactor: Any,
        creator: IOpenSSLClientConnectionCreator,
        persistent: bool = True,
    ) -> None:
        self._reactor = reactor
        self.pool = HTTPConnectionPool(reactor, persistent=persistent)
        # Dropped before the server's idle timeout closes it under a request.
        self.pool.cachedConnectionTimeout = CLIENT_IDLE
        self.pool.retryAutomatically = False
        agent = Agent(reactor, contextFactory=FixedTLSPolicy(creator), pool=self.pool)
        self._http = treq.client.HTTPClient(agent)

    async def call(
        self, method: str, url: str, payload: Any = None, timeout: float = 30.0
    ) -> Answer:
        """Send one request and read the answer, all within ``timeout`` seconds.

        Raises:
            twisted.internet.defer.TimeoutError: the peer took too long.
            AnswerTooLarge: the answer is over the cap.
            Exception: connection and TLS failures, as Twisted reports them.
        """
        return await json_call(self._http, self._reactor, method, url, payload, timeout)

    def close(self) -> Deferred[None]:
        """Close kept-alive connections."""
        closed: Deferred[None] = self.pool.closeCachedConnections()
        return closed
