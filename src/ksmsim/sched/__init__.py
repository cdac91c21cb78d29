"""Interleavings: kernel activities as tasks under a deterministic scheduler, and an explorer.

``scheduler`` runs tasks (greenlets) that switch only at the kernel's preemption points and
waits; ``primitives`` models the locks they meet; ``tasks`` and ``race`` build ksmd, user
processes, the sysfs writer, kswapd and a migrator from a race file; ``explorer`` searches their
schedules (exhaustive with state hashing, random, PCT), checks every invariant after each step
(``checks``, ``state``) and shrinks what it finds; ``trace`` saves and prints schedules.
"""
