"""The DCV wire formats: the verifier's XML and the Gateway's query string."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from urllib.parse import urlencode

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcvix.common.errors import BadRequest
from dcvix.director.api.dcv import REFUSED, query_fields, verified, xml_text

# Characters XML 1.0 can hold (Python's text strategy already leaves out
# surrogates).
XML_CHARS = st.characters(
    exclude_categories=["Cs"],
    exclude_characters=[chr(c) for c in range(32) if c not in (9, 10, 13)]
    + ["\ufffe", "\uffff"],
)


def test_xml_text_escapes_as_go_does() -> None:
    assert xml_text("a&b<c>d\"e'f\tg\nh\ri") == (
        "a&amp;b&lt;c&gt;d&#34;e&#39;f&#x9;g&#xA;h&#xD;i"
    )
    assert xml_text("José 山田 🙂") == "José 山田 🙂"
    assert xml_text("") == ""


def test_characters_xml_cannot_hold_become_replacement_characters() -> None:
    assert xml_text("a\x00b\x01c\x1bd\x7fe") == "a\ufffdb\ufffdc\ufffdd\x7fe"
    assert xml_text("\ud800x\udfff") == "\ufffdx\ufffd"
    assert xml_text("\ufffe\uffff") == "\ufffd\ufffd"


def test_the_two_answers() -> None:
    assert verified("bob") == b'<auth result="yes"><username>bob</username></auth>'
    assert verified('DOM\\o"neil') == (
        b'<auth result="yes"><username>DOM\\o&#34;neil</username></auth>'
    )
    assert REFUSED == (
        b'<auth result="no"><message>dcvix-director: authentication token '
        b"verification failed</message></auth>"
    )


@given(st.text(XML_CHARS))
def test_any_user_name_survives_an_xml_parser(user: str) -> None:
    document = ET.fromstring(verified(user))  # noqa: S314 - our own output
    assert document.get("result") == "yes"
    name = document.find("username")
    assert name is not None
    assert (name.text or "") == user


@given(st.text())
def test_the_answer_is_always_well_formed(user: str) -> None:
    ET.fromstring(verified(user))  # noqa: S314 - our own output


# -------------------------------------------------------------- query string


def test_the_gateways_request() -> None:
    target = (
        b"/resolveSession?sessionId=dcvix_1&transport=QUIC"
        b"&clientIpAddress=2001%3Adb8%3A%3A1"
    )
    assert query_fields(target) == {
        "sessionId": "dcvix_1",
        "transport": "QUIC",
        "clientIpAddress": "2001:db8::1",
    }


def test_query_details() -> None:
    assert query_fields(b"/resolveSession") == {}
    assert query_fields(b"/resolveSession?") == {}
    assert query_fields(b"/r?a=1&a=2") == {"a": "1"}  # the first, as Go's Get
    assert query_fields(b"/r?a&b=&&c=x+y%2B") == {"a": "", "b": "", "c": "x y+"}
    assert query_fields(b"/r?a=%zz") == {"a": "%zz"}
    assert query_fields(b"/r?a=1#b=2") == {"a": "1"}
    assert query_fields(b"/r?sessionId=s%C3%A9") == {"sessionId": "sé"}


@pytest.mark.parametrize("query", [b"a=%ff", b"%c3=1", b"a=%ed%a0%80"])
def test_a_query_that_is_not_utf8_is_refused(query: bytes) -> None:
    with pytest.raises(BadRequest, match="query string is not UTF-8"):
        query_fields(b"/resolveSession?" + query)


@given(st.lists(st.tuples(st.text(), st.text())))
def test_query_fields_reads_what_urlencode_writes(pairs: list[tuple[str, str]]) -> None:
    expected: dict[str, str] = {}
    for name, value in pairs:
        expected.setdefault(name, value)
    assert query_fields(b"/resolveSession?" + urlencode(pairs).encode()) == expected


@given(st.binary())
def test_any_query_is_fields_or_a_bad_request(query: bytes) -> None:
    try:
        fields = query_fields(b"/resolveSession?" + query.replace(b"#", b""))
    except BadRequest:
        return
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in fields.items())
