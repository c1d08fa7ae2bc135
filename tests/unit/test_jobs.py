"""PeriodicJob on a fake clock: timing, failures, no overlap, trigger, stop."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import EventLoggingObserver
from twisted.logger import LogLevel, globalLogPublisher

from dcvix.common.jobs import PeriodicJob


@pytest.fixture
def events() -> Iterator[EventLoggingObserver]:
    observer = EventLoggingObserver()
    globalLogPublisher.addObserver(observer)
    yield observer
    globalLogPublisher.removeObserver(observer)


class Gated:
    """A job whose every run waits until the test releases it."""

    def __init__(self) -> None:
        self.gates: list[Deferred[None]] = []

    async def __call__(self) -> None:
        gate: Deferred[None] = Deferred()
        self.gates.append(gate)
        await gate

    def release(self) -> None:
        self.gates[-1].callback(None)


async def nothing() -> None:
    return None


def fired(deferred: Deferred[None]) -> bool:
    """Read through a call: mypy keeps ``d.called`` narrowed after an assert."""
    return deferred.called


def test_first_run_at_start_then_every_interval() -> None:
    clock = Clock()
    job = PeriodicJob("reaper", 60, nothing, clock)
    job.startService()
    clock.advance(0)
    assert job.runs == 1
    clock.advance(59)
    assert job.runs == 1
    clock.advance(1)
    assert job.runs == 2
    clock.advance(59)
    assert job.runs == 2
    clock.advance(1)
    assert job.runs == 3
    job.stopService()


def test_first_run_after_first_delay() -> None:
    clock = Clock()
    job = PeriodicJob("housekeeper", 60, nothing, clock, first_delay=3600)
    job.startService()
    clock.advance(3599)
    assert job.runs == 0
    clock.advance(1)
    assert job.runs == 1
    clock.advance(59)
    assert job.runs == 1
    clock.advance(1)
    assert job.runs == 2
    job.stopService()


def test_interval_counts_from_start_of_one_run_to_the_next() -> None:
    clock = Clock()
    starts: list[float] = []

    async def ten_seconds() -> None:
        starts.append(clock.seconds())
        await deferLater(clock, 10, lambda: None)

    job = PeriodicJob("stats", 60, ten_seconds, clock)
    job.startService()
    for _ in range(13):
        clock.advance(10)
    assert starts == [10.0, 70.0, 130.0]
    job.stopService()


def test_run_longer_than_interval_is_followed_at_once_by_the_next() -> None:
    clock = Clock()
    job = Gated()
    periodic = PeriodicJob("renewer", 60, job, clock)
    periodic.startService()
    clock.advance(0)
    clock.advance(90)
    job.release()
    assert periodic.runs == 1
    clock.advance(0)
    assert periodic.runs == 2
    job.release()
    periodic.stopService()


def test_failing_run_is_logged_and_the_loop_goes_on(
    events: EventLoggingObserver,
) -> None:
    clock = Clock()
    outcomes: list[Exception | None] = [RuntimeError("boom"), None]

    async def flaky() -> None:
        outcome = outcomes.pop(0)
        if outcome is not None:
            raise outcome

    job = PeriodicJob("reaper", 60, flaky, clock)
    job.startService()
    clock.advance(0)
    assert (job.runs, job.failures) == (1, 1)
    failures = [event for event in events if "log_failure" in event]
    assert len(failures) == 1
    assert failures[0]["log_failure"].check(RuntimeError) is RuntimeError
    assert str(failures[0]["log_failure"].value) == "boom"
    assert failures[0]["log_level"] == LogLevel.critical
    assert failures[0]["job"] == "reaper"
    clock.advance(60)
    assert (job.runs, job.failures) == (2, 1)
    assert job.stopService().called
    assert clock.getDelayedCalls() == []


def test_blocked_run_never_overlaps() -> None:
    clock = Clock()
    job = Gated()
    periodic = PeriodicJob("renewer", 10, job, clock)
    periodic.startService()
    clock.advance(0)
    clock.advance(100)
    assert periodic.runs == 1
    assert clock.getDelayedCalls() == []
    job.release()
    clock.advance(0)
    assert periodic.runs == 2
    job.release()
    periodic.stopService()


def test_trigger_runs_now_and_restarts_the_interval() -> None:
    clock = Clock()
    periodic = PeriodicJob("registrator", 60, nothing, clock, first_delay=3600)
    periodic.startService()
    clock.advance(5)
    periodic.trigger()
    clock.advance(0)
    assert periodic.runs == 1
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(59)
    assert periodic.runs == 1
    clock.advance(1)
    assert periodic.runs == 2
    periodic.stopService()


def test_trigger_during_a_run_gives_exactly_one_more_run_right_after() -> None:
    clock = Clock()
    job = Gated()
    periodic = PeriodicJob("reporter", 60, job, clock)
    periodic.startService()
    clock.advance(0)
    periodic.trigger()
    periodic.trigger()
    periodic.trigger()
    clock.advance(5)
    job.release()
    assert periodic.runs == 1
    clock.advance(0)
    assert periodic.runs == 2
    job.release()
    clock.advance(59)
    assert periodic.runs == 2
    clock.advance(1)
    assert periodic.runs == 3
    job.release()
    periodic.stopService()


def test_trigger_from_inside_the_job_gives_one_more_run() -> None:
    clock = Clock()
    starts: list[float] = []

    async def asks_again() -> None:
        starts.append(clock.seconds())
        if len(starts) == 1:
            periodic.trigger()

    periodic = PeriodicJob("reporter", 60, asks_again, clock)
    periodic.startService()
    clock.advance(0)
    clock.advance(0)
    assert len(clock.getDelayedCalls()) == 1
    clock.advance(60)
    clock.advance(60)
    assert starts == [0.0, 0.0, 60.0, 120.0]
    periodic.stopService()


def test_trigger_before_start_does_nothing() -> None:
    clock = Clock()
    periodic = PeriodicJob("reporter", 60, nothing, clock)
    periodic.trigger()
    assert clock.getDelayedCalls() == []
    assert periodic.runs == 0


def test_stop_fires_after_the_run_in_flight_and_leaves_no_calls() -> None:
    clock = Clock()
    job = Gated()
    periodic = PeriodicJob("renewer", 60, job, clock)
    periodic.startService()
    clock.advance(0)
    periodic.trigger()
    stopped = periodic.stopService()
    assert not fired(stopped)
    clock.advance(100)
    assert not fired(stopped)
    job.release()
    assert fired(stopped)
    assert clock.getDelayedCalls() == []
    clock.advance(1000)
    assert periodic.runs == 1


def test_stop_when_idle_fires_at_once_and_cancels_the_next_run() -> None:
    clock = Clock()
    periodic = PeriodicJob("reaper", 60, nothing, clock)
    periodic.startService()
    clock.advance(0)
    assert periodic.stopService().called
    assert clock.getDelayedCalls() == []
    clock.advance(600)
    assert periodic.runs == 1


@pytest.mark.parametrize("interval", [0, -1, -0.5])
def test_interval_must_be_positive(interval: float) -> None:
    with pytest.raises(ValueError, match="interval must be positive"):
        PeriodicJob("reaper", interval, nothing, Clock())
