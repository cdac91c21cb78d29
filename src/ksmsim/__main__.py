"""``python -m ksmsim``: the same as the ``ksmsim`` command."""

from ksmsim.cli import main

raise SystemExit(main())
