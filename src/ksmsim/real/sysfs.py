"""Control of the running kernel's KSM through its sysfs directory (/sys/kernel/mm/ksm).

``KsmControl`` takes the directory as a constructor parameter, so tests can point it at a fake
directory. Tunables are the files the owner may write (``run`` and ``advisor_*`` included, since
they must be saved and restored too); counters are the read-only files.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final

KSM_SYSFS: Final = Path("/sys/kernel/mm/ksm")
"""Where the running kernel exposes KSM."""

RUN_STOP: Final = 0
RUN_MERGE: Final = 1
RUN_UNMERGE: Final = 2

RESET_COUNTERS: Final = ("pages_shared", "pages_sharing", "ksm_zero_pages")
"""Counters that must read 0 after run=2, run=0 before a scenario may start."""


def normalize(value: str) -> str:
    """Return a sysfs value as it must be written back: ``[none] scan-time`` -> ``none``."""
    value = value.strip()
    if "[" in value and "]" in value:
        return value[value.index("[") + 1 : value.index("]")]
    return value


class KsmWriteError(OSError):
    """A write to a KSM sysfs file that the kernel refused; ``str()`` is one line."""

    def __init__(self, err: int, path: Path, value: str) -> None:
        """Build the message ``[Errno N] PATH: writing VALUE: strerror (ENAME)``."""
        name = errno.errorcode.get(err, str(err))
        super().__init__(err, f"{path}: writing {value}: {os.strerror(err)} ({name})")
        self.path = path
        self.value = value

    def __str__(self) -> str:
        """Return ``[Errno N] message`` as the model's SysfsError does."""
        return f"[Errno {self.errno}] {self.strerror}"


class KsmControl:
    """Reads and writes the KSM sysfs files of one kernel (or of a fake directory)."""

    def __init__(self, root: str | os.PathLike[str] = KSM_SYSFS) -> None:
        """Use the KSM sysfs directory ``root``."""
        self.root = Path(root)

    def __repr__(self) -> str:
        """Show the directory."""
        return f"KsmControl({str(self.root)!r})"

    def exists(self) -> bool:
        """Return True when the directory exists (the kernel has KSM)."""
        return self.root.is_dir()

    def files(self) -> list[str]:
        """Return the names of the files in the directory, sorted."""
        return sorted(p.name for p in self.root.iterdir() if p.is_file())

    def writable(self) -> list[str]:
        """Return the files the owner may write (tunables, ``run`` and ``advisor_*``), sorted."""
        out = []
        for name in self.files():
            if os.stat(self.root / name).st_mode & stat.S_IWUSR:
                out.append(name)
        return out

    def counters_present(self) -> list[str]:
        """Return the read-only files (the counters), sorted."""
        writable = set(self.writable())
        return [name for name in self.files() if name not in writable]

    def has(self, name: str) -> bool:
        """Return True when the file ``name`` exists."""
        return (self.root / name).is_file()

    def read(self, name: str) -> str:
        """Return a file's contents, stripped."""
        return (self.root / name).read_text().strip()

    def read_int(self, name: str) -> int:
        """Return a file's value as an integer."""
        return int(self.read(name))

    def write(self, name: str, value: int | str) -> None:
        """Write ``value`` to a file; raise KsmWriteError with the kernel's errno if refused."""
        path = self.root / name
        text = str(value)
        try:
            # O_TRUNC as the shell's ">" does: harmless on sysfs, needed for a fake directory.
            fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
        except OSError as exc:
            raise KsmWriteError(exc.errno or errno.EIO, path, text) from None
        try:
            os.write(fd, text.encode())
        except OSError as exc:
            raise KsmWriteError(exc.errno or errno.EIO, path, text) from None
        finally:
            os.close(fd)

    def advisor_mode(self) -> str | None:
        """Return the selected advisor (``none``, ``scan-time``), or None if the kernel has none."""
        if not self.has("advisor_mode"):
            return None
        return normalize(self.read("advisor_mode"))

    def tunable_values(self) -> dict[str, str]:
        """Return every writable file's value, normalised for writing back."""
        return {name: normalize(self.read(name)) for name in self.writable()}

    def write_retrying(self, name: str, value: int | str, *, tries: int = 5) -> None:
        """Write a file, retrying when the kernel says EINTR, EAGAIN or EBUSY (run=2 may)."""
        for attempt in range(tries):
            try:
                self.write(name, value)
                return
            except KsmWriteError as exc:
                if exc.errno not in (errno.EINTR, errno.EAGAIN, errno.EBUSY):
                    raise
                if attempt == tries - 1:
                    raise
                time.sleep(0.05)

    def reset(self) -> None:
        """Unmerge everything and forget every rmap_item: write run=2, then run=0."""
        self.write_retrying("run", RUN_UNMERGE)
        self.write_retrying("run", RUN_STOP)

    def restore(self, saved: Mapping[str, str]) -> list[str]:
        """Write back saved tunables that differ now, ``run`` last; return what failed.

        The caller stops ksmd (run=0) and resets first, so that no page is shared and the
        EBUSY tunables (max_page_sharing, merge_across_nodes) can be written.
        """
        problems: list[str] = []
        for name, value in saved.items():
            if name == "run" or not self.has(name):
                continue
            try:
                if normalize(self.read(name)) != value:
                    self.write_retrying(name, value)
            except OSError as exc:
                problems.append(str(exc))
        run = saved.get("run", str(RUN_STOP))
        try:
            if normalize(self.read("run")) != run:
                self.write_retrying("run", run)
        except OSError as exc:
            problems.append(str(exc))
        return problems
