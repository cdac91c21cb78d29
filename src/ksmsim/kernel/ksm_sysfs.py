"""/sys/kernel/mm/ksm: KSM's files, read and written by name with the kernel's checks.

The set of files is the profile's; at the keyhole commit it is ``run``, ``pages_to_scan``,
``sleep_millisecs``, ``max_kernel_pages`` and the five read-only counters. Values are parsed
as 2.6.33's strict_strtoul() parses them: decimal digits and at most one trailing newline.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable
from typing import Final

from ksmsim.kernel.ksm import KSM_RUN_MERGE, KSM_RUN_STOP, KSM_RUN_UNMERGE, Ksm

UINT_MAX: Final = 0xFFFFFFFF
ULONG_MAX: Final = 0xFFFFFFFFFFFFFFFF

_DECIMAL = re.compile(r"[0-9]+\n?")


class SysfsError(OSError):
    """A sysfs access the kernel would refuse, carrying its errno."""

    def __init__(self, err: int, name: str, detail: str) -> None:
        super().__init__(err, f"/sys/kernel/mm/ksm/{name}: {detail} ({errno.errorcode[err]})")
        self.name = name


def strict_strtoul(name: str, text: str) -> int:
    """Parse a sysfs write as strict_strtoul(text, 10) does, or raise EINVAL."""
    if not _DECIMAL.fullmatch(text):
        raise SysfsError(errno.EINVAL, name, f"invalid number {text!r}")
    value = int(text)
    if value > ULONG_MAX:
        raise SysfsError(errno.EINVAL, name, f"{text.strip()} does not fit an unsigned long")
    return value


class KsmSysfs:
    """The KSM sysfs directory of one machine."""

    def __init__(self, ksm: Ksm) -> None:
        self.ksm = ksm
        self._show: dict[str, Callable[[], int]] = {
            "full_scans": lambda: ksm.ksm_scan.seqnr,
            "pages_shared": lambda: ksm.ksm_pages_shared,
            "pages_sharing": lambda: ksm.ksm_pages_sharing,
            "pages_to_scan": lambda: ksm.ksm_thread_pages_to_scan,
            "pages_unshared": lambda: ksm.ksm_pages_unshared,
            "pages_volatile": lambda: ksm.pages_volatile,
            "run": lambda: ksm.ksm_run,
            "sleep_millisecs": lambda: ksm.ksm_thread_sleep_millisecs,
        }
        self._store: dict[str, Callable[[int], None]] = {
            "pages_to_scan": self._store_pages_to_scan,
            "run": self._store_run,
            "sleep_millisecs": self._store_sleep_millisecs,
        }
        if ksm.profile.has_max_kernel_pages:
            self._show["max_kernel_pages"] = lambda: ksm.ksm_max_kernel_pages
            self._store["max_kernel_pages"] = self._store_max_kernel_pages

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
        """Return a file's value as an integer."""
        return int(self.read(name))

    def write(self, name: str, text: str | int) -> None:
        """Write a file as ``echo text > file`` would, raising SysfsError when the kernel refuses."""
        if name not in self._show:
            raise SysfsError(errno.ENOENT, name, "no such file")
        store = self._store.get(name)
        if store is None:
            raise SysfsError(errno.EACCES, name, "read-only file")
        store(strict_strtoul(name, str(text)))

    def _store_sleep_millisecs(self, value: int) -> None:
        if value > UINT_MAX:
            raise SysfsError(errno.EINVAL, "sleep_millisecs", f"{value} exceeds UINT_MAX")
        self.ksm.ksm_thread_sleep_millisecs = value

    def _store_pages_to_scan(self, value: int) -> None:
        if value > UINT_MAX:
            raise SysfsError(errno.EINVAL, "pages_to_scan", f"{value} exceeds UINT_MAX")
        self.ksm.ksm_thread_pages_to_scan = value

    def _store_max_kernel_pages(self, value: int) -> None:
        self.ksm.ksm_max_kernel_pages = value

    def _store_run(self, value: int) -> None:
        """run_store(): 0 stops ksmd, 1 runs it, 2 stops it and unmerges everything."""
        ksm = self.ksm
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
