"""The fleet tier: fleet-wide rate budgets with Redis as the coordinator.

Only :mod:`shmguard.fleet.config` is imported here; the agent, and with it
the ``redis`` client, load when a service is given ``fleet=``.
"""
from __future__ import annotations

from shmguard.fleet.config import RedisFleet

__all__ = ["RedisFleet"]
