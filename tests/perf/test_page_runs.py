"""Runs of whole-page writes: write_page_run's C loop against its twin, and its callers.

* ``ksmsim._speedups.write_page_run`` against ``memory_shortcuts.write_page_run_py``: on twin
  machines with pages never touched, mapped writable, mapped read-only (fork), the zero page,
  holes, an area without an anon_vma, a free list in hot and cold order, and every kind of
  source (also sources that give no page), the same return value and the same machine state.
* ``fill_batch.write_pattern`` and ``RegionWriter`` against write_user_bytes() page by page
  (the exact path), with the run loop on, off, and refused by its conditions.
* ``pause_gc`` leaves what a pause allocated in the oldest generation and the collector on.
"""

from __future__ import annotations

import gc
import random
from typing import Any

import pytest

from ksmsim.kernel import memory_shortcuts as ms
from ksmsim.kernel.ksm_shortcuts import PageText, Shortcuts, pause_gc, using_shortcuts
from ksmsim.kernel.memory import write_user_bytes
from ksmsim.workload import fill_batch
from ksmsim.workload.fill_batch import RegionWriter, write_pattern
from ksmsim.workload.host import Host
from ksmsim.workload.patterns import page_bytes, parse_pattern

from .state import first_difference, machine_state

C_RUN = ms._setup_c()
needs_c = pytest.mark.skipif(C_RUN is None, reason="ksmsim._speedups not built (or stale)")


def _state(host: Host) -> dict[str, Any]:
    out = machine_state(host.machine)
    out["map_generation"] = host.machine.zone.map_generation
    return out


def _machine(seed: int, shortcuts: Shortcuts | None = None) -> Host:
    """A small machine whose region ``r`` of process ``a`` has pages in every state."""
    rng = random.Random(seed)
    with using_shortcuts(shortcuts or Shortcuts.all_on()):
        host = Host("v6.18", ram_pages=rng.choice((300, 2000)))
    host.machine.zone.reuse_order = rng.choice(("hot", "cold"))
    host.spawn("x")
    host.mmap("x", "junk", 40)
    host.fill("x", "junk", "unique")
    host.exit("x")  # frames on the free list
    host.spawn("a")
    host.mmap("a", "r", 96)
    if rng.random() < 0.7:
        for i in rng.sample(range(96), rng.randrange(40)):
            host.write("a", "r", rng.randrange(256), start=i, count=1)
        for i in rng.sample(range(96), rng.randrange(10)):
            host.read("a", "r", start=i, count=1)  # the zero page
    if rng.random() < 0.3:
        host.fork("a", "b")  # COW: read-only ptes
    if rng.random() < 0.4:
        start = rng.randrange(90)
        host.munmap("a", "r", start=start, count=rng.randint(1, 6))  # a hole: a second area
    return host


def _sources(rng: random.Random) -> list[ms.PageSource]:
    texts = [page_bytes("repeat:9", i, proc="", region="") for i in range(4)]
    out = [
        ms.PageSource(ms.SOURCE_CONSTANT, page_bytes(rng.randrange(256), 0, proc="", region="")),
        ms.PageSource(ms.SOURCE_CYCLIC, texts, 9, b"R||", 0xA5),
    ]
    if PageText is not None:
        out.append(ms.PageSource(ms.SOURCE_NUMBERED, head=b"U|s|a|r|", filler=0x5A))
        out.append(ms.PageSource(ms.SOURCE_NUMBERED, head=b"H" * 4093, filler=0x5A))  # 10: long
        out.append(ms.PageSource(ms.SOURCE_CYCLIC, [], 7, b"R|x|", 0xA5))
        out.append(ms.PageSource(ms.SOURCE_CYCLIC, [], 50, b"R" * 4092, 0xA5))  # 10: long
    return out


@needs_c
@pytest.mark.parametrize("seed", range(40))
def test_write_page_run_c_equals_py(seed: int) -> None:
    assert C_RUN is not None
    rng = random.Random(seed)
    hosts = (_machine(seed), _machine(seed))
    assert first_difference(_state(hosts[0]), _state(hosts[1])) is None
    for _ in range(12):
        choice = rng.randrange(len(_sources(random.Random(0))))
        sources = (_sources(random.Random(seed)), _sources(random.Random(seed)))
        first = rng.randrange(96)
        index = rng.choice((first, rng.randrange(20), -1 if rng.random() < 0.05 else 0))
        got = []
        for host, run, mine in zip(hosts, (C_RUN, ms.write_page_run_py), sources, strict=True):
            source = mine[choice]
            mm = host.proc("a").mm
            r = host.region("a", "r")
            address = r.page_address(first)
            vma = mm.find_vma(address)
            if vma is None or vma.vm_start > address:
                got.append(None)
                continue
            count = random.Random(seed * 1000 + first).randint(1, (vma.vm_end - address) >> 12)
            got.append(run(mm, vma, address, count, source, index))
        assert got[0] == got[1]
        assert first_difference(_state(hosts[0]), _state(hosts[1])) is None
        assert sources[0][choice] == sources[1][choice]  # lists grown alike


def _exact(host: Host, pattern: Any, first: int, count: int, index: int, salt: str) -> int:
    """write_user_bytes() page by page, skipping unmapped pages: the exact path."""
    mm = host.proc("a").mm
    r = host.region("a", "r")
    p = parse_pattern(pattern)
    done = 0
    for k in range(count):
        address = r.page_address(first + k)
        vma = mm.find_vma(address)
        if vma is None or vma.vm_start > address:
            continue
        write_user_bytes(mm, address, p.page(index + k, proc="a", region="r", salt=salt))
        done += 1
    return done


@pytest.mark.parametrize("seed", range(30))
@pytest.mark.parametrize("shortcuts", ["all", "-c_helpers", "-lazy_contents", "none"])
def test_write_pattern_equals_the_exact_path(seed: int, shortcuts: str) -> None:
    rng = random.Random(seed)
    fast = _machine(seed, Shortcuts.parse(shortcuts))
    exact = _machine(seed, Shortcuts.all_off())
    writer = RegionWriter(
        fast.proc("a").mm,
        fast.region("a", "r").address,
        parse_pattern("unique"),
        proc="a",
        region="r",
        salt="churn",
    )
    for _ in range(10):
        pattern = rng.choice(("unique", "repeat:7", "zero", 0x41, "repeat:200"))
        first = rng.randrange(96)
        count = rng.randint(1, 96 - first)
        index = rng.choice((first, rng.randrange(1000)))
        salt = rng.choice(("", "s", "churn"))
        if rng.random() < 0.3:
            count = min(count, 4)
            got = writer.write(first, count, index)
            want = _exact(exact, "unique", first, count, index, "churn")
        else:
            got = write_pattern(
                fast.proc("a").mm,
                fast.region("a", "r").address,
                pattern,
                first,
                count,
                proc="a",
                region="r",
                salt=salt,
                index=index,
            )
            want = _exact(exact, pattern, first, count, index, salt)
        assert got == want
        assert first_difference(_state(fast), _state(exact)) is None


def test_write_pattern_takes_the_run_loop_only_where_allowed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[int] = []
    twin = ms.write_page_run_py

    def counted(*args: Any) -> int:
        calls.append(args[3])
        return twin(*args)

    monkeypatch.setattr(fill_batch, "write_page_run_function", lambda shortcuts: counted)
    host = Host("v6.18", ram_pages=1000)
    host.spawn("a")
    host.mmap("a", "r", 64)
    assert host.fill("a", "r", "unique") == 64
    assert calls == [64, 63]  # the first page gives the area its anon_vma, on the exact path
    calls.clear()
    host.machine.preempt = lambda point: None  # the interleaving explorer: exact path
    host.fill("a", "r", 7)
    host.machine.preempt = None
    assert calls == []
    swapping = Host("v6.18", ram_pages=1000, swap_pages=64)  # reclaim: exact path
    swapping.spawn("a")
    swapping.mmap("a", "r", 8)
    swapping.fill("a", "r", "unique")
    writer = RegionWriter(
        swapping.proc("a").mm,
        swapping.region("a", "r").address,
        parse_pattern("unique"),
        proc="a",
        region="r",
        salt="churn",
    )
    assert writer.write(0, 2, 0) == 2
    with using_shortcuts(Shortcuts.parse("-fill_batch")):
        off = Host("v6.18", ram_pages=1000)
    off.spawn("a")
    off.mmap("a", "r", 8)
    off.fill("a", "r", "unique")
    assert calls == []


def test_pause_gc_leaves_new_objects_in_the_oldest_generation() -> None:
    host = Host("v6.18", ram_pages=64)
    assert gc.isenabled() and gc.get_freeze_count() == 0
    gc.collect()
    with pause_gc(host.ksm):
        assert not gc.isenabled()
        junk = [[i] for i in range(5000)]
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert gc.get_count()[0] < 100  # not waiting in the youngest generation
    assert all(gc.is_tracked(x) for x in junk[:3])
    gc.freeze()  # someone else's frozen objects stay frozen
    try:
        with pause_gc(host.ksm):
            pass
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()


def test_memory_stats_counts_the_allocated_ksm_pages() -> None:
    host = Host("v6.18", ram_pages=4096)
    for p in ("a", "b"):
        host.spawn(p)
        host.mmap(p, "r", 64)
        host.fill(p, "r", "repeat:8")
    host.scan(2)
    host.write("a", "r", 1, start=0, count=8)  # COW breaks: some KSM pages go
    zone = host.machine.zone
    want = sum(1 for p in zone.allocated_pages() if p.mapping_flags == 3)
    assert want > 0
    assert host.memory()["ksm_pages"] == want


def test_count_ksm_frames_in_c_equals_its_twin() -> None:
    from ksmsim.kernel import ksm_shortcuts
    from ksmsim.kernel.machine import count_ksm_frames

    host = Host("v6.18", ram_pages=4096)
    for p in ("a", "b", "c"):
        host.spawn(p)
        host.mmap(p, "r", 96)
        host.fill(p, "r", "repeat:8")
    host.scan(2)
    host.write("a", "r", 1, start=0, count=8)
    host.exit("c")  # freed frames: KSM flags cleared, count 0
    zone = host.machine.zone
    if ksm_shortcuts.count_ksm_frames_c is None:
        pytest.skip("the C helpers are not built")
    for stop in (1, 2, 50, zone._fresh, len(zone.mem_map) + 5):
        twin = count_ksm_frames(zone.mem_map, stop, c_helpers=False)
        assert count_ksm_frames(zone.mem_map, stop, c_helpers=True) == twin
    assert count_ksm_frames(zone.mem_map, zone._fresh, c_helpers=False) > 0
    with pytest.raises(TypeError):
        ksm_shortcuts.count_ksm_frames_c([object()], 0, 1, 3)
