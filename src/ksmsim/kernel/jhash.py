"""Bob Jenkins' lookup2 hash over 32-bit words, as ``jhash2`` in include/linux/jhash.h (v2.6.33).

At the modelled commit KSM decides whether a page is "volatile" by comparing a
checksum taken on two successive scans; ``calc_checksum`` in mm/ksm.c computes
it as ``jhash2`` over the page viewed as ``PAGE_SIZE / 4`` native 32-bit words
with an initial value of 17.  Kernels before 2.6.37 ship the *old* lookup2
variant of the Jenkins hash (later replaced by lookup3), and that is what is
reproduced here, bit for bit.

Words are read little-endian (the byte order of the x86 machines being
modelled).  The C extension ``ksmsim._speedups`` is used when it was built;
otherwise a pure-Python fallback with identical results runs instead.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from typing import Final

__all__ = [
    "HAVE_SPEEDUPS",
    "JHASH_GOLDEN_RATIO",
    "KSM_CHECKSUM_INITVAL",
    "calc_checksum_jhash2",
    "jhash2",
    "jhash2_c",
    "jhash2_py",
]

Buffer = bytes | bytearray | memoryview

#: The starting value of the ``a`` and ``b`` registers (an arbitrary constant
#: derived from the golden ratio).
JHASH_GOLDEN_RATIO: Final = 0x9E3779B9

#: The ``initval`` mm/ksm.c passes when checksumming a page.
KSM_CHECKSUM_INITVAL: Final = 17

_M: Final = 0xFFFFFFFF


def jhash2_py(words_bytes: Buffer, initval: int) -> int:
    """Hash a little-endian u32 word array with lookup2 (pure Python model of ``jhash2``).

    ``words_bytes`` must be a multiple of 4 bytes long; it is read as that
    many / 4 little-endian 32-bit words.  ``initval`` is reduced mod 2**32.
    Returns the 32-bit hash.  Reference implementation: slow but obvious.
    """
    n = len(words_bytes)
    if n % 4:
        raise ValueError(f"jhash2 needs a whole number of 32-bit words, got {n} bytes")
    nwords = n // 4
    k = struct.unpack(f"<{nwords}I", words_bytes)
    M = _M
    a = b = JHASH_GOLDEN_RATIO
    c = initval & M
    i = 0
    full = nwords - nwords % 3
    while i < full:
        a = (a + k[i]) & M
        b = (b + k[i + 1]) & M
        c = (c + k[i + 2]) & M
        # the lookup2 mixing round, written out
        a = (a - b - c) & M
        a ^= c >> 13
        b = (b - c - a) & M
        b ^= (a << 8) & M
        c = (c - a - b) & M
        c ^= b >> 13
        a = (a - b - c) & M
        a ^= c >> 12
        b = (b - c - a) & M
        b ^= (a << 16) & M
        c = (c - a - b) & M
        c ^= b >> 5
        a = (a - b - c) & M
        a ^= c >> 3
        b = (b - c - a) & M
        b ^= (a << 10) & M
        c = (c - a - b) & M
        c ^= b >> 15
        i += 3
    # The total length in bytes goes into c before the 0..2 leftover words.
    c = (c + nwords * 4) & M
    rest = nwords - full
    if rest == 2:
        b = (b + k[i + 1]) & M
    if rest >= 1:
        a = (a + k[i]) & M
    a = (a - b - c) & M
    a ^= c >> 13
    b = (b - c - a) & M
    b ^= (a << 8) & M
    c = (c - a - b) & M
    c ^= b >> 13
    a = (a - b - c) & M
    a ^= c >> 12
    b = (b - c - a) & M
    b ^= (a << 16) & M
    c = (c - a - b) & M
    c ^= b >> 5
    a = (a - b - c) & M
    a ^= c >> 3
    b = (b - c - a) & M
    b ^= (a << 10) & M
    c = (c - a - b) & M
    c ^= b >> 15
    return c


#: The C implementation ``ksmsim._speedups.jhash2(data, initval)`` if it was
#: built, else ``None``.  Same contract as :func:`jhash2_py`.
jhash2_c: Callable[[Buffer, int], int] | None
try:
    from ksmsim._speedups import jhash2 as _c_jhash2
except ImportError:  # extension not built: fall back to Python
    jhash2_c = None
else:
    jhash2_c = _c_jhash2

#: Whether the C extension is in use.
HAVE_SPEEDUPS: Final[bool] = jhash2_c is not None

_impl: Callable[[Buffer, int], int] = jhash2_c if jhash2_c is not None else jhash2_py


def jhash2(data: Buffer, initval: int = KSM_CHECKSUM_INITVAL) -> int:
    """Hash ``data`` as little-endian u32 words with lookup2 (models ``jhash2``, v2.6.33 jhash.h).

    Uses the C extension when available, else :func:`jhash2_py`.  ``data``
    must be a multiple of 4 bytes long (``ValueError`` otherwise).
    """
    return _impl(data, initval)


def calc_checksum_jhash2(data: Buffer) -> int:
    """Checksum a page the way mm/ksm.c's ``calc_checksum`` does at this commit.

    That is ``jhash2(page, PAGE_SIZE / 4, 17)``: the page (4096 bytes in the
    model) is hashed as 32-bit words with ``initval`` 17.  Any length that is a
    multiple of 4 is accepted so models with other page sizes still work.
    """
    return _impl(data, KSM_CHECKSUM_INITVAL)
