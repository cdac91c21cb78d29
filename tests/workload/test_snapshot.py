"""Live snapshots of processes the tests start themselves, snapshot files, and ``estimate``.

The child process maps 72 private anonymous pages: 32 copies of one page, 16 zero-filled
frames, 8 unique pages, 8 pages only read (they map the kernel's zero page) and 8 never touched;
it never madvises anything (so the machine's real KSM never sees it).
"""

from __future__ import annotations

import gzip
import json
import os
import struct
import subprocess
import sys
from array import array
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from ksmsim.cli import main
from ksmsim.workload import snapshot as snapmod
from ksmsim.workload.estimate import synthetic_page
from ksmsim.workload.predict import SnapshotWorkload, load_workload, predict
from ksmsim.workload.snapshot import (
    FP_ZERO,
    FP_ZERO_MAPPING,
    HostSnapshot,
    ProcessSnapshot,
    SnapshotError,
    SnapshotPermissionError,
    VmaSnapshot,
    changed_pages,
    fingerprint,
    load_snapshot,
    parse_smaps,
    save_snapshot,
    take_snapshot,
)

PAGE = 4096
PAGES = 72

CHILD = r"""
import ctypes, hashlib, mmap, sys
m = mmap.mmap(-1, 72 * 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
for i in range(32):
    m[i * 4096:(i + 1) * 4096] = b"A" * 4096
for i in range(32, 48):
    m[i * 4096] = 0
for i in range(48, 56):
    m[i * 4096:(i + 1) * 4096] = (b"U%02d|" % i) * 1024
for i in range(56, 64):
    _ = m[i * 4096]
view = ctypes.c_char.from_buffer(m)
print(ctypes.addressof(view), flush=True)
del view
for line in sys.stdin:
    cmd = line.split()
    if cmd[0] == "rewrite":
        for i in range(int(cmd[1]), int(cmd[2])):
            m[i * 4096:(i + 1) * 4096] = (b"W%02d|" % i) * 1024
        print("ok", flush=True)
    elif cmd[0] == "digest":
        print(hashlib.sha256(m[:64 * 4096]).hexdigest(), flush=True)
"""

needs_proc = pytest.mark.skipif(not Path("/proc/self/pagemap").exists(), reason="needs Linux /proc")


class Child:
    """A child process holding the known buffer at ``addr``."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.proc.stdout is not None
        self.addr = int(self.proc.stdout.readline())
        self.pid = self.proc.pid

    def ask(self, line: str) -> str:
        """Send a command and return the child's answer."""
        stdin, stdout = self.proc.stdin, self.proc.stdout
        assert stdin is not None and stdout is not None
        stdin.write(line + "\n")
        stdin.flush()
        return stdout.readline().strip()

    def in_buffer(self, entry: snapmod.SmapsEntry) -> bool:
        """Tell whether a mapping holds the buffer."""
        return entry.start <= self.addr < entry.end

    def close(self) -> None:
        """End the child."""
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=10)


@pytest.fixture
def child() -> Iterator[Child]:
    c = Child()
    try:
        yield c
    finally:
        c.close()


def buffer_vma(snap: HostSnapshot, child: Child) -> VmaSnapshot:
    """Return the snapshot of the child's buffer mapping."""
    (proc,) = [p for p in snap.processes if p.pid == child.pid]
    (vma,) = [v for v in proc.vmas if v.start <= child.addr < v.end]
    return vma


def pagemap_entries(pid: int, addr: int, count: int) -> list[int]:
    """Return the pagemap entries of ``count`` pages from ``addr``."""
    with open(f"/proc/{pid}/pagemap", "rb") as f:
        f.seek((addr // PAGE) * 8)
        return list(struct.unpack(f"<{count}Q", f.read(count * 8)))


@needs_proc
def test_a_snapshot_fingerprints_exactly_the_present_pages(child: Child) -> None:
    snap = take_snapshot([child.pid], vma_filter=child.in_buffer)
    vma = buffer_vma(snap, child)
    assert vma.start == child.addr and vma.size_pages == PAGES
    assert vma.runs == [(0, 64)]  # the 8 untouched pages are not present
    fps = list(vma.fingerprints)
    assert len(set(fps[:32])) == 1
    assert fps[0] == fingerprint(b"A" * PAGE) and fps[0] not in (FP_ZERO, FP_ZERO_MAPPING)
    assert fps[32:48] == [FP_ZERO] * 16
    assert len(set(fps[48:56])) == 8
    expected_mapping = FP_ZERO_MAPPING if snap.zero_page_pfn_known else FP_ZERO
    assert fps[56:64] == [expected_mapping] * 8
    assert not vma.mergeable and vma.shared_frames == 0 and vma.unreadable == 0
    assert snap.summary()["pages"] == 64


@needs_proc
def test_taking_a_snapshot_leaves_the_process_as_it_was(child: Child) -> None:
    digest = child.ask("digest")
    before = pagemap_entries(child.pid, child.addr, PAGES)
    take_snapshot([child.pid])
    assert child.ask("digest") == digest
    after = pagemap_entries(child.pid, child.addr, PAGES)
    present = [bool(e >> 63 & 1) for e in after]
    assert present == [bool(e >> 63 & 1) for e in before]
    assert present[64:] == [False] * 8  # never faulted in by the snapshot
    if snapmod._zero_page_pfn():
        assert after[56:64] == before[56:64]  # still the zero page


@needs_proc
def test_two_passes_tell_which_pages_changed(child: Child) -> None:
    first = take_snapshot([child.pid], vma_filter=child.in_buffer)
    assert child.ask("rewrite 40 45") == "ok"
    second = take_snapshot([child.pid], vma_filter=child.in_buffer)
    changes = changed_pages(first, second)
    assert changes == {(child.pid, child.addr): {40, 41, 42, 43, 44}}
    # A process matched by pid but started at another time is a different process.
    second.processes[0].start_time += 1
    assert changed_pages(first, second) == {}


@needs_proc
def test_estimate_of_a_live_snapshot(child: Child, tmp_path: Path) -> None:
    snap = take_snapshot([child.pid], vma_filter=child.in_buffer)
    path = tmp_path / "child.snap"
    save_snapshot(path, [snap])
    workload = load_workload(path)
    assert isinstance(workload, SnapshotWorkload)
    pred = predict(workload, tunables={"pages_to_scan": 1000, "use_zero_pages": 0})
    # 32 copies and 16 zero frames merge into two KSM pages; 8 unique pages stay unshared.
    assert (pred.pages_shared, pred.pages_sharing) == (2, 31 + 15)
    assert pred.saved_bytes == 46 * PAGE
    zero = predict(workload, tunables={"pages_to_scan": 1000, "use_zero_pages": 1})
    assert (zero.pages_shared, zero.pages_sharing, zero.ksm_zero_pages) == (1, 31, 16)
    assert zero.saved_pages == 31 + 16
    assert pred.converged and zero.converged
    assert pred.t50_s is not None and pred.t50_s <= pred.t90_s <= pred.t99_s  # type: ignore[operator]


@needs_proc
def test_snapshot_and_estimate_commands(
    child: Child, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "c.snap"
    assert main(["snapshot", "--pid", str(child.pid), "-o", str(out), "--interval", "0.05"]) == 0
    printed = capsys.readouterr().out
    assert f"{out}: 1 processes" in printed and "2 pass(es)" in printed
    passes = load_snapshot(out)
    assert len(passes) == 2 and passes[1].taken_at > passes[0].taken_at
    assert main(["estimate", str(out), "--pages-to-scan", "5000", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    for key in ("pages_shared", "pages_sharing", "saved_bytes", "t50_s", "t90_s", "t99_s"):
        assert key in doc
    assert doc["ksmd_cpu_s"] > 0 and doc["pages_sharing"] >= 46
    assert doc["tunables"]["pages_to_scan"] == 5000
    assert main(["estimate", str(out), "--only-mergeable", "--pages-to-scan", "5000"]) == 0
    table = capsys.readouterr().out
    assert "saved" in table and "not madvised mergeable were left out" in table


@needs_proc
def test_snapshot_of_all_processes_skips_itself(child: Child) -> None:
    snap = take_snapshot(None, vma_filter=child.in_buffer)
    pids = {p.pid for p in snap.processes}
    assert child.pid in pids and os.getpid() not in pids


def test_missing_privilege_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def denied(path: str) -> IO[bytes]:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(snapmod, "_opener", denied)
    with pytest.raises(SnapshotPermissionError, match=r"process \d+ .*permission denied"):
        take_snapshot([os.getppid()])
    out = tmp_path / "x.snap"
    assert main(["snapshot", "--pid", str(os.getppid()), "-o", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "permission denied" in err and "CAP_SYS_PTRACE" in err
    assert not out.exists()
    # --all skips unreadable processes, and fails only when it can read none.
    with pytest.raises(SnapshotPermissionError, match="could not read the memory of any"):
        take_snapshot(None)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to another user")
@needs_proc
def test_an_unprivileged_user_cannot_snapshot_roots_process(child: Child) -> None:
    """A forked copy of this test process drops to user nobody and tries for real."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - runs in the child
        os.close(read)
        message = b"no error"
        try:
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            take_snapshot([child.pid])
        except SnapshotPermissionError as exc:
            message = str(exc).encode()
        except BaseException as exc:
            message = f"other: {exc!r}".encode()
        os.write(write, message)
        os._exit(0)
    os.close(write)
    with os.fdopen(read, "rb") as f:
        message = f.read().decode()
    os.waitpid(pid, 0)
    assert f"process {child.pid}" in message and "permission denied" in message


def test_a_missing_process_is_an_error() -> None:
    with pytest.raises(SnapshotError, match="does not exist"):
        take_snapshot([2**22 + 12345])


SMAPS = """\
55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0                          [heap]
Size:                132 kB
Anonymous:           132 kB
Swap:                  4 kB
VmFlags: rd wr mr mw me ac mg
7f0000000000-7f0000001000 rw-s 00000000 00:01 1234                       /dev/shm/x
Anonymous:             0 kB
VmFlags: rd wr sh mr mw me ms sd
7f0000002000-7f0000003000 r--p 00000000 00:00 0                          [vvar]
VmFlags: rd mr pf io de dd
7f0000004000-7f0000005000 rw-p 00000000 08:01 99                         /usr/lib/libc.so.6
Anonymous:             4 kB
VmFlags: rd wr mr mw me ac
"""


def test_smaps_parsing_and_which_mappings_ksm_could_merge() -> None:
    entries = parse_smaps(SMAPS)
    assert (entries[0].start, entries[0].end, entries[0].path) == (
        0x55D0C0000000,
        0x55D0C0021000,
        "[heap]",
    )
    assert entries[0].anonymous_kb == 132 and entries[0].swap_kb == 4
    assert "mg" in entries[0].flags
    assert [snapmod.ksm_compatible(e) for e in entries] == [True, False, False, True]
    with pytest.raises(SnapshotError, match="line 1"):
        parse_smaps("Size: 4 kB\n")
    with pytest.raises(SnapshotError, match="bad address"):
        parse_smaps("zz-yy rw-p 0 00:00 0\n")


def handmade(taken_at: float, fps: list[int], *, mergeable: bool = True) -> HostSnapshot:
    """Return a pass with one process whose one mapping holds ``fps``."""
    flags = ("rd", "wr", "mg") if mergeable else ("rd", "wr")
    vma = VmaSnapshot(
        0x7F0000000000,
        0x7F0000000000 + len(fps) * PAGE,
        "rw-p",
        "",
        flags,
        runs=[(0, len(fps))],
        fingerprints=array("Q", fps),
    )
    proc = ProcessSnapshot(4242, "worker", 77, [vma])
    return HostSnapshot(taken_at, 0.01, "host", "6.18", True, {"pages_to_scan": 100}, [proc])


def test_file_round_trip(tmp_path: Path) -> None:
    a = handmade(1000.0, [5, 5, FP_ZERO, FP_ZERO_MAPPING, 9])
    b = handmade(1010.0, [5, 6, FP_ZERO, FP_ZERO_MAPPING, 9], mergeable=False)
    b.skipped.append({"pid": 1, "comm": "init", "reason": "permission denied", "message": "m"})
    path = tmp_path / "h.snap"
    save_snapshot(path, [a, b])
    assert load_snapshot(path) == [a, b]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"plain text", "not gzip"),
        (gzip.compress(b"KSMSIM-SNAPSHOT 9\n"), "wrong magic"),
        (gzip.compress(snapmod.MAGIC), "holds no pass"),
        (gzip.compress(snapmod.MAGIC + struct.pack("<Q", 50) + b"{}"), "truncated"),
        (gzip.compress(snapmod.MAGIC + struct.pack("<Q", 2) + b"{]"), "malformed"),
        (
            gzip.compress(snapmod.MAGIC + struct.pack("<Q", 2) + b"{}" + struct.pack("<Q", 0)),
            "malformed",
        ),
        (gzip.compress(b"x" * 100)[:20], "not a ksmsim snapshot|truncated"),
    ],
)
def test_malformed_snapshot_files(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.snap"
    path.write_bytes(content)
    with pytest.raises(SnapshotError, match=message) as info:
        load_snapshot(path)
    assert "\n" not in str(info.value)


def test_runs_that_do_not_match_the_fingerprints_are_refused(tmp_path: Path) -> None:
    snap = handmade(1.0, [5, 6, 7])
    snap.processes[0].vmas[0].runs = [(0, 4)]
    path = tmp_path / "m.snap"
    save_snapshot(path, [snap])
    with pytest.raises(SnapshotError, match="runs do not match"):
        load_snapshot(path)


def test_synthetic_pages_are_equal_exactly_when_fingerprints_are() -> None:
    fps = [FP_ZERO, 2, 3, 2**64 - 1, 0x0102030405060708]
    pages = [synthetic_page(fp) for fp in fps]
    assert pages[0] == bytes(PAGE)
    assert all(len(p) == PAGE for p in pages)
    assert len(set(pages)) == len(fps)
    assert synthetic_page(3) == synthetic_page(3)
    assert all(p != bytes(PAGE) for p in pages[1:])


def test_estimate_of_two_passes_keeps_the_changed_pages_volatile() -> None:
    """20 pages of one content; 5 of them changed in the 10 s between the passes."""
    first = handmade(1000.0, [7] * 20)
    second = handmade(1010.0, [100, 101, 102, 103, 104] + [7] * 15)
    pred = predict(SnapshotWorkload((first, second), "two"), tunables={"pages_to_scan": 50})
    assert pred.workload_info["hot_pages"] == 5
    assert pred.churn_writes_per_s == pytest.approx(0.5)
    assert (pred.pages_shared, pred.pages_sharing) == (1, 14)
    assert pred.converged
    still = predict(SnapshotWorkload((second,), "one"), tunables={"pages_to_scan": 50})
    assert still.churn_writes_per_s == 0 and still.pages_sharing == 14


def test_only_mergeable_leaves_out_areas_not_madvised() -> None:
    snap = handmade(1.0, [7] * 10, mergeable=False)
    whole = predict(SnapshotWorkload((snap,), "w"), tunables={"pages_to_scan": 100})
    only = predict(
        SnapshotWorkload((snap,), "w", only_mergeable=True), tunables={"pages_to_scan": 100}
    )
    assert whole.pages_sharing == 9 and only.pages_sharing == 0
    assert only.workload_info["excluded_pages"] == 10
    assert "recorded" not in " ".join(only.notes)


def test_estimate_uses_the_hosts_recorded_tunables_unless_overridden() -> None:
    snap = handmade(1.0, [7] * 10)
    snap.tunables = {"pages_to_scan": 3, "sleep_millisecs": 50, "use_zero_pages": 1}
    pred = predict(SnapshotWorkload((snap,), "w"))
    assert pred.tunables["pages_to_scan"] == 3 and pred.tunables["sleep_millisecs"] == 50
    assert (
        predict(SnapshotWorkload((snap,), "w"), tunables={"pages_to_scan": 9}).tunables[
            "pages_to_scan"
        ]
        == 9
    )
