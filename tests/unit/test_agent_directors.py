"""The agent's list of directors: parsing, failover and failback.

Driven with a fake clock and attempts that fail as told; the real network
path is in tests/integration/test_agent_failover.py.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import ensureDeferred
from twisted.internet.task import Clock
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure

from dcvix.agent.directors import (
    FAILBACK_SECONDS,
    Director,
    Directors,
    Refused,
    format_directors,
    parse_directors,
)
from dcvix.common.webclient import Answer

A, B, C = Director("dir1", 8445), Director("dir2", 9000), Director("fd00::1", 8445)


@contextlib.contextmanager
def capture_log() -> Iterator[EventLoggingObserver]:
    """The log events emitted inside the block."""
    events = EventLoggingObserver()
    globalLogPublisher.addObserver(events)
    try:
        yield events
    finally:
        globalLogPublisher.removeObserver(events)


def test_a_go_style_single_host_is_one_director_on_director_port() -> None:
    assert parse_directors("director.example", 8445) == [
        Director("director.example", 8445)
    ]
    assert parse_directors("::1", 8445) == [Director("::1", 8445)]


def test_a_list_keeps_its_order_and_each_entry_its_port() -> None:
    assert parse_directors("dir1, dir2:9000,[fd00::1]", 8445) == [A, B, C]
    assert parse_directors("dir1, dir1:8445, dir2:9000", 8445) == [A, B]


@pytest.mark.parametrize(
    ("text", "written"),
    [
        ("dir1", "dir1"),
        ("::1", "::1"),
        (" dir1 ,dir2:9000 ,, [fd00::1]:8445", "dir1, dir2:9000, [fd00::1]:8445"),
    ],
)
def test_the_setting_is_written_back_in_one_form(text: str, written: str) -> None:
    assert format_directors(text) == written
    assert format_directors(written) == written


@pytest.mark.parametrize(
    "text", ["", " , ", "dir1:0", "dir1:99999", "dir 1", "[::1]x", "dir1:http"]
)
def test_a_bad_list_is_refused(text: str) -> None:
    with pytest.raises(ValueError):
        format_directors(text)


@given(st.text(max_size=40))
def test_any_text_is_a_list_or_a_value_error(text: str) -> None:
    try:
        written = format_directors(text)
    except ValueError:
        return
    assert parse_directors(written, 8445) == parse_directors(text, 8445)


class Fleet:
    """Attempts that fail on the directors in ``down``, answer 503 on ``busy``."""

    def __init__(self) -> None:
        self.down: set[Director] = set()
        self.busy: set[Director] = set()
        self.tried: list[Director] = []

    async def attempt(self, director: Director) -> Answer:
        self.tried.append(director)
        if director in self.down:
            raise ConnectionRefusedError(f"{director} refused")
        if director in self.busy:
            return Answer(503, b'{"error": "database unavailable"}')
        return Answer(200, str(director).encode())


def call(directors: Directors, fleet: Fleet) -> Answer:
    fleet.tried = []
    result: list[Answer] = []
    ensureDeferred(directors.call(fleet.attempt)).addCallback(result.append)
    assert result, "the attempt raised"
    return result[0]


def test_calls_stay_on_the_first_director_while_it_answers() -> None:
    fleet, directors = Fleet(), Directors([A, B], Clock())
    assert call(directors, fleet).body == b"dir1:8445"
    assert call(directors, fleet).body == b"dir1:8445"
    assert fleet.tried == [A]


def test_a_failure_moves_the_same_call_to_the_next_and_stays_there() -> None:
    fleet, directors = Fleet(), Directors([A, B, C], Clock())
    fleet.down = {A}
    assert call(directors, fleet).body == b"dir2:9000"
    assert fleet.tried == [A, B]
    fleet.down = set()  # back, but not tried before the failback time
    call(directors, fleet)
    assert fleet.tried == [B]
    assert directors.current == B


def test_a_5xx_answer_fails_over_but_a_4xx_is_the_directors_answer() -> None:
    fleet, directors = Fleet(), Directors([A, B], Clock())
    fleet.busy = {A}
    assert call(directors, fleet).status == 200
    assert fleet.tried == [A, B]

    class Refusing(Fleet):
        async def attempt(self, director: Director) -> Answer:
            self.tried.append(director)
            return Answer(403, b'{"error": "pending approval"}')

    refusing, others = Refusing(), Directors([A, B], Clock())
    assert call(others, refusing).status == 403
    assert refusing.tried == [A]


def test_the_first_director_is_tried_again_after_the_failback_time() -> None:
    clock = Clock()
    fleet, directors = Fleet(), Directors([A, B], clock)
    fleet.down = {A}
    call(directors, fleet)
    clock.advance(FAILBACK_SECONDS - 1)
    assert directors.current == B
    fleet.down = set()
    clock.advance(1)
    assert call(directors, fleet).body == b"dir1:8445"
    assert fleet.tried == [A]


def test_the_first_still_down_at_failback_sends_the_call_on_again() -> None:
    clock = Clock()
    fleet, directors = Fleet(), Directors([A, B], clock)
    fleet.down = {A}
    call(directors, fleet)
    clock.advance(FAILBACK_SECONDS)
    assert call(directors, fleet).body == b"dir2:9000"
    assert fleet.tried == [A, B]


def test_when_every_director_fails_the_last_outcome_is_the_callers() -> None:
    fleet, directors = Fleet(), Directors([A, B], Clock())
    fleet.busy = {A, B}
    assert call(directors, fleet).status == 503
    assert fleet.tried == [A, B]
    fleet.busy, fleet.down = set(), {A, B}
    failures: list[Failure] = []
    ensureDeferred(directors.call(fleet.attempt)).addErrback(failures.append)
    assert len(failures) == 1
    assert failures[0].check(ConnectionRefusedError)


def test_a_single_director_is_tried_once() -> None:
    fleet, directors = Fleet(), Directors([A], Clock())
    fleet.busy = {A}
    assert call(directors, fleet).status == 503
    assert fleet.tried == [A]


def test_an_answer_inside_the_outcome_fails_over_on_5xx_too() -> None:
    # Registration returns (answer, CAs): its 503 must move on like an update's.
    fleet, directors = Fleet(), Directors([A, B], Clock())
    fleet.busy = {A}

    async def register(director: Director) -> tuple[Answer, str]:
        return await fleet.attempt(director), "cas"

    found: list[tuple[Answer, str]] = []
    ensureDeferred(directors.call(register, lambda outcome: outcome[0])).addCallback(
        found.append
    )
    assert found[0][0].status == 200
    assert fleet.tried == [A, B]
    assert directors.current == B


def test_a_distrusted_director_is_a_warning_even_when_another_answers() -> None:
    fleet, directors = Fleet(), Directors([A, B], Clock())

    async def pinned(director: Director) -> Answer:
        if director == A:
            raise Refused("the director's CA has fingerprint aa, not bb")
        return await fleet.attempt(director)

    with capture_log() as events:
        ensureDeferred(directors.call(pinned))
    warned = [e for e in events if e["log_level"] == LogLevel.warn]
    assert len(warned) == 1
    assert "not bb" in formatEvent(warned[0])


def test_failback_tries_the_first_then_goes_straight_back() -> None:
    clock = Clock()
    fleet, directors = Fleet(), Directors([A, B, C], clock)
    fleet.down = {A, B}
    call(directors, fleet)
    assert fleet.tried == [A, B, C]
    clock.advance(FAILBACK_SECONDS)
    call(directors, fleet)
    assert fleet.tried == [A, C]  # B, still down, is not tried on the way
    assert directors.current == C


def test_a_lost_director_warns_once_then_stays_quiet_while_all_are_down() -> None:
    fleet, directors = Fleet(), Directors([A, B], Clock())
    call(directors, fleet)  # A answers
    fleet.down = {A, B}
    with capture_log() as events:
        for _ in range(5):
            ensureDeferred(directors.call(fleet.attempt)).addErrback(lambda _f: None)
    warned = [e for e in events if e["log_level"] == LogLevel.warn]
    assert len(warned) == 1
