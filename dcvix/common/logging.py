"""Log output for both daemons: levels, text or JSON lines, rotation, redaction.

twistd asks the application for an ``ILogObserver``; :func:`make_observer` builds
the one our daemons hand it (see :class:`dcvix.common.daemon.DaemonService`). It
writes to stdout and to ``<directory>/dcvix-<component>.log``, rotated at 100 MB.

Redaction is a rule applied to every event before it is formatted: fields whose
names say they hold a secret are replaced, and anything that looks like a private
key, a PASETO token, a session cookie or a ``password=`` pair is masked in the
rendered text, tracebacks included. Code must still never log secrets; this is
the net under it.

Control characters are escaped the same way (:func:`escape_control`): in every
text field of an event, where client data (user agents, user ids, host names)
arrives, so that one event is one line and no terminal escape, carriage return
or bidirectional override reaches the file; and in the rendered text, except the
newlines of a traceback.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import IO, Any

from twisted.logger import (
    FilteringLogObserver,
    ILogObserver,
    LogEvent,
    LogLevel,
    LogLevelFilterPredicate,
    eventAsText,
    formatEvent,
)
from twisted.python.failure import Failure
from twisted.python.logfile import LogFile
from zope.interface import implementer

ROTATE_BYTES = 100 * 1000 * 1000

LEVELS = {
    "debug": LogLevel.debug,
    "info": LogLevel.info,
    "warning": LogLevel.warn,
    "error": LogLevel.error,
    "critical": LogLevel.critical,
}
_LEVEL_NAMES = {level: name.upper() for name, level in LEVELS.items()}

REDACTED = "<redacted>"
_SECRET_FIELD = re.compile(
    r"pass(word|wd)?|secret|token|otp|cookie|authori[sz]ation|private|^key$|_key$",
    re.IGNORECASE,
)
_SECRET_TEXT = [
    (
        re.compile(
            r"-----BEGIN ([A-Z ]*)PRIVATE KEY-----.*?(-----END \1PRIVATE KEY-----|\Z)",
            re.DOTALL,
        ),
        "<redacted private key>",
    ),
    (re.compile(r"(dcvix_session=)[^;\s\"']+"), r"\1" + REDACTED),
    (re.compile(r"(authorization:\s*\w+\s+)\S+", re.IGNORECASE), r"\1" + REDACTED),
    (
        re.compile(
            r"((?:password|passwd|secret|token|otp|registrationToken)"
            r"[\"']?\s*[=:]\s*[\"']?)[^\s\"'&,}]+",
            re.IGNORECASE,
        ),
        r"\1" + REDACTED,
    ),
    # Last, so that a cookie or a ``token=`` pair holding a token is masked once.
    (re.compile(r"\bv[1-4]\.(local|public)\.[A-Za-z0-9_\-.]+"), "<redacted token>"),
]
# What can rewrite, hide or forge a log line on a terminal or in a viewer: C0
# and C1 controls and DEL (escape sequences, CR, LF, backspace), the Unicode
# line and paragraph separators, bidirectional formatting characters, and lone
# surrogates (not text: they cannot even be written as UTF-8).
_CONTROLS = (
    r"\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff"
)
_CONTROL = re.compile(f"[{_CONTROLS}]")
_CONTROL_BUT_NEWLINE = re.compile(rf"(?!\n)[{_CONTROLS}]")
_SHORT_ESCAPES = {"\t": "\\t", "\n": "\\n", "\r": "\\r"}
# twisted.logger's own bookkeeping keys: never secrets, and needed to format.
_INTERNAL = frozenset(
    {
        "log_format",
        "log_level",
        "log_namespace",
        "log_source",
        "log_time",
        "log_failure",
        "log_logger",
        "log_io",
        "log_system",
        "log_text",
        "log_trace",
        "log_legacy",
        "message",
        "format",
        "isError",
        "system",
        "time",
    }
)


def is_secret_field(name: str) -> bool:
    """Whether an event field's name says it holds a secret."""
    return name not in _INTERNAL and bool(_SECRET_FIELD.search(name))


def redact_text(text: str) -> str:
    """Mask private keys, tokens, session cookies and ``password=x`` pairs."""
    for pattern, replacement in _SECRET_TEXT:
        text = pattern.sub(replacement, text)
    return text


def redact_event(event: LogEvent) -> LogEvent:
    """A copy of ``event`` with every secret-named field replaced."""
    return {
        key: (REDACTED if is_secret_field(key) else value)
        for key, value in event.items()
    }


def _escaped(match: re.Match[str]) -> str:
    character = match.group()
    short = _SHORT_ESCAPES.get(character)
    if short is not None:
        return short
    code = ord(character)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_control(text: str, keep_newlines: bool = False) -> str:
    r"""``text`` with control characters written as escapes (``\x1b``, ``\u2028``).

    Args:
        text: anything, client data included.
        keep_newlines: leave ``\n`` alone (a traceback's lines).
    """
    pattern = _CONTROL_BUT_NEWLINE if keep_newlines else _CONTROL
    return pattern.sub(_escaped, text)


def clean_event(event: LogEvent) -> LogEvent:
    """A copy of ``event``: secret-named fields replaced, text fields escaped.

    Twisted's own keys (the format, the failure, a legacy event's text) are
    left as they are; the rendered line is escaped again as a whole.
    """
    cleaned: LogEvent = {}
    for key, value in event.items():
        if is_secret_field(key):
            cleaned[key] = REDACTED
        elif isinstance(value, str) and key not in _INTERNAL:
            cleaned[key] = escape_control(value)
        else:
            cleaned[key] = value
    return cleaned


def render_text(event: LogEvent) -> str:
    """``LEVEL [time] namespace: message``, with a traceback for failures."""
    level = _LEVEL_NAMES.get(event.get("log_level", LogLevel.info), "INFO")
    stamp = _timestamp(event)
    body = eventAsText(event, includeTimestamp=False, includeSystem=False)
    namespace = _namespace(event)
    text = escape_control(f"{level:<8} [{stamp}] {namespace}: {body}", True)
    return redact_text(text) + "\n"


def render_json(event: LogEvent) -> str:
    """One JSON object per line: time, level, namespace, message and the fields."""
    record: dict[str, Any] = {
        "time": _timestamp(event),
        "level": _LEVEL_NAMES.get(event.get("log_level", LogLevel.info), "INFO"),
        "namespace": _namespace(event),
        "message": redact_text(escape_control(formatEvent(event), True)),
    }
    failure = event.get("log_failure")
    if isinstance(failure, Failure):
        record["traceback"] = redact_text(escape_control(failure.getTraceback(), True))
    for key, value in event.items():
        if key.startswith("log_") or key in _INTERNAL or key in record:
            continue
        record[key] = _jsonable(value)
    return json.dumps(record, ensure_ascii=False) + "\n"


def _namespace(event: LogEvent) -> str:
    """The logger's namespace; Twisted's old-style messages say "twisted"."""
    namespace = str(event.get("log_namespace", ""))
    return "twisted" if namespace in ("", "log_legacy") else namespace


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float):
        return value
    if isinstance(value, str):
        return redact_text(value)
    return redact_text(repr(value))


def _timestamp(event: LogEvent) -> str:
    when = event.get("log_time")
    moment = datetime.fromtimestamp(when, UTC) if when else datetime.now(UTC)
    return moment.astimezone().isoformat(timespec="seconds")


@implementer(ILogObserver)
class LineObserver:
    """Redacts, escapes, renders and writes each event to every output.

    A failing output (a closed stdout under a service manager) is skipped so the
    others still get the line.
    """

    def __init__(self, render: Callable[[LogEvent], str], outputs: Iterable[IO[str]]):
        self._render = render
        self._outputs = list(outputs)

    def __call__(self, event: LogEvent) -> None:
        """Write one event."""
        line = self._render(clean_event(event))
        for output in self._outputs:
            try:
                output.write(line)
                output.flush()
            except (OSError, ValueError):
                continue


class _TextLogFile(LogFile):
    """Twisted's size-rotated file, taking text."""

    def write(self, data: str) -> None:
        """Encode and write (rotating first when the file is full)."""
        super().write(data.encode("utf-8"))


def open_log_file(directory: Path, component: str, rotation: int) -> Any:
    """``<directory>/dcvix-<component>.log`` (0600), rotated at 100 MB.

    ``rotation`` rotated files are kept; 0 keeps them all, as in Go.
    """
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    log_file = _TextLogFile(
        f"dcvix-{component}.log",
        str(directory),
        rotateLength=ROTATE_BYTES,
        defaultMode=0o600,
        maxRotatedFiles=rotation or None,
    )
    return log_file


def make_observer(
    level: str,
    fmt: str,
    outputs: Iterable[IO[str]],
) -> ILogObserver:
    """The daemon's observer: level filter, redaction, text or JSON lines."""
    render = render_json if fmt == "json" else render_text
    predicate = LogLevelFilterPredicate(defaultLogLevel=LEVELS[level])
    # Every outbound HTTPS call would otherwise log two "factory" lines.
    predicate.setLogLevelForNamespace(
        "twisted.web.client._HTTP11ClientFactory", LogLevel.warn
    )
    return FilteringLogObserver(LineObserver(render, outputs), [predicate])


def stdout() -> IO[str]:
    """The process's stdout, looked up when called (twistd may replace it)."""
    return sys.stdout
