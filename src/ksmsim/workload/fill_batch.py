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
    WritePageRun,
    source_page,
    write_page_run_function,
    write_page_run_py,
    write_user_pages,
)
from ksmsim.kernel.mm import VM_WRITE, MmStruct
from ksmsim.kernel.page import PAGE_SHIFT, PAGE_SIZE
from ksmsim.workload.patterns import REPEAT_FILLER, UNIQUE_FILLER, Pattern, parse_pattern

__all__ = ["RegionWriter", "fill_writes", "write_pattern"]

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
    if len(texts) < upto:
        prefix = f"R|{salt}|".encode("ascii")
        for r in range(len(texts), upto):
            head = prefix + b"%d|" % r  # as f"R|{salt}|{r}|" in ASCII
            if len(head) > PAGE_SIZE:
                return None
            texts.append(PageText(head, REPEAT_FILLER))
    return texts  # write_page_run() grows it the same way (memory_shortcuts.source_page)


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


_SOURCES: dict[tuple[str, int, str, str, str, bool], PageSource | None] = {}
"""_page_source()'s answers, by (pattern, proc, region, salt, lazy): a writer asks each step."""
_SOURCES_MAX: Final = 4096


def _page_source(key: tuple[str, int, str, str, str, bool], p: Pattern) -> PageSource | None:
    """Return the PageSource giving page_bytes' contents of ``p`` for the proc, region and
    salt of ``key`` (as fill_writes() gives them, as PageTexts when lazy), or None where
    write_page_run() cannot take it; remember the answer in _SOURCES."""
    _kind, _value, proc, region, salt, lazy = key
    source: PageSource | None = None
    if p.is_constant:
        source = PageSource(SOURCE_CONSTANT, p.page(0, proc=proc, region=region, salt=salt))
    elif lazy and p.kind == "unique":
        try:
            head = f"U|{salt}|{proc}|{region}|".encode("ascii")
            source = PageSource(SOURCE_NUMBERED, head=head, filler=UNIQUE_FILLER)
        except UnicodeEncodeError:
            pass  # page_bytes raises the error, page by page
    elif lazy:
        texts = _repeat_texts(salt, 0)
        if texts is not None:
            head = f"R|{salt}|".encode("ascii")
            source = PageSource(SOURCE_CYCLIC, texts, p.value, head, REPEAT_FILLER)
    if len(_SOURCES) >= _SOURCES_MAX:
        _SOURCES.clear()
    _SOURCES[key] = source
    return source


_GC_PAUSE_PAGES: Final = 64
"""Runs shorter than this do not pause the collector (a pause costs more than it saves)."""


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
    machine = mm.machine
    ksm = machine.ksm
    source: PageSource | None = None
    p: Pattern | None = None
    if (
        count > 0
        and first + offset >= 0
        and ksm is not None
        and ksm.shortcuts.fill_batch
        and machine.swap is None
        and not machine.config.lru_pagevec
        and machine.preempt is None
        and not ksm.mutations
    ):
        # write_user_pages()'s conditions for its loop, which write_page_run() shares (and
        # Ksm._shortcuts_allowed()'s).
        if type(pattern) is Pattern:
            p = pattern
        else:
            try:
                p = parse_pattern(pattern)
            except ValueError:
                p = None  # raised by fill_writes() at the first page written, if any
        if p is not None:
            shortcuts = ksm.shortcuts
            lazy = PageText is not None and shortcuts.lazy_contents and shortcuts.c_helpers
            key = (p.kind, p.value, proc, region, salt, lazy)  # a Pattern's own hash is slower
            source = _SOURCES[key] if key in _SOURCES else _page_source(key, p)
    if source is None or p is None or ksm is None:
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
    run = write_page_run_function(ksm.shortcuts)
    if count < _GC_PAUSE_PAGES:
        return _write_runs(mm, base, p, source, first, count, offset, run, proc, region, salt)
    with pause_gc(ksm):
        return _write_runs(mm, base, p, source, first, count, offset, run, proc, region, salt)


def _write_runs(
    mm: MmStruct,
    base: int,
    p: Pattern,
    source: PageSource,
    first: int,
    count: int,
    offset: int,
    run: WritePageRun,
    proc: str,
    region: str,
    salt: str,
) -> int:
    """The loop of write_pattern(): area by area, write_page_run() and the exact path for the
    pages it does not take."""
    done = 0
    k = 0
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


class RegionWriter:
    """Writes of one pattern to one region of one process (a background writer's), each as
    write_pattern() would do it, with what write_pattern() works out at every call (the
    source, the loop to use) worked out once per set of shortcuts: a writer writes a page or
    two a call, where that work would cost more than the writes."""

    __slots__ = ("_run", "_shortcuts", "_source", "base", "mm", "pattern", "proc", "region", "salt")

    def __init__(
        self, mm: MmStruct, base: int, pattern: Pattern, *, proc: str, region: str, salt: str
    ) -> None:
        self.mm = mm
        self.base = base
        self.pattern = pattern
        self.proc = proc
        self.region = region
        self.salt = salt
        self._shortcuts: object = None
        self._source: PageSource | None = None
        self._run: WritePageRun = write_page_run_py

    def _refresh(self) -> None:
        """Work out the source and the loop for the machine's shortcuts now."""
        ksm = self.mm.machine.ksm
        assert ksm is not None
        shortcuts = self._shortcuts = ksm.shortcuts
        self._source = None
        if shortcuts.fill_batch:
            lazy = PageText is not None and shortcuts.lazy_contents and shortcuts.c_helpers
            p = self.pattern
            key = (p.kind, p.value, self.proc, self.region, self.salt, lazy)
            self._source = _SOURCES[key] if key in _SOURCES else _page_source(key, p)
        self._run = write_page_run_function(shortcuts)

    def write(self, first: int, count: int, index: int) -> int:
        """Write pages ``first`` to ``first + count - 1`` of the region with the contents of
        indices ``index``, ... of the pattern: write_pattern(); return the pages written."""
        mm = self.mm
        machine = mm.machine
        ksm = machine.ksm
        if ksm is not None and ksm.shortcuts is not self._shortcuts:
            self._refresh()
        source = self._source
        if (
            source is not None
            and ksm is not None
            and machine.swap is None
            and not machine.config.lru_pagevec
            and machine.preempt is None
            and not ksm.mutations
            and 0 < count < _GC_PAUSE_PAGES
            and index >= 0
        ):
            # write_pattern()'s conditions (fill_batch is _refresh()'s), for a run inside one
            # writable area: its write_page_run() call, and the rest as it does it.
            address = self.base + (first << PAGE_SHIFT)
            vma = mm.find_vma(address)
            if (
                vma is not None
                and vma.vm_start <= address
                and address + (count << PAGE_SHIFT) <= vma.vm_end
                and vma.vm_flags & VM_WRITE
            ):
                written = self._run(mm, vma, address, count, source, index)
                if written == count:
                    return written
                return written + self._write(first + written, count - written, index + written)
        return self._write(first, count, index)

    def _write(self, first: int, count: int, index: int) -> int:
        return write_pattern(
            self.mm,
            self.base,
            self.pattern,
            first,
            count,
            proc=self.proc,
            region=self.region,
            salt=self.salt,
            index=index,
        )
