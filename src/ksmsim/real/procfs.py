"""Reading /proc: process identity and liveness, ksm_stat, meminfo, vmstat, ksmd's CPU time."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PROC: Final = Path("/proc")
PAGE_KB: Final = 4
"""KiB per page (x86-64 base pages)."""

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")
"""Clock ticks per second, the unit of utime and stime in /proc/PID/stat."""


def stat_fields(pid: int, proc: Path = PROC) -> list[str] | None:
    """Return the fields of /proc/PID/stat after the command name (field 3 first), or None."""
    try:
        text = (proc / str(pid) / "stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    except OSError:
        return None
    close = text.rfind(")")
    if close < 0:
        return None
    return text[close + 1 :].split()


def start_time(pid: int, proc: Path = PROC) -> int | None:
    """Return a process's start time (field 22 of /proc/PID/stat, in ticks), or None if gone."""
    fields = stat_fields(pid, proc)
    if fields is None or len(fields) < 20:
        return None
    return int(fields[19])


def proc_state(pid: int, proc: Path = PROC) -> str | None:
    """Return a process's state letter (R, S, D, Z, ...), or None when it does not exist."""
    fields = stat_fields(pid, proc)
    return fields[0] if fields else None


@dataclass(frozen=True, slots=True)
class ProcId:
    """A process identified by its pid and its start time, so that a reused pid is not mistaken."""

    pid: int
    start: int

    def alive(self, proc: Path = PROC) -> bool:
        """Return True while this very process exists and is not a zombie."""
        fields = stat_fields(self.pid, proc)
        if fields is None or len(fields) < 20:
            return False
        return int(fields[19]) == self.start and fields[0] not in ("Z", "X")

    def kill(self, sig: int = signal.SIGKILL) -> bool:
        """Send ``sig`` if this very process is still alive; return True if it was sent."""
        if not self.alive():
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)
            return True
        return False

    def reap(self) -> None:
        """Reap the process if it is a zombie child of ours (our own or adopted as subreaper)."""
        with contextlib.suppress(ChildProcessError, OSError):
            os.waitpid(self.pid, os.WNOHANG)

    def wait_gone(self, timeout_s: float, poll: Callable[[], object] | None = None) -> bool:
        """Wait until the process no longer exists or is a zombie; return False on timeout.

        A dying process's mm is torn down in do_exit before it becomes a zombie, so either
        state means its memory is gone. ``poll`` (e.g. ``Popen.poll``) reaps a direct child.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            if poll is not None:
                poll()
            else:
                self.reap()
            if not self.alive():
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.001)


def own_id() -> ProcId:
    """Return the ProcId of the calling process."""
    pid = os.getpid()
    start = start_time(pid)
    assert start is not None
    return ProcId(pid, start)


def parse_ksm_stat(text: str) -> dict[str, int | str]:
    """Parse /proc/PID/ksm_stat: integers, and ``yes``/``no`` kept as strings."""
    out: dict[str, int | str] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        key, value = parts[0].rstrip(":"), parts[1]
        try:
            out[key] = int(value)
        except ValueError:
            out[key] = value
    return out


def read_ksm_stat(pid: int, proc: Path = PROC) -> dict[str, int | str] | None:
    """Return /proc/PID/ksm_stat parsed, or None if the process or the file does not exist."""
    try:
        return parse_ksm_stat((proc / str(pid) / "ksm_stat").read_text())
    except OSError:
        return None


def read_meminfo(proc: Path = PROC) -> dict[str, int]:
    """Return /proc/meminfo as {field: kB} (HugePages_* counts as given)."""
    out: dict[str, int] = {}
    for line in (proc / "meminfo").read_text().splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if parts:
            with contextlib.suppress(ValueError):
                out[name.strip()] = int(parts[0])
    return out


def read_vmstat(proc: Path = PROC) -> dict[str, int]:
    """Return /proc/vmstat as {name: value}."""
    out: dict[str, int] = {}
    for line in (proc / "vmstat").read_text().splitlines():
        parts = line.split()
        if len(parts) == 2:
            with contextlib.suppress(ValueError):
                out[parts[0]] = int(parts[1])
    return out


def find_kthread(comm: str, proc: Path = PROC) -> int | None:
    """Return the pid of the (first) process whose /proc/PID/comm is ``comm``, or None."""
    try:
        entries = sorted(int(e.name) for e in proc.iterdir() if e.name.isdigit())
    except OSError:
        return None
    for pid in entries:
        try:
            if (proc / str(pid) / "comm").read_text().strip() == comm:
                return pid
        except OSError:
            continue
    return None


def cpu_seconds(pid: int, proc: Path = PROC) -> float | None:
    """Return utime + stime of a process in seconds (tick resolution), or None if gone."""
    fields = stat_fields(pid, proc)
    if fields is None or len(fields) < 13:
        return None
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def runtime_seconds(pid: int, proc: Path = PROC) -> float | None:
    """Return a process's scheduler runtime (/proc/PID/schedstat, ns precision), or None."""
    try:
        text = (proc / str(pid) / "schedstat").read_text().split()
    except OSError:
        return None
    return int(text[0]) / 1e9 if text else None
