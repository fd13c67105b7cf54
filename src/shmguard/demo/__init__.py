"""``shmguard demo``: a local flaky "remote cache", a worker pool, one shared breaker and limit.

``main`` runs it (``shmguard demo`` or ``python -m shmguard.demo``);
``server`` is the flaky HTTP dependency, ``worker`` the pool's task,
``view`` the live display and ``checks`` the verdicts printed at the end.
"""
from __future__ import annotations

from shmguard.demo.run import main

__all__ = ["main"]
