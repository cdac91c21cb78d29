"""Exceptions of the real-kernel runner."""

from __future__ import annotations

import signal
from typing import Any


class RealError(Exception):
    """A problem that stops ``ksmsim real`` with a one-line message and exit status 2.

    ``partial`` holds the result document of what ran before the error, when anything did.
    """

    def __init__(self, message: str, partial: dict[str, Any] | None = None) -> None:
        """Keep the message on one line and remember the partial result."""
        super().__init__(message.replace("\r", "\\r").replace("\n", "\\n"))
        self.partial = partial


class ChildFailed(Exception):
    """A simulated process refused or failed a command; the message is the child's one line."""


class Interrupted(BaseException):
    """The runner received SIGINT, SIGTERM or SIGHUP; raised so that cleanup runs.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` swallows it.
    """

    def __init__(self, signum: int) -> None:
        """Remember which signal arrived."""
        self.signum = signum
        super().__init__(f"interrupted by {signal.Signals(signum).name}")

    @property
    def exit_status(self) -> int:
        """Return the conventional exit status for death by this signal (128 + signum)."""
        return 128 + self.signum
