"""Reads a fleet endpoint's share and the agent lease from the segment (no Redis)."""
from __future__ import annotations

from typing import Any

from shmguard._capi import ffi, lib
from shmguard.stats import FleetStats

__all__ = ["fleet_stats", "MODES"]

NS = 1_000_000_000
MODES = {0: "none", 1: "granted", 2: "safe"}


def fleet_stats(base: Any, size: int, slot: Any, now: int, pv: Any) -> FleetStats | None:
    """Returns the fleet view of a slot whose policy is fleet-wide, else None."""
    if not pv.flags & lib.SG_POL_FLEET_RATE or pv.emission_ns == 0:
        return None
    v = ffi.new("struct sg_fleet_view *")
    lib.sg_fleet_snapshot(slot, v)
    a = ffi.new("struct sg_fleet_agent_view *")
    lib.sg_fleet_agent_at(base, size, now, a)
    rate = NS / pv.emission_ns
    ppm = v.share_ppm or 1_000_000  # none yet: the policy's numbers stand
    left = (v.expires_ns - now) / NS if v.mode == lib.SG_FLEET_GRANTED and v.expires_ns > now else 0.0
    age = (now - v.synced_ns) / NS if v.synced_ns and now >= v.synced_ns else None
    return FleetStats(MODES.get(v.mode, f"unknown({v.mode})"), v.hosts, rate * ppm / 1e6,
                      max(1, pv.burst * ppm // 1_000_000), left, age, v.errors,
                      a.pid if a.live else 0)
