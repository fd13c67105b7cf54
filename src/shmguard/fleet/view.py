"""Reads fleet endpoints, their shares and the agent lease from the segment (no Redis)."""
from __future__ import annotations

from typing import Any

from shmguard._capi import ffi, lib
from shmguard.stats import FleetStats

__all__ = ["fleet_stats", "fleet_endpoints", "MODES"]

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


def fleet_endpoints(seg: Any, handles: dict[int, Any] | None = None) -> list[tuple[int, str, Any, Any]]:
    """Returns (index, name, handle, policy view) of every endpoint whose policy is fleet-wide.

    A handle of ``handles`` (index -> handle) is reused only while it is still
    bound to its slot's endpoint: one removed (and the slot registered again)
    gets a fresh handle, so the caller sees a new handle as a new endpoint.
    """
    out = []
    sv = ffi.new("struct sg_slot_view *")
    for i in range(seg.refresh().capacity):
        if lib.sg_slot_snapshot(seg.base, seg.size, i, sv) != 0 or sv.kind != lib.SG_SLOT_READY:
            continue
        pv = ffi.new("struct sg_policy_view *")
        h = (handles or {}).get(i)
        if h is None or lib.sg_policy_read(h, pv) != lib.SG_OK:
            h = ffi.new("struct sg_handle *")
            if lib.sg_handle_init(h, seg.base, seg.size, i) != 0 or \
                    lib.sg_policy_read(h, pv) != lib.SG_OK:
                continue
        if pv.flags & (lib.SG_POL_FLEET_RATE | lib.SG_POL_FLEET_BREAKER):
            out.append((i, ffi.unpack(sv.name, sv.name_len).decode("ascii", "replace"), h, pv))
    return out
