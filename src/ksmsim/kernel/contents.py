"""Page contents as immutable ``bytes``, shared by identity wherever they are equal.

A copy-on-write copy shares its source's bytes object, so a thousand copies of one page cost
one buffer. Small writes go through a bounded cache keyed by (old contents, offset, payload),
so writing the same byte into many equal pages also yields one shared object.
"""

from __future__ import annotations

from typing import Final

from ksmsim.kernel.page import PAGE_SIZE

ZERO_DATA: Final = bytes(PAGE_SIZE)
"""The contents of the zero page and of every freshly zeroed frame."""

_WRITE_CACHE_MAX: Final = 1 << 14
_write_cache: dict[tuple[bytes, int, bytes], bytes] = {}


def write_bytes(data: bytes, offset: int, payload: bytes) -> bytes:
    """Return ``data`` with ``payload`` written at ``offset``, shared with equal earlier results."""
    if data[offset : offset + len(payload)] == payload:
        return data
    key = (data, offset, payload)
    out = _write_cache.get(key)
    if out is None:
        out = data[:offset] + payload + data[offset + len(payload) :]
        if len(_write_cache) >= _WRITE_CACHE_MAX:
            _write_cache.clear()
        _write_cache[key] = out
    return out
