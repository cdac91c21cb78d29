"""Tests of the exact page contents of the scenario format's fill patterns."""

from __future__ import annotations

import pytest

from ksmsim.workload.patterns import (
    PAGE_SIZE,
    ZERO_PAGE_BYTES,
    Pattern,
    page_bytes,
    parse_pattern,
)


def test_zero_page_is_shared_bytes() -> None:
    """ZERO_PAGE_BYTES is 4096 zero bytes and every zero page is that object."""
    assert isinstance(ZERO_PAGE_BYTES, bytes)
    assert ZERO_PAGE_BYTES.count(0) == 4096
    assert page_bytes("zero", 0, proc="p", region="r") is ZERO_PAGE_BYTES
    assert page_bytes("zero", 12345, proc="q", region="s", salt="x") is ZERO_PAGE_BYTES
    assert page_bytes(0, 7, proc="p", region="r") is ZERO_PAGE_BYTES


@pytest.mark.parametrize(("pattern", "byte"), [(0x41, 0x41), (255, 255), ("c", 0x63), ("0", 0x30)])
def test_byte_pattern(pattern: int | str, byte: int) -> None:
    """A byte pattern is 4096 bytes of that value, one shared object for all pages."""
    page = page_bytes(pattern, 0, proc="p", region="r")
    assert len(page) == PAGE_SIZE
    assert page == bytes([byte]) * PAGE_SIZE
    assert page_bytes(pattern, 99, proc="other", region="x", salt="s") is page
    assert page_bytes(parse_pattern(pattern), 3, proc="p", region="r") is page


def test_one_character_string_equals_its_byte() -> None:
    """'c' and 99 give the same (identical) page."""
    assert page_bytes("c", 0, proc="p", region="r") is page_bytes(99, 5, proc="q", region="s")


def test_unique_exact_bytes() -> None:
    """A unique page is 0x5A filler with U|salt|proc|region|i| at offset 0."""
    page = page_bytes("unique", 17, proc="child1", region="heap", salt="s1")
    prefix = b"U|s1|child1|heap|17|"
    assert len(page) == PAGE_SIZE
    assert page.startswith(prefix)
    assert page[len(prefix) :] == b"\x5a" * (PAGE_SIZE - len(prefix))
    assert page[-1] == 0x5A
    assert page_bytes("unique", 0, proc="a", region="b")[:8] == b"U||a|b|0"


def test_unique_pages_are_distinct() -> None:
    """Unique pages differ by process, region, index and salt."""
    base = {"proc": "p", "region": "r", "salt": ""}
    pages = {
        page_bytes("unique", 0, **base),
        page_bytes("unique", 1, **base),
        page_bytes("unique", 0, **{**base, "proc": "q"}),
        page_bytes("unique", 0, **{**base, "region": "s"}),
        page_bytes("unique", 0, **{**base, "salt": "x"}),
    }
    assert len(pages) == 5
    # equal inputs give equal (not necessarily identical) contents
    assert page_bytes("unique", 3, **base) == page_bytes("unique", 3, **base)


def test_repeat_exact_bytes() -> None:
    """A repeat page is 0xA5 filler with R|salt|i mod K| at offset 0."""
    page = page_bytes("repeat:3", 7, proc="p", region="r", salt="abc")
    prefix = b"R|abc|1|"
    assert len(page) == PAGE_SIZE
    assert page[: len(prefix)] == prefix
    assert page[len(prefix) :] == b"\xa5" * (PAGE_SIZE - len(prefix))
    assert page_bytes("repeat:5", 0, proc="p", region="r")[:6] == b"R||0|\xa5"


def test_repeat_sharing() -> None:
    """Repeat pages cycle through K shared objects, the same across processes and regions."""
    k = 4
    first = [page_bytes(f"repeat:{k}", i, proc="p", region="r", salt="z") for i in range(k)]
    assert len(set(first)) == k
    for i in range(k, 3 * k):
        page = page_bytes(f"repeat:{k}", i, proc="other", region="x", salt="z")
        assert page is first[i % k]
    # another salt gives other contents
    assert page_bytes(f"repeat:{k}", 0, proc="p", region="r", salt="y") != first[0]
    # the text holds no K: equal contents for equal (salt, residue) are one object
    assert page_bytes("repeat:8", 1, proc="p", region="r", salt="z") is first[1]


def test_distinct_families() -> None:
    """Unique, repeat and constant pages never coincide."""
    unique = page_bytes("unique", 0, proc="p", region="r")
    repeat = page_bytes("repeat:1", 0, proc="p", region="r")
    assert len({unique, repeat, ZERO_PAGE_BYTES, page_bytes(0x5A, 0, proc="p", region="r")}) == 4


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, Pattern("byte", 0)),
        (255, Pattern("byte", 255)),
        ("a", Pattern("byte", 97)),
        ("zero", Pattern("zero")),
        ("unique", Pattern("unique")),
        ("repeat:1", Pattern("repeat", 1)),
        ("repeat:16", Pattern("repeat", 16)),
    ],
)
def test_parse_pattern(value: int | str, expected: Pattern) -> None:
    """Valid patterns parse to the expected Pattern."""
    assert parse_pattern(value) == expected


def test_pattern_spec() -> None:
    """Pattern.spec is the normalised scenario form."""
    assert parse_pattern("c").spec == 99
    assert parse_pattern("zero").spec == "zero"
    assert parse_pattern("repeat:03").spec == "repeat:3"
    assert parse_pattern("unique").spec == "unique"
    assert parse_pattern(5).is_constant
    assert not parse_pattern("repeat:2").is_constant


@pytest.mark.parametrize(
    "value",
    ["repeat:0", "repeat:x", "repeat:", "repeat:-1", 256, -1, "ab", "", "é", True, 1.5, None, [1]],
)
def test_parse_pattern_errors(value: object) -> None:
    """Bad patterns raise ValueError with a one-line message."""
    with pytest.raises(ValueError) as info:
        parse_pattern(value)
    assert "\n" not in str(info.value)


def test_page_bytes_errors() -> None:
    """Negative indexes, non-ASCII names and over-long text are refused."""
    with pytest.raises(ValueError):
        page_bytes("unique", -1, proc="p", region="r")
    with pytest.raises(ValueError):
        page_bytes("repeat:2", -1, proc="p", region="r")
    with pytest.raises(ValueError):
        page_bytes("unique", 0, proc="pé", region="r")
    with pytest.raises(ValueError):
        page_bytes("unique", 0, proc="p", region="r", salt="x" * 5000)
    with pytest.raises(ValueError):
        page_bytes("repeat:x", 0, proc="p", region="r")
