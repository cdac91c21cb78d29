"""Scenario generators: functions that write scenario documents (dicts in the format).

``random_mix`` draws a seeded mix of every action of the format over a few small processes,
keeping the timeline valid (it names only live processes and existing regions). ``vm_fleet`` and
``container_fleet`` describe fleets an operator runs (guests booted from one image, containers
sharing a runtime and libraries), with background writers and staggered starts, for predictions.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from typing import Any

from ksmsim.kernel.profile import PROFILES
from ksmsim.workload import tomlwrite
from ksmsim.workload.scenario import DEFAULT_KERNEL

PATTERNS = ("zero", "unique", "repeat:2", "repeat:5", "x", "y", 7)
_FEATURE_TUNABLES = {"use_zero_pages": "zero_pages", "smart_scan": "smart_scan"}
"""The tunables a ``set`` may draw that only some profiles have, with the profile feature."""


def random_mix(seed: int, *, steps: int = 30, kernel: str | None = None) -> dict[str, Any]:
    """Return a random but valid scenario exercising every action, reproducible from ``seed``."""
    rng = random.Random(seed)
    profile = PROFILES.get(kernel if kernel is not None else DEFAULT_KERNEL)
    procs: dict[str, dict[str, int]] = {}
    names = iter(f"p{i}" for i in range(1000))
    processes = []
    for _ in range(rng.randint(2, 3)):
        name = next(names)
        regions = {}
        spec = []
        for r in range(rng.randint(1, 2)):
            pages = rng.randint(4, 24)
            regions[f"r{r}"] = pages
            spec.append({"name": f"r{r}", "pages": pages, "fill": rng.choice(PATTERNS)})
        procs[name] = regions
        processes.append({"name": name, "regions": spec})
    timeline: list[dict[str, Any]] = []
    snaps = 0
    region_seq = 10

    def pick() -> tuple[str, str, int]:
        proc = rng.choice(sorted(procs))
        region = rng.choice(sorted(procs[proc]))
        return proc, region, procs[proc][region]

    ops = [
        "fill",
        "write",
        "read",
        "mmap",
        "munmap",
        "madvise",
        "fork",
        "exit",
        "scan",
        "scan",
        "scan",
        "set",
        "unmerge_all",
        "digest",
        "snapshot",
    ]
    for _ in range(steps):
        op = rng.choice(ops)
        if op in ("fork", "exit") and not procs:
            op = "scan"
        if op == "exit" and len(procs) <= 1:
            op = "scan"
        if op == "fork" and len(procs) >= 5:
            op = "write"
        if not procs and op != "scan":
            break
        if op == "fill":
            proc, region, pages = pick()
            start = rng.randrange(pages)
            timeline.append(
                {
                    "op": "fill",
                    "proc": proc,
                    "region": region,
                    "pattern": rng.choice(PATTERNS),
                    "start": start,
                    "count": rng.randint(1, pages - start),
                }
            )
        elif op == "write":
            proc, region, pages = pick()
            timeline.append(
                {
                    "op": "write",
                    "proc": proc,
                    "region": region,
                    "value": rng.randrange(256),
                    "offset": rng.randrange(4096),
                    "start": rng.randrange(pages),
                    "stride": rng.randint(1, 3),
                }
            )
        elif op == "read":
            proc, region, pages = pick()
            timeline.append({"op": "read", "proc": proc, "region": region})
        elif op == "mmap":
            proc = rng.choice(sorted(procs))
            pages = rng.randint(2, 16)
            name = f"m{region_seq}"
            region_seq += 1
            procs[proc][name] = pages
            timeline.append(
                {
                    "op": "mmap",
                    "proc": proc,
                    "region": {
                        "name": name,
                        "pages": pages,
                        "fill": rng.choice(PATTERNS),
                        "mergeable": rng.random() < 0.85,
                    },
                }
            )
        elif op == "munmap":
            proc, region, pages = pick()
            start = rng.randrange(pages)
            timeline.append(
                {
                    "op": "munmap",
                    "proc": proc,
                    "region": region,
                    "start": start,
                    "count": rng.randint(1, max(1, (pages - start) // 2)),
                }
            )
        elif op == "madvise":
            proc, region, pages = pick()
            start = rng.randrange(pages)
            timeline.append(
                {
                    "op": "madvise",
                    "proc": proc,
                    "region": region,
                    "advice": rng.choice(["mergeable", "unmergeable", "dontneed"]),
                    "start": start,
                    "count": rng.randint(1, pages - start),
                }
            )
        elif op == "fork":
            parent = rng.choice(sorted(procs))
            child = next(names)
            procs[child] = dict(procs[parent])
            timeline.append({"op": "fork", "proc": parent, "child": child})
        elif op == "exit":
            proc = rng.choice(sorted(procs))
            del procs[proc]
            timeline.append({"op": "exit", "proc": proc})
        elif op == "scan":
            snaps += 1
            timeline.append(
                {
                    "op": "scan",
                    "full_scans": rng.randint(1, 3),
                    "label": f"s{snaps}",
                    "snapshot_each": rng.random() < 0.3,
                    "allow_timeout": True,
                }
            )
        elif op == "set":
            choices = [
                ("use_zero_pages", rng.randint(0, 1)),
                ("smart_scan", rng.randint(0, 1)),
                ("pages_to_scan", rng.choice([7, 50, 100000])),
            ]
            name, value = rng.choice(choices)
            feature = _FEATURE_TUNABLES.get(name)
            if profile is not None and feature is not None and not getattr(profile, feature):
                # That kernel has no such file: the write would end the scenario there. The
                # draws stay the same, so the mixes of kernels that have it are unchanged.
                name, value = choices[-1]
            timeline.append({"op": "set", "tunables": {name: value}})
        elif op == "unmerge_all":
            snaps += 1
            timeline.append({"op": "unmerge_all", "label": f"u{snaps}"})
        elif op == "digest":
            timeline.append({"op": "digest"})
        elif op == "snapshot":
            snaps += 1
            timeline.append({"op": "snapshot", "label": f"n{snaps}"})
    snaps += 1
    timeline.append({"op": "scan", "full_scans": 2, "label": f"s{snaps}", "allow_timeout": True})
    doc: dict[str, Any] = {
        "description": f"seeded random mix of every action (seed {seed})",
        "seed": seed,
        "processes": processes,
        "timeline": timeline,
    }
    if kernel is not None:
        doc["kernel"] = kernel
    return doc


# --------------------------------------------------------------------------------------------------
# Fleets: scenarios an operator would recognise (guests booted from one image, containers
# sharing a runtime). Every page figure is in 4 KiB pages; sizes in MiB are 256 pages each.

PAGES_PER_MIB = 256

Rate = float | tuple[float, float]
"""A write rate in pages per second, or a (low, high) range drawn uniformly per guest."""


def _pages(mib: float, what: str) -> int:
    """Return the pages of ``mib`` MiB, refusing a negative size."""
    if not mib >= 0:
        raise ValueError(f"{what} must be >= 0 MiB, not {mib}")
    return round(mib * PAGES_PER_MIB)


def _fraction(value: float, what: str) -> float:
    """Check a fraction in [0, 1]."""
    if not 0 <= value <= 1:
        raise ValueError(f"{what} must be between 0 and 1, not {value}")
    return value


def _rate(rng: random.Random, rate: Rate, what: str) -> float:
    """Draw one rate from a fixed value or a (low, high) range."""
    if isinstance(rate, tuple):
        lo, hi = rate
        if not 0 <= lo <= hi:
            raise ValueError(f"{what} range must be 0 <= low <= high, not {lo}:{hi}")
        return round(rng.uniform(lo, hi), 3)
    if not rate >= 0:
        raise ValueError(f"{what} must be >= 0, not {rate}")
    return float(rate)


def _region(name: str, pages: int, fill: str, salt: str = "") -> dict[str, Any]:
    """Return a region table of the format."""
    out: dict[str, Any] = {"name": name, "pages": pages, "fill": fill}
    if salt:
        out["salt"] = salt
    return out


def _tunables(pages_to_scan: int | None, sleep_millisecs: int | None) -> dict[str, int]:
    """Return the tunables table a fleet scenario sets."""
    out: dict[str, int] = {}
    if pages_to_scan is not None:
        out["pages_to_scan"] = pages_to_scan
    if sleep_millisecs is not None:
        out["sleep_millisecs"] = sleep_millisecs
    return out


RegionSpec = tuple[str, int, str, str]
"""A member's region: name, pages, fill pattern and salt ("" for none)."""
Member = tuple[str, list[dict[str, Any]], float]
"""A fleet member: process name, region tables, and the hot region's writes per second."""


def _fleet_size(count: int, member: str, images: int) -> None:
    """Refuse (ValueError) a fleet without a ``member`` or without an image."""
    if count < 1:
        raise ValueError(f"a fleet needs at least one {member}, not {count}")
    if images < 1:
        raise ValueError(f"a fleet needs at least one image, not {images}")


def _fleet_members(
    prefix: str,
    count: int,
    layout: Callable[[int], list[RegionSpec]],
    rng: random.Random,
    writes_per_s: Rate,
) -> list[Member]:
    """Return ``count`` members named ``prefix`` and a zero-padded number: member i maps the
    regions of ``layout(i)`` that have pages, and its writer's rate is drawn after the layout
    (so a layout's own draws from ``rng`` come first)."""
    width = len(str(count - 1))
    members = []
    for i in range(count):
        regions = [
            _region(name, pages, fill, salt) for name, pages, fill, salt in layout(i) if pages
        ]
        members.append(
            (f"{prefix}{i:0{width}d}", regions, _rate(rng, writes_per_s, "writes_per_s"))
        )
    return members


def _fleet_doc(
    *,
    description: str,
    seed: int,
    kernel: str | None,
    tunables: dict[str, int],
    members: list[Member],
    stagger_s: float,
    run_s: float,
) -> dict[str, Any]:
    """Return a fleet scenario: members (name, regions, hot writes/s) start ``stagger_s`` apart,
    each maps its regions when it starts and churns its ``hot`` region; then ksmd runs
    ``run_s`` more seconds and a snapshot ``end`` is taken."""
    if not stagger_s >= 0:
        raise ValueError(f"the boot stagger must be >= 0 s, not {stagger_s}")
    if not run_s > 0:
        raise ValueError(f"the run time must be > 0 s, not {run_s}")
    timeline: list[dict[str, Any]] = [{"op": "comment", "text": description}]
    for k, (name, regions, rate) in enumerate(members):
        if k and stagger_s:
            timeline.append({"op": "run", "seconds": stagger_s})
        for region in regions:
            timeline.append({"op": "mmap", "proc": name, "region": region})
        if rate > 0 and any(r["name"] == "hot" for r in regions):
            timeline.append({"op": "churn", "proc": name, "region": "hot", "writes_per_s": rate})
    timeline.append({"op": "run", "seconds": run_s})
    timeline.append({"op": "snapshot", "label": "end"})
    doc: dict[str, Any] = {"description": description, "seed": seed}
    if kernel is not None:
        doc["kernel"] = kernel
    doc["tunables"] = tunables
    doc["processes"] = [{"name": name, "regions": []} for name, _, _ in members]
    doc["timeline"] = timeline
    return doc


def vm_fleet(
    guests: int,
    guest_mib: float,
    *,
    shared_fraction: float = 0.4,
    zero_fraction: float = 0.15,
    hot_fraction: float = 0.05,
    writes_per_s: Rate = 50.0,
    images: int = 1,
    boot_stagger_s: float = 0.0,
    run_s: float = 120.0,
    seed: int = 0,
    kernel: str | None = None,
    pages_to_scan: int | None = 100,
    sleep_millisecs: int | None = 20,
) -> dict[str, Any]:
    """Return a scenario of ``guests`` VMs booted from ``images`` images, ``boot_stagger_s`` apart.

    Each guest (a process ``vmNN``, as a VMM maps guest RAM) has ``guest_mib`` MiB of mergeable
    memory in four regions: ``image`` (``shared_fraction``: pages identical in every guest of the
    same image, all distinct within the guest: ``repeat:K`` with K its size and the image's
    salt), ``zero`` (``zero_fraction``: zero-filled pages), ``private`` (unique pages) and
    ``hot`` (``hot_fraction`` of the private memory, rewritten by a churn writer at the guest's
    ``writes_per_s``: a fixed rate, or a (low, high) range drawn per guest from ``seed``). Guests
    are spread over the images round-robin. ksmd runs from the first boot; after the last boot it
    runs ``run_s`` seconds, then snapshot ``end`` is taken. The scenario sets ``pages_to_scan``
    and ``sleep_millisecs`` (the kernel's defaults, 100 and 20, unless given; None leaves the
    format's defaults).
    """
    _fleet_size(guests, "guest", images)
    total = _pages(guest_mib, "guest memory")
    if total < 1:
        raise ValueError(f"a guest needs at least one page, not {guest_mib} MiB")
    _fraction(shared_fraction, "the shared fraction")
    _fraction(zero_fraction, "the zero fraction")
    _fraction(hot_fraction, "the hot fraction")
    if shared_fraction + zero_fraction > 1:
        raise ValueError(
            f"shared ({shared_fraction}) and zero ({zero_fraction}) fractions exceed 1 together"
        )
    rng = random.Random(seed)
    shared = round(total * shared_fraction)
    zero = round(total * zero_fraction)
    private_all = total - shared - zero
    hot = round(private_all * hot_fraction)
    private = private_all - hot

    def layout(g: int) -> list[RegionSpec]:
        return [
            ("image", shared, f"repeat:{shared}", f"image{g % images}"),
            ("zero", zero, "zero", ""),
            ("private", private, "unique", ""),
            ("hot", hot, "unique", ""),
        ]

    members = _fleet_members("vm", guests, layout, rng, writes_per_s)
    description = (
        f"VM fleet: {guests} guests x {guest_mib:g} MiB from {images} image(s); shared "
        f"{shared_fraction:g}, zero {zero_fraction:g}, hot {hot_fraction:g} of private; boots "
        f"{boot_stagger_s:g} s apart; seed {seed}"
    )
    return _fleet_doc(
        description=description,
        seed=seed,
        kernel=kernel,
        tunables=_tunables(pages_to_scan, sleep_millisecs),
        members=members,
        stagger_s=boot_stagger_s,
        run_s=run_s,
    )


def container_fleet(
    containers: int,
    *,
    runtime_mib: float = 16.0,
    images: int = 4,
    image_mib: float = 32.0,
    private_mib: float = 64.0,
    zero_fraction: float = 0.1,
    hot_fraction: float = 0.1,
    writes_per_s: Rate = 20.0,
    start_stagger_s: float = 0.0,
    run_s: float = 120.0,
    seed: int = 0,
    kernel: str | None = None,
    pages_to_scan: int | None = 100,
    sleep_millisecs: int | None = 20,
) -> dict[str, Any]:
    """Return a scenario of ``containers`` processes sharing runtime and library pages.

    Each container (a process ``ctNN``) maps ``runtime`` (``runtime_mib``: identical in every
    container, e.g. an interpreter's or JIT's heap after start-up), ``libs`` (``image_mib``:
    identical among the containers of one of ``images`` application images, drawn from
    ``seed``), and ``private_mib`` of its own memory: ``zero`` (``zero_fraction`` of it),
    ``heap`` (unique pages) and ``hot`` (``hot_fraction``, rewritten at ``writes_per_s``).
    Containers start ``start_stagger_s`` apart; after the last one ksmd runs ``run_s`` seconds.
    Tunables as for ``vm_fleet``.
    """
    _fleet_size(containers, "container", images)
    runtime = _pages(runtime_mib, "the runtime")
    libs = _pages(image_mib, "the image")
    own = _pages(private_mib, "the private memory")
    _fraction(zero_fraction, "the zero fraction")
    _fraction(hot_fraction, "the hot fraction")
    if zero_fraction + hot_fraction > 1:
        raise ValueError(
            f"zero ({zero_fraction}) and hot ({hot_fraction}) fractions exceed 1 together"
        )
    if runtime + libs + own < 1:
        raise ValueError("a container needs at least one page of memory")
    rng = random.Random(seed)
    zero = round(own * zero_fraction)
    hot = round(own * hot_fraction)
    heap = own - zero - hot

    def layout(_c: int) -> list[RegionSpec]:
        image = rng.randrange(images)  # drawn for every container, before its rate
        return [
            ("runtime", runtime, f"repeat:{runtime}", "runtime"),
            ("libs", libs, f"repeat:{libs}", f"image{image}"),
            ("zero", zero, "zero", ""),
            ("heap", heap, "unique", ""),
            ("hot", hot, "unique", ""),
        ]

    members = _fleet_members("ct", containers, layout, rng, writes_per_s)
    description = (
        f"container fleet: {containers} containers, runtime {runtime_mib:g} MiB shared by all, "
        f"{images} image(s) of {image_mib:g} MiB, {private_mib:g} MiB private each; seed {seed}"
    )
    return _fleet_doc(
        description=description,
        seed=seed,
        kernel=kernel,
        tunables=_tunables(pages_to_scan, sleep_millisecs),
        members=members,
        stagger_s=start_stagger_s,
        run_s=run_s,
    )


def dump_scenario(doc: dict[str, Any], fmt: str) -> str:
    """Return a scenario document as ``"toml"`` or ``"json"`` text."""
    if fmt == "json":
        return json.dumps(doc, indent=2) + "\n"
    if fmt == "toml":
        return tomlwrite.dumps(doc)
    raise ValueError(f"unknown scenario format {fmt!r} (toml or json)")
