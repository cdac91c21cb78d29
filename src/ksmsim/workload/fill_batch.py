"""The writes of a ``fill``, generated in a batch: page contents as ``patterns.page_bytes`` gives them.

``fill_writes`` yields ``(address, contents)`` for each selected page of a region that is
mapped, in page order, with exactly the bytes ``page_bytes(pattern, i, proc=..., region=...,
salt=...)`` returns (and the same shared objects for constant and repeat patterns); ``unique``
pages are built from a header encoded once instead of formatting and encoding the whole text
per page. Pages are produced one at a time, as the writes consume them, so an error in the
pattern text is raised at the same page, after the same writes, as ``Host.fill`` page by page.

With the ``lazy_contents`` shortcut (ksm_shortcuts.py) a ``unique`` or ``repeat:K`` page is a
``PageText`` (the C extension's): its header and filler byte, standing for and behaving as the
very same bytes, in some 80 bytes instead of 4 KiB. Repeat pages are shared objects, one per
(salt, i mod K), as ``page_bytes`` shares its bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

from ksmsim.kernel.ksm_shortcuts import PageText
from ksmsim.kernel.mm import MmStruct
from ksmsim.kernel.page import PAGE_SHIFT, PAGE_SIZE
from ksmsim.workload.patterns import REPEAT_FILLER, UNIQUE_FILLER, Pattern, parse_pattern

__all__ = ["fill_writes"]

_UNIQUE_FILL: Final = bytes([UNIQUE_FILLER]) * PAGE_SIZE
_REPEAT_TEXTS: dict[tuple[str, int], bytes] = {}
"""Repeat pages as PageTexts: (salt, i mod K) -> the shared object."""


def fill_writes(
    mm: MmStruct,
    base: int,
    pattern: Pattern | int | str,
    indices: Iterable[int],
    *,
    proc: str,
    region: str,
    salt: str = "",
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(address, contents)`` for page ``i`` of the region at ``base`` for each ``i`` in
    ``indices`` whose address some area of ``mm`` covers, with ``page_bytes``' contents."""
    p: Pattern | None = None
    head: bytes | None = None
    ksm = mm.machine.ksm
    lazy = (
        PageText is not None
        and ksm is not None
        and ksm.shortcuts.lazy_contents
        and ksm.shortcuts.c_helpers
    )
    vma = None
    for i in indices:
        address = base + (i << PAGE_SHIFT)
        if vma is None or not vma.vm_start <= address < vma.vm_end:
            vma = mm.find_vma(address)
            if vma is None or vma.vm_start > address:
                vma = None
                continue
        if p is None:  # parsed at the first page written, where page_bytes would parse it
            p = parse_pattern(pattern)
            if p.kind == "unique":
                try:
                    head = f"U|{salt}|{proc}|{region}|".encode("ascii")
                except UnicodeEncodeError:
                    head = None  # page_bytes raises the error, page by page
        if head is not None and i >= 0:
            prefix = head + b"%d|" % i
            if len(prefix) <= PAGE_SIZE:
                if lazy:
                    yield address, PageText(prefix, UNIQUE_FILLER)
                else:
                    yield address, prefix + _UNIQUE_FILL[len(prefix) :]
                continue
        if lazy and p.kind == "repeat" and i >= 0:
            key = (salt, i % p.value)
            text = _REPEAT_TEXTS.get(key)
            if text is None:
                try:
                    text_head: bytes | None = f"R|{salt}|{key[1]}|".encode("ascii")
                except UnicodeEncodeError:
                    text_head = None
                if text_head is None or len(text_head) > PAGE_SIZE:
                    yield address, p.page(i, proc=proc, region=region, salt=salt)  # raises
                    continue
                text = _REPEAT_TEXTS[key] = PageText(text_head, REPEAT_FILLER)
            yield address, text
            continue
        yield address, p.page(i, proc=proc, region=region, salt=salt)
