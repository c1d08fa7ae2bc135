"""A JSON body nested deeper than any request needs is a 400, never a 500."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from treq.testing import StubTreq
from twisted.internet.defer import Deferred

from dcvix.common.http import MAX_JSON_DEPTH
from dcvix.testing import director_harness


def _answer(stub: StubTreq, path: str, body: bytes) -> tuple[int, object]:
    results: list[object] = []
    request: Deferred[object] = stub.post(f"https://director{path}", data=body)  # type: ignore[attr-defined]
    request.addBoth(results.append)
    stub.flush()
    response = results[0]
    contents: list[bytes] = []
    response.content().addBoth(contents.append)  # type: ignore[attr-defined]
    stub.flush()
    return response.code, json.loads(contents[0])  # type: ignore[attr-defined]


@pytest.mark.parametrize("path", ["/v1/agent/register", "/v1/user/login"])
@pytest.mark.parametrize("depth", [MAX_JSON_DEPTH + 1, 500, 958, 990])
def test_a_deeply_nested_body_is_refused(tmp_path: Path, path: str, depth: int) -> None:
    with director_harness(tmp_path) as harness:
        stub = StubTreq(harness.resource())
        body = b'{"userID": ' + b"[" * depth + b"]" * depth + b"}"
        assert _answer(stub, path, body) == (
            400,
            {"error": "request body is nested too deeply"},
        )


def test_nesting_up_to_the_limit_reaches_the_route(tmp_path: Path) -> None:
    with director_harness(tmp_path) as harness:
        stub = StubTreq(harness.resource())
        depth = MAX_JSON_DEPTH - 1  # the object itself is one level
        body = b'{"userID": ' + b"[" * depth + b"]" * depth + b"}"
        assert _answer(stub, "/v1/user/login", body) == (
            400,
            {"error": "field 'userID' must be a string"},
        )
