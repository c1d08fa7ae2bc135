"""The INI dialect of the Go dcvix config files (go-ini defaults), with one change.

Existing Go config files must keep working, so this follows go-ini's defaults:
``[section]`` headers, ``key = value`` or ``key: value``, whole-line comments
starting with ``#`` or ``;``, values wrapped in backticks or triple quotes taken
literally, one pair of surrounding quotes removed, the last of a repeated key
winning. The one change (CONTRACT §4): an inline comment starts only at a ``#`` or
``;`` that follows whitespace, so a secret such as ``pa#ss`` survives. A value in
quotes is taken whole, whatever it contains, and anything after the closing quote
is a comment.
"""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_SECTION = "DEFAULT"


class IniSyntaxError(ValueError):
    """A line that is neither a section header, a comment nor ``key = value``."""

    def __init__(self, line_number: int, problem: str) -> None:
        super().__init__(f"line {line_number}: {problem}")
        self.line_number = line_number
        self.problem = problem


@dataclass(frozen=True)
class IniValue:
    """One ``key = value`` line: the decoded value and where it was written."""

    section: str
    key: str
    value: str
    line_number: int


def parse_ini(text: str) -> dict[str, dict[str, IniValue]]:
    """Parse INI text into ``{section: {key: IniValue}}``.

    Keys before the first header land in the ``DEFAULT`` section, and a leading
    UTF-8 byte order mark is dropped, as in go-ini.

    Raises:
        IniSyntaxError: for a malformed line.
    """
    sections: dict[str, dict[str, IniValue]] = {}
    section = DEFAULT_SECTION
    text = text.removeprefix("\ufeff")
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("["):
            close = line.find("]")
            if close < 0:
                raise IniSyntaxError(number, "unclosed section header")
            section = line[1:close].strip()
            if not section:
                raise IniSyntaxError(number, "empty section name")
            sections.setdefault(section, {})
            continue
        cut = _delimiter(line)
        if cut < 0:
            raise IniSyntaxError(number, "expected 'key = value'")
        key = line[:cut].strip()
        if not key:
            raise IniSyntaxError(number, "empty key name")
        value = decode_value(line[cut + 1 :])
        sections.setdefault(section, {})[key] = IniValue(section, key, value, number)
    return sections


def _delimiter(line: str) -> int:
    positions = [p for p in (line.find("="), line.find(":")) if p >= 0]
    return min(positions) if positions else -1


def decode_value(raw: str) -> str:
    """Decode the text after the delimiter of one line, as go-ini does (bar §4)."""
    value = raw.strip()
    if not value:
        return ""
    for quote in ('"""', "`", '"', "'"):
        if value.startswith(quote):
            end = value.find(quote, len(quote))
            if end >= 0 and _only_comment(value[end + len(quote) :]):
                return value[len(quote) : end]
            break
    return _strip_inline_comment(raw).strip()


def _only_comment(rest: str) -> bool:
    rest = rest.strip()
    return not rest or rest[0] in "#;"


def _strip_inline_comment(raw: str) -> str:
    for index, char in enumerate(raw):
        if char in "#;" and index > 0 and raw[index - 1].isspace():
            return raw[:index]
    return raw
