"""``python -m ksmsim``: the same as the ``ksmsim`` command."""

from ksmsim.cli import entry

entry()
