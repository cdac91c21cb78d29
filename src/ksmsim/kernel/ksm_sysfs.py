"""/sys/kernel/mm/ksm: KSM's files, read and written by name with the kernel's checks.

Which files exist is the profile's: at the keyhole commit ``run``, ``pages_to_scan``,
``sleep_millisecs``, ``max_kernel_pages`` and five counters; 6.x adds the chain, zero-page,
smart-scan, statistics and advisor files. Values are parsed as the kernel parses them:
2.6.33's strict_strtoul(), or 6.x's kstrtouint()/kstrtoint()/kstrtobool() (lib/kstrtox.c).
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from typing import Final

from ksmsim.kernel.ksm import KSM_RUN_MERGE, KSM_RUN_STOP, KSM_RUN_UNMERGE, Ksm

UINT_MAX: Final = 0xFFFFFFFF
INT_MAX: Final = 0x7FFFFFFF
ULONG_MAX: Final = 0xFFFFFFFFFFFFFFFF

_DECIMAL = re.compile(r"[0-9]+\n?")
_DIGITS = re.compile(r"[0-9]+")


class SysfsError(OSError):
    """A sysfs access the kernel would refuse, carrying its errno."""

    def __init__(self, err: int, name: str, detail: str) -> None:
        super().__init__(err, f"/sys/kernel/mm/ksm/{name}: {detail} ({errno.errorcode[err]})")
        self.name = name


def strict_strtoul(name: str, text: str) -> int:
    """Parse a sysfs write as 2.6.33's strict_strtoul(text, 10) does, or raise EINVAL."""
    if not _DECIMAL.fullmatch(text):
        raise SysfsError(errno.EINVAL, name, f"invalid number {text!r}")
    # simple_strtoul() has no overflow check: the value wraps modulo 2**64.
    return int(text) & ULONG_MAX


def _kstrtoull(name: str, text: str) -> int:
    """lib/kstrtox.c kstrtoull(s, 10): optional '+', digits, at most one trailing newline."""
    s = text[1:] if text.startswith("+") else text
    m = _DIGITS.match(s)
    if m is None:
        raise SysfsError(errno.EINVAL, name, f"invalid number {text!r}")
    rest = s[m.end() :]
    if rest not in ("", "\n"):
        raise SysfsError(errno.EINVAL, name, f"invalid number {text!r}")
    value = int(m.group())
    if value > ULONG_MAX:
        raise SysfsError(errno.ERANGE, name, f"{text.strip()} is out of range")
    return value


def kstrtouint(name: str, text: str) -> int:
    """Parse as kstrtouint(text, 10): ERANGE beyond UINT_MAX."""
    value = _kstrtoull(name, text)
    if value > UINT_MAX:
        raise SysfsError(errno.ERANGE, name, f"{text.strip()} is out of range")
    return value


def kstrtoul(name: str, text: str) -> int:
    """Parse as kstrtoul(text, 10) on 64-bit."""
    return _kstrtoull(name, text)


def kstrtoint(name: str, text: str) -> int:
    """Parse as kstrtoint(text, 10): a sign is allowed, ERANGE beyond int."""
    if text.startswith("-"):
        value = -_kstrtoull(name, text[1:])
        if value < -INT_MAX - 1:
            raise SysfsError(errno.ERANGE, name, f"{text.strip()} is out of range")
        return value
    value = _kstrtoull(name, text)
    if value > INT_MAX:
        raise SysfsError(errno.ERANGE, name, f"{text.strip()} is out of range")
    return value


def kstrtobool(name: str, text: str) -> bool:
    """Parse as kstrtobool(): y/Y/1/on mean true, n/N/0/off false; only the first letters count."""
    first = text[:1]
    if first in ("y", "Y", "1"):
        return True
    if first in ("n", "N", "0"):
        return False
    if first in ("o", "O"):
        second = text[1:2]
        if second in ("n", "N"):
            return True
        if second in ("f", "F"):
            return False
    raise SysfsError(errno.EINVAL, name, f"invalid boolean {text!r}")


class KsmSysfs:
    """The KSM sysfs directory of one machine."""

    def __init__(self, ksm: Ksm) -> None:
        self.ksm = ksm
        p = ksm.profile
        self._show: dict[str, Callable[[], int | str]] = {
            "full_scans": lambda: ksm.ksm_scan.seqnr,
            "pages_shared": lambda: ksm.ksm_pages_shared,
            "pages_sharing": lambda: ksm.ksm_pages_sharing,
            "pages_to_scan": lambda: ksm.ksm_thread_pages_to_scan,
            "pages_unshared": lambda: ksm.ksm_pages_unshared,
            "pages_volatile": lambda: ksm.pages_volatile,
            "run": lambda: ksm.ksm_run,
            "sleep_millisecs": lambda: ksm.ksm_thread_sleep_millisecs,
        }
        self._store: dict[str, Callable[[str], None]] = {
            "pages_to_scan": self._store_pages_to_scan,
            "run": self._store_run,
            "sleep_millisecs": self._store_sleep_millisecs,
        }
        if p.has_max_kernel_pages:
            self._show["max_kernel_pages"] = lambda: ksm.ksm_max_kernel_pages
            self._store["max_kernel_pages"] = self._store_max_kernel_pages
        if p.scan_statistics:
            self._show["pages_scanned"] = lambda: ksm.ksm_pages_scanned
            self._show["general_profit"] = lambda: ksm.general_profit
        if p.smart_scan:
            self._show["pages_skipped"] = lambda: ksm.ksm_pages_skipped
            self._show["smart_scan"] = lambda: int(ksm.ksm_smart_scan)
            self._store["smart_scan"] = self._store_smart_scan
        if p.zero_pages:
            self._show["ksm_zero_pages"] = lambda: ksm.ksm_zero_pages
            self._show["use_zero_pages"] = lambda: int(ksm.ksm_use_zero_pages)
            self._store["use_zero_pages"] = self._store_use_zero_pages
        if p.stable_node_chains:
            self._show["max_page_sharing"] = lambda: ksm.ksm_max_page_sharing
            self._show["stable_node_chains"] = lambda: ksm.ksm_stable_node_chains
            self._show["stable_node_dups"] = lambda: ksm.ksm_stable_node_dups
            self._show["stable_node_chains_prune_millisecs"] = lambda: (
                ksm.ksm_stable_node_chains_prune_millisecs
            )
            self._store["max_page_sharing"] = self._store_max_page_sharing
            self._store["stable_node_chains_prune_millisecs"] = self._store_prune_millisecs
        if p.merge_across_nodes:
            self._show["merge_across_nodes"] = lambda: ksm.ksm_merge_across_nodes
            self._store["merge_across_nodes"] = self._store_merge_across_nodes
        if p.advisor:
            adv = ksm.advisor
            self._show["advisor_mode"] = lambda: (
                "none [scan-time]" if adv.mode == "scan-time" else "[none] scan-time"
            )
            self._show["advisor_max_cpu"] = lambda: adv.max_cpu
            self._show["advisor_min_pages_to_scan"] = lambda: adv.min_pages_to_scan
            self._show["advisor_max_pages_to_scan"] = lambda: adv.max_pages_to_scan
            self._show["advisor_target_scan_time"] = lambda: adv.target_scan_time
            self._store["advisor_mode"] = self._store_advisor_mode
            self._store["advisor_max_cpu"] = self._store_advisor_max_cpu
            self._store["advisor_min_pages_to_scan"] = self._store_advisor_min
            self._store["advisor_max_pages_to_scan"] = self._store_advisor_max
            self._store["advisor_target_scan_time"] = self._store_advisor_target

    # -- access ----------------------------------------------------------------------------------
    def files(self) -> list[str]:
        """Return the names of the files in the directory, sorted."""
        return sorted(self._show)

    def writable(self) -> list[str]:
        """Return the names of the writable files, sorted."""
        return sorted(self._store)

    def read(self, name: str) -> str:
        """Return a file's contents as the kernel prints them (with the newline)."""
        show = self._show.get(name)
        if show is None:
            raise SysfsError(errno.ENOENT, name, "no such file")
        return f"{show()}\n"

    def read_int(self, name: str) -> int:
        """Return a numeric file's value as an integer."""
        return int(self.read(name))

    def write(self, name: str, text: str | int) -> None:
        """Write a file as ``echo text > file`` would, raising SysfsError when the kernel refuses."""
        if name not in self._show:
            raise SysfsError(errno.ENOENT, name, "no such file")
        store = self._store.get(name)
        if store is None:
            raise SysfsError(errno.EACCES, name, "read-only file")
        store(str(text))

    # -- parsing -------------------------------------------------------------------------------
    def _uint(self, name: str, text: str) -> int:
        """Parse an unsigned tunable, mapping every parse error to EINVAL as the stores do."""
        if not self.ksm.profile.sysfs_kstrtox:
            value = strict_strtoul(name, text)
            if value > UINT_MAX:
                raise SysfsError(errno.EINVAL, name, f"{value} exceeds UINT_MAX")
            return value
        try:
            return kstrtouint(name, text)
        except SysfsError as exc:
            raise SysfsError(errno.EINVAL, name, str(exc).split(": ", 1)[-1]) from None

    def _bool(self, name: str, text: str) -> bool:
        return kstrtobool(name, text)

    # -- stores ---------------------------------------------------------------------------------
    def _store_sleep_millisecs(self, text: str) -> None:
        self.ksm.ksm_thread_sleep_millisecs = self._uint("sleep_millisecs", text)

    def _store_pages_to_scan(self, text: str) -> None:
        if self.ksm.profile.advisor and self.ksm.advisor.mode != "none":
            raise SysfsError(errno.EINVAL, "pages_to_scan", "the advisor sets pages_to_scan")
        self.ksm.ksm_thread_pages_to_scan = self._uint("pages_to_scan", text)

    def _store_max_kernel_pages(self, text: str) -> None:
        self.ksm.ksm_max_kernel_pages = strict_strtoul("max_kernel_pages", text)

    def _store_smart_scan(self, text: str) -> None:
        self.ksm.ksm_smart_scan = self._bool("smart_scan", text)

    def _store_use_zero_pages(self, text: str) -> None:
        self.ksm.ksm_use_zero_pages = self._bool("use_zero_pages", text)

    def _store_prune_millisecs(self, text: str) -> None:
        self.ksm.ksm_stable_node_chains_prune_millisecs = self._uint(
            "stable_node_chains_prune_millisecs", text
        )

    def _needs_empty_stable_tree(self, name: str) -> None:
        """Refuse with EBUSY unless no page is shared and every stable node can go."""
        ksm = self.ksm
        if ksm.ksm_pages_shared or ksm.remove_all_stable_nodes():
            raise SysfsError(errno.EBUSY, name, "KSM pages are still shared")

    def _store_max_page_sharing(self, text: str) -> None:
        knob = kstrtoint("max_page_sharing", text)
        if knob < 2:
            raise SysfsError(errno.EINVAL, "max_page_sharing", f"{knob} is below 2")
        if knob == self.ksm.ksm_max_page_sharing:
            return
        self._needs_empty_stable_tree("max_page_sharing")
        self.ksm.ksm_max_page_sharing = knob

    def _store_merge_across_nodes(self, text: str) -> None:
        knob = kstrtoul("merge_across_nodes", text)
        if knob > 1:
            raise SysfsError(errno.EINVAL, "merge_across_nodes", f"{knob} is not 0 or 1")
        if knob != self.ksm.ksm_merge_across_nodes:
            self._needs_empty_stable_tree("merge_across_nodes")
            self.ksm.ksm_merge_across_nodes = knob

    def _store_run(self, text: str) -> None:
        """run_store(): 0 stops ksmd, 1 runs it, 2 stops it and unmerges everything."""
        ksm = self.ksm
        value = self._uint("run", text)
        if value > KSM_RUN_UNMERGE:
            raise SysfsError(errno.EINVAL, "run", f"{value} is not 0, 1 or 2")
        if ksm.ksm_run != value:
            ksm.ksm_run = value
            if value & KSM_RUN_UNMERGE:
                err = ksm.unmerge_and_remove_all_rmap_items()
                if err:
                    ksm.ksm_run = KSM_RUN_STOP
                    raise SysfsError(-err, "run", "unmerging failed")
        if value & KSM_RUN_MERGE:
            ksm.ksmd_wakeups += 1

    def _store_advisor_mode(self, text: str) -> None:
        mode = text[:-1] if text.endswith("\n") else text
        if mode not in ("none", "scan-time"):
            raise SysfsError(errno.EINVAL, "advisor_mode", f"unknown mode {mode!r}")
        self.ksm.advisor.set_mode(mode)

    def _store_advisor_max_cpu(self, text: str) -> None:
        self.ksm.advisor.max_cpu = self._ulong_einval("advisor_max_cpu", text)

    def _store_advisor_min(self, text: str) -> None:
        self.ksm.advisor.min_pages_to_scan = self._ulong_einval("advisor_min_pages_to_scan", text)

    def _store_advisor_max(self, text: str) -> None:
        self.ksm.advisor.max_pages_to_scan = self._ulong_einval("advisor_max_pages_to_scan", text)

    def _store_advisor_target(self, text: str) -> None:
        value = self._ulong_einval("advisor_target_scan_time", text)
        if value < 1:
            raise SysfsError(errno.EINVAL, "advisor_target_scan_time", "must be at least 1")
        self.ksm.advisor.target_scan_time = value

    @staticmethod
    def _ulong_einval(name: str, text: str) -> int:
        try:
            return kstrtoul(name, text)
        except SysfsError as exc:
            raise SysfsError(errno.EINVAL, name, str(exc).split(": ", 1)[-1]) from None
