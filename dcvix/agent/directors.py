"""Which director the agent calls, when ``director_host`` names several.

Directors sharing one PostgreSQL database each answer every route for the whole
fleet, so an agent may register, renew and report through any of them. It keeps
to the first of its list that answers; when a call there fails (no connection,
a timeout, a TLS failure or a 5xx answer), the same call goes to the next at
once, and that one is kept. Away from the first director, the agent tries it
again after :data:`FAILBACK_SECONDS` (the list's order is the operator's
preference, e.g. the director of the same site first). A 4xx answer is the
director's decision, not a failure: it is returned as it is.

A single host, as Go agents have it, behaves as before: one director, no
failover.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger

from dcvix.common.validate import split_host_port
from dcvix.common.webclient import Answer, https_url

log = Logger()

# How long the agent stays away from its first director after it failed.
FAILBACK_SECONDS = 300.0

T = TypeVar("T")


def _shown(host: str, port: int | None) -> str:
    """``host[:port]``, an IPv6 host in brackets when a port follows."""
    if port is None:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True)
class Director:
    """One director's address."""

    host: str
    port: int

    def url(self, path: str) -> str:
        """``https://host:port/path`` on this director."""
        return https_url(self.host, self.port, path)

    def __str__(self) -> str:
        return _shown(self.host, self.port)


def _entries(text: str) -> list[tuple[str, int | None]]:
    """The ``host[:port]`` entries of a comma-separated list, in order.

    A bare IPv6 address has no port (``::1``).

    Raises:
        ValueError: an empty list, or an entry that is not ``host[:port]``.
    """
    found = [split_host_port(item.strip()) for item in text.split(",") if item.strip()]
    if not found:
        raise ValueError("no director host given")
    return found


def parse_directors(text: str, default_port: int) -> list[Director]:
    """``dir1, dir2:8445, [fd00::1]:8445`` as directors, in order.

    Entries without a port use ``default_port`` (``director_port``); a
    director named twice is kept once.

    Raises:
        ValueError: as :func:`_entries`.
    """
    found = [Director(h, default_port if p is None else p) for h, p in _entries(text)]
    return list(dict.fromkeys(found))


def format_directors(text: str) -> str:
    """A ``director_host`` value checked, and written in one way (``a, b:1``)."""
    return ", ".join(_shown(host, port) for host, port in _entries(text))


class Refused(Exception):
    """The director said no, or its answer cannot be trusted.

    From one director of several: logged as a warning each time (another CA
    than the pinned one is an attack or a mistake), and the next is tried.
    """


class Directors:
    """The agent's directors and the one it uses now.

    Args:
        directors: in order of preference (at least one).
        clock: when to go back to the first.
        failback: seconds away from the first before trying it again.
    """

    def __init__(
        self,
        directors: Sequence[Director],
        clock: IReactorTime,
        failback: float = FAILBACK_SECONDS,
    ) -> None:
        if not directors:
            raise ValueError("no director")
        self._directors = list(directors)
        self._clock = clock
        self._failback = failback
        self._index = 0
        self._left_first = 0.0
        self._answering: Director | None = None

    @property
    def current(self) -> Director:
        """The director calls go to first now (until a failback is due)."""
        return self._directors[self._index]

    def _order(self) -> list[Director]:
        """The directors in the order the next call tries them.

        From the one in use, round the list. Once ``failback`` has passed
        away from the first, the first, then straight back to the one in use:
        a first still down costs one attempt, not one per director before it.
        """
        rotated = self._directors[self._index :] + self._directors[: self._index]
        if self._index and self._clock.seconds() - self._left_first >= self._failback:
            first = self._directors[0]
            log.info("trying the first director, {director}, again", director=first)
            return [first, *(d for d in rotated if d != first)]
        return rotated

    def _failed(
        self, director: Director, following: Director, reason: str, loud: bool
    ) -> None:
        """``director`` failed a call, which goes on to ``following``.

        A warning when it was answering until now or ``loud``; else (all of
        them down, tried again every update) a debug line.
        """
        if director == self._directors[0]:
            self._left_first = self._clock.seconds()
        emit = log.warn if loud or director == self._answering else log.debug
        if director == self._answering:
            self._answering = None
        emit(
            "director {director} failed ({reason}); trying {following}",
            director=str(director),
            reason=reason[:300],
            following=str(following),
        )

    def _settle(self, director: Director, answered: bool) -> None:
        """Calls go on to ``director``, which ``answered`` (or failed last)."""
        self._index = self._directors.index(director)
        if not answered:
            self._answering = None
            return
        if director != self._answering and len(self._directors) > 1:
            log.info("using director {director}", director=str(director))
        self._answering = director

    async def call(
        self,
        attempt: Callable[[Director], Awaitable[T]],
        answer: Callable[[T], Answer] | None = None,
    ) -> T:
        """``attempt`` on the director in use, then on the next while it fails.

        Each director is tried at most once. A failure is an exception or an
        answer (the outcome itself, or ``answer(outcome)``) of status 500 or
        more. When all fail, the last one's outcome is returned or raised.
        """
        order = self._order()
        for director, following in itertools.pairwise(order):
            try:
                outcome = await attempt(director)
            except Exception as error:
                reason = str(error) or type(error).__name__
                self._failed(director, following, reason, isinstance(error, Refused))
                continue
            failure = _server_error(answer(outcome) if answer else outcome)
            if failure is not None:
                self._failed(director, following, failure, False)
                continue
            self._settle(director, answered=True)
            return outcome
        last = order[-1]
        try:
            outcome = await attempt(last)
        except Exception:
            self._settle(last, answered=False)
            raise
        failure = _server_error(answer(outcome) if answer else outcome)
        self._settle(last, answered=failure is None)
        return outcome


def _server_error(found: object) -> str | None:
    """Why an answer counts as its director failing (5xx), else None."""
    if isinstance(found, Answer) and found.status >= 500:
        return f"{found.status} {found.error}"
    return None
