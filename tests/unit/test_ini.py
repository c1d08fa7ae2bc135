"""The Go INI dialect of dcvix.common.ini (go-ini defaults, CONTRACT §4's change)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dcvix.common.ini import DEFAULT_SECTION, IniSyntaxError, IniValue, parse_ini


def value_of(line: str) -> str:
    """The value of key ``x`` written as ``line`` in section ``[s]``."""
    return parse_ini(f"[s]\n{line}\n")["s"]["x"].value


def values(parsed: dict[str, dict[str, IniValue]]) -> dict[str, dict[str, str]]:
    """``{section: {key: value}}`` without the line numbers."""
    return {
        name: {k: v.value for k, v in keys.items()} for name, keys in parsed.items()
    }


def test_sections_and_both_delimiters() -> None:
    parsed = parse_ini("[one]\na = 1\nb: 2\n\n[two]\nc=3\nd:4\n")
    assert values(parsed) == {
        "one": {"a": "1", "b": "2"},
        "two": {"c": "3", "d": "4"},
    }


def test_value_records_section_key_and_line() -> None:
    parsed = parse_ini("# header\n[director]\n\ndirector_port = 8445\n")
    assert parsed["director"]["director_port"] == IniValue(
        "director", "director_port", "8445", 4
    )


def test_first_delimiter_splits_and_the_rest_is_value() -> None:
    assert value_of("x = a=b") == "a=b"
    assert value_of("x = ldap://h:389") == "ldap://h:389"
    assert value_of("x: a=b") == "a=b"


def test_section_header_is_stripped_and_may_repeat() -> None:
    parsed = parse_ini("[ s ]\na = 1\n[t]\nb = 2\n[s]\nc = 3\n")
    assert sorted(parsed["s"]) == ["a", "c"]
    assert sorted(parsed["t"]) == ["b"]


def test_empty_section_is_listed() -> None:
    assert parse_ini("[empty]\n") == {"empty": {}}


def test_names_are_case_sensitive() -> None:
    parsed = parse_ini("[Log]\nLevel = debug\n[log]\nlevel = info\n")
    assert parsed["Log"]["Level"].value == "debug"
    assert parsed["log"]["level"].value == "info"


def test_whole_line_comments() -> None:
    text = "# a comment = 1\n; another: 2\n[s]\n  # indented = 3\n\t; tab = 4\nx = 5\n"
    assert values(parse_ini(text)) == {"s": {"x": "5"}}


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("x = pa#ss", "pa#ss"),
        ("x = pa;ss", "pa;ss"),
        ("x = a #c", "a"),
        ("x = a ;c", "a"),
        ("x = a\t#c", "a"),
        ("x = a b # c d", "a b"),
        ("x =#y", "#y"),
        ("x =;y", ";y"),
        ("x = #y", ""),
        ("x = ;y", ""),
        ("x = a#b #c", "a#b"),
    ],
)
def test_inline_comment_only_after_whitespace(line: str, expected: str) -> None:
    assert value_of(line) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('x = "10.0.0.1"', "10.0.0.1"),
        ("x = 'single'", "single"),
        ('x = ""', ""),
        ("x = ''", ""),
        ("x = '\"inner\"'", '"inner"'),
        ("x = \"'inner'\"", "'inner'"),
        ('x = "a # b"', "a # b"),
        ('x = "a ; b"', "a ; b"),
        ("x = 'p#ss ;w'", "p#ss ;w"),
        ('x = "spaced out"   # comment', "spaced out"),
        ('x = "a";comment', "a"),
        ('x = "  padded  "', "  padded  "),
    ],
)
def test_one_pair_of_quotes_removed(line: str, expected: str) -> None:
    assert value_of(line) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ('x = "unclosed', '"unclosed'),
        ('x = "a" b', '"a" b'),
        ('x = a"b"', 'a"b"'),
    ],
)
def test_quotes_not_wrapping_the_value_are_kept(line: str, expected: str) -> None:
    assert value_of(line) == expected


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("x = `a \"b\" 'c'`", "a \"b\" 'c'"),
        ("x = `pa # ss ; w`", "pa # ss ; w"),
        ('x = """say "hi" # not a comment"""', 'say "hi" # not a comment'),
        ('x = """it\'s"""', "it's"),
        ("x = `lit` # comment", "lit"),
    ],
)
def test_backticks_and_triple_quotes_are_literal(line: str, expected: str) -> None:
    assert value_of(line) == expected


def test_surrounding_whitespace_is_stripped() -> None:
    assert value_of("   x   =    spaced value   ") == "spaced value"
    assert value_of("x =") == ""
    assert value_of("x =    ") == ""


def test_last_repeated_key_wins() -> None:
    parsed = parse_ini("[s]\nx = first\ny = 1\nx = second\n")
    assert parsed["s"]["x"] == IniValue("s", "x", "second", 4)
    assert parsed["s"]["y"].value == "1"


def test_repeated_key_across_repeated_section_wins() -> None:
    parsed = parse_ini("[s]\nx = first\n[t]\n[s]\nx = second\n")
    assert parsed["s"]["x"].value == "second"


def test_keys_before_any_section_go_to_default() -> None:
    parsed = parse_ini("top = 1\n[s]\nx = 2\n")
    assert parsed[DEFAULT_SECTION]["top"] == IniValue(DEFAULT_SECTION, "top", "1", 1)
    assert DEFAULT_SECTION == "DEFAULT"
    assert parsed["s"]["x"].value == "2"


def test_crlf_line_endings() -> None:
    parsed = parse_ini("[s]\r\nx = 1\r\ny = 'two'\r\n")
    assert values(parsed) == {"s": {"x": "1", "y": "two"}}


def test_utf8_byte_order_mark_is_ignored() -> None:
    # go-ini drops a leading UTF-8 BOM (Windows editors write one).
    parsed = parse_ini("\ufeff[director]\ndirector_port = 8445\n")
    assert parsed["director"]["director_port"].value == "8445"


@pytest.mark.parametrize(
    ("text", "line_number", "problem"),
    [
        ("[s]\njust words\n", 2, "expected 'key = value'"),
        ("[s]\nx = 1\n[broken\n", 3, "unclosed section header"),
        ("[]\n", 1, "empty section name"),
        ("[s]\n\n# c\n = value\n", 4, "empty key name"),
        ("[s]\n: value\n", 2, "empty key name"),
        ("novalue\n", 1, "expected 'key = value'"),
    ],
)
def test_malformed_lines_raise_with_line_number(
    text: str, line_number: int, problem: str
) -> None:
    with pytest.raises(IniSyntaxError) as caught:
        parse_ini(text)
    assert caught.value.line_number == line_number
    assert caught.value.problem == problem
    assert str(caught.value) == f"line {line_number}: {problem}"


_LINE_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def _plain_value(text: str) -> bool:
    # After "k = " a leading # or ; follows whitespace: it starts a comment.
    if text != text.strip() or text[:1] in {'"', "'", "`", "#", ";"}:
        return False
    return not any(
        char in "#;" and text[index - 1].isspace()
        for index, char in enumerate(text)
        if index > 0
    )


_VALUES = (
    st.text(
        alphabet=st.one_of(
            st.sampled_from("#;\"'`=: \t[]"),
            st.characters(exclude_categories=["Cs"], exclude_characters=_LINE_BREAKS),
        )
    )
    .map(str.strip)
    .filter(_plain_value)
)


@given(_VALUES)
def test_plain_values_round_trip(value: str) -> None:
    assert parse_ini(f"[s]\nk = {value}\n")["s"]["k"].value == value
