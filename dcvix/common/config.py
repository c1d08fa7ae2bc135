"""Typed, validated configuration for both daemons, read from Go dcvix INI files.

Each daemon declares its sections as frozen dataclasses whose fields are made with
:func:`setting` (kind, default, meaning). From that one declaration this module
parses a file, writes the commented default file, and renders the README's
reference table, so the three cannot drift apart.

Every invalid value is a :class:`ConfigError` whose text is the one line CONTRACT §4
asks for: ``FILE: [section] key: problem``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import re
import stat
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Generic, TypeVar
from urllib.parse import urlsplit

from dcvix.common.ini import DEFAULT_SECTION, IniSyntaxError, parse_ini
from dcvix.common.networks import network_text, parse_network
from dcvix.common.validate import parse_host, split_host_port

T = TypeVar("T")


class ConfigError(Exception):
    """An unusable config file or value; ``str()`` is the one-line message."""


# --------------------------------------------------------------------------- kinds


@dataclass(frozen=True)
class Kind(Generic[T]):
    """How one key's text becomes a value, and how a value is written back."""

    name: str
    parse: Callable[[str], T]
    render: Callable[[T], str] = str
    empty_is_default: bool = True


def _parse_text(text: str) -> str:
    if any(ord(c) < 32 for c in text):
        raise ValueError("control characters are not allowed")
    return text


TEXT: Kind[str] = Kind("string", _parse_text, empty_is_default=False)
SECRET = TEXT


def integer(minimum: int = 0, maximum: int | None = None) -> Kind[int]:
    """An integer kind bounded to ``[minimum, maximum]``."""

    def parse(text: str) -> int:
        try:
            value = int(text, 10)
        except ValueError:
            raise ValueError(f"{text!r} is not an integer") from None
        if value < minimum or (maximum is not None and value > maximum):
            upper = "" if maximum is None else f" and at most {maximum}"
            raise ValueError(f"{value} must be at least {minimum}{upper}")
        return value

    name = f"integer ≥ {minimum}" if maximum is None else f"integer {minimum}-{maximum}"
    return Kind(name, parse)


PORT: Kind[int] = Kind("port", integer(1, 65535).parse)

_TRUE = {"1", "t", "true", "y", "yes", "on"}
_FALSE = {"0", "f", "false", "n", "no", "off"}


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"{text!r} is not a boolean (use true or false)")


BOOLEAN: Kind[bool] = Kind("boolean", _parse_bool, lambda v: "true" if v else "false")

_GO_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
# ASCII digits only, as Go reads them (``\d`` would take any script's digits).
_GO_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|μs|ms|s|m|h)")
# Go's longest duration (2**63 - 1 ns, some 292 years): a longer one overflows
# every datetime sum it later takes part in, long after the config was read.
GO_MAX_DURATION = (2**63 - 1) / 1e9


def parse_duration(text: str) -> float:
    """Seconds from a Go duration (``40s``, ``1m30s``, ``1.5h``) or bare seconds."""
    text = text.strip()
    if re.fullmatch(r"[0-9]+(\.[0-9]*)?", text):
        total = float(text)
    else:
        total = _go_duration(text)
    if total > GO_MAX_DURATION:
        raise ValueError(
            f"{text[:40]!r} is longer than Go's longest duration (292 years)"
        )
    return total


def _go_duration(text: str) -> float:
    position, total = 0, 0.0
    for match in _GO_PART.finditer(text):
        if match.start() != position:
            break
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        position = match.end()
    if position != len(text) or not text:
        raise ValueError(
            f"{text!r} is not a duration (use seconds or Go's form: 40s, 1m30s, 12h)"
        )
    return total


def format_duration(seconds: float) -> str:
    """Write seconds back in Go's style, largest units first (``1h30m``, ``40s``)."""
    whole = int(seconds)
    # To the nanosecond, as Go keeps them; never "1e-05s", which no duration
    # parser reads back.
    whole, nanos = divmod(whole * 10**9 + round((seconds - whole) * 1e9), 10**9)
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{hours}h" if hours else "", f"{minutes}m" if minutes else ""]
    if nanos:
        parts.append(f"{secs}.{nanos:09d}".rstrip("0") + "s")
    elif secs:
        parts.append(f"{secs}s")
    return "".join(parts) or "0s"


DURATION: Kind[float] = Kind("duration", parse_duration, format_duration)


def _parse_positive_duration(text: str) -> float:
    value = parse_duration(text)
    if value <= 0:
        raise ValueError("must be longer than zero")
    return value


POSITIVE_DURATION: Kind[float] = Kind(
    "duration > 0", _parse_positive_duration, format_duration
)


def _parse_path(text: str) -> str:
    _parse_text(text)
    return text


PATH: Kind[str] = Kind("path", _parse_path)


def _parse_csv(text: str) -> tuple[str, ...]:
    _parse_text(text)
    return tuple(item.strip() for item in text.split(",") if item.strip())


CSV: Kind[tuple[str, ...]] = Kind(
    "comma-separated list", _parse_csv, ", ".join, empty_is_default=False
)


def _parse_words(text: str) -> tuple[str, ...]:
    _parse_text(text)
    return tuple(text.split())


WORDS: Kind[tuple[str, ...]] = Kind(
    "space-separated words", _parse_words, " ".join, empty_is_default=False
)


def choice(*options: str) -> Kind[str]:
    """A kind that accepts one of ``options``, in any case."""

    def parse(text: str) -> str:
        lowered = text.lower()
        if lowered not in options:
            raise ValueError(f"{text!r} is not one of {', '.join(options)}")
        return lowered

    return Kind(" / ".join(options), parse)


HOST: Kind[str] = Kind("host name or IP", parse_host)


def _parse_bind(text: str) -> str:
    return parse_host(text) if text else ""


BIND_ADDRESS: Kind[str] = Kind(
    "IP address, or empty for all", _parse_bind, empty_is_default=False
)


def _parse_hosts(text: str) -> tuple[str, ...]:
    return tuple(parse_host(item) for item in _parse_csv(text))


HOST_LIST: Kind[tuple[str, ...]] = Kind(
    "comma-separated host names or IPs", _parse_hosts, ", ".join, False
)


def _parse_ips(text: str) -> tuple[str, ...]:
    result = []
    for item in _parse_csv(text):
        try:
            result.append(str(ipaddress.ip_address(item)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address") from None
    return tuple(result)


IP_LIST: Kind[tuple[str, ...]] = Kind(
    "comma-separated IP addresses", _parse_ips, ", ".join, False
)


def _parse_networks(text: str) -> tuple[str, ...]:
    result = []
    for item in _parse_csv(text):
        try:
            result.append(network_text(parse_network(item)))
        except ValueError:
            raise ValueError(f"{item!r} is not an IP address or network") from None
    return tuple(result)


NETWORK_LIST: Kind[tuple[str, ...]] = Kind(
    "comma-separated IP addresses or networks (CIDR)",
    _parse_networks,
    ", ".join,
    False,
)


def _parse_host_port(text: str) -> str:
    split_host_port(text)
    return text


HOST_PORT: Kind[str] = Kind("host[:port]", _parse_host_port)


def _parse_listen(text: str) -> str:
    if not text:
        return ""
    host, port = split_host_port(text)
    if port is None:
        raise ValueError(f"{text!r} has no port")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address") from None
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


LISTEN: Kind[str] = Kind(
    "IP:port, or empty for none", _parse_listen, empty_is_default=False
)


def _parse_url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        parts = urlsplit(text)
        if parts.scheme not in schemes or not parts.hostname:
            raise ValueError(f"{text!r} is not a {' or '.join(schemes)} URL")
        return text

    return parse


def url(*schemes: str) -> Kind[str]:
    """A URL kind limited to ``schemes``."""
    return Kind(f"{'/'.join(schemes)} URL", _parse_url(schemes))


def _parse_fingerprint(text: str) -> str:
    hexdigits = text.replace(":", "").lower()
    if not re.fullmatch(r"[0-9a-f]{64}", hexdigits):
        raise ValueError("must be a SHA-256 fingerprint: 64 hex digits")
    return hexdigits


FINGERPRINT: Kind[str] = Kind("SHA-256 hex", _parse_fingerprint)


def _parse_key32(text: str) -> str:
    try:
        raw = base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("is not valid base64") from None
    if len(raw) != 32:
        raise ValueError(f"must be base64 of 32 bytes, not {len(raw)}")
    return text


KEY32: Kind[str] = Kind("base64 of 32 bytes", _parse_key32)

_LEVELS = {
    "trace": "debug",
    "debug": "debug",
    "info": "info",
    "warn": "warning",
    "warning": "warning",
    "error": "error",
    "critical": "critical",
    "fatal": "critical",
    "panic": "critical",
}


def _parse_level(text: str) -> str:
    try:
        return _LEVELS[text.lower()]
    except KeyError:
        raise ValueError(
            f"{text!r} is not a log level "
            "(debug, info, warning, error, critical; Go's trace, warn, fatal, panic)"
        ) from None


LOG_LEVEL: Kind[str] = Kind("log level", _parse_level)


def _parse_config_keys(text: str) -> tuple[str, ...]:
    items = _parse_csv(text)
    for item in items:
        if not re.fullmatch(r"[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+", item):
            raise ValueError(f"{item!r} is not section/key")
    return items


CONFIG_KEYS: Kind[tuple[str, ...]] = Kind(
    "comma-separated section/key", _parse_config_keys, ", ".join, False
)

# ------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class Meta:
    """What :func:`setting` attaches to a dataclass field."""

    kind: Kind[Any]
    doc: str
    secret: bool
    shown_default: str | None


def setting(
    kind: Kind[Any],
    default: Any,
    doc: str,
    *,
    secret: bool = False,
    shown_default: str | None = None,
) -> Any:
    """Declare one config key: its kind, default and meaning.

    Args:
        kind: how the text is parsed and written back.
        default: the value when the key is absent (or empty, for most kinds).
        doc: one sentence for the default file and the README.
        secret: the value must never be logged, and a world-readable file holding
            it is warned about.
        shown_default: how to write a default that depends on the machine.
    """
    return field(
        default=default,
        metadata={"dcvix": Meta(kind, doc, secret, shown_default)},
    )


def _meta(f: Any) -> Meta:
    meta = f.metadata.get("dcvix")
    assert isinstance(meta, Meta), f"{f.name} is not declared with setting()"
    return meta


@dataclass(frozen=True)
class LoadedConfig:
    """Where a config came from and what is worth warning about once logging runs."""

    path: Path | None
    warnings: tuple[str, ...] = ()


C = TypeVar("C")


def section_classes(config_class: type[Any]) -> list[tuple[str, type[Any]]]:
    """The ``(section name, dataclass)`` pairs of a daemon's config class."""
    result: list[tuple[str, type[Any]]] = []
    for f in fields(config_class):
        factory: Any = f.default_factory
        if f.name != "source" and factory is not MISSING and isinstance(factory, type):
            result.append((f.name, factory))
    return result


def parse_config(config_class: type[C], text: str, path: Path | None) -> C:
    """Build a daemon config from INI text; unknown keys become warnings.

    Raises:
        ConfigError: with the one-line ``FILE: [section] key: problem`` text.
    """
    where = str(path) if path else "<defaults>"
    try:
        parsed = parse_ini(text)
    except IniSyntaxError as error:
        raise ConfigError(f"{where}:{error.line_number}: {error.problem}") from None
    warnings: list[str] = []
    sections: dict[str, Any] = {}
    secrets_present = False
    known = dict(section_classes(config_class))
    for name, section_class in known.items():
        values = parsed.get(name, {})
        kwargs: dict[str, Any] = {}
        declared = {f.name: f for f in fields(section_class)}
        for key, item in values.items():
            f = declared.get(key)
            if f is None:
                warnings.append(f"{where}: [{name}] {key}: unknown key, ignored")
                continue
            meta = _meta(f)
            if item.value == "" and meta.kind.empty_is_default:
                continue
            try:
                kwargs[key] = meta.kind.parse(item.value)
            except ValueError as error:
                raise ConfigError(f"{where}: [{name}] {key}: {error}") from None
            secrets_present = secrets_present or (meta.secret and item.value != "")
        sections[name] = section_class(**kwargs)
    for name, values in parsed.items():
        if name not in known and (name != DEFAULT_SECTION or values):
            warnings.append(f"{where}: [{name}]: unknown section, ignored")
    if path is not None and secrets_present and _readable_by_others(path):
        warnings.append(
            f"{where}: holds secrets but is readable by other users (chmod 600 {path})"
        )
    loaded = LoadedConfig(path, tuple(warnings))
    made: C = config_class(source=loaded, **sections)  # type: ignore[call-arg]
    return made


def _readable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & stat.S_IROTH)
    except OSError:
        return False


def load_config(config_class: type[C], path: Path) -> C:
    """Read and parse one file.

    Raises:
        ConfigError: when the file cannot be read or holds an invalid value.
    """
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = getattr(error, "strerror", None) or str(error)
        raise ConfigError(f"{path}: cannot read config file: {reason}") from None
    return parse_config(config_class, text, path)


# ---------------------------------------------------------------- default file


def default_file_text(config_class: type[Any], title: str) -> str:
    """The commented default config file: every key, its default and meaning."""
    lines = [
        f"# {title}",
        "# Every key is shown with its default, commented out; uncomment to change.",
        "# Durations: seconds or Go's form (40s, 1m30s, 12h).",
        "",
    ]
    for name, section_class in section_classes(config_class):
        lines.append(f"[{name}]")
        for f in fields(section_class):
            meta = _meta(f)
            lines.append(f"# {meta.doc}")
            lines.append(f"# {f.name} = {_shown(f, meta)}".rstrip())
        lines.append("")
    return "\n".join(lines)


def _shown(f: Any, meta: Meta) -> str:
    if meta.shown_default is not None:
        return meta.shown_default
    return str(meta.kind.render(f.default))


def reference_markdown(config_class: type[Any]) -> str:
    """The README table of every section, key, kind, default and meaning."""
    rows = ["| section | key | kind | default | meaning |", "|---|---|---|---|---|"]
    for name, section_class in section_classes(config_class):
        for f in fields(section_class):
            meta = _meta(f)
            shown = _shown(f, meta) or "(empty)"
            doc = meta.doc + (" Secret." if meta.secret else "")
            rows.append(
                f"| {name} | `{f.name}` | {meta.kind.name} | `{shown}` | {doc} |"
            )
    return "\n".join(rows)


def secret_keys(config_class: type[Any]) -> frozenset[str]:
    """Names of every key declared secret, for the log redaction rule."""
    return frozenset(
        f.name
        for _, section_class in section_classes(config_class)
        for f in fields(section_class)
        if _meta(f).secret
    )


# ------------------------------------------------------------------- discovery


def candidate_paths(component: str, cwd: Path, etc: Path = Path("/etc")) -> list[Path]:
    """Where a config is looked for when ``--conf`` is not given, in order."""
    name = f"dcvix-{component}"
    return [etc / name / f"{name}.conf", cwd / f"{name}.conf"]


@dataclass(frozen=True)
class Discovery:
    """The outcome of looking for a config file."""

    path: Path | None
    written: bool = False
    notes: tuple[str, ...] = ()


def discover(
    component: str,
    explicit: str | None,
    default_text: str,
    candidates: Sequence[Path],
) -> Discovery:
    """Find the config file, writing the commented default when there is none.

    ``--conf`` wins and must exist. Otherwise the first candidate that exists is
    used. When none does, the default is written to the first candidate that can
    be written (never in ``/``), and the daemon starts with defaults.

    Raises:
        ConfigError: when ``--conf`` names a file that does not exist.
    """
    if explicit is not None:
        path = Path(explicit)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        return Discovery(path)
    for path in candidates:
        if path.is_file():
            return Discovery(path)
    notes = []
    for path in candidates:
        if path.parent == Path("/"):
            continue
        try:
            path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            with path.open("x", encoding="utf-8") as handle:
                handle.write(default_text)
            os.chmod(path, 0o600)
        except OSError as error:
            notes.append(f"cannot write {path}: {error.strerror}")
            continue
        return Discovery(
            path, True, (*notes, f"no config file found: wrote the defaults to {path}")
        )
    notes.append(f"no config file found for dcvix-{component}: starting with defaults")
    return Discovery(None, False, tuple(notes))


# ------------------------------------------------------------- [metrics] section


@dataclass(frozen=True)
class MetricsSection:
    """``[metrics]``: shared by both daemons; each sets its own ``listen``."""

    listen: str = ""
    token_file: str = setting(
        PATH,
        "",
        "File whose first line is the bearer token a scrape must send (not "
        "readable by others); empty: none.",
    )


# ----------------------------------------------------------------- [log] section


@dataclass(frozen=True)
class LogSection:
    """``[log]``: shared by both daemons; each adds its own ``directory``."""

    level: str = setting(
        LOG_LEVEL,
        "info",
        "Lowest level written: debug, info, warning, error, critical "
        "(Go's trace, warn, fatal and panic are accepted).",
    )
    rotation: int = setting(
        integer(0), 2, "Rotated files kept when the log reaches 100 MB (0 keeps all)."
    )
    format: str = setting(
        choice("text", "json"), "text", "`text` lines, or `json` lines for shippers."
    )
    directory: str = ""
