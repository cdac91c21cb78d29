"""Tests of ksmsim.kernel.ksm_sysfs: /sys/kernel/mm/ksm at the keyhole commit (4035c07a).

The file set, modes, defaults and the parsing of writes (2.6.33 strict_strtoul(buf, 10) plus the
per-file range checks of mm/ksm.c), with the errnos the kernel returns.
"""

from __future__ import annotations

import errno

import pytest

from ksmsim.kernel.invariants import check_all
from ksmsim.kernel.ksm_sysfs import UINT_MAX, ULONG_MAX, SysfsError, strict_strtoul
from ksmsim.workload.host import Host, HostError

FILES = [
    "full_scans",
    "max_kernel_pages",
    "pages_shared",
    "pages_sharing",
    "pages_to_scan",
    "pages_unshared",
    "pages_volatile",
    "run",
    "sleep_millisecs",
]
WRITABLE = ["max_kernel_pages", "pages_to_scan", "run", "sleep_millisecs"]
READ_ONLY = sorted(set(FILES) - set(WRITABLE))
TUNABLES = ["max_kernel_pages", "pages_to_scan", "sleep_millisecs"]

BAD_NUMBERS = [
    "",
    "\n",
    " 1",
    "1 ",
    "1\t",
    "\t1",
    "0x10",
    "0X10",
    "-1",
    "+1",
    "1.0",
    "1e3",
    "abc",
    "10a",
    "1\n\n",
    "1\n2",
    "\n1",
    "1\r\n",
    "1_000",
    "\u0661",  # ARABIC-INDIC DIGIT ONE: int() would take it, the kernel would not
    "\uff11",  # FULLWIDTH DIGIT ONE
]


def make_host(ram_pages: int = 4096) -> Host:
    return Host("keyhole", ram_pages=ram_pages, check=True)


def errno_of(exc: pytest.ExceptionInfo[SysfsError]) -> int | None:
    return exc.value.errno


# -- the directory ----------------------------------------------------------------------------
def test_file_set_and_writable_set() -> None:
    sysfs = make_host().sysfs
    assert sysfs.files() == FILES
    assert sysfs.writable() == WRITABLE


def test_every_file_reads_as_a_decimal_line_with_its_default() -> None:
    sysfs = make_host(ram_pages=4096).sysfs
    expected = {
        "full_scans": 0,
        "max_kernel_pages": 1024,
        "pages_shared": 0,
        "pages_sharing": 0,
        "pages_to_scan": 100,
        "pages_unshared": 0,
        "pages_volatile": 0,
        "run": 0,
        "sleep_millisecs": 20,
    }
    for name in FILES:
        text = sysfs.read(name)
        assert text == f"{expected[name]}\n", name
        assert sysfs.read_int(name) == expected[name]


@pytest.mark.parametrize(("ram_pages", "limit"), [(1, 0), (3, 0), (4, 1), (7, 1), (2000, 500)])
def test_max_kernel_pages_default_is_a_quarter_of_ram(ram_pages: int, limit: int) -> None:
    host = Host("keyhole", ram_pages=ram_pages)
    assert host.sysfs.read_int("max_kernel_pages") == limit
    assert host.ksm.ksm_max_kernel_pages == limit


def test_reads_follow_the_kernel_state() -> None:
    host = make_host()
    host.set_tunable("pages_to_scan", 1000)
    host.spawn("P")
    host.mmap("P", "r", 4)
    host.fill("P", "r", 7)
    host.mmap("P", "u", 2)
    host.fill("P", "u", "unique")
    assert host.scan(1)
    assert host.sysfs.read("pages_volatile") == "6\n"
    assert host.scan(1)
    sysfs = host.sysfs
    assert [sysfs.read_int(n) for n in ("pages_shared", "pages_sharing", "pages_unshared")] == [
        1,
        3,
        2,
    ]
    assert sysfs.read("full_scans") == "2\n"
    assert sysfs.read("pages_volatile") == "0\n"


def test_pages_volatile_is_clamped_at_zero() -> None:
    host = make_host()
    ksm = host.ksm
    ksm.ksm_rmap_items = 3
    ksm.ksm_pages_shared = 1
    ksm.ksm_pages_sharing = 1
    ksm.ksm_pages_unshared = 1
    assert host.sysfs.read("pages_volatile") == "0\n"
    ksm.ksm_pages_unshared = 5  # a transiently inconsistent state (races in the kernel)
    assert host.sysfs.read("pages_volatile") == "0\n"
    ksm.ksm_pages_unshared = 0
    assert host.sysfs.read("pages_volatile") == "1\n"


# -- errors -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", READ_ONLY)
def test_read_only_files_refuse_writes_with_eacces(name: str) -> None:
    sysfs = make_host().sysfs
    before = sysfs.read(name)
    with pytest.raises(SysfsError) as exc:
        sysfs.write(name, "0\n")
    assert errno_of(exc) == errno.EACCES
    assert exc.value.name == name
    # Even a malformed value is refused for the mode first, not parsed.
    with pytest.raises(SysfsError) as exc:
        sysfs.write(name, "garbage")
    assert errno_of(exc) == errno.EACCES
    assert sysfs.read(name) == before


@pytest.mark.parametrize("name", ["use_zero_pages", "merge_across_nodes", "pages_scanned", ""])
def test_unknown_files_are_enoent(name: str) -> None:
    sysfs = make_host().sysfs
    with pytest.raises(SysfsError) as exc:
        sysfs.read(name)
    assert errno_of(exc) == errno.ENOENT
    with pytest.raises(SysfsError) as exc:
        sysfs.write(name, "1")
    assert errno_of(exc) == errno.ENOENT


def test_sysfs_error_is_an_oserror_naming_the_path() -> None:
    sysfs = make_host().sysfs
    with pytest.raises(OSError) as exc:
        sysfs.write("pages_to_scan", "x")
    assert exc.value.errno == errno.EINVAL
    assert "/sys/kernel/mm/ksm/pages_to_scan" in str(exc.value)


# -- parsing ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "value"),
    [("10\n", 10), ("10", 10), ("0", 0), ("0\n", 0), ("007", 7), ("4294967295", UINT_MAX)],
)
def test_strict_strtoul_accepts_decimal_with_one_optional_newline(text: str, value: int) -> None:
    assert strict_strtoul("pages_to_scan", text) == value


@pytest.mark.parametrize("text", BAD_NUMBERS)
def test_strict_strtoul_rejects_anything_else(text: str) -> None:
    with pytest.raises(SysfsError) as exc:
        strict_strtoul("pages_to_scan", text)
    assert errno_of(exc) == errno.EINVAL


@pytest.mark.parametrize("name", WRITABLE)
@pytest.mark.parametrize("text", BAD_NUMBERS)
def test_writes_of_malformed_numbers_are_einval_and_change_nothing(name: str, text: str) -> None:
    host = make_host()
    before = {n: host.sysfs.read(n) for n in FILES}
    with pytest.raises(SysfsError) as exc:
        host.sysfs.write(name, text)
    assert errno_of(exc) == errno.EINVAL
    assert {n: host.sysfs.read(n) for n in FILES} == before


@pytest.mark.parametrize("name", TUNABLES)
def test_tunable_writes_store_the_value(name: str) -> None:
    host = make_host()
    host.sysfs.write(name, "10\n")
    assert host.sysfs.read(name) == "10\n"
    host.sysfs.write(name, 0)
    assert host.sysfs.read_int(name) == 0
    host.sysfs.write(name, "7")
    assert host.sysfs.read_int(name) == 7
    assert (
        host.sysfs.read_int(name)
        == {
            "max_kernel_pages": host.ksm.ksm_max_kernel_pages,
            "pages_to_scan": host.ksm.ksm_thread_pages_to_scan,
            "sleep_millisecs": host.ksm.ksm_thread_sleep_millisecs,
        }[name]
    )


@pytest.mark.parametrize("name", ["pages_to_scan", "sleep_millisecs"])
def test_uint_tunables_refuse_values_above_uint_max(name: str) -> None:
    host = make_host()
    host.sysfs.write(name, str(UINT_MAX))
    assert host.sysfs.read_int(name) == UINT_MAX
    host.sysfs.write(name, "5")
    with pytest.raises(SysfsError) as exc:
        host.sysfs.write(name, f"{UINT_MAX + 1}\n")
    assert errno_of(exc) == errno.EINVAL
    assert host.sysfs.read_int(name) == 5
    with pytest.raises(SysfsError):
        host.sysfs.write(name, str(ULONG_MAX))
    assert host.sysfs.read_int(name) == 5


def test_max_kernel_pages_takes_any_unsigned_long() -> None:
    host = make_host()
    host.sysfs.write("max_kernel_pages", str(UINT_MAX + 1))
    assert host.sysfs.read_int("max_kernel_pages") == UINT_MAX + 1
    host.sysfs.write("max_kernel_pages", f"{ULONG_MAX}\n")
    assert host.sysfs.read_int("max_kernel_pages") == ULONG_MAX


def test_strict_strtoul_wraps_beyond_ulong_max_like_2_6_33() -> None:
    """2.6.33 simple_strtoul() has no overflow check: the value wraps modulo 2**64, and only
    then do the per-file range checks apply."""
    assert strict_strtoul("x", str(ULONG_MAX + 1)) == 0
    assert strict_strtoul("x", f"{2 * (ULONG_MAX + 1) + 7}\n") == 7
    host = make_host()
    host.sysfs.write("pages_to_scan", str(ULONG_MAX + 1 + 5))
    assert host.sysfs.read_int("pages_to_scan") == 5
    host.sysfs.write("max_kernel_pages", str(ULONG_MAX + 1))
    assert host.sysfs.read_int("max_kernel_pages") == 0
    host.sysfs.write("run", 1)
    host.sysfs.write("run", str(ULONG_MAX + 1))  # wraps to 0: stops ksmd
    assert host.sysfs.read("run") == "0\n"
    with pytest.raises(SysfsError) as exc:
        host.sysfs.write("run", str(ULONG_MAX + 1 + 3))
    assert errno_of(exc) == errno.EINVAL


# -- run ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text", ["3", "4294967295", "4294967296", "18446744073709551615"])
def test_run_above_two_is_einval(text: str) -> None:
    host = make_host()
    host.sysfs.write("run", 1)
    with pytest.raises(SysfsError) as exc:
        host.sysfs.write("run", text)
    assert errno_of(exc) == errno.EINVAL
    assert host.sysfs.read("run") == "1\n"


def test_run_writes_and_ksmd_wakeups() -> None:
    host = make_host()
    ksm = host.ksm
    assert ksm.ksmd_wakeups == 0
    host.sysfs.write("run", "1\n")
    assert host.sysfs.read("run") == "1\n" and ksm.ksmd_wakeups == 1
    host.sysfs.write("run", 1)  # the current value: nothing changes, but it still wakes ksmd
    assert ksm.ksmd_wakeups == 2
    host.sysfs.write("run", 0)
    assert host.sysfs.read("run") == "0\n" and ksm.ksmd_wakeups == 2
    host.sysfs.write("run", 2)
    assert host.sysfs.read("run") == "2\n" and ksm.ksmd_wakeups == 2
    assert not ksm.ksmd_should_run()


def test_run2_only_unmerges_when_the_value_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    host = make_host()
    calls: list[int] = []
    real = host.ksm.unmerge_and_remove_all_rmap_items

    def counting() -> int:
        calls.append(1)
        return real()

    monkeypatch.setattr(host.ksm, "unmerge_and_remove_all_rmap_items", counting)
    host.sysfs.write("run", 2)
    host.sysfs.write("run", 2)
    assert len(calls) == 1
    host.sysfs.write("run", 0)
    host.sysfs.write("run", 1)
    assert len(calls) == 1
    host.sysfs.write("run", 2)
    assert len(calls) == 2


def test_run2_failure_resets_run_and_returns_the_error(monkeypatch: pytest.MonkeyPatch) -> None:
    host = make_host()
    host.sysfs.write("run", 1)
    monkeypatch.setattr(host.ksm, "unmerge_and_remove_all_rmap_items", lambda: -errno.ENOMEM)
    with pytest.raises(SysfsError) as exc:
        host.sysfs.write("run", 2)
    assert errno_of(exc) == errno.ENOMEM
    assert host.sysfs.read("run") == "0\n"


def test_run2_through_sysfs_unmerges_and_zeroes_full_scans() -> None:
    host = make_host()
    host.set_tunable("pages_to_scan", 1000)
    host.spawn("P")
    host.mmap("P", "r", 5)
    host.fill("P", "r", 1)
    assert host.scan(3)
    assert host.sysfs.read("full_scans") == "3\n"
    assert host.sysfs.read("pages_sharing") == "4\n"
    host.sysfs.write("run", "2\n")
    for name in ("full_scans", "pages_shared", "pages_sharing", "pages_unshared"):
        assert host.sysfs.read(name) == "0\n", name
    assert host.sysfs.read("pages_volatile") == "0\n"
    check_all(host.machine)


def test_host_set_tunable_goes_through_sysfs_and_refuses_run() -> None:
    host = make_host()
    with pytest.raises(HostError):
        host.set_tunable("run", 1)
    with pytest.raises(HostError):
        host.set_tunable("pages_shared", 1)
    with pytest.raises(SysfsError) as exc:
        host.set_tunable("pages_to_scan", UINT_MAX + 1)
    assert errno_of(exc) == errno.EINVAL
    host.set_tunable("sleep_millisecs", 0)
    assert host.sysfs.read("sleep_millisecs") == "0\n"
