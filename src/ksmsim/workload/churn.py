"""Background writers (the scenario format's ``churn``) interleaved with ksmd on the simulated clock.

A ``churn`` action starts a writer on a process's region: while ksmd runs (the ``run`` action),
the writer rewrites whole pages of the region at ``writes_per_s`` pages per simulated second. Its
n-th write (n = 0, 1, 2, ... counted over the writer's life) goes to page ``n mod pages`` of the
region (a sequential sweep) and stores the 4096 bytes of ``pattern`` at index ``n`` with the salt
``"churn"``: with ``unique`` every write brings new contents, with ``repeat:K`` the writer cycles
through K contents shared with every other ``repeat:K`` churn writer, and a byte pattern rewrites
the same bytes (still a copy-on-write break on a merged page). Unmapped pages are skipped, as
``fill`` skips them. A later ``churn`` on the same process and region replaces the writer;
``writes_per_s = 0`` stops it. A writer ends with its process; a fork child does not inherit it.

The interleaving is as fine as ksmd's batches: time advances one ksmd step at a time (a batch and
its sleep, or a jiffy when ksmd has nothing to scan), and before every step the writes that fell
due since the previous step are applied in order. A write that lands during a batch is therefore
seen by the next batch, as on a real machine where the writer runs on another CPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

from ksmsim.kernel.ksm import KSM_RUN_MERGE, KSM_RUN_STOP
from ksmsim.workload.fill_batch import RegionWriter
from ksmsim.workload.host import Host, HostError
from ksmsim.workload.patterns import Pattern, parse_pattern

__all__ = ["CHURN_SALT", "STEP_S", "ChurnSet", "ChurnWriter"]

CHURN_SALT: Final = "churn"
"""Salt of the pages churn writers store (so they never equal a ``fill`` without a salt)."""

STEP_S: Final = 1e-6
"""The slice handed to ``Ksmd.run_for`` per step: shorter than any batch, so one step each."""

NSEC_PER_SEC: Final = 1_000_000_000


@dataclass(slots=True)
class ChurnWriter:
    """One background writer: where it writes, how fast, what, and how far it has got."""

    proc: str
    region: str
    writes_per_s: float
    pattern: Pattern
    written: int = 0
    """Writes issued so far; also the pattern index (and, mod pages, the page) of the next."""
    active_ns: int = 0
    """Simulated time the writer has been active (the sum of the runs it took part in)."""
    writer: RegionWriter | None = field(default=None, compare=False, repr=False)
    """What writes its pages (made at the first write)."""

    def due(self) -> int:
        """Return how many writes have fallen due and are not issued yet."""
        return int(self.active_ns * self.writes_per_s / NSEC_PER_SEC) - self.written


class ChurnSet:
    """The background writers of a host, keyed by (process, region)."""

    def __init__(self) -> None:
        self.writers: dict[tuple[str, str], ChurnWriter] = {}
        self.writes = 0
        """Page writes issued by every writer so far."""

    def set(
        self,
        host: Host,
        proc: str,
        region: str,
        writes_per_s: float,
        pattern: Pattern | int | str = "unique",
    ) -> None:
        """Start (or replace, or with rate 0 stop) the writer of a process's region."""
        host.region(proc, region)  # raises HostError for a missing process or region
        if writes_per_s < 0:
            raise HostError(f"writes_per_s must be >= 0, not {writes_per_s}")
        key = (proc, region)
        if writes_per_s == 0:
            self.writers.pop(key, None)
            return
        self.writers[key] = ChurnWriter(proc, region, float(writes_per_s), parse_pattern(pattern))

    def active(self, host: Host) -> list[ChurnWriter]:
        """Return the writers whose process is alive (forgetting the others)."""
        for key in [k for k in self.writers if k[0] not in host.procs]:
            del self.writers[key]
        return list(self.writers.values())

    @property
    def writes_per_s(self) -> float:
        """Return the summed rate of the writers."""
        return sum(w.writes_per_s for w in self.writers.values())

    def pages_touched(self, host: Host, seconds: float) -> int:
        """Return how many distinct pages the live writers rewrite in ``seconds``."""
        total = 0
        for w in self.active(host):
            pages = host.procs[w.proc].regions[w.region].pages
            total += min(pages, int(w.writes_per_s * seconds))
        return total

    def _apply(self, host: Host, elapsed_ns: int) -> None:
        """Advance every writer by ``elapsed_ns`` and issue the writes that fell due."""
        for w in self.active(host):
            w.active_ns += elapsed_ns
            n = int(w.active_ns * w.writes_per_s / NSEC_PER_SEC) - w.written  # w.due()
            if n <= 0:
                continue
            r = host.procs[w.proc].regions[w.region]
            writer = w.writer
            if writer is None:
                mm = host.procs[w.proc].mm
                writer = w.writer = RegionWriter(
                    mm, r.address, w.pattern, proc=w.proc, region=w.region, salt=CHURN_SALT
                )
            # The n writes, in order, as runs of consecutive pages up to the region's end:
            # each run as write_user_bytes() would do its writes (fill_batch.write_pattern).
            while n > 0:
                first = w.written % r.pages
                count = min(n, r.pages - first)
                self.writes += writer.write(first, count, w.written)
                w.written += count
                n -= count

    def run(
        self,
        host: Host,
        seconds: float,
        *,
        sample: Callable[[], None] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        """Let ksmd run for ``seconds`` of simulated time with the writers active.

        ``sample`` is called after every ksmd step; ``stop``, when given, is asked after every
        step and ends the run early when it returns True.
        """
        machine = host.machine
        end = machine.clock_ns + int(seconds * NSEC_PER_SEC)
        host.sysfs.write("run", KSM_RUN_MERGE)
        try:
            last = machine.clock_ns
            while machine.clock_ns < end:
                now = machine.clock_ns
                if now > last:
                    self._apply(host, now - last)
                    last = now
                host.ksmd.run_for(STEP_S)
                if machine.clock_ns == now:  # a kernel that did not advance: move one jiffy
                    machine.clock_ns += NSEC_PER_SEC // machine.config.hz
                if sample is not None:
                    sample()
                if stop is not None and stop():
                    break
            if machine.clock_ns > last:
                self._apply(host, machine.clock_ns - last)
        finally:
            host.sysfs.write("run", KSM_RUN_STOP)
        host._checkpoint()
