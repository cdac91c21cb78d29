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

``write_pattern`` writes a run of pages of a region with a pattern, as
``write_user_pages(mm, fill_writes(...))`` would, and hands the run, area by area, to
``memory_shortcuts.write_page_run`` (a C loop, or its twin) with the contents described by a
``PageSource`` instead of generated page by page: ``Host.fill`` and the background writers
(churn.py) use it. Page ``first + k`` gets the contents of index ``index + k`` (a fill writes
page i's own contents; a writer its n-th write's).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Final

from ksmsim.kernel.ksm_shortcuts import PageText, pause_gc
from ksmsim.kernel.memory import write_user_bytes
from ksmsim.kernel.memory_shortcuts import (
    SOURCE_CONSTANT,
    SOURCE_CYCLIC,
    SOURCE_NUMBERED,
    PageSource,
    source_page,
    write_page_run_function,
    write_user_pages,
)
from ksmsim.kernel.mm import VM_WRITE, MmStruct
from ksmsim.kernel.page import PAGE_SHIFT, PAGE_SIZE
from ksmsim.workload.patterns import REPEAT_FILLER, UNIQUE_FILLER, Pattern, parse_pattern

__all__ = ["fill_writes", "write_pattern"]

_UNIQUE_FILL: Final = bytes([UNIQUE_FILLER]) * PAGE_SIZE
_REPEAT_TEXTS: dict[str, list[bytes]] = {}
"""Repeat pages as PageTexts: salt -> the shared objects for residues 0, 1, ... (grown as
pages are needed, with no gaps)."""


def _repeat_texts(salt: str, upto: int) -> list[bytes] | None:
    """Return the repeat PageTexts of ``salt`` for residues 0 to at least ``upto - 1``, or None
    when the salt cannot be written into a page (page_bytes raises the error then)."""
    texts = _REPEAT_TEXTS.get(salt)
    if texts is None:
        if not salt.isascii():
            return None
        texts = _REPEAT_TEXTS[salt] = []
    for r in range(len(texts), upto):
        head = f"R|{salt}|{r}|".encode("ascii")
        if len(head) > PAGE_SIZE:
            return None
        texts.append(PageText(head, REPEAT_FILLER))
    return texts


def fill_writes(
    mm: MmStruct,
    base: int,
    pattern: Pattern | int | str,
    indices: Iterable[int],
    *,
    proc: str,
    region: str,
    salt: str = "",
    index_offset: int = 0,
) -> Iterator[tuple[int, bytes]]:
    """Yield ``(address, contents)`` for page ``i`` of the region at ``base`` for each ``i`` in
    ``indices`` whose address some area of ``mm`` covers, with ``page_bytes``' contents of
    index ``i + index_offset``."""
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
    for page_i in indices:
        address = base + (page_i << PAGE_SHIFT)
        i = page_i + index_offset
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
            r = i % p.value
            texts = _repeat_texts(salt, r + 1)
            if texts is None:
                yield address, p.page(i, proc=proc, region=region, salt=salt)  # raises
                continue
            yield address, texts[r]
            continue
        yield address, p.page(i, proc=proc, region=region, salt=salt)


def _page_source(
    mm: MmStruct, p: Pattern, *, proc: str, region: str, salt: str
) -> PageSource | None:
    """Return the PageSource giving page_bytes' contents of ``p`` (as fill_writes() gives
    them), or None where write_page_run() cannot take the pattern."""
    if p.is_constant:
        return PageSource(SOURCE_CONSTANT, p.page(0, proc=proc, region=region, salt=salt), 0)
    ksm = mm.machine.ksm
    if PageText is None or ksm is None or not ksm.shortcuts.lazy_contents:
        return None
    if not ksm.shortcuts.c_helpers:
        return None
    if p.kind == "unique":
        try:
            head = f"U|{salt}|{proc}|{region}|".encode("ascii")
        except UnicodeEncodeError:
            return None  # page_bytes raises the error, page by page
        return PageSource(SOURCE_NUMBERED, head, UNIQUE_FILLER)
    texts = _repeat_texts(salt, 0)
    if texts is None:
        return None
    return PageSource(SOURCE_CYCLIC, texts, p.value)


def _runs_allowed(mm: MmStruct) -> bool:
    """Tell whether write_page_run() may run: write_user_pages()'s conditions for its loop."""
    machine = mm.machine
    ksm = machine.ksm
    return (
        ksm is not None
        and ksm.shortcuts.fill_batch
        and machine.swap is None
        and not machine.config.lru_pagevec
        and ksm._shortcuts_allowed()
    )


def write_pattern(
    mm: MmStruct,
    base: int,
    pattern: Pattern | int | str,
    first: int,
    count: int,
    *,
    proc: str,
    region: str,
    salt: str = "",
    index: int | None = None,
) -> int:
    """Write pages ``first`` to ``first + count - 1`` of the region at ``base`` with the
    contents of indices ``index``, ``index + 1``, ... (``index`` defaults to ``first``) of
    ``pattern``, skipping unmapped pages, as write_user_pages() of fill_writes() would; return
    how many pages were written."""
    offset = 0 if index is None else index - first
    source: PageSource | None = None
    p: Pattern | None = None
    if count > 0 and first + offset >= 0 and _runs_allowed(mm):
        try:
            p = parse_pattern(pattern)
        except ValueError:
            p = None  # raised by fill_writes() at the first page written, if any
        if p is not None:
            source = _page_source(mm, p, proc=proc, region=region, salt=salt)
    if source is None or p is None:
        writes = fill_writes(
            mm,
            base,
            pattern,
            range(first, first + count),
            proc=proc,
            region=region,
            salt=salt,
            index_offset=offset,
        )
        return write_user_pages(mm, writes)
    ksm = mm.machine.ksm
    assert ksm is not None
    run = write_page_run_function(ksm.shortcuts)
    done = 0
    k = 0
    with pause_gc(ksm):
        while k < count:
            address = base + ((first + k) << PAGE_SHIFT)
            vma = mm.find_vma(address)
            if vma is None:
                break  # no area from here up: the rest is unmapped, skipped
            if vma.vm_start > address:
                k = min(count, k + ((vma.vm_start - address) >> PAGE_SHIFT))  # a hole: skipped
                continue
            if vma.vm_flags & VM_WRITE:
                n = min(count - k, (vma.vm_end - address) >> PAGE_SHIFT)
                if source.kind == SOURCE_CYCLIC:
                    i = first + offset + k
                    _repeat_texts(salt, min(source.arg, i + n))
                written = run(mm, vma, address, n, source, first + offset + k)
                done += written
                k += written
                if written == n:
                    continue
            # The page the loop does not take: the exact path (another fault, SIGSEGV, OOM).
            i = first + offset + k
            data = source_page(source, i)
            if data is None:
                data = p.page(i, proc=proc, region=region, salt=salt)
            write_user_bytes(mm, base + ((first + k) << PAGE_SHIFT), data)
            done += 1
            k += 1
    return done
