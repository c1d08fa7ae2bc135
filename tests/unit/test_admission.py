"""The global bound on login back-end calls: N at once, a queue, 503 beyond."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, cast

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.logger import (
    ILogObserver,
    LogEvent,
    LogLevel,
    formatEvent,
    globalLogPublisher,
)
from twisted.python.failure import Failure

from dcvix.common.errors import ServiceUnavailable
from dcvix.director.auth import AuthUnavailable
from dcvix.director.auth.admission import AdmissionBound, BoundedAuthenticator


class SlowBackend:
    """A back end whose answers the test releases one by one."""

    name = "slow"

    def __init__(self) -> None:
        self.running: list[tuple[str, Deferred[str | None]]] = []
        self.started: list[str] = []

    async def authenticate(self, user: str, password: str, otp: str) -> str | None:
        answer: Deferred[str | None] = Deferred()
        self.running.append((user, answer))
        self.started.append(user)
        return await answer

    def finish(self, user: str) -> None:
        for index, (who, answer) in enumerate(self.running):
            if who == user:
                del self.running[index]
                answer.callback(user)
                return
        raise AssertionError(f"{user} is not running")


def start(coroutine: Coroutine[Any, Any, str | None]) -> list[object]:
    """Start a login; the list gets its outcome (a value or a Failure)."""
    outcome: list[object] = []
    Deferred.fromCoroutine(coroutine).addBoth(outcome.append)
    return outcome


def test_at_most_n_at_once_then_a_queue_then_503_at_once() -> None:
    clock = Clock()
    backend = SlowBackend()
    bounded = BoundedAuthenticator(backend, AdmissionBound(2, 3, clock))
    outcomes = {u: start(bounded.authenticate(u, "pw", "")) for u in "abcdef"}

    assert backend.started == ["a", "b"]  # two run, three wait
    assert [outcomes[u] for u in "abcde"] == [[], [], [], [], []]
    (refused,) = outcomes["f"]  # the sixth is refused at once
    assert isinstance(refused, Failure)
    assert isinstance(refused.value, ServiceUnavailable)
    assert refused.value.status == 503
    assert refused.value.message == "too many logins at once; try again shortly"

    backend.finish("b")
    assert outcomes["b"] == ["b"]
    clock.advance(0)  # the slot goes to the next waiting call, on the next turn
    assert backend.started == ["a", "b", "c"]  # the first waiting one, in order
    backend.finish("a")
    backend.finish("c")
    clock.advance(0)
    assert backend.started == ["a", "b", "c", "d", "e"]
    assert len(backend.running) == 2  # never more than two


def test_a_caller_gone_from_the_queue_gives_its_place_up() -> None:
    clock = Clock()
    backend = SlowBackend()
    bound = AdmissionBound(1, 2, clock)
    bounded = BoundedAuthenticator(backend, bound)
    start(bounded.authenticate("a", "pw", ""))
    queued = Deferred.fromCoroutine(bounded.authenticate("b", "pw", ""))
    queued.addErrback(lambda failure: None)
    assert bound.waiting == 1
    queued.cancel()  # the client hung up while waiting
    assert bound.waiting == 0
    backend.finish("a")
    clock.advance(0)
    later = start(bounded.authenticate("c", "pw", ""))
    assert backend.started == ["a", "c"]  # b never ran; its slot was not lost
    backend.finish("c")
    assert later == ["c"]


def test_a_caller_gone_after_its_turn_came_passes_the_slot_on() -> None:
    clock = Clock()
    backend = SlowBackend()
    bounded = BoundedAuthenticator(backend, AdmissionBound(1, 2, clock))
    start(bounded.authenticate("a", "pw", ""))
    queued = Deferred.fromCoroutine(bounded.authenticate("b", "pw", ""))
    queued.addErrback(lambda failure: None)
    third = start(bounded.authenticate("c", "pw", ""))
    backend.finish("a")  # b's turn is scheduled...
    queued.cancel()  # ...and b leaves before it comes
    clock.advance(0)
    clock.advance(0)
    assert backend.started == ["a", "c"]
    backend.finish("c")
    assert third == ["c"]


def test_a_running_call_keeps_its_slot_until_its_work_ends() -> None:
    clock = Clock()
    backend = SlowBackend()
    bounded = BoundedAuthenticator(backend, AdmissionBound(1, 0, clock))
    first = Deferred.fromCoroutine(bounded.authenticate("a", "pw", ""))
    first.addErrback(lambda failure: None)
    first.cancel()  # the client hung up; the back end still works on it
    (busy,) = start(bounded.authenticate("b", "pw", ""))
    assert isinstance(busy, Failure) and busy.check(ServiceUnavailable)
    backend.finish("a")  # the work ends: now the slot is free
    later = start(bounded.authenticate("c", "pw", ""))
    backend.finish("c")
    assert later == ["c"]


def test_a_long_queue_of_instant_calls_does_not_recurse() -> None:
    class Instant:
        name = "instant"

        async def authenticate(self, user: str, password: str, otp: str) -> str | None:
            return None

    clock = Clock()
    gate = SlowBackend()
    bound = AdmissionBound(1, 5000, clock)
    start(BoundedAuthenticator(gate, bound).authenticate("a", "pw", ""))
    instant = BoundedAuthenticator(Instant(), bound)
    outcomes = [start(instant.authenticate(f"u{n}", "pw", "")) for n in range(5000)]
    gate.finish("a")
    while bound.waiting:
        clock.advance(0)
    clock.advance(0)
    assert all(outcome == [None] for outcome in outcomes)


def test_a_failing_call_frees_its_slot() -> None:
    class Broken:
        name = "broken"

        async def authenticate(self, user: str, password: str, otp: str) -> str | None:
            raise RuntimeError("boom")

    bounded = BoundedAuthenticator(Broken(), AdmissionBound(1, 0, Clock()))
    for _ in range(3):
        (outcome,) = start(bounded.authenticate("a", "pw", ""))
        assert isinstance(outcome, Failure)
        assert isinstance(outcome.value, RuntimeError)


def test_a_queue_of_zero_refuses_as_soon_as_all_run() -> None:
    backend = SlowBackend()
    bound = AdmissionBound(1, 0, Clock())
    bounded = BoundedAuthenticator(backend, bound)
    first = start(bounded.authenticate("a", "pw", ""))
    (second,) = start(bounded.authenticate("b", "pw", ""))
    assert isinstance(second, Failure) and second.check(ServiceUnavailable)
    assert bound.waiting == 0
    backend.finish("a")
    assert first == ["a"]
    later = start(bounded.authenticate("c", "pw", ""))
    backend.finish("c")
    assert later == ["c"]


@pytest.mark.parametrize("queue", [0, 5])
def test_the_name_is_the_inner_back_ends(queue: int) -> None:
    bounded = BoundedAuthenticator(SlowBackend(), AdmissionBound(1, queue, Clock()))
    assert bounded.name == "slow"


def test_a_back_end_that_cannot_decide_after_its_caller_left_is_one_line() -> None:
    """A command killed as the director stops: a warning, not a traceback."""
    events: list[LogEvent] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    try:
        clock = Clock()
        backend = SlowBackend()
        bounded = BoundedAuthenticator(backend, AdmissionBound(1, 0, clock))
        for user, error in (("a", AuthUnavailable("killed")), ("b", KeyError("x"))):
            call = Deferred.fromCoroutine(bounded.authenticate(user, "pw", ""))
            call.addErrback(lambda failure: None)
            call.cancel()
            ((_, answer),) = backend.running
            backend.running.clear()
            answer.errback(error)
    finally:
        globalLogPublisher.removeObserver(observer)
    mine = [e for e in events if e.get("log_namespace", "").endswith("admission")]
    assert [(e["log_level"], "log_failure" in e) for e in mine] == [
        (LogLevel.warn, False),
        (LogLevel.critical, True),
    ]
    assert formatEvent(mine[0]) == (
        "a login back end could not decide after its caller left: killed"
    )
