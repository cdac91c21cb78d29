"""The runner's side of the simulated processes: start, command, fork, end and kill them.

Each simulated process is a ``python -m ksmsim.real.child`` server (see ``child``) connected to
the runner over an abstract Unix socket. The runner starts the processes of a scenario itself
and asks a live process to fork the others. It makes itself a child subreaper while it runs, so
that a forked process whose parent exited is adopted by the runner and can be reaped.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from ksmsim.real.child import ENVIRONMENT
from ksmsim.real.errors import ChildFailed, RealError
from ksmsim.real.procfs import ProcId, start_time
from ksmsim.real.protocol import ABSTRACT_PREFIX, Channel, to_sockaddr

CONNECT_TIMEOUT_S: Final = 30.0
"""How long a new process may take to connect (interpreter start-up)."""

EXIT_TIMEOUT_S: Final = 30.0
"""How long a process may take to disappear after exit or SIGKILL."""

PR_SET_CHILD_SUBREAPER: Final = 36
PR_GET_CHILD_SUBREAPER: Final = 37


def _prctl() -> Any:
    """Return libc's prctl."""
    libc = ctypes.CDLL(None, use_errno=True)
    return libc.prctl


def get_subreaper() -> bool:
    """Return whether the calling process is a child subreaper."""
    flag = ctypes.c_int(0)
    _prctl()(PR_GET_CHILD_SUBREAPER, ctypes.byref(flag), 0, 0, 0)
    return bool(flag.value)


def set_subreaper(on: bool) -> None:
    """Make the calling process a child subreaper (or stop being one)."""
    _prctl()(PR_SET_CHILD_SUBREAPER, int(on), 0, 0, 0)


@dataclass(slots=True)
class Child:
    """A live simulated process."""

    name: str
    ident: ProcId
    chan: Channel
    popen: subprocess.Popen[bytes] | None = None
    """Set for processes the runner started itself (its direct children)."""

    @property
    def pid(self) -> int:
        """Return the process id."""
        return self.ident.pid

    def request(self, message: dict[str, Any]) -> dict[str, Any]:
        """Send one command and return the reply; ChildFailed if refused, RealError if dead."""
        try:
            self.chan.send(message)
            reply = self.chan.recv()
        except (OSError, ValueError):
            reply = None
        if reply is None:
            raise RealError(f"process {self.name!r} (pid {self.pid}) died unexpectedly")
        if not reply.get("ok"):
            raise ChildFailed(str(reply.get("error", "failed")))
        return reply

    def poll(self) -> None:
        """Reap the process if it has ended (direct children through Popen)."""
        if self.popen is not None:
            self.popen.poll()
        else:
            self.ident.reap()


@dataclass(slots=True)
class ChildPool:
    """The simulated processes of one run, and the socket they connect to."""

    on_change: Callable[[list[ProcId]], None] = lambda ids: None
    """Called with every pid the run may have to kill, whenever that set changes."""
    live: dict[str, Child] = field(default_factory=dict)
    address: str = ""
    _listener: socket.socket | None = None
    _known: dict[int, ProcId] = field(default_factory=dict)

    def open(self) -> None:
        """Create the listening socket (an abstract address: nothing to remove afterwards)."""
        self.address = f"{ABSTRACT_PREFIX}ksmsim-real.{os.getpid()}.{secrets.token_hex(6)}"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(to_sockaddr(self.address))
        listener.listen(64)
        self._listener = listener

    def known(self) -> list[ProcId]:
        """Return every process this run started that may still be alive."""
        return list(self._known.values())

    def _remember(self, ident: ProcId) -> None:
        """Add a process to the ones to kill and tell ``on_change``."""
        self._known[ident.pid] = ident
        self.on_change(self.known())

    def _forget(self, ident: ProcId) -> None:
        """Drop a process that is gone and tell ``on_change``."""
        self._known.pop(ident.pid, None)
        self.on_change(self.known())

    def _accept(self, name: str, ident: ProcId, exited: Callable[[], int | None]) -> Channel:
        """Accept the connection of process ``name`` and check its hello (pid and peer pid).

        ``exited`` returns the process's exit status once it has ended without connecting, so
        that a process that cannot start is reported at once rather than after the timeout.
        """
        assert self._listener is not None
        pid = ident.pid
        deadline = time.monotonic() + CONNECT_TIMEOUT_S
        self._listener.settimeout(0.05)
        while True:
            try:
                sock, _ = self._listener.accept()
                break
            except TimeoutError:
                status = exited()
                if status is not None:
                    raise RealError(
                        f"process {name!r} (pid {pid}) ended before connecting (status {status})"
                    ) from None
                if time.monotonic() >= deadline:
                    raise RealError(f"process {name!r} (pid {pid}) did not connect") from None
        sock.settimeout(None)
        chan = Channel(sock)
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12)
        peer_pid = int.from_bytes(creds[0:4], sys.byteorder)
        try:
            hello = chan.recv()
        except (OSError, ValueError):
            hello = None
        if (
            hello is None
            or hello.get("hello") != name
            or hello.get("pid") != pid
            or peer_pid != pid
        ):
            chan.close()
            raise RealError(f"process {name!r}: unexpected connection (hello {hello!r})")
        return chan

    def spawn(self, name: str) -> Child:
        """Start a new simulated process ``name`` and wait until it has connected."""
        popen = subprocess.Popen(
            [sys.executable, "-m", "ksmsim.real.child", self.address, name],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
            env={**os.environ, **ENVIRONMENT},
        )
        start = start_time(popen.pid)
        ident = ProcId(popen.pid, start if start is not None else -1)
        self._remember(ident)
        try:
            chan = self._accept(name, ident, popen.poll)
        except RealError:
            self._kill_one(ident, popen)
            raise
        child = Child(name, ident, chan, popen)
        self.live[name] = child
        return child

    def fork(self, parent: Child, name: str) -> Child:
        """Make ``parent`` fork a child called ``name`` and wait until it has connected."""
        reply = parent.request({"op": "fork", "child": name})
        pid = int(reply["pid"])
        start = start_time(pid)
        ident = ProcId(pid, start if start is not None else -1)
        self._remember(ident)

        def exited() -> int | None:
            """Return -1 once the forked process is gone (it is not our child to wait for)."""
            ident.reap()
            return None if ident.alive() else -1

        try:
            chan = self._accept(name, ident, exited)
        except RealError:
            self._kill_one(ident, None)
            raise
        child = Child(name, ident, chan)
        self.live[name] = child
        return child

    def exit(self, name: str) -> None:
        """Make a process exit and wait until its address space is gone."""
        child = self.live.pop(name)
        with contextlib.suppress(RealError, ChildFailed):
            child.request({"op": "exit"})
        child.chan.close()
        if not child.ident.wait_gone(EXIT_TIMEOUT_S, child.poll):
            self._kill_one(child.ident, child.popen)
        self._forget(child.ident)

    def _kill_one(self, ident: ProcId, popen: subprocess.Popen[bytes] | None) -> bool:
        """SIGKILL a process (if it is still this very process) and wait until it is gone."""
        ident.kill(signal.SIGKILL)
        ok = ident.wait_gone(EXIT_TIMEOUT_S, popen.poll if popen is not None else None)
        if ok:
            self._forget(ident)
        return ok

    def kill_all(self) -> list[str]:
        """End every process of the run (SIGKILL, checked by start time); return failures."""
        problems = []
        popens = {c.pid: c.popen for c in self.live.values()}
        for child in self.live.values():
            with contextlib.suppress(OSError):
                child.chan.close()
        self.live.clear()
        for ident in self.known():
            if not self._kill_one(ident, popens.get(ident.pid)):
                problems.append(f"pid {ident.pid} did not exit")
        return problems

    def close(self) -> None:
        """Close the listening socket."""
        if self._listener is not None:
            self._listener.close()
            self._listener = None
