"""``GET /v1/admin/audit``: filters, pages, the CSV export and bad input."""

from __future__ import annotations

import csv
import datetime as dt
import io
import urllib.parse
from collections.abc import Iterator
from pathlib import Path

import pytest
from stub_api import call, login_cookie
from treq.testing import StubTreq

from dcvix.ctl import wait as done
from dcvix.director.registry import AuditEntry
from dcvix.testing import DirectorHarness, director_harness


@pytest.fixture
def director(tmp_path: Path) -> Iterator[DirectorHarness]:
    with director_harness(tmp_path) as harness:
        yield harness


@pytest.fixture
def stub(director: DirectorHarness) -> StubTreq:
    return StubTreq(director.resource())


@pytest.fixture
def alice(director: DirectorHarness, stub: StubTreq) -> str:
    """An admin's cookie, once the trail holds five lines an hour apart."""
    cookie = login_cookie(stub, "alice", "alice-pw", admin=True)
    now = dt.datetime.fromtimestamp(director.clock.seconds(), dt.UTC)
    for hours, actor, action in [
        (5, "bob", "login"),
        (4, "admin:alice", "approve"),
        (3, "=HYPERLINK(1)", "login failed"),
        (2, "os:root", "revoke"),
        (1, "bob", "logout"),
    ]:
        done(
            director.registry.append(
                AuditEntry(
                    now - dt.timedelta(hours=hours),
                    actor,
                    action,
                    "t",
                    "d,with comma",
                    "10.0.0.7",
                )
            )
        )
    return cookie


def actors(stub: StubTreq, cookie: str, query: str) -> list[str]:
    answer = call(stub, "GET", f"/v1/admin/audit?{query}", cookie=cookie)
    assert answer.code == 200, answer.body
    return [line["actor"] for line in answer.json()["entries"]]


def test_newest_first_with_every_field(stub: StubTreq, alice: str) -> None:
    answer = call(stub, "GET", "/v1/admin/audit", cookie=alice).json()
    # Newest first in the order they were recorded: the five lines, then
    # the admin's own login (recorded first, though their times are older).
    assert [line["actor"] for line in answer["entries"]] == [
        "bob",
        "os:root",
        "=HYPERLINK(1)",
        "admin:alice",
        "bob",
        "alice",
    ]
    assert answer["next"] is None
    login = answer["entries"][-1]
    assert sorted(login) == [
        "action",
        "actor",
        "address",
        "detail",
        "id",
        "outcome",
        "target",
        "time",
    ]
    assert (login["action"], login["outcome"]) == ("admin login", "ok")
    assert "alice-pw" not in str(answer)


def test_filters(stub: StubTreq, alice: str) -> None:
    assert actors(stub, alice, "actor=ALICE") == ["admin:alice", "alice"]
    assert actors(stub, alice, "action=login") == ["bob"]
    assert actors(stub, alice, "since=3h30m") == [
        "bob",
        "os:root",
        "=HYPERLINK(1)",
        "alice",
    ]
    assert actors(stub, alice, "since=3h30m&until=90m") == ["os:root", "=HYPERLINK(1)"]
    moment = urllib.parse.quote("2000-01-01T00:00:00Z")
    assert actors(stub, alice, f"until={moment}") == []


def test_pages_follow_next(stub: StubTreq, alice: str) -> None:
    seen, after = [], ""
    for _ in range(4):
        answer = call(
            stub, "GET", f"/v1/admin/audit?limit=2{after}", cookie=alice
        ).json()
        seen += [line["actor"] for line in answer["entries"]]
        if answer["next"] is None:
            break
        after = f"&after={answer['next']}"
    assert seen == ["bob", "os:root", "=HYPERLINK(1)", "admin:alice", "bob", "alice"]


def test_the_csv_export(stub: StubTreq, alice: str) -> None:
    answer = call(stub, "GET", "/v1/admin/audit?format=csv&actor=o", cookie=alice)
    assert answer.code == 200
    assert answer.headers.getRawHeaders("Content-Type") == ["text/csv; charset=utf-8"]
    assert "attachment" in answer.headers.getRawHeaders("Content-Disposition")[0]
    rows = list(csv.reader(io.StringIO(answer.body.decode())))
    assert rows[0] == [
        "id",
        "time",
        "actor",
        "action",
        "target",
        "address",
        "outcome",
        "detail",
    ]
    # A cell a spreadsheet would run as a formula is text.
    assert [row[2] for row in rows[1:]] == ["bob", "os:root", "bob"]
    assert rows[1][7] == "d,with comma"
    formulas = call(
        stub, "GET", "/v1/admin/audit?format=csv&action=login+failed", cookie=alice
    )
    assert list(csv.reader(io.StringIO(formulas.body.decode())))[1][2] == (
        "'=HYPERLINK(1)"
    )


@pytest.mark.parametrize(
    ("query", "error"),
    [
        ("limit=0", "limit must be a number from 1 to 1000"),
        ("limit=1001", "limit must be a number from 1 to 1000"),
        ("limit=x", "limit must be a number from 1 to 1000"),
        ("after=-1", "after must be the id of an audit line (a number)"),
        (
            "since=yesterday",
            "since must be an RFC 3339 time (2026-12-08T09:00:00Z) or a duration "
            "back from now (24h)",
        ),
        (
            "until=9999999999999h",
            "until must be an RFC 3339 time (2026-12-08T09:00:00Z) or a duration "
            "back from now (24h)",
        ),
        ("format=xml", "format must be json or csv"),
        ("limit=%C2%B2", "limit must be a number from 1 to 1000"),
        (
            "after=9223372036854775808",
            "after must be the id of an audit line (a number)",
        ),
        ("until=0001-01-01T00:00:00Z", "until must be after 1970"),
        ("since=999999h", "since must be after 1970"),
        ("outcome=maybe", "outcome must be one of ok, failed, refused"),
        ("actor=" + "x" * 257, "actor is longer than 256 characters"),
    ],
)
def test_bad_input_is_a_clear_400(
    stub: StubTreq, alice: str, query: str, error: str
) -> None:
    answer = call(stub, "GET", f"/v1/admin/audit?{query}", cookie=alice)
    assert answer.outcome == (400, {"error": error})


def test_users_may_not_read_it(stub: StubTreq, alice: str) -> None:
    bob = login_cookie(stub, "bob", "bob-pw", admin=False)
    answer = call(stub, "GET", "/v1/admin/audit", cookie=bob)
    assert answer.code == 403


def test_a_long_export_is_written_page_by_page(
    director: DirectorHarness, stub: StubTreq, alice: str
) -> None:
    now = dt.datetime.fromtimestamp(director.clock.seconds(), dt.UTC)
    for n in range(2500):
        done(director.registry.append(AuditEntry(now, f"user{n}", "login", "")))
    answer = call(stub, "GET", "/v1/admin/audit?format=csv&action=login", cookie=alice)
    rows = list(csv.reader(io.StringIO(answer.body.decode())))
    assert len(rows) == 1 + 2500 + 1  # the header, these, the fixture's bob
    assert [row[2] for row in rows[1:4]] == ["user2499", "user2498", "user2497"]
    ids = [int(row[0]) for row in rows[1:]]
    assert ids == sorted(ids, reverse=True)
    limited = call(stub, "GET", "/v1/admin/audit?format=csv&limit=1500", cookie=alice)
    assert len(list(csv.reader(io.StringIO(limited.body.decode())))) == 1501


def test_outcome_filter(stub: StubTreq, alice: str) -> None:
    answer = call(stub, "GET", "/v1/admin/audit?outcome=ok", cookie=alice).json()
    assert {line["outcome"] for line in answer["entries"]} == {"ok"}
