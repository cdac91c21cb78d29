"""Write scenario documents as TOML (the subset of TOML that scenario documents need).

A document is a dict of scalars (str, int, float, bool), lists and dicts. Top-level scalars come
first, then each top-level dict as a ``[table]`` and each top-level list of dicts as ``[[array]]``
tables; anything nested deeper is written inline (``{key = value}``, ``[a, b]``), with lists of
tables spread over several lines. ``tomllib.loads(dumps(doc)) == doc`` for every such document.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping
from typing import Any, Final

__all__ = ["dumps"]

_BARE_KEY: Final = re.compile(r"[A-Za-z0-9_-]+")


def _key(key: str) -> str:
    """Return a key, quoted unless it is a bare key."""
    return key if _BARE_KEY.fullmatch(key) else _string(key)


def _string(text: str) -> str:
    """Return a TOML basic string (control characters and DEL escaped)."""
    return json.dumps(text, ensure_ascii=False).replace("\x7f", "\\u007f")


def _value(value: Any, indent: str = "") -> str:
    """Return an inline TOML value."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return _string(value)
    if isinstance(value, Mapping):
        if not value:
            return "{}"
        return "{" + ", ".join(f"{_key(k)} = {_value(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        if value and all(isinstance(v, Mapping) for v in value):
            inner = indent + "  "
            lines = [f"{inner}{_value(v, inner)}," for v in value]
            return "[\n" + "\n".join(lines) + f"\n{indent}]"
        return "[" + ", ".join(_value(v, indent) for v in value) + "]"
    raise TypeError(f"cannot write a {type(value).__name__} as TOML")


def _is_table_array(value: Any) -> bool:
    """Tell whether a value is a non-empty list of tables (written as ``[[key]]``)."""
    return (
        isinstance(value, list | tuple)
        and bool(value)
        and all(isinstance(v, Mapping) for v in value)
    )


def dumps(doc: Mapping[str, Any]) -> str:
    """Return ``doc`` as TOML text."""
    lines: list[str] = []
    tables: list[tuple[str, Mapping[str, Any]]] = []
    arrays: list[tuple[str, Any]] = []
    for key, value in doc.items():
        if isinstance(value, Mapping) and value:
            tables.append((key, value))
        elif _is_table_array(value):
            arrays.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}")
    for key, table in tables:
        lines += ["", f"[{_key(key)}]"]
        lines += [f"{_key(k)} = {_value(v)}" for k, v in table.items()]
    for key, items in arrays:
        for item in items:
            lines += ["", f"[[{_key(key)}]]"]
            lines += [f"{_key(k)} = {_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"
