"""Tests for ksmsim.kernel.jhash: lookup2 jhash2, pure Python and C extension."""

from __future__ import annotations

import random
import struct
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ksmsim.kernel import jhash as jh
from ksmsim.kernel.jhash import (
    HAVE_SPEEDUPS,
    KSM_CHECKSUM_INITVAL,
    calc_checksum_jhash2,
    jhash2,
    jhash2_c,
    jhash2_py,
)

PAGE = 4096

needs_c = pytest.mark.skipif(
    not HAVE_SPEEDUPS,
    reason="C extension ksmsim._speedups not built (run: pip install -e . --no-deps)",
)

# Checksums of uniform 4 KiB pages, jhash2(page, 1024 words, initval 17), as
# given for the kernel's 2.6.33 lookup2 jhash2 (the value calc_checksum yields).
PAGE_VECTORS = [
    (0x00, 0x31CBE0FA),
    (0x01, 0xDB029082),
    (0xFF, 0x5CC67428),
]

# Small vectors.  Provenance: computed once by running jhash2_py from this
# module (2.6.33 lookup2 spec) and cross-checked against the C extension; they
# pin down the length folding (c += 4 * words) and the 0/1/2-word tails.
SMALL_VECTORS = [
    (b"", 0, 0xBD49D10D),  # no words: only the final mix runs
    (b"", 17, 0xCE8BA1AC),
    (b"ksm!", 0, 0xBD015A6B),  # one-word tail
    (struct.pack("<4I", 1, 2, 3, 4), 17, 0x24EA120E),  # one round + one-word tail
    (struct.pack("<5I", 0, 1, 2, 3, 4), 0xDEADBEEF, 0x5B0B5D95),  # two-word tail
]


def c_impl() -> Callable[[bytes | bytearray | memoryview, int], int]:
    assert jhash2_c is not None
    return jhash2_c


@pytest.mark.parametrize(("fill", "expected"), PAGE_VECTORS)
def test_page_vectors_python(fill: int, expected: int) -> None:
    assert jhash2_py(bytes([fill]) * PAGE, 17) == expected


@needs_c
@pytest.mark.parametrize(("fill", "expected"), PAGE_VECTORS)
def test_page_vectors_c(fill: int, expected: int) -> None:
    assert c_impl()(bytes([fill]) * PAGE, 17) == expected


@pytest.mark.parametrize(("fill", "expected"), PAGE_VECTORS)
def test_page_vectors_dispatch_and_checksum(fill: int, expected: int) -> None:
    page = bytes([fill]) * PAGE
    assert jhash2(page) == expected
    assert jhash2(page, KSM_CHECKSUM_INITVAL) == expected
    assert calc_checksum_jhash2(page) == expected
    assert calc_checksum_jhash2(bytearray(page)) == expected
    assert calc_checksum_jhash2(memoryview(page)) == expected


@pytest.mark.parametrize(("data", "initval", "expected"), SMALL_VECTORS)
def test_small_vectors_python(data: bytes, initval: int, expected: int) -> None:
    assert jhash2_py(data, initval) == expected


@needs_c
@pytest.mark.parametrize(("data", "initval", "expected"), SMALL_VECTORS)
def test_small_vectors_c(data: bytes, initval: int, expected: int) -> None:
    assert c_impl()(data, initval) == expected


@needs_c
@pytest.mark.parametrize("nwords", [0, 1, 2, 3, 4, 5, 6, 7, 8, 100, 101, 102, 1023, 1024, 1025])
def test_c_matches_python_random(nwords: int) -> None:
    rng = random.Random(nwords)
    for _ in range(20):
        data = rng.randbytes(4 * nwords)
        initval = rng.getrandbits(32)
        assert c_impl()(data, initval) == jhash2_py(data, initval)


@needs_c
@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=600).map(lambda b: b[: len(b) - len(b) % 4]), st.integers(0, 2**32 - 1))
def test_c_matches_python_hypothesis(data: bytes, initval: int) -> None:
    assert c_impl()(data, initval) == jhash2_py(data, initval)


def test_page_is_little_endian_words() -> None:
    # A page whose only non-zero byte is the lowest byte of word 0 must hash
    # like the word value 1, not 1 << 24.
    page = bytearray(PAGE)
    page[0] = 1
    words = [1] + [0] * 1023
    assert jhash2(bytes(page)) == jhash2_py(struct.pack("<1024I", *words), 17)
    assert jhash2(bytes(page)) != jhash2_py(struct.pack(">1024I", *words), 17)


def test_single_bit_changes_checksum() -> None:
    page = bytearray(PAGE)
    base = calc_checksum_jhash2(bytes(page))
    page[PAGE - 1] ^= 0x80
    assert calc_checksum_jhash2(bytes(page)) != base


def test_initval_is_taken_mod_2_32() -> None:
    data = bytes(range(12))
    assert jhash2_py(data, 17 + 2**32) == jhash2_py(data, 17)
    assert jhash2_py(data, -1) == jhash2_py(data, 0xFFFFFFFF)
    if HAVE_SPEEDUPS:
        assert c_impl()(data, 17 + 2**32) == jhash2_py(data, 17)
        assert c_impl()(data, -1) == jhash2_py(data, 0xFFFFFFFF)
        assert c_impl()(data, 2**100 + 5) == jhash2_py(data, 5)


def test_result_range() -> None:
    rng = random.Random(7)
    for _ in range(50):
        h = jhash2(rng.randbytes(4 * rng.randrange(20)), rng.getrandbits(32))
        assert 0 <= h < 2**32


@pytest.mark.parametrize("bad_len", [1, 2, 3, 4097])
def test_length_not_multiple_of_4_python(bad_len: int) -> None:
    with pytest.raises(ValueError, match="32-bit words"):
        jhash2_py(bytes(bad_len), 17)


@needs_c
@pytest.mark.parametrize("bad_len", [1, 2, 3, 4097])
def test_length_not_multiple_of_4_c(bad_len: int) -> None:
    with pytest.raises(ValueError, match="32-bit words"):
        c_impl()(bytes(bad_len), 17)


@needs_c
def test_c_argument_errors() -> None:
    f: Callable[..., int] = c_impl()
    with pytest.raises(TypeError):
        f(b"abcd")
    with pytest.raises(TypeError):
        f(b"abcd", 1, 2)
    with pytest.raises(TypeError):
        f(b"abcd", 1.5)
    with pytest.raises(TypeError):
        f("abcd", 1)


def test_dispatch_uses_c_when_available() -> None:
    assert (jh.jhash2_c is not None) == HAVE_SPEEDUPS
    if HAVE_SPEEDUPS:
        assert jh._impl is jh.jhash2_c
    else:
        assert jh._impl is jh.jhash2_py
