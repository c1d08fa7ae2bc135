"""Properties of request-body decoding into declared types (hypothesis).

Every request type a director route declares is filled from any JSON value
or refused with a :class:`BadRequest` naming the body or the field, never
another exception and never a field of another type; a body written with
its keys in any case, unknown keys beside them, comes back as the request
it was made from.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from collections.abc import Callable
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from dcvix.common.errors import BadRequest
from dcvix.common.jsonfields import decode
from dcvix.director.api.dcv import ResolveSessionRequest
from dcvix.director.requests import (
    ConfigRequest,
    CreateSessionRequest,
    LoginRequest,
    RegisterRequest,
    RenewRequest,
    UserSessionRequest,
)

KINDS: list[type[Any]] = [
    RegisterRequest,
    RenewRequest,
    LoginRequest,
    CreateSessionRequest,
    ConfigRequest,
    UserSessionRequest,
    ResolveSessionRequest,
]


def declared(kind: type[Any]) -> dict[str, tuple[str, type]]:
    """Python field name -> (JSON key, the type its value must have)."""
    hints = typing.get_type_hints(kind)
    return {
        f.name: (
            f.metadata.get("json", f.name),
            typing.get_origin(hints[f.name]) or hints[f.name],
        )
        for f in dataclasses.fields(kind)
    }


JSON_KEYS = sorted({key for kind in KINDS for key, _ in declared(kind).values()})
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8)
)
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(JSON_KEYS).map(str.upper)
            | st.sampled_from(JSON_KEYS)
            | st.text(max_size=6),
            inner,
            max_size=5,
        )
    ),
    max_leaves=15,
)
MESSAGES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "a list",
    dict: "an object",
}


@settings(max_examples=150)
@given(kind=st.sampled_from(KINDS), value=JSON_VALUES)
def test_any_json_is_the_declared_type_or_a_bad_request(
    kind: type[Any], value: Any
) -> None:
    fields = declared(kind)
    try:
        decoded = decode(kind, value)
    except BadRequest as error:
        assert error.status == 400
        allowed = {"request body must be a JSON object"} | {
            f"field {key!r} must be {MESSAGES[wanted]}"
            for key, wanted in fields.values()
        }
        assert error.message in allowed
        return
    assert isinstance(value, dict)
    assert isinstance(decoded, kind)
    for name, (_key, wanted) in fields.items():
        got = getattr(decoded, name)
        assert type(got) is wanted, (name, got)


def field_values(wanted: type) -> st.SearchStrategy[Any]:
    if wanted is str:
        return st.text(max_size=12)
    if wanted is list:
        return st.lists(SCALARS, max_size=3)
    raise AssertionError(f"no strategy for {wanted}")


CASES: st.SearchStrategy[Callable[[str], str]] = st.sampled_from(
    [str, str.upper, str.lower, str.swapcase, str.title]
)


@st.composite
def bodies(draw: st.DrawFn) -> tuple[type[Any], Any, dict[str, Any]]:
    """A request, and a JSON body a Go client could have sent for it."""
    kind = draw(st.sampled_from(KINDS))
    values: dict[str, Any] = {}
    body: dict[str, Any] = {}
    for name, (key, wanted) in declared(kind).items():
        if draw(st.booleans()) or draw(st.booleans()):
            values[name] = draw(field_values(wanted))
            body[draw(CASES)(key)] = values[name]
        else:
            values[name] = wanted()
            if draw(st.booleans()):
                body[draw(CASES)(key)] = None  # null is the zero value, as in Go
    folded = {key.lower() for key, _ in declared(kind).values()}
    for extra, value in draw(
        st.dictionaries(st.text(max_size=8), SCALARS, max_size=3)
    ).items():
        if extra.lower() not in folded:
            body[extra] = value
    return kind, kind(**values), body


@settings(max_examples=100)
@given(made=bodies())
def test_a_body_in_any_case_with_unknown_keys_comes_back(
    made: tuple[type[Any], Any, dict[str, Any]],
) -> None:
    kind, expected, body = made
    assert decode(kind, json.loads(json.dumps(body))) == expected


WRONG: dict[type, st.SearchStrategy[Any]] = {
    str: st.integers() | st.booleans() | st.lists(st.text(), max_size=2) | st.just({}),
    list: st.text(max_size=4) | st.integers() | st.booleans() | st.just({}),
}


@settings(max_examples=100)
@given(data=st.data(), kind=st.sampled_from(KINDS), case=CASES)
def test_a_value_of_the_wrong_type_is_refused_naming_its_field(
    data: st.DataObject, kind: type[Any], case: Any
) -> None:
    fields = declared(kind)
    key, wanted = data.draw(st.sampled_from(sorted(fields.values())))
    body = {case(key): data.draw(WRONG[wanted])}
    try:
        decode(kind, body)
    except BadRequest as error:
        assert error.message == f"field {key!r} must be {MESSAGES[wanted]}"
    else:
        raise AssertionError(f"{body} accepted as {kind.__name__}")
