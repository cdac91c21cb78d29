"""What lets the kernel be restored after anything: the lock and the state file.

Before it changes anything, a run takes an exclusive ``flock`` on ``real.lock`` (so two runs
never drive the one KSM at once) and writes ``real-state.json`` holding the tunables as found,
its own pid and start time, and every process it started (pid and start time, so that a reused pid
is never killed). A clean restore removes the file. If the runner dies without restoring (SIGKILL,
a crash), the next run, or ``ksmsim real --restore``, finds the file of a dead runner and restores
from it. The directory is ``/run/ksmsim`` unless ``$KSMSIM_REAL_STATE_DIR`` names another.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from ksmsim.real.errors import RealError
from ksmsim.real.procfs import ProcId
from ksmsim.real.sysfs import RUN_STOP, KsmControl

STATE_DIR_ENV: Final = "KSMSIM_REAL_STATE_DIR"
DEFAULT_STATE_DIR: Final = Path("/run/ksmsim")
LOCK_NAME: Final = "real.lock"
STATE_NAME: Final = "real-state.json"
STATE_VERSION: Final = 1
KILL_TIMEOUT_S: Final = 30.0


def state_dir() -> Path:
    """Return the directory of the lock and state files."""
    return Path(os.environ.get(STATE_DIR_ENV) or DEFAULT_STATE_DIR)


class RunLock:
    """An exclusive, non-blocking flock held for the whole of a run (or a restore)."""

    def __init__(self, directory: Path) -> None:
        """Use ``directory/real.lock``."""
        self.path = directory / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise RealError naming the pid that holds it."""
        try:
            self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise RealError(f"cannot open the lock file {self.path}: {exc.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RealError(f"another ksmsim real is running (pid {holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Release the lock (closing the file releases the flock)."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        """Take the lock."""
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        """Release the lock."""
        self.release()


@dataclass(slots=True)
class SavedState:
    """The contents of the state file."""

    runner: ProcId
    sysfs_root: str
    tunables: dict[str, str]
    children: list[ProcId] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        """Return the JSON form."""
        return {
            "version": STATE_VERSION,
            "runner": {"pid": self.runner.pid, "start": self.runner.start},
            "sysfs_root": self.sysfs_root,
            "tunables": self.tunables,
            "children": [{"pid": c.pid, "start": c.start} for c in self.children],
        }

    @classmethod
    def from_json(cls, doc: Any) -> SavedState:
        """Read the JSON form; ValueError if it is not one."""
        try:
            runner = ProcId(int(doc["runner"]["pid"]), int(doc["runner"]["start"]))
            tunables = {str(k): str(v) for k, v in dict(doc["tunables"]).items()}
            children = [ProcId(int(c["pid"]), int(c["start"])) for c in doc["children"]]
            return cls(runner, str(doc["sysfs_root"]), tunables, children)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a state file ({exc})") from None


class StateFile:
    """The state file of a run, rewritten atomically whenever it changes."""

    def __init__(self, directory: Path) -> None:
        """Use ``directory/real-state.json``."""
        self.path = directory / STATE_NAME

    def write(self, state: SavedState) -> None:
        """Write the state atomically (temporary file, rename).

        No fsync: the file only has to outlive the runner, not the machine (a reboot resets
        KSM anyway), and /run is often tmpfs.
        """
        self.path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}")
        with open(tmp, "w") as f:
            json.dump(state.to_json(), f, indent=1)
            f.write("\n")
        os.replace(tmp, self.path)

    def read(self) -> SavedState | None:
        """Return the saved state, None if there is none; RealError if it is unreadable."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise RealError(f"cannot read {self.path}: {exc.strerror}") from None
        try:
            return SavedState.from_json(json.loads(text))
        except ValueError as exc:
            raise RealError(
                f"{self.path}: {exc}; remove it after checking /sys/kernel/mm/ksm by hand"
            ) from None

    def remove(self) -> None:
        """Remove the state file."""
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def kill_processes(children: list[ProcId]) -> list[str]:
    """SIGKILL each process that is still that very process; wait until all are gone."""
    for ident in children:
        ident.kill()
    problems = []
    for ident in children:
        if not ident.wait_gone(KILL_TIMEOUT_S):
            problems.append(f"pid {ident.pid} did not exit")
    return problems


def restore_kernel(
    control: KsmControl, tunables: dict[str, str], children: list[ProcId]
) -> list[str]:
    """Put KSM back as it was found: stop ksmd, end the processes, reset, write the tunables.

    The order: run=0 (ksmd stops), kill the processes (their memory goes), run=2 then run=0
    (every leftover rmap_item and stale stable node goes, full_scans reads 0), the tunables that
    differ, and the original ``run`` last. Returns the problems (empty when all went well).
    """
    problems: list[str] = []
    try:
        control.write_retrying("run", RUN_STOP)
    except OSError as exc:
        problems.append(str(exc))
    problems += kill_processes(children)
    try:
        control.reset()
    except OSError as exc:
        problems.append(str(exc))
    problems += control.restore(tunables)
    return problems


def recover(control_for: Callable[[str], KsmControl], directory: Path) -> str | None:
    """Restore from a state file left by a runner that died; return what was done, or None.

    The caller holds the lock. A state file whose runner is alive cannot exist then (the lock
    would be held), but the runner's start time is checked all the same.
    """
    state_file = StateFile(directory)
    saved = state_file.read()
    if saved is None:
        return None
    if saved.runner.alive() and saved.runner.pid != os.getpid():
        raise RealError(
            f"{state_file.path} belongs to a live runner (pid {saved.runner.pid}) that does not "
            "hold the lock; not touching it"
        )
    control = control_for(saved.sysfs_root)
    killed = sum(1 for c in saved.children if c.alive())
    problems = restore_kernel(control, saved.tunables, saved.children)
    if problems:
        raise RealError(
            f"restoring from {state_file.path} failed: {'; '.join(problems)} "
            "(the state file is kept; try ksmsim real --restore again)"
        )
    state_file.remove()
    return (
        f"restored KSM from {state_file.path} left by runner pid {saved.runner.pid}, which died "
        f"(tunables written back, run={saved.tunables.get('run', '0')}, "
        f"{killed} leftover process{'es' if killed != 1 else ''} killed)"
    )
