"""A simulated process of ``ksmsim real``: a small server that holds anonymous mappings.

Started by the runner as ``python -m ksmsim.real.child ADDRESS NAME``. It connects to the
runner's Unix socket, says hello, and executes one command at a time (see ``protocol``): mmap,
fill, write, read, munmap, madvise, digest, fork and exit, with the semantics of the model's
``Host``. Memory is touched through ctypes on libc, so the bytes are exactly the format's.

The server keeps its own table of regions (name -> address, pages) and of the address ranges it
has mapped. A page is "mapped" when one of its own mappings covers it (the model asks whether any
VMA covers it; the difference is the interpreter's own mappings, which the model does not have and
which must never be touched). fill/write/read skip unmapped pages, and munmap/madvise apply to
each mapped run. It exits at end of file on its socket (the runner is gone) and on ``exit``.
"""

from __future__ import annotations

import bisect
import ctypes
import hashlib
import itertools
import os
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final, NoReturn

from ksmsim.real.errors import ChildFailed
from ksmsim.real.protocol import Channel, connect
from ksmsim.workload.patterns import PAGE_SIZE, ZERO_PAGE_BYTES, page_bytes, parse_pattern

PAGE_SHIFT: Final = 12
PROT_NONE: Final = 0x0
PROT_READ: Final = 0x1
PROT_WRITE: Final = 0x2
MAP_PRIVATE: Final = 0x02
MAP_ANONYMOUS: Final = 0x20
MAP_NORESERVE: Final = 0x4000
MAP_FIXED_NOREPLACE: Final = 0x100000
MAP_FAILED: Final = ctypes.c_void_p(-1).value

MADVICE: Final = {
    "dontneed": 4,
    "mergeable": 12,
    "unmergeable": 13,
    "hugepage": 14,
    "nohugepage": 15,
}
"""Linux madvise() advice values (include/uapi/asm-generic/mman-common.h)."""

MAX_PLUG: Final = 1 << 30
"""Gaps between the interpreter's mappings up to this size are plugged (see ``plug_holes``)."""

ENVIRONMENT: Final = {
    "PYTHONMALLOC": "malloc",
    "MALLOC_MMAP_THRESHOLD_": str(32 << 20),
    "MALLOC_ARENA_MAX": "1",
}
"""Environment of a server: the interpreter allocates from the brk heap, never with mmap, so its
address space stays still and only the scenario's regions come and go below its mappings."""

PM_PRESENT: Final = 1 << 63
PM_SWAP: Final = 1 << 62


class Libc:
    """The few libc calls the server needs, with errno turned into OSError."""

    def __init__(self) -> None:
        """Bind mmap, munmap and madvise from the running libc."""
        libc = ctypes.CDLL(None, use_errno=True)
        self._mmap = libc.mmap
        self._mmap.restype = ctypes.c_void_p
        self._mmap.argtypes = [
            ctypes.c_void_p,
            ctypes.c_size_t,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_int,
            ctypes.c_long,
        ]
        self._munmap = libc.munmap
        self._munmap.restype = ctypes.c_int
        self._munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        self._madvise = libc.madvise
        self._madvise.restype = ctypes.c_int
        self._madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]

    @staticmethod
    def _error(call: str) -> OSError:
        """Return an OSError for the errno the last call left."""
        err = ctypes.get_errno()
        return OSError(err, f"{call}: {os.strerror(err)}")

    def mmap_anon(self, length: int) -> int:
        """Map ``length`` bytes of anonymous private memory; return the address."""
        addr = self._mmap(None, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)
        if addr is None or addr == MAP_FAILED:
            raise self._error("mmap")
        return int(addr)

    def reserve(self, addr: int, length: int) -> bool:
        """Map an inaccessible placeholder exactly at ``addr``; False if anything is there."""
        flags = MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE
        got = self._mmap(addr, length, PROT_NONE, flags, -1, 0)
        if got is None or got == MAP_FAILED:
            return False
        if got != addr:  # a kernel without MAP_FIXED_NOREPLACE treats it as a hint
            self.munmap(int(got), length)
            return False
        return True

    def munmap(self, addr: int, length: int) -> None:
        """Unmap ``[addr, addr + length)``."""
        if self._munmap(addr, length) != 0:
            raise self._error("munmap")

    def madvise(self, addr: int, length: int, advice: int) -> None:
        """Apply ``advice`` to ``[addr, addr + length)``."""
        if self._madvise(addr, length, advice) != 0:
            raise self._error("madvise")


class Mappings:
    """The address ranges this process has mapped: sorted, disjoint, coalesced [start, end)."""

    def __init__(self) -> None:
        """Start with nothing mapped."""
        self.starts: list[int] = []
        self.ends: list[int] = []

    def add(self, start: int, end: int) -> None:
        """Record ``[start, end)`` as mapped."""
        self._set([*zip(self.starts, self.ends, strict=True), (start, end)])

    def remove(self, start: int, end: int) -> None:
        """Record ``[start, end)`` as unmapped."""
        kept: list[tuple[int, int]] = []
        for s, e in zip(self.starts, self.ends, strict=True):
            if e <= start or s >= end:
                kept.append((s, e))
                continue
            if s < start:
                kept.append((s, start))
            if e > end:
                kept.append((end, e))
        self._set(kept)

    def _set(self, intervals: list[tuple[int, int]]) -> None:
        """Replace the table with ``intervals``, sorted and coalesced."""
        merged: list[tuple[int, int]] = []
        for s, e in sorted(intervals):
            if merged and s <= merged[-1][1]:
                merged[-1] = (merged[-1][0], max(merged[-1][1], e))
            else:
                merged.append((s, e))
        self.starts = [s for s, _ in merged]
        self.ends = [e for _, e in merged]

    def covers(self, addr: int) -> bool:
        """Return True when ``addr`` is mapped."""
        k = bisect.bisect_right(self.starts, addr) - 1
        return k >= 0 and addr < self.ends[k]

    def runs(self, start: int, end: int) -> list[tuple[int, int]]:
        """Return the mapped sub-ranges of ``[start, end)``, in ascending order."""
        out = []
        k = max(bisect.bisect_right(self.starts, start) - 1, 0)
        while k < len(self.starts) and self.starts[k] < end:
            s, e = max(self.starts[k], start), min(self.ends[k], end)
            if s < e:
                out.append((s, e))
            k += 1
        return out


@dataclass(slots=True)
class Region:
    """A named region: where it was mapped and how many pages it spans (kept after munmap)."""

    name: str
    address: int
    pages: int

    def page_address(self, index: int) -> int:
        """Return the address of page ``index``."""
        return self.address + (index << PAGE_SHIFT)


def page_range(r: Region, start: int, count: int | None, stride: int = 1) -> range:
    """Return the selected page indices, refusing ranges past the region's end as Host does."""
    if start >= r.pages:
        raise ChildFailed(f"region {r.name!r} has {r.pages} pages; start {start} is past its end")
    end = r.pages if count is None else start + count
    if end > r.pages:
        raise ChildFailed(f"region {r.name!r} has {r.pages} pages; {start}+{count} is past its end")
    return range(start, end, stride)


class Server:
    """Executes the runner's commands in this process."""

    def __init__(self, name: str, address: str, chan: Channel, libc: Libc | None = None) -> None:
        """Serve as process ``name``, connected to the runner at ``address``."""
        self.name = name
        self.address = address
        self.chan = chan
        self.libc = libc if libc is not None else Libc()
        self.regions: dict[str, Region] = {}
        self.mapped = Mappings()
        self._handlers: dict[str, Callable[[dict[str, Any]], dict[str, Any] | None]] = {
            "ping": lambda m: {"ok": True, "pid": os.getpid()},
            "mmap": self.do_mmap,
            "fill": self.do_fill,
            "write": self.do_write,
            "read": self.do_read,
            "munmap": self.do_munmap,
            "madvise": self.do_madvise,
            "digest": self.do_digest,
            "fork": self.do_fork,
            "exit": self.do_exit,
        }

    def serve(self) -> NoReturn:
        """Answer commands until the runner closes the connection or says exit."""
        while True:
            try:
                message = self.chan.recv()
            except (OSError, ValueError):
                message = None
            if message is None:
                os._exit(0)
            try:
                reply = self.dispatch(message)
            except ChildFailed as exc:
                reply = {"ok": False, "error": str(exc)}
            except OSError as exc:
                reply = {"ok": False, "error": exc.strerror or str(exc)}
            except Exception as exc:
                reply = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            if reply is not None:
                try:
                    self.chan.send(reply)
                except OSError:
                    os._exit(0)

    def dispatch(self, message: dict[str, Any]) -> dict[str, Any] | None:
        """Run one command and return the reply (None in a just-forked child)."""
        op = message.get("op")
        handler = self._handlers.get(op) if isinstance(op, str) else None
        if handler is None:
            raise ChildFailed(f"unknown command {op!r}")
        return handler(message)

    # -- helpers ---------------------------------------------------------------------------------
    def region(self, name: str) -> Region:
        """Return a region by name, or fail as Host does."""
        r = self.regions.get(name)
        if r is None:
            raise ChildFailed(f"process {self.name!r} has no region {name!r}")
        return r

    def _page_runs(self, r: Region, pages: range) -> list[tuple[int, int]]:
        """Return the mapped runs (address ranges) of a contiguous page range of a region."""
        return self.mapped.runs(r.page_address(pages.start), r.page_address(pages.stop))

    # -- commands --------------------------------------------------------------------------------
    def do_mmap(self, m: dict[str, Any]) -> dict[str, Any]:
        """Map a region: NOHUGEPAGE unless thp, MERGEABLE if mergeable, then fill it."""
        name = str(m["region"])
        if name in self.regions:
            raise ChildFailed(f"process {self.name!r} already has a region {name!r}")
        pages = int(m["pages"])
        length = pages << PAGE_SHIFT
        try:
            addr = self.libc.mmap_anon(length)
        except OSError as exc:
            raise ChildFailed(f"mmap of {pages} pages failed: {exc.strerror}") from None
        if not m.get("thp", False):
            self.libc.madvise(addr, length, MADVICE["nohugepage"])
        if m.get("mergeable", True):
            self.libc.madvise(addr, length, MADVICE["mergeable"])
        self.regions[name] = Region(name, addr, pages)
        self.mapped.add(addr, addr + length)
        if m.get("fill") is not None:
            self.do_fill({"region": name, "pattern": m["fill"], "salt": m.get("salt", "")})
        return {"ok": True, "address": addr}

    def do_fill(self, m: dict[str, Any]) -> dict[str, Any]:
        """Write pattern contents into every mapped page of the range."""
        r = self.region(str(m["region"]))
        pages = page_range(r, int(m.get("start", 0)), m.get("count"))
        pattern = parse_pattern(m["pattern"])
        salt = str(m.get("salt", ""))
        done = 0
        for lo, hi in self._page_runs(r, pages):
            n = (hi - lo) >> PAGE_SHIFT
            if pattern.is_constant:
                ctypes.memset(lo, pattern.value, hi - lo)
            else:
                first = (lo - r.address) >> PAGE_SHIFT
                for k in range(n):
                    data = page_bytes(pattern, first + k, proc=self.name, region=r.name, salt=salt)
                    ctypes.memmove(lo + (k << PAGE_SHIFT), data, PAGE_SIZE)
            done += n
        return {"ok": True, "pages": done}

    def do_write(self, m: dict[str, Any]) -> dict[str, Any]:
        """Write one byte at ``offset`` into every ``stride``-th mapped page of the range."""
        offset = int(m.get("offset", 2048))
        if not 0 <= offset < PAGE_SIZE:
            raise ChildFailed(f"offset {offset} is outside a page")
        r = self.region(str(m["region"]))
        pages = page_range(r, int(m.get("start", 0)), m.get("count"), int(m.get("stride", 1)))
        payload = bytes((int(m["value"]),))
        done = 0
        for i in pages:
            addr = r.page_address(i)
            if self.mapped.covers(addr):
                ctypes.memmove(addr + offset, payload, 1)
                done += 1
        return {"ok": True, "pages": done}

    def do_read(self, m: dict[str, Any]) -> dict[str, Any]:
        """Read one byte of every mapped page of the range."""
        r = self.region(str(m["region"]))
        pages = page_range(r, int(m.get("start", 0)), m.get("count"))
        done = 0
        for lo, hi in self._page_runs(r, pages):
            for addr in range(lo, hi, PAGE_SIZE):
                ctypes.string_at(addr, 1)
                done += 1
        return {"ok": True, "pages": done}

    def do_munmap(self, m: dict[str, Any]) -> dict[str, Any]:
        """Unmap the mapped parts of the range (the region keeps its name and range)."""
        r = self.region(str(m["region"]))
        pages = page_range(r, int(m.get("start", 0)), m.get("count"))
        for lo, hi in self._page_runs(r, pages):
            self.libc.munmap(lo, hi - lo)
            self.mapped.remove(lo, hi)
        return {"ok": True}

    def do_madvise(self, m: dict[str, Any]) -> dict[str, Any]:
        """Apply an advice to each mapped run of the range."""
        advice = str(m["advice"])
        if advice not in MADVICE:
            raise ChildFailed(f"unknown advice {advice!r}")
        r = self.region(str(m["region"]))
        pages = page_range(r, int(m.get("start", 0)), m.get("count"))
        for lo, hi in self._page_runs(r, pages):
            try:
                self.libc.madvise(lo, hi - lo, MADVICE[advice])
            except OSError as exc:
                raise ChildFailed(f"madvise {advice} failed: {exc.strerror}") from None
        return {"ok": True}

    def do_digest(self, m: dict[str, Any]) -> dict[str, Any]:
        """Return the sha256 of the region's mapped pages in order (untouched pages as zeros).

        /proc/self/pagemap tells which pages were never touched, so they are hashed as zeros
        without reading them (a read would map the zero page, which the model's digest does not).
        """
        r = self.region(str(m["region"]))
        h = hashlib.sha256()
        try:
            fd: int | None = os.open("/proc/self/pagemap", os.O_RDONLY)
        except OSError:
            fd = None
        try:
            for lo, hi in self._page_runs(r, range(0, r.pages)):
                n = (hi - lo) >> PAGE_SHIFT
                entries = os.pread(fd, 8 * n, (lo >> PAGE_SHIFT) * 8) if fd is not None else b""
                for k in range(n):
                    addr = lo + (k << PAGE_SHIFT)
                    touched = True
                    if len(entries) == 8 * n:
                        entry = int.from_bytes(entries[8 * k : 8 * k + 8], "little")
                        touched = bool(entry & (PM_PRESENT | PM_SWAP))
                    h.update(ctypes.string_at(addr, PAGE_SIZE) if touched else ZERO_PAGE_BYTES)
        finally:
            if fd is not None:
                os.close(fd)
        return {"ok": True, "sha256": h.hexdigest()}

    def do_fork(self, m: dict[str, Any]) -> dict[str, Any] | None:
        """Fork; the child reconnects under its new name, the parent reports the child's pid."""
        child = str(m["child"])
        pid = os.fork()
        if pid:
            return {"ok": True, "pid": pid}
        try:
            self.chan.close()
            self.name = child
            self.chan = connect(self.address)
            self.chan.send({"hello": child, "pid": os.getpid()})
        except BaseException:
            os._exit(1)
        return None

    def do_exit(self, m: dict[str, Any]) -> NoReturn:
        """Say goodbye and exit (the address space is torn down in do_exit)."""
        try:
            self.chan.send({"ok": True})
        finally:
            os._exit(0)


def plug_holes(libc: Libc, maps: str | None = None) -> int:
    """Fill the gaps between the interpreter's own mappings with inaccessible placeholders.

    The kernel places a new anonymous mapping at the highest free gap below mmap_base that fits,
    so without this a small region would land in a hole between two shared libraries instead
    of below everything, as the format's layout (and the model) has it. Only gaps of at most
    MAX_PLUG bytes between the heap and the stack are filled. Returns the number of gaps filled.
    """
    if maps is None:
        with open("/proc/self/maps") as f:
            maps = f.read()
    entries: list[tuple[int, int, str]] = []
    for line in maps.splitlines():
        parts = line.split()
        if not parts:
            continue
        lo_text, _, hi_text = parts[0].partition("-")
        entries.append((int(lo_text, 16), int(hi_text, 16), parts[5] if len(parts) > 5 else ""))
    heap_end = max((hi for _, hi, name in entries if name == "[heap]"), default=0)
    stack = [lo for lo, _, name in entries if name == "[stack]"]
    stack_lo = min(stack) if stack else None
    area = sorted(
        (lo, hi) for lo, hi, _ in entries if lo >= heap_end and (stack_lo is None or hi <= stack_lo)
    )
    plugged = 0
    for (_, end), (start, _) in itertools.pairwise(area):
        if 0 < start - end <= MAX_PLUG and libc.reserve(end, start - end):
            plugged += 1
    return plugged


def main(argv: Sequence[str] | None = None) -> int:
    """Connect to the runner at ``argv[0]`` as process ``argv[1]`` and serve."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        print("usage: python -m ksmsim.real.child ADDRESS NAME", file=sys.stderr)
        return 2
    address, name = args
    # Ctrl-C belongs to the runner; forked grandchildren are reaped by the kernel.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    libc = Libc()
    plug_holes(libc)
    try:
        chan = connect(address)
        chan.send({"hello": name, "pid": os.getpid()})
    except OSError as exc:
        print(f"ksmsim.real.child: cannot reach the runner: {exc}", file=sys.stderr)
        return 1
    Server(name, address, chan, libc).serve()


if __name__ == "__main__":
    raise SystemExit(main())
