"""JSON request bodies read the way Go ``encoding/json`` reads them.

Old clients (Go agents, the Go launcher) send keys in any case; the director
and the agent must read them as Go did. :func:`go_fields` picks named fields;
:func:`decode` fills a declared, frozen request type, so each route states the
body it takes (and the same declarations can describe the API).
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from dcvix.common.errors import BadRequest

T = TypeVar("T")


def json_name(name: str) -> dict[str, str]:
    """Field metadata: the JSON key of a request field named otherwise in Python."""
    return {"json": name}


def decode(kind: type[T], value: Any) -> T:
    """A request of type ``kind`` (a dataclass) from a decoded JSON body.

    Each field's JSON key is its ``json_name`` or its name; its kind is its
    annotation (``str``, ``int``, ``float``, ``bool``, ``list[...]``,
    ``dict[...]``). Missing keys take the zero value, as in Go.

    Raises:
        BadRequest: the body is not an object, or a field has the wrong type.
    """
    hints = typing.get_type_hints(kind)
    fields = dataclasses.fields(kind)  # type: ignore[arg-type]
    spec = {
        f.metadata.get("json", f.name): typing.get_origin(hints[f.name])
        or hints[f.name]
        for f in fields
    }
    found = go_fields(value, spec)
    return kind(**{f.name: found[f.metadata.get("json", f.name)] for f in fields})


_ZERO: dict[type, Any] = {str: "", int: 0, float: 0.0, bool: False, list: [], dict: {}}


def go_fields(value: Any, spec: Mapping[str, type]) -> dict[str, Any]:
    """Pick fields from a JSON object the way Go ``encoding/json`` does.

    Keys match case-insensitively (an exact match wins), unknown keys are
    ignored, a missing key or ``null`` gives the zero value, a value of the
    wrong type is an error.

    Args:
        value: the decoded body.
        spec: field name → one of ``str``, ``int``, ``float``, ``bool``,
            ``list``, ``dict``.

    Raises:
        BadRequest: when the body is not an object or a field has the wrong type.
    """
    if not isinstance(value, dict):
        raise BadRequest("request body must be a JSON object")
    folded: dict[str, Any] = {}
    for key, item in value.items():
        folded.setdefault(key.lower(), item)
    result = {}
    for name, kind in spec.items():
        item = value[name] if name in value else folded.get(name.lower())
        if item is None:
            result[name] = _ZERO[kind].copy() if kind in (list, dict) else _ZERO[kind]
            continue
        if not _is_kind(item, kind):
            raise BadRequest(f"field {name!r} must be {_KIND_NAMES[kind]}")
        result[name] = float(item) if kind is float else item
    return result


_KIND_NAMES = {
    str: "a string",
    int: "an integer",
    float: "a number",
    bool: "a boolean",
    list: "a list",
    dict: "an object",
}


def _is_kind(item: Any, kind: type) -> bool:
    if kind is int:
        return isinstance(item, int) and not isinstance(item, bool)
    if kind is float:
        return isinstance(item, int | float) and not isinstance(item, bool)
    return isinstance(item, kind)
