"""JSON errors, Go-lenient JSON bodies and the 500 that hides its cause (StubTreq)."""

from __future__ import annotations

import io
import json
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from klein import Klein
from treq.testing import StubTreq
from twisted.internet.defer import Deferred
from twisted.logger import ILogObserver, globalLogPublisher
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest

from dcvix.common.errors import BadRequest
from dcvix.common.http import (
    install_error_handlers,
    json_response,
    read_json,
)
from dcvix.common.jsonfields import go_fields
from dcvix.testing import director_harness

ECHO_FIELDS = {"userID": str, "count": int}


class EchoAPI:
    """A test-only API built like the real ones."""

    app = Klein()
    install_error_handlers(app)

    @app.route("/echo", methods=["POST"])
    def echo(self, request: IRequest) -> bytes:
        return json_response(request, 200, go_fields(read_json(request), ECHO_FIELDS))

    @app.route("/boom", methods=["GET"])
    def boom(self, request: IRequest) -> bytes:
        raise RuntimeError("secret detail")


def result_of(d: Deferred[Any]) -> Any:
    """The result of a Deferred that has already fired (trial's successResultOf)."""
    box: list[Any] = []
    d.addBoth(box.append)
    assert box, "Deferred has not fired"
    if isinstance(box[0], Failure):
        box[0].raiseException()
    return box[0]


class Answer:
    def __init__(self, code: int, headers: Any, body: bytes) -> None:
        self.code = code
        self.headers = headers
        self.body = body

    def header(self, name: str) -> str | None:
        values = self.headers.getRawHeaders(name)
        return None if values is None else ",".join(values)

    def json(self) -> Any:
        return json.loads(self.body)


def call(stub: StubTreq, method: str, url: str, **kwargs: Any) -> Answer:
    # StubTreq sets its treq methods in __init__, out of the type checker's view.
    d = stub.request(method, url, **kwargs)  # type: ignore[attr-defined]
    stub.flush()
    response = result_of(d)
    content = response.content()
    stub.flush()
    return Answer(response.code, response.headers, result_of(content))


@pytest.fixture
def director(tmp_path: Path) -> Iterator[StubTreq]:
    with director_harness(tmp_path) as harness:
        yield StubTreq(harness.resource())


@pytest.fixture
def echo() -> StubTreq:
    return StubTreq(EchoAPI().app.resource())


@pytest.fixture
def log_events() -> Iterator[list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    observer = cast(ILogObserver, events.append)
    globalLogPublisher.addObserver(observer)
    yield events
    globalLogPublisher.removeObserver(observer)


# ----------------------------------------------------------- DirectorRoot


def test_health_is_healthy_json_with_a_trailing_newline(director: StubTreq) -> None:
    answer = call(director, "GET", "http://director.test/v1/health")
    assert answer.code == 200
    assert answer.header("Content-Type") == "application/json"
    assert answer.json() == {"status": "healthy"}
    assert answer.body.endswith(b"}\n")


def test_head_health_answers_200_without_a_body(director: StubTreq) -> None:
    answer = call(director, "HEAD", "http://director.test/v1/health")
    assert answer.code == 200
    assert answer.body == b""


@pytest.mark.parametrize(
    "path",
    [
        "/v1/nothing",
        "/v1/health/extra",
        "/v1/HEALTH",
        "/index.html",
        "/favicon.ico",
        "/admin/users",
        "/portal/x",
        "/assets/js/none.js",
        "/assets/index.html",
    ],
)
def test_unknown_path_is_404_json(director: StubTreq, path: str) -> None:
    answer = call(director, "GET", f"http://director.test{path}")
    assert answer.code == 404
    assert answer.header("Content-Type") == "application/json"
    assert answer.json() == {"error": "not found"}
    assert answer.body.endswith(b"\n")


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
def test_wrong_method_is_405_json_with_allow(director: StubTreq, method: str) -> None:
    answer = call(director, method, "http://director.test/v1/health")
    assert answer.code == 405
    assert answer.header("Content-Type") == "application/json"
    assert answer.header("Allow") == "GET, HEAD"
    assert answer.json() == {"error": "method not allowed"}


def test_merged_slashes_redirect_to_the_route_with_a_relative_location(
    director: StubTreq,
) -> None:
    answer = call(
        director,
        "GET",
        "http://director.test/v1//health?x=1",
        allow_redirects=False,
    )
    assert answer.code == 308
    assert answer.header("Location") == "/v1/health?x=1"
    assert answer.header("Content-Type") == "application/json"
    assert answer.json() == {"error": "permanent redirect"}


def test_unknown_path_with_a_body_is_still_404(director: StubTreq) -> None:
    answer = call(director, "POST", "http://director.test/v1/nothing", data=b'{"a": 1}')
    assert answer.code == 404
    assert answer.json() == {"error": "not found"}


# ------------------------------------------------ install_error_handlers


def test_echo_returns_the_fields_it_read(echo: StubTreq) -> None:
    answer = call(
        echo,
        "POST",
        "http://api.test/echo",
        data=b'{"USERID": "alice", "count": 3, "extra": [1, 2]}',
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert answer.code == 200
    assert answer.header("Content-Type") == "application/json"
    assert answer.json() == {"userID": "alice", "count": 3}


def test_api_error_keeps_its_status_and_message(echo: StubTreq) -> None:
    answer = call(echo, "POST", "http://api.test/echo", data=b'{"count": "3"}')
    assert answer.code == 400
    assert answer.header("Content-Type") == "application/json"
    assert answer.json() == {"error": "field 'count' must be an integer"}


def test_unexpected_error_is_500_without_detail_and_logged(
    echo: StubTreq, log_events: list[dict[str, Any]]
) -> None:
    answer = call(echo, "GET", "http://api.test/boom")
    assert answer.code == 500
    assert answer.header("Content-Type") == "application/json"
    assert answer.json() == {"error": "internal error"}
    assert b"secret detail" not in answer.body
    assert b"Traceback" not in answer.body
    assert b"RuntimeError" not in answer.body

    failures = [e for e in log_events if "log_failure" in e]
    assert len(failures) == 1
    event = failures[0]
    assert event["log_failure"].check(RuntimeError) is RuntimeError
    assert str(event["log_failure"].value) == "secret detail"
    assert event["log_namespace"] == "dcvix.common.http"
    assert event["method"] == "GET"
    assert event["path"] == "/boom"


def test_test_app_has_json_404_and_405(echo: StubTreq) -> None:
    missing = call(echo, "POST", "http://api.test/nope", data=b"{}")
    assert (missing.code, missing.json()) == (404, {"error": "not found"})
    wrong = call(echo, "GET", "http://api.test/echo")
    assert (wrong.code, wrong.json()) == (405, {"error": "method not allowed"})
    assert wrong.header("Allow") == "POST"


# ------------------------------------------------ junk never gives a 500

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["userID", "userid", "USERID", "count", "Count", "x"])
            | st.text(max_size=8),
            children,
            max_size=4,
        )
    ),
    max_leaves=12,
)


def assert_200_or_400_json(answer: Answer) -> None:
    assert answer.code in (200, 400), (answer.code, answer.body)
    assert answer.header("Content-Type") == "application/json"
    body = answer.json()
    if answer.code == 400:
        assert set(body) == {"error"}
        assert isinstance(body["error"], str)
    else:
        assert set(body) == {"userID", "count"}
        assert isinstance(body["userID"], str)
        assert type(body["count"]) is int


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(body=st.binary(max_size=300))
def test_binary_junk_is_200_or_400_never_500(body: bytes) -> None:
    stub = StubTreq(EchoAPI().app.resource())
    assert_200_or_400_json(call(stub, "POST", "http://api.test/echo", data=body))


@settings(max_examples=200, deadline=None)
@given(
    value=json_values,
    prefix=st.sampled_from(["", " ", "\n\t"]),
    suffix=st.sampled_from(["", " ", "}", "]", "garbage", "\x00", "{"]),
)
def test_json_ish_junk_is_200_or_400_never_500(
    value: Any, prefix: str, suffix: str
) -> None:
    stub = StubTreq(EchoAPI().app.resource())
    text = prefix + json.dumps(value) + suffix
    answer = call(stub, "POST", "http://api.test/echo", data=text.encode())
    assert_200_or_400_json(answer)
    if isinstance(value, dict) and answer.code == 200:
        assert answer.json() == go_fields(value, ECHO_FIELDS)


@pytest.mark.parametrize(
    "body",
    [
        b'{"count": 1' + b"0" * 5000 + b"}",
        b'{"count": NaN}',
        b'{"count": Infinity}',
        b'{"count": -Infinity}',
        b'{"userID": NaN}',
        b"[" * 100000 + b"]" * 100000,
        b'{"userID": "\\ud800"}',
        b'{"userID": "a\\u0000b"}',
        b'{"count": 1e400}',
        b"\xef\xbb\xbf{}",
    ],
)
def test_edge_case_bodies_are_answered_without_a_500(
    echo: StubTreq, body: bytes
) -> None:
    assert_200_or_400_json(call(echo, "POST", "http://api.test/echo", data=body))


# --------------------------------------------------------------- go_fields


def test_go_fields_keys_match_in_any_case() -> None:
    assert go_fields({"USERID": "bob", "COUNT": 2}, ECHO_FIELDS) == {
        "userID": "bob",
        "count": 2,
    }
    assert go_fields({"userid": "bob", "cOuNt": 2}, ECHO_FIELDS) == {
        "userID": "bob",
        "count": 2,
    }


def test_go_fields_prefers_an_exact_match() -> None:
    assert go_fields({"userid": "folded", "userID": "exact"}, ECHO_FIELDS) == {
        "userID": "exact",
        "count": 0,
    }
    assert go_fields({"userID": "exact", "USERID": "folded"}, ECHO_FIELDS) == {
        "userID": "exact",
        "count": 0,
    }


def test_go_fields_ignores_unknown_keys() -> None:
    assert go_fields(
        {"userID": "a", "count": 1, "role": "admin", "isAdmin": True}, ECHO_FIELDS
    ) == {"userID": "a", "count": 1}


def test_go_fields_null_or_missing_is_the_zero_value() -> None:
    spec = {"s": str, "i": int, "f": float, "b": bool, "l": list, "d": dict}
    zero = {"s": "", "i": 0, "f": 0.0, "b": False, "l": [], "d": {}}
    assert go_fields({}, spec) == zero
    assert go_fields(dict.fromkeys(spec), spec) == zero


def test_go_fields_zero_lists_are_not_shared() -> None:
    first = go_fields({}, {"tags": list})
    first["tags"].append("x")
    assert go_fields({}, {"tags": list}) == {"tags": []}


def test_go_fields_float_accepts_integers() -> None:
    result = go_fields({"ratio": 2}, {"ratio": float})
    assert result == {"ratio": 2.0}
    assert type(result["ratio"]) is float


@pytest.mark.parametrize(
    ("body", "spec", "message"),
    [
        ({"count": True}, {"count": int}, "field 'count' must be an integer"),
        ({"count": 1.5}, {"count": int}, "field 'count' must be an integer"),
        ({"count": "1"}, {"count": int}, "field 'count' must be an integer"),
        ({"userID": 1}, {"userID": str}, "field 'userID' must be a string"),
        ({"userID": ["a"]}, {"userID": str}, "field 'userID' must be a string"),
        ({"on": 1}, {"on": bool}, "field 'on' must be a boolean"),
        ({"ratio": False}, {"ratio": float}, "field 'ratio' must be a number"),
        ({"tags": "a"}, {"tags": list}, "field 'tags' must be a list"),
        ({"conf": []}, {"conf": dict}, "field 'conf' must be an object"),
        ({"USERID": 7}, {"userID": str}, "field 'userID' must be a string"),
    ],
)
def test_go_fields_wrong_type_is_bad_request(
    body: dict[str, Any], spec: dict[str, type], message: str
) -> None:
    with pytest.raises(BadRequest) as raised:
        go_fields(body, spec)
    assert raised.value.status == 400
    assert raised.value.message == message


@pytest.mark.parametrize("body", [[], ["userID"], "userID", 3, True, None])
def test_go_fields_non_object_is_bad_request(body: Any) -> None:
    with pytest.raises(BadRequest) as raised:
        go_fields(body, ECHO_FIELDS)
    assert raised.value.message == "request body must be a JSON object"


# --------------------------------------------------------------- read_json


def body_of(raw: bytes) -> Any:
    return types.SimpleNamespace(content=io.BytesIO(raw))


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        (b'{"a": 1}', {"a": 1}),
        (b'  \n{"a": 1}', {"a": 1}),
        (b'{"a": 1} trailing garbage', {"a": 1}),
        (b'{"a": 1}{"b": 2}', {"a": 1}),
        (b"[1, 2]]]", [1, 2]),
        (b'"text"', "text"),
        (b"null", None),
        ('{"name": "J\u00fcrgen"}'.encode(), {"name": "J\u00fcrgen"}),
    ],
)
def test_read_json_takes_the_first_value(raw: bytes, value: Any) -> None:
    assert read_json(body_of(raw)) == value


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "request body is empty"),
        (b"  \r\n\t", "request body is empty"),
        (b'{"a": "\xff"}', "request body is not UTF-8"),
        (b"\xc3\x28", "request body is not UTF-8"),
        (b"{", "request body is not valid JSON"),
        (b"garbage", "request body is not valid JSON"),
        (b"{'a': 1}", "request body is not valid JSON"),
        (b"[" * 100000, "request body is nested too deeply"),
        (b"NaN", "request body is not valid JSON"),
        (b'{"a": Infinity}', "request body is not valid JSON"),
        (b"-Infinity", "request body is not valid JSON"),
        (b'{"a": 1e400}', "request body is not valid JSON"),
        (b'{"a": -1e400}', "request body is not valid JSON"),
        (b"1" * 5000, "request body is not valid JSON"),
    ],
)
def test_read_json_refuses_what_is_not_json(raw: bytes, message: str) -> None:
    with pytest.raises(BadRequest) as raised:
        read_json(body_of(raw))
    assert raised.value.status == 400
    assert raised.value.message == message


def test_read_json_reads_whatever_the_content_type(echo: StubTreq) -> None:
    for content_type in ("text/plain", "application/x-www-form-urlencoded", None):
        headers = {"Content-Type": content_type} if content_type else {}
        answer = call(
            echo,
            "POST",
            "http://api.test/echo",
            data=b'{"userID": "u", "count": 1}',
            headers=headers,
        )
        assert (answer.code, answer.json()) == (200, {"userID": "u", "count": 1})


@pytest.mark.parametrize(
    "raw",
    [b'{"userID": "\\ud800", "password": "x"}', b'{"registrationToken": "\\udfff"}'],
)
def test_read_json_refuses_a_lone_surrogate_escape(raw: bytes) -> None:
    with pytest.raises(BadRequest) as raised:
        read_json(body_of(raw))
    assert raised.value.status == 400
    assert raised.value.message == "request body holds an invalid \\u escape"
