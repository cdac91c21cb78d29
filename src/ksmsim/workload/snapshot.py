"""Live snapshots: per-page fingerprints of the anonymous memory of running processes.

A snapshot records, for each process, each private mapping that KSM could merge (no shared, I/O,
PFN-map, mixed-map, hugetlb, don't-expand or droppable mapping, no ``[vdso]``-like special
mapping), and in it each *present anonymous* page: found through ``/proc/PID/pagemap`` (present,
not file-backed), read through ``/proc/PID/mem`` and reduced to a 64-bit xxh3 fingerprint. Page
contents are never stored. Two fingerprints are reserved: ``FP_ZERO`` marks a page frame whose
4096 bytes are all zero, ``FP_ZERO_MAPPING`` a pte mapping the kernel's shared zero page (a page
that was only read; KSM never scans it). Telling the two apart needs page frame numbers, which
the kernel shows only to CAP_SYS_ADMIN; without them every all-zero page counts as a frame.

Taking a snapshot only reads: ``/proc/PID/smaps`` (the mappings and their ``VmFlags``; ``mg``
marks an area already madvised mergeable), ``pagemap`` and ``mem``, and only pages that are
present, so the target's memory and page tables are left as they are (a page that is unmapped
between the pagemap read and the mem read would be faulted back in as the zero page: the window
is one read). It needs the privilege to read the target's memory, the same as ptrace attach in
read mode: root, CAP_SYS_PTRACE, or the same user when ``kernel.yama.ptrace_scope`` is 0.

A snapshot file holds one or more *passes* over the same processes. Two passes taken some
seconds apart tell which pages changed in between (``changed_pages``): the change rates the
estimate turns into background writers.

File format (version 1), gzip-compressed: the magic line ``KSMSIM-SNAPSHOT 1\\n``, then per
pass a little-endian u64 length and that many bytes of JSON (the pass's metadata: processes,
mappings, runs of present pages), a u64 length and the fingerprints of every mapping in order as
little-endian u64.
"""

from __future__ import annotations

import ctypes
import gzip
import json
import mmap
import os
import socket
import struct
import time
import zlib
from array import array
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Final

import xxhash

__all__ = [
    "FP_ZERO",
    "FP_ZERO_MAPPING",
    "INCOMPATIBLE_VMFLAGS",
    "MAGIC",
    "HostSnapshot",
    "ProcessSnapshot",
    "SnapshotError",
    "SnapshotPermissionError",
    "VmaSnapshot",
    "changed_pages",
    "fingerprint",
    "list_pids",
    "load_snapshot",
    "parse_smaps",
    "save_snapshot",
    "snapshot_process",
    "take_snapshot",
]

PAGE_SIZE: Final = 4096
PAGE_SHIFT: Final = 12
MAGIC: Final = b"KSMSIM-SNAPSHOT 1\n"
FORMAT_VERSION: Final = 1

FP_ZERO: Final = 0
"""Fingerprint of a page frame whose contents are all zero."""
FP_ZERO_MAPPING: Final = 1
"""Fingerprint of a pte that maps the kernel's shared zero page (no frame of its own)."""

INCOMPATIBLE_VMFLAGS: Final = frozenset({"sh", "ms", "pf", "io", "de", "ht", "mm", "dp"})
"""``VmFlags`` of mappings KSM never merges (vma_ksm_compatible(): shared, PFN-map, I/O,
don't-expand, hugetlb, mixed-map, droppable)."""

SPECIAL_MAPPINGS: Final = frozenset(
    {"[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]", "[uprobes]"}
)

KSM_TUNABLES: Final = (
    "pages_to_scan",
    "sleep_millisecs",
    "use_zero_pages",
    "max_page_sharing",
    "smart_scan",
    "merge_across_nodes",
)
"""Tunables recorded from /sys/kernel/mm/ksm (the estimate's defaults)."""

PM_PRESENT: Final = 1 << 63
PM_SWAP: Final = 1 << 62
PM_FILE: Final = 1 << 61
PM_MMAP_EXCLUSIVE: Final = 1 << 56
PM_PFN_MASK: Final = (1 << 55) - 1

_READ_PAGES: Final = 256
"""Pages read from /proc/PID/mem (and pagemap entries, x 64) per read call."""
_ZERO_PAGE: Final = bytes(PAGE_SIZE)
_ZERO_HASH: Final = xxhash.xxh3_64_intdigest(_ZERO_PAGE)
_MAX_JSON: Final = 1 << 31


class SnapshotError(Exception):
    """A snapshot that cannot be taken or read; the message is one line naming the problem."""


class SnapshotPermissionError(SnapshotError):
    """The memory of a process may not be read by this user."""


def permission_message(pid: int, comm: str, what: str) -> str:
    """Return the one-line explanation of a missing privilege for a process."""
    scope = ""
    try:
        value = Path("/proc/sys/kernel/yama/ptrace_scope").read_text().strip()
        scope = f"; kernel.yama.ptrace_scope is {value}"
    except OSError:
        pass
    return (
        f"cannot read {what} of process {pid} ({comm}): permission denied. A snapshot needs "
        f"the privilege to read a process's memory: root, CAP_SYS_PTRACE, or the same user "
        f"when ptrace is allowed{scope}"
    )


def fingerprint(data: bytes | memoryview) -> int:
    """Return the fingerprint of one page's contents (``FP_ZERO`` for an all-zero page)."""
    h: int = xxhash.xxh3_64_intdigest(data)
    if h == _ZERO_HASH and bytes(data) == _ZERO_PAGE:
        return FP_ZERO
    return h if h > FP_ZERO_MAPPING else h | 2


# --------------------------------------------------------------------------------------------------
# Data model


@dataclass(slots=True)
class VmaSnapshot:
    """One mapping of a process and the fingerprints of its present anonymous pages."""

    start: int
    end: int
    perms: str
    path: str
    flags: tuple[str, ...]
    runs: list[tuple[int, int]] = field(default_factory=list)
    """Runs (first page index within the mapping, page count) of the pages fingerprinted."""
    fingerprints: array[int] = field(default_factory=lambda: array("Q"))
    """One fingerprint per page of ``runs``, in address order."""
    swapped: int = 0
    """Pages swapped out (KSM does not scan them; not fingerprinted)."""
    shared_frames: int = 0
    """Fingerprinted pages whose frame is mapped more than once (fork or KSM sharing)."""
    unreadable: int = 0
    """Present anonymous pages whose read failed (not fingerprinted)."""

    @property
    def mergeable(self) -> bool:
        """Tell whether the area is madvised mergeable already (``VmFlags`` ``mg``)."""
        return "mg" in self.flags

    @property
    def size_pages(self) -> int:
        """Return the mapping's size in pages."""
        return (self.end - self.start) >> PAGE_SHIFT

    @property
    def pages(self) -> int:
        """Return how many pages were fingerprinted."""
        return len(self.fingerprints)

    def indices(self) -> Iterator[int]:
        """Yield the page index (within the mapping) of each fingerprint, in order."""
        for first, count in self.runs:
            yield from range(first, first + count)

    def addresses(self) -> Iterator[tuple[int, int]]:
        """Yield (virtual address, fingerprint) of each fingerprinted page."""
        for index, fp in zip(self.indices(), self.fingerprints, strict=True):
            yield self.start + (index << PAGE_SHIFT), fp

    def meta(self) -> dict[str, Any]:
        """Return the JSON metadata of the mapping (fingerprints excluded)."""
        return {
            "start": self.start,
            "end": self.end,
            "perms": self.perms,
            "path": self.path,
            "flags": list(self.flags),
            "runs": [list(r) for r in self.runs],
            "swapped": self.swapped,
            "shared_frames": self.shared_frames,
            "unreadable": self.unreadable,
        }


@dataclass(slots=True)
class ProcessSnapshot:
    """The fingerprinted mappings of one process."""

    pid: int
    comm: str
    start_time: int
    """Start time in clock ticks since boot (``/proc/PID/stat`` field 22): tells a reused pid."""
    vmas: list[VmaSnapshot] = field(default_factory=list)

    @property
    def pages(self) -> int:
        """Return the pages fingerprinted in the process."""
        return sum(v.pages for v in self.vmas)


@dataclass(slots=True)
class HostSnapshot:
    """One pass over a set of processes."""

    taken_at: float
    """Unix time at which the pass started."""
    duration_s: float
    hostname: str
    kernel: str
    zero_page_pfn_known: bool
    tunables: dict[str, int] = field(default_factory=dict)
    processes: list[ProcessSnapshot] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    """Processes left out of an ``--all`` snapshot: ``{"pid", "comm", "reason"}``."""

    @property
    def pages(self) -> int:
        """Return the pages fingerprinted in every process."""
        return sum(p.pages for p in self.processes)

    def summary(self) -> dict[str, Any]:
        """Return page counts by kind: the figures a person wants to see of a snapshot."""
        pages = zero = zero_mapped = shared = swapped = mergeable = 0
        for proc in self.processes:
            for vma in proc.vmas:
                fps = vma.fingerprints
                pages += len(fps)
                zero += fps.count(FP_ZERO)
                zero_mapped += fps.count(FP_ZERO_MAPPING)
                shared += vma.shared_frames
                swapped += vma.swapped
                if vma.mergeable:
                    mergeable += len(fps)
        return {
            "processes": len(self.processes),
            "pages": pages,
            "zero_pages": zero,
            "zero_page_mappings": zero_mapped,
            "shared_frames": shared,
            "swapped_pages": swapped,
            "mergeable_pages": mergeable,
            "skipped_processes": len(self.skipped),
        }


# --------------------------------------------------------------------------------------------------
# Reading /proc


@dataclass(slots=True)
class SmapsEntry:
    """One mapping as /proc/PID/smaps shows it."""

    start: int
    end: int
    perms: str
    path: str
    flags: tuple[str, ...] = ()
    anonymous_kb: int = 0
    swap_kb: int = 0


def parse_smaps(text: str) -> list[SmapsEntry]:
    """Parse the text of /proc/PID/smaps into its mappings (raising SnapshotError if malformed)."""
    out: list[SmapsEntry] = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line:
            continue
        head = line.split(None, 5)
        if "-" in head[0] and len(head) >= 5 and ":" not in head[0]:
            lo, _, hi = head[0].partition("-")
            try:
                start, end = int(lo, 16), int(hi, 16)
            except ValueError:
                raise SnapshotError(f"smaps line {n}: bad address range {head[0]!r}") from None
            path = head[5].strip() if len(head) > 5 else ""
            out.append(SmapsEntry(start, end, head[1], path))
            continue
        if not out:
            raise SnapshotError(f"smaps line {n}: a field before any mapping")
        key, _, value = line.partition(":")
        if key == "VmFlags":
            out[-1].flags = tuple(value.split())
        elif key == "Anonymous":
            out[-1].anonymous_kb = _kb(value, n)
        elif key == "Swap":
            out[-1].swap_kb = _kb(value, n)
    return out


def _kb(value: str, line: int) -> int:
    """Parse a ``N kB`` field."""
    try:
        return int(value.split()[0])
    except (ValueError, IndexError):
        raise SnapshotError(f"smaps line {line}: bad size {value.strip()!r}") from None


def ksm_compatible(entry: SmapsEntry) -> bool:
    """Tell whether KSM could merge pages of a mapping (private, none of the excluded flags)."""
    if len(entry.perms) < 4 or entry.perms[3] != "p" or entry.path in SPECIAL_MAPPINGS:
        return False
    return not INCOMPATIBLE_VMFLAGS.intersection(entry.flags)


def _proc_comm(proc: Path) -> str:
    """Return a process's comm, or ``?`` when it cannot be read."""
    try:
        return (proc / "comm").read_text().strip() or "?"
    except OSError:
        return "?"


def _proc_start_time(proc: Path) -> int:
    """Return field 22 of /proc/PID/stat (start time in clock ticks), or 0."""
    try:
        stat = (proc / "stat").read_text()
        return int(stat[stat.rindex(")") + 2 :].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def list_pids(proc_root: str | os.PathLike[str] = "/proc") -> list[int]:
    """Return the pids under /proc, ascending."""
    return sorted(int(p.name) for p in Path(proc_root).iterdir() if p.name.isdigit())


Opener = Callable[[str], IO[bytes]]


def _open_raw(path: str) -> IO[bytes]:
    """Open a /proc file for unbuffered binary reading."""
    return open(path, "rb", buffering=0)


_opener: Opener = _open_raw
"""How /proc files are opened (tests replace it to simulate a missing privilege)."""


def _zero_page_pfn() -> int:
    """Return the page frame number of the kernel's zero page, or 0 when the kernel hides PFNs.

    A private anonymous page of our own, only read, maps the zero page; pagemap tells its PFN.
    """
    m = mmap.mmap(-1, PAGE_SIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        _ = m[0]
        view = ctypes.c_char.from_buffer(m)
        addr = ctypes.addressof(view)
        del view
        try:
            with _open_raw("/proc/self/pagemap") as f:
                raw = os.pread(f.fileno(), 8, (addr >> PAGE_SHIFT) * 8)
        except OSError:
            return 0
        (entry,) = struct.unpack("<Q", raw)
        return entry & PM_PFN_MASK if entry & PM_PRESENT else 0
    finally:
        m.close()


def _read_ksm_tunables(root: str = "/sys/kernel/mm/ksm") -> dict[str, int]:
    """Return the host's KSM tunables (those that can be read)."""
    out: dict[str, int] = {}
    for name in KSM_TUNABLES:
        try:
            out[name] = int(Path(root, name).read_text().strip())
        except (OSError, ValueError):
            continue
    return out


def _fingerprint_run(
    mem_fd: int, addr: int, count: int, out: array[int]
) -> tuple[int, list[tuple[int, int]]]:
    """Fingerprint ``count`` pages from ``addr``; return (unreadable pages, readable sub-runs
    as (first page offset, count)). Falls back to page-by-page reads when a bulk read fails."""
    try:
        data = os.pread(mem_fd, count * PAGE_SIZE, addr)
    except OSError:
        data = b""
    if len(data) == count * PAGE_SIZE:
        view = memoryview(data)
        out.extend(fingerprint(view[i : i + PAGE_SIZE]) for i in range(0, len(data), PAGE_SIZE))
        return 0, [(0, count)]
    runs: list[tuple[int, int]] = []
    bad = 0
    for k in range(count):
        try:
            page = os.pread(mem_fd, PAGE_SIZE, addr + (k << PAGE_SHIFT))
        except OSError:
            page = b""
        if len(page) != PAGE_SIZE:
            bad += 1
            continue
        out.append(fingerprint(page))
        if runs and runs[-1][0] + runs[-1][1] == k:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((k, 1))
    return bad, runs


def _snapshot_vma(entry: SmapsEntry, pagemap_fd: int, mem_fd: int, zero_pfn: int) -> VmaSnapshot:
    """Fingerprint the present anonymous pages of one mapping."""
    vma = VmaSnapshot(entry.start, entry.end, entry.perms, entry.path, entry.flags)
    first_page = entry.start >> PAGE_SHIFT
    total = vma.size_pages
    chunk = _READ_PAGES * 64
    pending: list[tuple[int, int]] = []  # runs of anonymous, non-zero-mapping pages to read

    def flush() -> None:
        for index, count in pending:
            addr = entry.start + (index << PAGE_SHIFT)
            bad, runs = _fingerprint_run(mem_fd, addr, count, vma.fingerprints)
            vma.unreadable += bad
            for off, n in runs:
                _add_run(vma.runs, index + off, n)
        pending.clear()

    for base in range(0, total, chunk):
        n = min(chunk, total - base)
        try:
            raw = os.pread(pagemap_fd, n * 8, (first_page + base) * 8)
        except OSError as exc:
            raise SnapshotError(f"reading pagemap: {exc.strerror or exc}") from None
        entries = array("Q")
        entries.frombytes(raw[: len(raw) - len(raw) % 8])
        for k, e in enumerate(entries):
            if not e & PM_PRESENT:
                if e & PM_SWAP:
                    vma.swapped += 1
                continue
            if e & PM_FILE:
                continue
            index = base + k
            if zero_pfn and e & PM_PFN_MASK == zero_pfn:
                flush()
                vma.fingerprints.append(FP_ZERO_MAPPING)
                _add_run(vma.runs, index, 1)
                continue
            if not e & PM_MMAP_EXCLUSIVE:
                vma.shared_frames += 1
            if (
                pending
                and pending[-1][0] + pending[-1][1] == index
                and pending[-1][1] < _READ_PAGES
            ):
                pending[-1] = (pending[-1][0], pending[-1][1] + 1)
            else:
                pending.append((index, 1))
        flush()
    return vma


def _add_run(runs: list[tuple[int, int]], index: int, count: int) -> None:
    """Append pages [index, index+count) to a run list, merging with the last run."""
    if runs and runs[-1][0] + runs[-1][1] == index:
        runs[-1] = (runs[-1][0], runs[-1][1] + count)
    else:
        runs.append((index, count))


def _open_proc_file(proc: Path, name: str, pid: int, comm: str, what: str) -> IO[bytes]:
    """Open ``/proc/PID/<name>`` with ``_opener``; ``what`` names it in a refusal's message.

    Raises SnapshotPermissionError when it may not be read, SnapshotError when the process
    has exited.
    """
    try:
        return _opener(str(proc / name))
    except PermissionError:
        raise SnapshotPermissionError(permission_message(pid, comm, what)) from None
    except (FileNotFoundError, ProcessLookupError):
        raise SnapshotError(f"process {pid} exited while being read") from None


def snapshot_process(
    pid: int,
    *,
    proc_root: str | os.PathLike[str] = "/proc",
    zero_pfn: int = 0,
    vma_filter: Callable[[SmapsEntry], bool] | None = None,
) -> ProcessSnapshot | None:
    """Fingerprint one process; None for a process without memory of its own (a kernel thread).

    Raises SnapshotPermissionError when its memory may not be read and SnapshotError when it
    does not exist (or exits while being read).
    """
    proc = Path(proc_root, str(pid))
    comm = _proc_comm(proc)
    try:
        smaps_text = (proc / "smaps").read_bytes().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        raise SnapshotError(f"process {pid} does not exist") from None
    except PermissionError:
        raise SnapshotPermissionError(permission_message(pid, comm, "the mappings")) from None
    except ProcessLookupError:
        raise SnapshotError(f"process {pid} exited while being read") from None
    except OSError as exc:
        raise SnapshotError(f"cannot read the mappings of process {pid} ({comm}): {exc}") from None
    entries = parse_smaps(smaps_text)
    if not entries:
        return None
    out = ProcessSnapshot(pid, comm, _proc_start_time(proc))
    with (
        _open_proc_file(proc, "pagemap", pid, comm, "the page map") as pagemap,
        _open_proc_file(proc, "mem", pid, comm, "the memory") as mem,
    ):
        for entry in entries:
            if not ksm_compatible(entry) or entry.anonymous_kb == 0:
                continue
            if vma_filter is not None and not vma_filter(entry):
                continue
            vma = _snapshot_vma(entry, pagemap.fileno(), mem.fileno(), zero_pfn)
            if vma.pages or vma.swapped:
                out.vmas.append(vma)
    return out


def take_snapshot(
    pids: Sequence[int] | None = None,
    *,
    proc_root: str | os.PathLike[str] = "/proc",
    vma_filter: Callable[[SmapsEntry], bool] | None = None,
) -> HostSnapshot:
    """Take one pass over ``pids`` (None: every process but this one).

    With explicit pids every failure is an error (SnapshotError, or SnapshotPermissionError for
    a missing privilege). With ``pids=None`` processes that cannot be read or that exit meanwhile
    are listed in ``skipped``; it is an error only when no process could be read.
    """
    started = time.time()
    t0 = time.monotonic()
    zero_pfn = _zero_page_pfn()
    snap = HostSnapshot(
        taken_at=started,
        duration_s=0.0,
        hostname=socket.gethostname(),
        kernel=os.uname().release,
        zero_page_pfn_known=bool(zero_pfn),
        tunables=_read_ksm_tunables(),
    )
    explicit = pids is not None
    targets = (
        list(pids) if pids is not None else [p for p in list_pids(proc_root) if p != os.getpid()]
    )
    denied = 0
    for pid in targets:
        try:
            proc = snapshot_process(
                pid, proc_root=proc_root, zero_pfn=zero_pfn, vma_filter=vma_filter
            )
        except SnapshotPermissionError as exc:
            if explicit:
                raise
            denied += 1
            snap.skipped.append(
                {
                    "pid": pid,
                    "comm": _proc_comm(Path(proc_root, str(pid))),
                    "reason": "permission denied",
                    "message": str(exc),
                }
            )
            continue
        except SnapshotError as exc:
            if explicit:
                raise
            snap.skipped.append({"pid": pid, "comm": "?", "reason": "gone", "message": str(exc)})
            continue
        if proc is not None:
            snap.processes.append(proc)
    if not explicit and not snap.processes and denied:
        raise SnapshotPermissionError(
            f"could not read the memory of any of {denied} processes: a snapshot needs the "
            "privilege to read a process's memory (root, CAP_SYS_PTRACE, or the same user when "
            "ptrace is allowed)"
        )
    snap.duration_s = time.monotonic() - t0
    return snap


# --------------------------------------------------------------------------------------------------
# Two passes: which pages changed


def changed_pages(earlier: HostSnapshot, later: HostSnapshot) -> dict[tuple[int, int], set[int]]:
    """Return, per (pid, mapping start) of ``later``, the indices (into that mapping's
    fingerprints) of the pages that changed since ``earlier``: a different fingerprint, or a page
    that was not present then. A process is matched by pid and start time; a process or mapping
    absent from ``earlier`` has no entry (nothing is known of its change rate)."""
    before: dict[tuple[int, int], dict[int, int]] = {}
    procs = {(p.pid, p.start_time) for p in earlier.processes}
    for proc in earlier.processes:
        for vma in proc.vmas:
            before[(proc.pid, vma.start)] = dict(vma.addresses())
    out: dict[tuple[int, int], set[int]] = {}
    for proc in later.processes:
        if (proc.pid, proc.start_time) not in procs:
            continue
        for vma in proc.vmas:
            old = before.get((proc.pid, vma.start))
            if old is None:
                continue
            out[(proc.pid, vma.start)] = {
                k for k, (addr, fp) in enumerate(vma.addresses()) if old.get(addr) != fp
            }
    return out


# --------------------------------------------------------------------------------------------------
# Files


def _pass_meta(snap: HostSnapshot) -> dict[str, Any]:
    """Return the JSON metadata of one pass."""
    return {
        "version": FORMAT_VERSION,
        "taken_at": snap.taken_at,
        "duration_s": snap.duration_s,
        "hostname": snap.hostname,
        "kernel": snap.kernel,
        "page_size": PAGE_SIZE,
        "zero_page_pfn_known": snap.zero_page_pfn_known,
        "tunables": snap.tunables,
        "skipped": snap.skipped,
        "processes": [
            {
                "pid": p.pid,
                "comm": p.comm,
                "start_time": p.start_time,
                "vmas": [v.meta() for v in p.vmas],
            }
            for p in snap.processes
        ],
    }


def save_snapshot(path: str | os.PathLike[str], passes: Iterable[HostSnapshot]) -> None:
    """Write passes to a snapshot file (atomically: a temporary file renamed into place)."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    try:
        with gzip.open(tmp, "wb", compresslevel=1) as f:
            f.write(MAGIC)
            for snap in passes:
                meta = json.dumps(_pass_meta(snap), separators=(",", ":")).encode()
                f.write(struct.pack("<Q", len(meta)))
                f.write(meta)
                blob = array("Q")
                for proc in snap.processes:
                    for vma in proc.vmas:
                        blob.extend(vma.fingerprints)
                if blob.itemsize != 8:  # pragma: no cover - every platform ksmsim runs on
                    raise SnapshotError("this platform's unsigned long long is not 64 bits")
                data = blob.tobytes() if _little_endian() else _swapped(blob)
                f.write(struct.pack("<Q", len(data)))
                f.write(data)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise SnapshotError(f"cannot write {target}: {exc.strerror or exc}") from None


def _little_endian() -> bool:
    """Tell whether this machine is little-endian."""
    return struct.pack("=H", 1) == b"\x01\x00"


def _swapped(blob: array[int]) -> bytes:
    """Return an array's bytes in the other byte order."""
    copy = array("Q", blob)
    copy.byteswap()
    return copy.tobytes()


def is_snapshot_file(path: str | os.PathLike[str]) -> bool:
    """Tell whether a file is a snapshot (gzip whose content starts with the magic line)."""
    try:
        with gzip.open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except (OSError, EOFError, zlib.error):
        return False


def load_snapshot(path: str | os.PathLike[str]) -> list[HostSnapshot]:
    """Read every pass of a snapshot file; SnapshotError (one line) when it is not a valid one."""
    name = str(path)
    try:
        with gzip.open(path, "rb") as f:
            if f.read(len(MAGIC)) != MAGIC:
                raise SnapshotError(f"{name}: not a ksmsim snapshot (wrong magic line)")
            passes = []
            while True:
                head = f.read(8)
                if not head:
                    break
                passes.append(_read_pass(f, head, name))
    except FileNotFoundError:
        raise SnapshotError(f"{name}: no such file") from None
    except gzip.BadGzipFile:
        raise SnapshotError(f"{name}: not a ksmsim snapshot (not gzip-compressed)") from None
    except (EOFError, zlib.error):
        raise SnapshotError(f"{name}: truncated or corrupt snapshot") from None
    except OSError as exc:
        raise SnapshotError(f"{name}: cannot read: {exc.strerror or exc}") from None
    if not passes:
        raise SnapshotError(f"{name}: the snapshot holds no pass")
    return passes


def _read_exact(f: gzip.GzipFile, n: int, name: str) -> bytes:
    """Read exactly n bytes or fail as truncated."""
    data = f.read(n)
    if len(data) != n:
        raise SnapshotError(f"{name}: truncated snapshot")
    return data


def _read_pass(f: gzip.GzipFile, head: bytes, name: str) -> HostSnapshot:
    """Read one pass whose length prefix is ``head``."""
    if len(head) != 8:
        raise SnapshotError(f"{name}: truncated snapshot")
    (meta_len,) = struct.unpack("<Q", head)
    if meta_len > _MAX_JSON:
        raise SnapshotError(f"{name}: malformed snapshot (metadata of {meta_len} bytes)")
    try:
        meta = json.loads(_read_exact(f, meta_len, name))
    except (ValueError, UnicodeDecodeError) as exc:
        raise SnapshotError(f"{name}: malformed snapshot metadata: {exc}") from None
    (blob_len,) = struct.unpack("<Q", _read_exact(f, 8, name))
    if blob_len % 8 or blob_len > 1 << 40:
        raise SnapshotError(f"{name}: malformed snapshot (fingerprints of {blob_len} bytes)")
    blob = array("Q")
    blob.frombytes(_read_exact(f, blob_len, name))
    if not _little_endian():  # pragma: no cover
        blob.byteswap()
    try:
        return _build_pass(meta, blob)
    except (KeyError, TypeError, ValueError) as exc:
        raise SnapshotError(f"{name}: malformed snapshot metadata ({exc!r})") from None


def _build_pass(meta: Any, blob: array[int]) -> HostSnapshot:
    """Build a pass from its metadata and fingerprints (KeyError/TypeError/ValueError if bad)."""
    if not isinstance(meta, dict):
        raise TypeError("metadata is not an object")
    if meta["version"] != FORMAT_VERSION:
        raise ValueError(f"unsupported version {meta['version']}")
    if meta.get("page_size", PAGE_SIZE) != PAGE_SIZE:
        raise ValueError(f"page size {meta['page_size']} is not {PAGE_SIZE}")
    snap = HostSnapshot(
        taken_at=float(meta["taken_at"]),
        duration_s=float(meta["duration_s"]),
        hostname=str(meta["hostname"]),
        kernel=str(meta["kernel"]),
        zero_page_pfn_known=bool(meta["zero_page_pfn_known"]),
        tunables={str(k): int(v) for k, v in dict(meta["tunables"]).items()},
        skipped=list(meta.get("skipped", [])),
    )
    pos = 0
    for p in meta["processes"]:
        proc = ProcessSnapshot(int(p["pid"]), str(p["comm"]), int(p["start_time"]))
        for v in p["vmas"]:
            runs = [(int(a), int(b)) for a, b in v["runs"]]
            n = sum(b for _, b in runs)
            if any(a < 0 or b < 1 for a, b in runs) or pos + n > len(blob):
                raise ValueError("runs do not match the fingerprints")
            vma = VmaSnapshot(
                start=int(v["start"]),
                end=int(v["end"]),
                perms=str(v["perms"]),
                path=str(v["path"]),
                flags=tuple(str(x) for x in v["flags"]),
                runs=runs,
                fingerprints=blob[pos : pos + n],
                swapped=int(v["swapped"]),
                shared_frames=int(v["shared_frames"]),
                unreadable=int(v["unreadable"]),
            )
            if runs and runs[-1][0] + runs[-1][1] > vma.size_pages:
                raise ValueError(f"a run passes the end of mapping {vma.start:#x}")
            pos += n
            proc.vmas.append(vma)
        snap.processes.append(proc)
    if pos != len(blob):
        raise ValueError(f"{len(blob) - pos} fingerprints belong to no mapping")
    return snap
