"""The Host API (ksmsim.workload.host): errors for names and ranges it does not have."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ksmsim.kernel.memory import peek_user_page
from ksmsim.workload.host import Host, HostError
from ksmsim.workload.patterns import page_bytes

PAGE = 4096


@pytest.fixture
def host() -> Host:
    """A small host with process "a" (region "buf", 4 pages of repeat:2) and "b" (empty)."""
    h = Host("keyhole", ram_pages=1024)
    h.spawn("a")
    h.mmap("a", "buf", 4)
    h.fill("a", "buf", "repeat:2")
    h.spawn("b")
    return h


def state(h: Host) -> tuple[dict[str, int], dict[str, int], dict[str, list[str]]]:
    """Return what an operation could change: counters, memory and the named regions."""
    regions = {name: list(p.regions) for name, p in h.procs.items()}
    return h.counters(), h.memory(), regions


def test_host_error_is_a_value_error() -> None:
    assert issubclass(HostError, ValueError)


# --------------------------------------------------------------------------------------------------
# Unknown processes and regions

PROC_OPS: dict[str, Callable[[Host, str], Any]] = {
    "proc": lambda h, p: h.proc(p),
    "region": lambda h, p: h.region(p, "buf"),
    "mmap": lambda h, p: h.mmap(p, "new", 1),
    "fill": lambda h, p: h.fill(p, "buf", 1),
    "write": lambda h, p: h.write(p, "buf", 1),
    "read": lambda h, p: h.read(p, "buf"),
    "munmap": lambda h, p: h.munmap(p, "buf"),
    "madvise": lambda h, p: h.madvise(p, "buf", "unmergeable"),
    "fork": lambda h, p: h.fork(p, "child"),
    "exit": lambda h, p: h.exit(p),
    "digest": lambda h, p: h.digest(p, "buf"),
}


@pytest.mark.parametrize("op", list(PROC_OPS))
def test_unknown_process(host: Host, op: str) -> None:
    before = state(host)
    with pytest.raises(HostError, match=r"^process 'nobody' does not exist$"):
        PROC_OPS[op](host, "nobody")
    assert state(host) == before
    assert "child" not in host.procs


@pytest.mark.parametrize("op", list(PROC_OPS))
def test_exited_process(host: Host, op: str) -> None:
    host.exit("a")
    before = state(host)
    with pytest.raises(HostError, match=r"^process 'a' has exited$"):
        PROC_OPS[op](host, "a")
    assert state(host) == before
    assert "child" not in host.procs


REGION_OPS: dict[str, Callable[[Host, str], Any]] = {
    "region": lambda h, r: h.region("a", r),
    "fill": lambda h, r: h.fill("a", r, 1),
    "write": lambda h, r: h.write("a", r, 1),
    "read": lambda h, r: h.read("a", r),
    "munmap": lambda h, r: h.munmap("a", r),
    "madvise": lambda h, r: h.madvise("a", r, "dontneed"),
    "digest": lambda h, r: h.digest("a", r),
}


@pytest.mark.parametrize("op", list(REGION_OPS))
def test_unknown_region(host: Host, op: str) -> None:
    before = state(host)
    with pytest.raises(HostError, match=r"^process 'a' has no region 'heap'$"):
        REGION_OPS[op](host, "heap")
    assert state(host) == before


def test_region_of_another_process(host: Host) -> None:
    with pytest.raises(HostError, match="process 'b' has no region 'buf'"):
        host.fill("b", "buf", 1)


def test_exited_process_keeps_its_name(host: Host) -> None:
    host.exit("a")
    assert "a" not in host.procs
    assert host.exited == {"a"}
    with pytest.raises(HostError, match="has exited"):
        host.exit("a")


# --------------------------------------------------------------------------------------------------
# Page ranges


RANGE_OPS: dict[str, Callable[..., Any]] = {
    "fill": lambda h, **kw: h.fill("a", "buf", 7, **kw),
    "write": lambda h, **kw: h.write("a", "buf", 7, **kw),
    "read": lambda h, **kw: h.read("a", "buf", **kw),
    "munmap": lambda h, **kw: h.munmap("a", "buf", **kw),
    "madvise": lambda h, **kw: h.madvise("a", "buf", "unmergeable", **kw),
}


@pytest.mark.parametrize("op", list(RANGE_OPS))
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"start": 4}, "region 'buf' has 4 pages; start 4 is past its end"),
        ({"start": 9}, "region 'buf' has 4 pages; start 9 is past its end"),
        ({"start": 2, "count": 3}, r"region 'buf' has 4 pages; 2\+3 is past its end"),
        ({"start": 0, "count": 5}, r"region 'buf' has 4 pages; 0\+5 is past its end"),
    ],
    ids=["start-at-end", "start-beyond", "count-past-end", "count-too-big"],
)
def test_page_range_past_the_end(host: Host, op: str, kwargs: dict[str, int], message: str) -> None:
    before = state(host)
    digest = host.digest("a", "buf")
    with pytest.raises(HostError, match=f"^{message}$"):
        RANGE_OPS[op](host, **kwargs)
    assert state(host) == before
    assert host.digest("a", "buf") == digest  # nothing was written before the check


@pytest.mark.parametrize("op", list(RANGE_OPS))
def test_page_range_to_the_end(host: Host, op: str) -> None:
    RANGE_OPS[op](host, start=3, count=1)
    RANGE_OPS[op](host, start=1)


def test_counts_of_pages_done(host: Host) -> None:
    assert host.fill("a", "buf", "unique", start=1) == 3
    assert host.write("a", "buf", 1, stride=2) == 2
    assert host.read("a", "buf", start=2, count=2) == 2
    host.munmap("a", "buf", start=1, count=2)
    assert host.fill("a", "buf", "zero") == 2  # unmapped pages are skipped
    assert host.write("a", "buf", 1) == 2
    assert host.read("a", "buf") == 2


def test_write_offset_outside_a_page(host: Host) -> None:
    with pytest.raises(HostError, match="offset 4096 is outside a page"):
        host.write("a", "buf", 1, offset=4096)
    with pytest.raises(HostError, match="offset -1 is outside a page"):
        host.write("a", "buf", 1, offset=-1)
    assert host.write("a", "buf", 1, offset=4095) == 4


def test_write_value_not_a_byte(host: Host) -> None:
    with pytest.raises(ValueError):
        host.write("a", "buf", 256)


def test_fill_bad_pattern(host: Host) -> None:
    with pytest.raises(ValueError, match="repeat"):
        host.fill("a", "buf", "repeat:0")


def test_unknown_advice(host: Host) -> None:
    with pytest.raises(HostError, match="unknown advice 'sequential'"):
        host.madvise("a", "buf", "sequential")


def test_negative_start_is_refused(host: Host) -> None:
    host.mmap("a", "below", 2)
    host.fill("a", "below", "zero")
    below = host.region("a", "below")
    last = below.page_address(1)
    assert last + PAGE == host.region("a", "buf").address  # "below" ends where "buf" starts
    try:
        with pytest.raises(HostError):
            host.fill("a", "buf", 7, start=-1)
    finally:
        # Whatever happened, "below" must still hold its own contents.
        assert peek_user_page(host.proc("a").mm, last) == page_bytes(
            "zero", 1, proc="a", region="below"
        )


# --------------------------------------------------------------------------------------------------
# Duplicate names


def test_spawn_duplicate(host: Host) -> None:
    with pytest.raises(HostError, match=r"^process name 'a' already used$"):
        host.spawn("a")


def test_spawn_name_of_an_exited_process(host: Host) -> None:
    host.exit("a")
    with pytest.raises(HostError, match=r"^process name 'a' already used$"):
        host.spawn("a")


@pytest.mark.parametrize("child", ["a", "b"])
def test_fork_to_a_used_name(host: Host, child: str) -> None:
    before = state(host)
    with pytest.raises(HostError, match=f"^process name '{child}' already used$"):
        host.fork("a", child)
    assert state(host) == before


def test_fork_to_the_name_of_an_exited_process(host: Host) -> None:
    host.exit("b")
    with pytest.raises(HostError, match=r"^process name 'b' already used$"):
        host.fork("a", "b")


def test_mmap_duplicate_region(host: Host) -> None:
    before = state(host)
    with pytest.raises(HostError, match=r"^process 'a' already has a region 'buf'$"):
        host.mmap("a", "buf", 2)
    assert state(host) == before


def test_same_region_name_in_two_processes(host: Host) -> None:
    r = host.mmap("b", "buf", 4)
    assert host.region("b", "buf") is r
    assert host.region("a", "buf") is not r


def test_fork_child_has_the_parents_regions(host: Host) -> None:
    child = host.fork("a", "c")
    assert list(child.regions) == ["buf"]
    assert child.regions["buf"].address == host.region("a", "buf").address
    assert child.regions["buf"] is not host.region("a", "buf")
    assert host.digest("c", "buf") == host.digest("a", "buf")


def test_mmap_zero_pages(host: Host) -> None:
    with pytest.raises(HostError, match="at least one page"):
        host.mmap("a", "empty", 0)
    assert "empty" not in host.proc("a").regions


# --------------------------------------------------------------------------------------------------
# Tunables


@pytest.mark.parametrize("name", ["run", "max_page_sharing", "merge_across_nodes", "bogus"])
def test_set_tunable_the_profile_lacks(host: Host, name: str) -> None:
    with pytest.raises(HostError, match=f"^the keyhole profile has no tunable '{name}'$"):
        host.set_tunable(name, 1)
    assert host.counters()["run"] == 0


def test_set_tunable(host: Host) -> None:
    host.set_tunable("pages_to_scan", 42)
    assert host.sysfs.read_int("pages_to_scan") == 42


def test_unknown_profile() -> None:
    with pytest.raises(ValueError, match="bogus"):
        Host("bogus")
