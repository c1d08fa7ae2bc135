"""An approval is for what the admin saw: refused when the agent changed since.

A pending agent may register again (same key) with another hostname while
the admin reads the confirmation; the web UI sends what it showed
(``hostname``, ``fingerprint``, and with replace ``replaces``), and the
director refuses with 409, changing nothing, when the agent or the
hostname's holders no longer match.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from stub_api import call, login_cookie, result_of
from treq.testing import StubTreq
from twisted.internet.defer import Deferred

from dcvix.testing import DirectorHarness, director_harness
from dcvix.testing.director import NOW

T = TypeVar("T")
PENDING = "11111111-1111-4111-8111-111111111111"
HOLDER = "22222222-2222-4222-8222-222222222222"
OTHER = "33333333-3333-4333-8333-333333333333"
KEY = "ab" * 32


def done(work: Coroutine[Any, Any, T]) -> T:
    value: T = result_of(Deferred.fromCoroutine(work))
    return value


@pytest.fixture
def director(tmp_path: Path) -> Iterator[DirectorHarness]:
    with director_harness(tmp_path) as harness:
        yield harness


def approve(director: DirectorHarness, query: str) -> tuple[int, Any]:
    stub = StubTreq(director.resource())
    admin = login_cookie(stub, "alice", "alice-pw", admin=True)
    return call(
        stub, "POST", f"/v1/admin/agents/{PENDING}/approve?{query}", b"{}", admin
    ).outcome


def state(director: DirectorHarness, guid: str) -> str:
    record = done(director.registry.get(guid))
    assert record is not None
    return record.state


def test_a_pending_agent_that_changed_its_hostname_is_not_approved(
    director: DirectorHarness,
) -> None:
    assert done(
        director.registry.create_pending(PENDING, "ws-finance", KEY, "10.0.0.9", NOW)
    )
    status, body = approve(director, f"hostname=ws-harmless&fingerprint={KEY}")
    assert status == 409
    assert "now asks for hostname ws-finance, not ws-harmless" in body["error"]
    assert state(director, PENDING) == "pending"
    status, body = approve(director, f"hostname=ws-finance&fingerprint={'cd' * 32}")
    assert status == 409
    assert state(director, PENDING) == "pending"
    status, body = approve(director, f"hostname=WS-Finance&fingerprint={KEY}")
    assert status == 200, body
    assert state(director, PENDING) == "registered"


def test_replace_revokes_only_the_holders_the_admin_saw(
    director: DirectorHarness,
) -> None:
    later = NOW + dt.timedelta(seconds=1)
    assert done(
        director.registry.create_registered(HOLDER, "ws-x", "ef" * 32, "", NOW, "setup")
    )
    assert done(director.registry.create_pending(PENDING, "ws-x", KEY, "", later))
    status, body = approve(director, f"replace=true&hostname=ws-x&replaces={OTHER}")
    assert status == 409
    assert f"now registered to {HOLDER}" in body["error"]
    assert (state(director, PENDING), state(director, HOLDER)) == (
        "pending",
        "registered",
    )
    status, body = approve(director, f"replace=true&hostname=ws-x&replaces={HOLDER}")
    assert status == 200, body
    assert body["replaced"] == [HOLDER]
    assert (state(director, PENDING), state(director, HOLDER)) == (
        "registered",
        "revoked",
    )
