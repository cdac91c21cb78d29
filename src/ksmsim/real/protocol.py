"""The runner <-> simulated process protocol: JSON objects, one per line, over a Unix socket.

The runner listens on an abstract Unix socket; a child connects and sends
``{"hello": NAME, "pid": PID}``. Then the runner sends one command at a time, ``{"op": ...}``,
and the child answers ``{"ok": true, ...}`` or ``{"ok": false, "error": "one line"}``.
"""

from __future__ import annotations

import json
import socket
from typing import Any, BinaryIO, Final

ABSTRACT_PREFIX: Final = "@"
"""How an abstract socket address is written on a command line (``@name`` for ``\\0name``)."""


def to_sockaddr(address: str) -> str:
    """Return the address to bind or connect: ``@name`` becomes the abstract ``\\0name``."""
    if address.startswith(ABSTRACT_PREFIX):
        return "\0" + address[len(ABSTRACT_PREFIX) :]
    return address


class Channel:
    """One end of a connection: send and receive JSON objects, one per line."""

    def __init__(self, sock: socket.socket) -> None:
        """Wrap a connected stream socket."""
        self.sock = sock
        self._reader: BinaryIO = sock.makefile("rb")

    def send(self, message: dict[str, Any]) -> None:
        """Send one message."""
        self.sock.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def recv(self) -> dict[str, Any] | None:
        """Receive one message; None at end of file (the other end closed or died)."""
        try:
            line = self._reader.readline()
        except ConnectionResetError:
            return None
        if not line:
            return None
        message = json.loads(line)
        if not isinstance(message, dict):
            raise ValueError(f"expected a JSON object, got {line[:80]!r}")
        return message

    def close(self) -> None:
        """Close this end (the fd only: a forked copy of the socket stays connected)."""
        try:
            self._reader.close()
        finally:
            self.sock.close()


def connect(address: str) -> Channel:
    """Connect to the runner's socket and return the channel."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(to_sockaddr(address))
    except OSError:
        sock.close()
        raise
    return Channel(sock)
