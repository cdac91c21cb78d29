"""Turn a live snapshot into a workload on the model.

The model compares real bytes, and a snapshot holds only 64-bit fingerprints, so each
fingerprint becomes a *synthetic page*: ``FP_ZERO`` becomes the all-zero page, any other
fingerprint ``h`` the 8 bytes of ``h`` (little-endian) repeated 512 times. Two synthetic pages are
equal exactly when their fingerprints are, and none of them is all zeros, so the model merges
exactly the pages whose fingerprints agree (two different pages with one xxh3 fingerprint, a
chance of about n^2 / 2^65 for n pages, would be merged by the model and not by the kernel).
The trees order the synthetic pages differently from the real ones, which changes the trees'
shapes but not what merges. ``FP_ZERO_MAPPING`` pages are read, not written: they map the zero
page, as they did on the host.

Each process becomes a model process named ``COMM-PID`` whose mappings are mapped in descending
address order (the model places mappings top-down, so ksmd meets them in the host's ascending
order), each holding its fingerprinted pages back to back (holes are left out: ksmd's cost of
walking them is not modelled). Processes enter ksmd's list in pid order. With two passes, the
pages that changed between them go into a separate region ``vN.hot`` of their mapping, which a
background writer rewrites with new contents at one write per changed page per interval (the
slowest rate the observation allows), so they stay volatile as they were on the host.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

from ksmsim.kernel.memory import read_user_byte, write_user_bytes
from ksmsim.kernel.page import PAGE_SIZE
from ksmsim.workload.churn import ChurnSet
from ksmsim.workload.host import Host
from ksmsim.workload.snapshot import (
    FP_ZERO,
    FP_ZERO_MAPPING,
    HostSnapshot,
    ProcessSnapshot,
    changed_pages,
)

__all__ = [
    "KERNEL_DEFAULT_TUNABLES",
    "SnapshotWorkloadInfo",
    "build_snapshot_host",
    "snapshot_tunables",
    "synthetic_page",
]

KERNEL_DEFAULT_TUNABLES: Final = {
    "pages_to_scan": 100,
    "sleep_millisecs": 20,
    "use_zero_pages": 0,
    "max_page_sharing": 256,
    "smart_scan": 1,
}
"""The kernel's KSM defaults, used when a snapshot recorded none of the host's."""

_NAME_BAD: Final = re.compile(r"[^A-Za-z0-9_.+-]")
_PATTERN_BYTES: Final = 8
_REPEAT: Final = PAGE_SIZE // _PATTERN_BYTES
_ZERO: Final = bytes(PAGE_SIZE)


def synthetic_page(fp: int) -> bytes:
    """Return the 4096 bytes standing for a fingerprint (equal iff the fingerprints are)."""
    if fp == FP_ZERO:
        return _ZERO
    return fp.to_bytes(_PATTERN_BYTES, "little") * _REPEAT


def snapshot_tunables(
    snap: HostSnapshot, overrides: dict[str, int] | None = None
) -> dict[str, int]:
    """Return the tunables an estimate runs with: the kernel's defaults, then the host's recorded
    values, then ``overrides``."""
    out = dict(KERNEL_DEFAULT_TUNABLES)
    out.update({k: v for k, v in snap.tunables.items() if k in KERNEL_DEFAULT_TUNABLES})
    out.update(overrides or {})
    return out


@dataclass(slots=True)
class SnapshotWorkloadInfo:
    """What went into the model: page counts by kind and the background writers."""

    processes: int = 0
    pages: int = 0
    """Pages given to the model (mergeable candidates, zero-page mappings included)."""
    zero_pages: int = 0
    zero_page_mappings: int = 0
    excluded_pages: int = 0
    """Pages of areas left out (not madvised mergeable, with ``only_mergeable``)."""
    shared_frames: int = 0
    """Pages whose frame the host already shared between mappings (fork, or KSM itself)."""
    hot_pages: int = 0
    interval_s: float | None = None
    churn_writes_per_s: float = 0.0
    regions: int = 0
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "processes": self.processes,
            "pages": self.pages,
            "zero_pages": self.zero_pages,
            "zero_page_mappings": self.zero_page_mappings,
            "excluded_pages": self.excluded_pages,
            "shared_frames": self.shared_frames,
            "hot_pages": self.hot_pages,
            "interval_s": self.interval_s,
            "churn_writes_per_s": self.churn_writes_per_s,
            "regions": self.regions,
        }


def _proc_name(proc: ProcessSnapshot) -> str:
    """Return the model's name for a host process: ``COMM-PID`` with odd characters replaced."""
    return f"{_NAME_BAD.sub('_', proc.comm)[:40] or 'proc'}-{proc.pid}"


def build_snapshot_host(
    passes: list[HostSnapshot],
    *,
    kernel: str,
    tunables: dict[str, int],
    only_mergeable: bool = False,
    check: bool = False,
) -> tuple[Host, ChurnSet, SnapshotWorkloadInfo]:
    """Build a model host holding the last pass's pages (and, with two or more passes, writers
    that keep the changed pages changing); return the host, its writers and what went in."""
    snap = passes[-1]
    changed: dict[tuple[int, int], set[int]] = {}
    info = SnapshotWorkloadInfo()
    if len(passes) >= 2:
        earlier = passes[-2]
        interval = snap.taken_at - earlier.taken_at
        if interval <= 0:
            raise ValueError(
                "the snapshot's last two passes are not in time order (each must be later)"
            )
        changed = changed_pages(earlier, snap)
        info.interval_s = interval
    info.notes.append(
        "zero-page mappings told apart from zero-filled frames"
        if snap.zero_page_pfn_known
        else "page frame numbers were hidden: every all-zero page counts as a frame"
    )
    counts: Counter[int] = Counter()
    selected: list[tuple[ProcessSnapshot, list[Any]]] = []
    for proc in sorted(snap.processes, key=lambda p: p.pid):
        vmas = []
        for vma in proc.vmas:
            if only_mergeable and not vma.mergeable:
                info.excluded_pages += vma.pages
                continue
            if vma.pages:
                vmas.append(vma)
                counts.update(vma.fingerprints)
        if vmas:
            selected.append((proc, vmas))
    total = sum(counts.values())
    host = Host(kernel, ram_pages=max(262144, total + total // 4 + 1024), check=check)
    for name, value in tunables.items():
        host.set_tunable(name, value)
    churn = ChurnSet()
    cache: dict[int, bytes] = {}
    for proc, vmas in selected:
        pname = _proc_name(proc)
        host.spawn(pname)
        mm = host.procs[pname].mm
        info.processes += 1
        for k, vma in sorted(enumerate(vmas), key=lambda kv: -kv[1].start):
            hot = changed.get((proc.pid, vma.start), set())
            parts = [
                (f"v{k}", [fp for i, fp in enumerate(vma.fingerprints) if i not in hot]),
                (f"v{k}.hot", [fp for i, fp in enumerate(vma.fingerprints) if i in hot]),
            ]
            info.shared_frames += vma.shared_frames
            for rname, fps in parts:
                if not fps:
                    continue
                r = host.mmap(pname, rname, len(fps))
                info.regions += 1
                for i, fp in enumerate(fps):
                    addr = r.page_address(i)
                    if fp == FP_ZERO_MAPPING:
                        read_user_byte(mm, addr)
                        info.zero_page_mappings += 1
                        continue
                    if fp == FP_ZERO:
                        info.zero_pages += 1
                    data = cache.get(fp)
                    if data is None:
                        data = synthetic_page(fp)
                        if counts[fp] > 1:
                            cache[fp] = data
                    write_user_bytes(mm, addr, data)
                info.pages += len(fps)
                if rname.endswith(".hot"):
                    info.hot_pages += len(fps)
                    assert info.interval_s is not None
                    rate = len(fps) / info.interval_s
                    churn.set(host, pname, rname, rate, "unique")
                    info.churn_writes_per_s += rate
    if info.shared_frames:
        info.notes.append(
            f"{info.shared_frames} pages already shared a frame on the host (fork or KSM); "
            "the model gives each its own frame, so the savings in bytes are an upper bound"
        )
    return host, churn, info
