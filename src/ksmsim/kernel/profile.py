"""Kernel profiles: which KSM design and release the engine behaves as.

Behaviour that differs between kernels is a named feature here; the code asks for the
feature, never for a version. Profiles are looked up by name with ``get_profile``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final, Literal


@dataclass(frozen=True, slots=True)
class Profile:
    """The features that distinguish one modelled kernel from another."""

    name: str
    description: str
    checksum: Literal["jhash2", "xxhash"]
    """calc_checksum(): jhash2 (lookup2, initval 17) before 3.x; low 32 bits of XXH64 in 6.x."""
    stable_node_pins_page: bool
    """The pinned design (db114b83): stable_node->page holds a page reference."""
    merge_allocates_kpage: bool
    """try_to_merge_two_pages() copies into a newly allocated KSM page (true until 2.6.33)."""
    break_ksm_page_after_failed_search: bool
    """Pinned cmp_and_merge_page(): a KSM page not found in the stable tree is COW-broken."""
    has_max_kernel_pages: bool
    """The max_kernel_pages tunable and its limit on new KSM pages."""
    tunable_defaults: dict[str, int] = field(default_factory=dict)
    """Defaults of the writable sysfs files the profile has (besides ``run``)."""


_COMMON_TUNABLES: Final = {"pages_to_scan": 100, "sleep_millisecs": 20}

KEYHOLE: Final = Profile(
    name="keyhole",
    description='mm/ksm.c at 4035c07a "ksm: take keyhole reference to page" (Dec 2009)',
    checksum="jhash2",
    stable_node_pins_page=False,
    merge_allocates_kpage=True,
    break_ksm_page_after_failed_search=False,
    has_max_kernel_pages=True,
    tunable_defaults={**_COMMON_TUNABLES, "max_kernel_pages": 0},
)

PINNED: Final = Profile(
    name="pinned",
    description='mm/ksm.c at db114b83 "ksm: hold anon_vma in rmap_item": stable nodes pin pages',
    checksum="jhash2",
    stable_node_pins_page=True,
    merge_allocates_kpage=True,
    break_ksm_page_after_failed_search=True,
    has_max_kernel_pages=True,
    tunable_defaults={**_COMMON_TUNABLES, "max_kernel_pages": 0},
)

PROFILES: Final = {p.name: p for p in (KEYHOLE, PINNED)}

PLANNED_PROFILES: Final = {
    "v2.6.33": "the v2.6.33 release profile is not modelled yet",
    "v6.18": "the v6.18 profile (the kernel these machines run) is not modelled yet",
}


class UnknownProfile(ValueError):
    """A profile name that the engine does not (yet) model."""


def get_profile(name: str) -> Profile:
    """Return the profile called ``name``, or raise UnknownProfile saying why not."""
    try:
        return PROFILES[name]
    except KeyError:
        if name in PLANNED_PROFILES:
            raise UnknownProfile(PLANNED_PROFILES[name]) from None
        known = ", ".join(sorted(PROFILES))
        raise UnknownProfile(f"unknown kernel profile {name!r} (known: {known})") from None
