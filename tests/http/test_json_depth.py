"""A JSON body nested too deep to walk is a 400, never a 500."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred

from dcvix.testing import director_harness


def _answer(stub: StubTreq, path: str, body: bytes) -> tuple[int, object]:
    results: list[object] = []
    # StubTreq sets its treq methods in __init__, out of the type checker's view.
    request: Deferred[object] = stub.post(  # type: ignore[attr-defined]
        f"https://director{path}", data=body
    )
    request.addBoth(results.append)
    stub.flush()
    response = results[0]
    contents: list[bytes] = []
    response.content().addBoth(contents.append)  # type: ignore[attr-defined]
    stub.flush()
    return response.code, json.loads(contents[0])  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", ["/v1/agent/register", "/v1/user/login"])
@pytest.mark.parametrize("depth", [958, 990, 5000])
def test_a_body_nested_near_the_recursion_limit_is_refused(
    tmp_path: Path, path: str, depth: int
) -> None:
    with director_harness(tmp_path) as harness:
        stub = StubTreq(harness.resource())
        body = b'{"userID": ' + b"[" * depth + b"]" * depth + b"}"
        assert _answer(stub, path, body) == (
            400,
            {"error": "request body is nested too deeply"},
        )


def test_a_deep_but_walkable_body_reaches_the_route(tmp_path: Path) -> None:
    with director_harness(tmp_path) as harness:
        stub = StubTreq(harness.resource())
        body = b'{"userID": ' + b"[" * 100 + b"]" * 100 + b"}"
        assert _answer(stub, "/v1/user/login", body) == (
            400,
            {"error": "field 'userID' must be a string"},
        )
