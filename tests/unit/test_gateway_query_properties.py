"""Properties of what the Amazon DCV pieces send the director (hypothesis).

The Connection Gateway's ``/resolveSession`` query string (or the seed's JSON
body) and a DCV server's urlencoded verifier form: whatever bytes arrive,
they are read as fields or refused with a 400, never another exception; and
fields encoded as a browser, Go or DCV encodes them come back as they were.
"""

from __future__ import annotations

import io
import json
import types
from typing import Any
from urllib.parse import parse_qsl, quote, quote_plus, urlencode

from hypothesis import example, given, settings
from hypothesis import strategies as st
from twisted.web.http import parse_qs as twisted_parse_qs

from dcvix.common.errors import BadRequest
from dcvix.common.validate import InvalidInput, check_session_id
from dcvix.director.api.dcv import (
    DEFAULT_TRANSPORT,
    MAX_FIELDS,
    ResolveSessionRequest,
    _client,
    _field,
    _resolve_request,
    form_fields,
    query_fields,
)

FORM = b"application/x-www-form-urlencoded"
NAMES = ["sessionId", "transport", "clientIpAddress", "authenticationToken"]


def request(target: bytes, body: bytes = b"", kind: bytes | None = None) -> Any:
    """What the routes read of a twisted.web request, as twisted.web fills it."""
    query = target.partition(b"?")[2]
    headers = {b"content-type": kind} if kind is not None else {}
    return types.SimpleNamespace(
        uri=target,
        content=io.BytesIO(body),
        args=twisted_parse_qs(query, 1) if b"?" in target else {},
        getHeader=lambda name: headers.get(name.lower()),
    )


# Bytes that matter to a query string, often; anything else, sometimes.
QUERY_BYTES = st.lists(
    st.sampled_from(
        [
            b"?",
            b"&",
            b"=",
            b"+",
            b"#",
            b";",
            b"%",
            b"%2",
            b"%20",
            b"%C3%A9",
            b"%FF",
            b"%zz",
            b"\xc3\xa9",
            b"\xff",
            b"sessionId",
            b"SESSIONID",
            b"transport",
            b"clientIpAddress",
            b"s-1",
            b"HTTP",
            b"QUIC",
            b"::1",
            b"\x00",
        ]
    )
    | st.binary(max_size=4),
    max_size=12,
).map(b"".join)


def first_fields(query: bytes) -> dict[str, str] | None:
    """A model of ``query_fields``: Python's own parser, byte for byte.

    None where a name or value is not UTF-8 (the route answers 400).
    """
    found: dict[str, str] = {}
    for raw_name, raw_value in parse_qsl(
        query.decode("latin-1"), keep_blank_values=True, encoding="latin-1"
    ):
        try:
            name = raw_name.encode("latin-1").decode("utf-8")
            value = raw_value.encode("latin-1").decode("utf-8")
        except UnicodeDecodeError:
            return None
        found.setdefault(name, value)
    return found


@settings(max_examples=100)
@given(path=st.sampled_from([b"/resolveSession", b"/x?"]), query=QUERY_BYTES)
def test_a_query_string_is_its_first_fields_or_a_400(path: bytes, query: bytes) -> None:
    target = path + b"?" + query
    expected = first_fields(target.partition(b"?")[2].partition(b"#")[0])
    try:
        found = query_fields(target)
    except BadRequest as error:
        assert (error.status, error.message) == (400, "query string is not UTF-8")
        assert expected is None
        return
    assert found == expected


TEXTS = st.text(st.characters(blacklist_categories=["Cs"]), max_size=12)


@settings(max_examples=80)
@given(
    pairs=st.lists(st.tuples(st.sampled_from(NAMES) | TEXTS, TEXTS), max_size=6),
    plus=st.booleans(),
)
def test_urlencoded_fields_come_back_as_they_were(
    pairs: list[tuple[str, str]], plus: bool
) -> None:
    encoded = urlencode(pairs, quote_via=quote_plus if plus else quote)
    expected: dict[str, str] = {}
    for name, value in pairs:
        expected.setdefault(name, value)
    assert query_fields(b"/resolveSession?" + encoded.encode()) == expected


SESSION_IDS = st.from_regex(
    r"[A-Za-z0-9_.@:+=][A-Za-z0-9_.@:+=-]{0,30}", fullmatch=True
)
ADDRESSES = st.sampled_from(["", "192.0.2.7", "2001:db8::1", "::ffff:10.0.0.1"]) | TEXTS


@settings(max_examples=80)
@given(
    session=SESSION_IDS.filter(lambda s: s.strip(".")),
    transport=st.sampled_from(["", "HTTP", "QUIC", "XXXX"]),
    client=ADDRESSES,
    as_json=st.booleans(),
)
def test_the_gateways_fields_come_back_checked(
    session: str, transport: str, client: str, as_json: bool
) -> None:
    fields = {"sessionId": session, "transport": transport, "clientIpAddress": client}
    if as_json:
        asked = _resolve_request(
            request(b"/resolveSession", json.dumps(fields).encode())
        )
    else:
        target = b"/resolveSession?" + urlencode(fields).encode()
        asked = _resolve_request(request(target))
    assert asked == ResolveSessionRequest(
        session, transport or DEFAULT_TRANSPORT, client
    )
    assert isinstance(_client(asked.client_ip_address), str)


@settings(max_examples=100)
@given(
    query=QUERY_BYTES,
    body=st.binary(max_size=40)
    | st.sampled_from([b'{"sessionId": "s-1"}', b'{"SESSIONID": "s-1", "x": 1}']),
)
@example(query=b"sessionId=%FF", body=b"")
@example(query=b"", body=b'{"sessionId": "\\ud800"}')
def test_any_gateway_request_is_fields_or_a_400(query: bytes, body: bytes) -> None:
    try:
        asked = _resolve_request(request(b"/resolveSession?" + query, body))
    except BadRequest as error:
        assert error.status == 400 and error.message
        return
    try:
        check_session_id(asked.session_id)
    except InvalidInput:
        raise AssertionError(f"accepted session id {asked.session_id!r}") from None
    assert asked.transport.isascii() and asked.transport.isprintable()
    assert " " not in asked.transport and 1 <= len(asked.transport) <= 32
    assert isinstance(_client(asked.client_ip_address), str)


# ------------------------------------------------------------ the verifier form


@settings(max_examples=100)
@given(
    body=QUERY_BYTES,
    query=QUERY_BYTES,
    kind=st.sampled_from([FORM, FORM + b"; charset=utf-8", b"text/plain", None]),
)
def test_any_verifier_form_is_read_never_raises(
    body: bytes, query: bytes, kind: bytes | None
) -> None:
    fields = form_fields(request(b"/v1/user/authtokenverify?" + query, body, kind))
    for name, values in fields.items():
        assert isinstance(name, bytes)
        assert values and all(isinstance(v, bytes) for v in values)
        assert isinstance(_field(fields, name), str)


VALUES = st.text(st.characters(blacklist_categories=["Cs"]), max_size=16)


@settings(max_examples=80)
@given(
    token=VALUES,
    session=VALUES,
    address=VALUES,
    extra=st.lists(st.tuples(VALUES, VALUES), max_size=3),
    plus=st.booleans(),
    in_query=st.booleans(),
)
# Regression: a non-ASCII value anywhere in the body (even in a field DCV
# does not send) made Python's parse_qs refuse the whole body, so every field
# read as empty.
@example(
    token="v4.local.x",
    session="s-1",
    address="café",
    extra=[],
    plus=True,
    in_query=False,
)
@example(
    token="v4.local.x",
    session="s-1",
    address="",
    extra=[("é", "")],
    plus=False,
    in_query=False,
)
def test_a_dcv_servers_form_comes_back_as_it_was(
    token: str,
    session: str,
    address: str,
    extra: list[tuple[str, str]],
    plus: bool,
    in_query: bool,
) -> None:
    sent = [
        ("sessionId", session),
        ("authenticationToken", token),
        ("clientAddress", address),
        *extra,
    ]
    encoded = urlencode(sent, quote_via=quote_plus if plus else quote).encode()
    if in_query:
        fields = form_fields(request(b"/v1/user/authtokenverify?" + encoded))
    else:
        fields = form_fields(request(b"/v1/user/authtokenverify", encoded, FORM))
    assert _field(fields, b"sessionId") == session
    assert _field(fields, b"authenticationToken") == token
    assert _field(fields, b"clientAddress") == address


@settings(max_examples=100)
@given(value=st.binary(max_size=8))
def test_a_field_that_is_not_utf8_reads_as_empty_alone(value: bytes) -> None:
    body = urlencode([("sessionId", "s-1"), ("authenticationToken", value)]).encode()
    fields = form_fields(request(b"/v1/user/authtokenverify", body, FORM))
    assert _field(fields, b"sessionId") == "s-1"
    try:
        expected = value.decode("utf-8")
    except UnicodeDecodeError:
        expected = ""
    assert _field(fields, b"authenticationToken") == expected


def test_more_fields_than_dcv_sends_is_no_fields() -> None:
    body = b"&".join(b"f%d=1" % i for i in range(MAX_FIELDS + 1))
    assert form_fields(request(b"/v1/user/authtokenverify", body, FORM)) == {}
