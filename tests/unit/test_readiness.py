"""``/v1/health?ready=1``'s checks: the store, the certificates, the policy."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.internet.task import Clock

from dcvix.director.policy import PolicyHolder
from dcvix.director.readiness import Readiness
from dcvix.director.registry import StoreError

NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)


class Store:
    """Only what readiness reads: a count that works or not."""

    def __init__(self, reachable: bool) -> None:
        self.reachable = reachable

    async def count(self, state: str) -> int:
        if not self.reachable:
            raise StoreError("postgresql://db/dcvix: connection refused")
        return 3


def policy(tmp_path: Path) -> PolicyHolder:
    (tmp_path / "users.json").write_text(json.dumps([{"id": "alice", "admin": True}]))
    (tmp_path / "pools.json").write_text("[]")
    return PolicyHolder(tmp_path)


def check(readiness: Readiness) -> tuple[bool, dict[str, str]]:
    found: list[tuple[bool, dict[str, str]]] = []
    ensureDeferred(readiness.check()).addCallback(found.append)
    return found[0]


def readiness(tmp_path: Path, reachable: bool, director: dt.datetime) -> Readiness:
    clock = Clock()
    clock.advance(NOW.timestamp())
    expiries = {"ca": NOW + dt.timedelta(days=3650), "director": director}
    return Readiness(
        Store(reachable),  # type: ignore[arg-type]
        lambda: expiries,
        policy(tmp_path),
        clock,
    )


def test_ready_when_the_store_answers_and_certificates_are_valid(
    tmp_path: Path,
) -> None:
    found = check(readiness(tmp_path, True, NOW + dt.timedelta(days=1)))
    assert found == (True, {"database": "ok", "certificates": "ok", "policy": "ok"})


def test_not_ready_without_the_store_or_with_an_expired_certificate(
    tmp_path: Path,
) -> None:
    ready, checks = check(readiness(tmp_path, False, NOW - dt.timedelta(seconds=1)))
    assert not ready
    assert checks == {
        "database": "unreachable: postgresql://db/dcvix: connection refused",
        "certificates": "expired: director",
        "policy": "ok",
    }


def test_a_refused_policy_reload_is_reported_never_a_reason(tmp_path: Path) -> None:
    subject = readiness(tmp_path, True, NOW + dt.timedelta(days=1))
    holder = subject._policy
    (tmp_path / "users.json").write_text("[{")
    assert not holder.reload()

    ready, checks = check(subject)

    assert ready
    assert checks["policy"].startswith("ok (the last reload failed: ")


def test_callers_share_one_check_a_second(tmp_path: Path) -> None:
    # Anyone may ask: the store sees at most one read a second from here.
    subject = readiness(tmp_path, True, NOW + dt.timedelta(days=1))
    store = subject._registry
    reads: list[Deferred[int]] = []

    async def count(state: str) -> int:
        reads.append(Deferred())
        return await reads[-1]

    store.count = count  # type: ignore[method-assign]
    asked = [ensureDeferred(subject.check()) for _ in range(3)]
    assert len(reads) == 1  # the others wait for the first
    reads[0].callback(3)
    answers: list[bool] = []
    for one in asked:
        one.addCallback(lambda found: answers.append(found[0]))
    assert answers == [True, True, True]

    ensureDeferred(subject.check())  # within the second: the same finding
    assert len(reads) == 1
    clock = subject._clock
    assert isinstance(clock, Clock)
    clock.advance(1.0)
    ensureDeferred(subject.check())
    assert len(reads) == 2
