"""Shared test configuration: Hypothesis profiles.

Select a profile with the HYPOTHESIS_PROFILE environment variable (default ``ci``):

* ``ci``: 200 examples, 50 steps per stateful run, no deadline (the CI machines are slow and
  noisy, so per-example timing is not a signal).
* ``long``: 2000 examples, 100 steps per stateful run, for a soak run before a release.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    max_examples=200,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile(
    "long",
    max_examples=2000,
    stateful_step_count=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
