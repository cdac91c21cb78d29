"""Page contents of the scenario format's fill patterns, byte for byte.

The format (``/work/shared/scenario-format.md``, "Page contents") defines the exact 4096 bytes of
page *i* of a region filled with a pattern:

==============  ==========================================================================
pattern         content of page *i*
==============  ==========================================================================
byte (0-255)    4096 bytes of that value (a one-character string means its byte value)
``"zero"``      4096 bytes of 0x00
``"unique"``    0x5A filler, ASCII ``U|{salt}|{proc}|{region}|{i}|`` written at offset 0
``"repeat:K"``  0xA5 filler, ASCII ``R|{salt}|{i mod K}|`` written at offset 0
==============  ==========================================================================

Equal contents share one immutable ``bytes`` object: every page of a constant pattern is the same
object, and a repeat page is one cached object per ``(salt, i mod K)`` (the text does not contain
K, so ``repeat:2`` and ``repeat:4`` share their pages for residues 0 and 1). Unique pages are built
afresh on each call and never cached.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

__all__ = [
    "PAGE_SIZE",
    "REPEAT_FILLER",
    "UNIQUE_FILLER",
    "ZERO_PAGE_BYTES",
    "Pattern",
    "PatternKind",
    "page_bytes",
    "parse_pattern",
]

PAGE_SIZE: Final = 4096
"""Bytes in a page (x86-64 base pages)."""

UNIQUE_FILLER: Final = 0x5A
"""Filler byte of ``unique`` pages."""

REPEAT_FILLER: Final = 0xA5
"""Filler byte of ``repeat:K`` pages."""

ZERO_PAGE_BYTES: Final[bytes] = bytes(PAGE_SIZE)
"""The one shared all-zero page: every ``"zero"`` (and byte 0) page is this very object."""

PatternKind: TypeAlias = Literal["byte", "zero", "unique", "repeat"]

_UNIQUE_FILL: Final = bytes([UNIQUE_FILLER]) * PAGE_SIZE
_REPEAT_FILL: Final = bytes([REPEAT_FILLER]) * PAGE_SIZE
_REPEAT_RE: Final = re.compile(r"repeat:([0-9]+)")

# Constant pages, built on first use: byte value -> its page (byte 0 is ZERO_PAGE_BYTES).
_CONST_PAGES: dict[int, bytes] = {0: ZERO_PAGE_BYTES}
# Repeat pages: (salt, residue) -> page. Bounded by the distinct contents a workload uses.
_REPEAT_PAGES: dict[tuple[str, int], bytes] = {}
# Raw pattern value (int or str) -> parsed Pattern, for page_bytes called with a raw value.
_PARSED: dict[int | str, Pattern] = {}
_PARSED_MAX: Final = 4096


@dataclass(frozen=True, slots=True)
class Pattern:
    """A validated fill pattern.

    ``kind`` is ``"byte"`` (``value`` = the byte, 0-255), ``"zero"`` (``value`` = 0),
    ``"unique"`` (``value`` = 0) or ``"repeat"`` (``value`` = K >= 1).
    """

    kind: PatternKind
    value: int = 0

    def __post_init__(self) -> None:
        """Check kind and value, and build the constant page of a byte pattern once."""
        if isinstance(self.value, bool) or not isinstance(self.value, int):
            raise ValueError(f"pattern value must be an integer, got {self.value!r}")
        if self.kind == "byte":
            if not 0 <= self.value <= 255:
                raise ValueError(f"byte pattern must be 0-255, got {self.value}")
            if self.value not in _CONST_PAGES:
                _CONST_PAGES[self.value] = bytes([self.value]) * PAGE_SIZE
        elif self.kind == "repeat":
            if self.value < 1:
                raise ValueError(f"repeat:K needs K >= 1, got {self.value}")
        elif self.kind in ("zero", "unique"):
            if self.value != 0:
                raise ValueError(f"{self.kind} pattern takes no value, got {self.value}")
        else:
            raise ValueError(f"unknown pattern kind {self.kind!r}")

    @property
    def spec(self) -> int | str:
        """Return the normalised scenario-file form: an int, "zero", "unique" or "repeat:K"."""
        if self.kind == "byte":
            return self.value
        if self.kind == "repeat":
            return f"repeat:{self.value}"
        return self.kind

    @property
    def is_constant(self) -> bool:
        """Return True when every page has the same content (byte and zero patterns)."""
        return self.kind in ("byte", "zero")

    def __str__(self) -> str:
        """Return the normalised spec as text."""
        return str(self.spec)

    def page(self, index: int, *, proc: str, region: str, salt: str = "") -> bytes:
        """Return the 4096 bytes of page ``index`` of region ``region`` of process ``proc``."""
        kind = self.kind
        if kind == "repeat":
            if index < 0:
                raise ValueError(f"page index must be >= 0, got {index}")
            key = (salt, index % self.value)
            page = _REPEAT_PAGES.get(key)
            if page is None:
                page = _REPEAT_PAGES.setdefault(key, _build_repeat(salt, key[1]))
            return page
        if kind == "unique":
            if index < 0:
                raise ValueError(f"page index must be >= 0, got {index}")
            prefix = _ascii(f"U|{salt}|{proc}|{region}|{index}|")
            return prefix + _UNIQUE_FILL[len(prefix) :]
        return _CONST_PAGES[self.value]


def _ascii(text: str) -> bytes:
    """Encode a page's header text as ASCII, refusing non-ASCII or over-long text."""
    try:
        data = text.encode("ascii")
    except UnicodeEncodeError:
        raise ValueError(f"page text must be ASCII, got {text!r}") from None
    if len(data) > PAGE_SIZE:
        raise ValueError(f"page text is longer than a page ({len(data)} bytes)")
    return data


def _build_repeat(salt: str, residue: int) -> bytes:
    """Build the repeat page with the given salt and residue (i mod K)."""
    prefix = _ascii(f"R|{salt}|{residue}|")
    return prefix + _REPEAT_FILL[len(prefix) :]


def parse_pattern(value: object) -> Pattern:
    """Validate a pattern as written in a scenario and return it as a ``Pattern``.

    Accepts an integer 0-255, a one-character ASCII string (its byte value), ``"zero"``,
    ``"unique"``, ``"repeat:K"`` with K a positive decimal integer, or a ``Pattern``.
    Raises ``ValueError`` with a one-line message otherwise.
    """
    if isinstance(value, Pattern):
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected a pattern, got {str(value).lower()}")
    if isinstance(value, int | str):
        cached = _PARSED.get(value)
        if cached is not None:
            return cached
    pattern = _parse_pattern(value)
    if isinstance(value, int | str) and len(_PARSED) < _PARSED_MAX:
        _PARSED[value] = pattern
    return pattern


def _parse_pattern(value: object) -> Pattern:
    """Parse a raw pattern value (uncached)."""
    if isinstance(value, int):
        if not 0 <= value <= 255:
            raise ValueError(f"byte pattern must be 0-255, got {value}")
        return Pattern("byte", value)
    if isinstance(value, str):
        if value == "zero":
            return Pattern("zero")
        if value == "unique":
            return Pattern("unique")
        if value.startswith("repeat:"):
            match = _REPEAT_RE.fullmatch(value)
            if match is None:
                raise ValueError(
                    f'repeat pattern must be "repeat:K" with K an integer, got {value!r}'
                )
            k = int(match.group(1))
            if k < 1:
                raise ValueError(f"repeat:K needs K >= 1, got {value!r}")
            return Pattern("repeat", k)
        if len(value) == 1:
            code = ord(value)
            if code > 127:
                raise ValueError(f"a one-character byte pattern must be ASCII, got {value!r}")
            return Pattern("byte", code)
        raise ValueError(
            'expected a pattern (0-255, one character, "zero", "unique" or '
            f'"repeat:K"), got {value!r}'
        )
    raise ValueError(f"expected a pattern, got {type(value).__name__} {value!r}")


def page_bytes(
    pattern: Pattern | int | str, index: int, *, proc: str, region: str, salt: str = ""
) -> bytes:
    """Return the exact 4096 bytes of page ``index`` of a region filled with ``pattern``.

    ``proc`` and ``region`` are the names written into ``unique`` pages (a forked child writing
    ``unique`` passes its own name); ``salt`` goes into ``unique`` and ``repeat:K`` pages.
    Constant and repeat pages are shared objects; never mutate them (they are ``bytes``).
    """
    p = pattern if type(pattern) is Pattern else parse_pattern(pattern)
    return p.page(index, proc=proc, region=region, salt=salt)
