"""One endpoint's sync: measure demand, ask Redis for the share, apply it to the slot.

The share reaches the limiter through :c:func:`sg_fleet_apply_at` (fleet.c),
which starts a new rate regime like ``adjust_rate`` does: the debt is kept
in tokens, and the burst scales with the share (rate.c).
"""
from __future__ import annotations

import math
import time
import warnings
from typing import TYPE_CHECKING, Any

from shmguard._capi import ffi, lib
from shmguard.fleet.coordinator import FleetError, Grant

if TYPE_CHECKING:
    from shmguard.fleet.agent import Agent

__all__ = ["EndpointSync", "FleetWarning"]

NS = 1_000_000_000
PPM = 1_000_000


class FleetWarning(UserWarning):
    """A host fell to its safe share: no live grant from the fleet coordinator."""


class EndpointSync:
    """Process-local sync state of one fleet endpoint (the agent's thread only)."""

    def __init__(self, name: str, index: int, handle: Any) -> None:
        self.name = name
        self.index = index
        self.h = handle
        self.last: tuple[int, int, int] | None = None  # (now, attempts, pressured)
        self.warned = False

    def counters(self, now: int) -> tuple[int, int, int, float]:
        """Returns (attempts, pressured, scale target ppm, effective rate) from the slot."""
        v = ffi.new("struct sg_limiter_view *")
        lib.sg_limiter_snapshot_at(self.h.slot, now, 2, v)
        attempts = sum(v.accepted) + sum(v.rejected)
        pressured = sum(v.rejected) + sum(v.waited)
        return attempts, pressured, v.scale_target_ppm, v.effective_rate

    def demand(self, now: int, rate: float, share: float) -> tuple[float, int]:
        """Reports the offered load since the last sync (requests/s) and the scale target.

        Unknown (first sync of this agent): the full fleet rate. Callers that
        were refused or waited want more than they got: at least twice the share.
        """
        attempts, pressured, target, _ = self.counters(now)
        last, self.last = self.last, (now, attempts, pressured)
        if last is None or now <= last[0]:
            return rate, target
        dt = (now - last[0]) / NS
        offered = max(0, attempts - last[1]) / dt
        if pressured > last[2]:
            offered = max(offered, 2 * share)
        return min(offered, 1e12), target

    def sync(self, agent: Agent, rate: float) -> None:
        """Reports demand, gets the grant and applies it; on failure keeps or falls back."""
        now = agent.seg.now_ns()
        snap = self.snapshot()
        share = snap.share_ppm * rate / PPM
        live = snap.mode == lib.SG_FLEET_GRANTED and now < snap.expires_ns
        held = share if live or snap.mode == lib.SG_FLEET_SAFE else 0.0
        demand, target = self.demand(now, rate, share)
        try:
            g = agent.remote(agent.coordinator().share, self.name, agent.host_id, agent.epoch(),
                             demand, rate, held, snap.hosts)
        except FleetError as exc:
            lib.sg_fleet_error(self.h.slot)
            agent.last_error = str(exc)
            if not live:
                self.fall_back(agent, now, rate, snap, target, str(exc))
            return
        self.warned = False
        expires = now + int(g.remaining * NS)  # asked at `now`: ends before Redis's expiry
        self.apply(agent, now, rate, g.rate, lib.SG_FLEET_GRANTED, expires, g.hosts, target)

    def fall_back(self, agent: Agent, now: int, rate: float, snap: Any, target: int,
                  why: str) -> None:
        """Applies the safe share: offline_rate, else the fleet rate / hosts last seen."""
        hosts = max(1, snap.hosts)
        safe = agent.cfg.offline_rate if agent.cfg.offline_rate is not None else rate / hosts
        self.apply(agent, now, rate, min(safe, rate), lib.SG_FLEET_SAFE, 0, snap.hosts, target,
                   synced=snap.synced_ns)
        if not self.warned:
            self.warned = True
            try:
                warnings.warn(f"endpoint {self.name!r} of segment {agent.seg.name!r}: no live "
                              f"fleet grant ({why}); using the safe share {min(safe, rate):g}/s",
                              FleetWarning, stacklevel=1)
            except Exception:  # an "error" warnings filter must not stop the agent
                pass

    def apply(self, agent: Agent, now: int, rate: float, share: float, mode: int, expires: int,
              hosts: int, target: int, synced: int | None = None) -> None:
        ppm = min(PPM, max(1, math.floor(share / rate * PPM)))
        fv = ffi.new("struct sg_fleet_view *")
        fv.share_ppm, fv.mode, fv.expires_ns, fv.hosts = ppm, mode, expires, hosts
        fv.synced_ns = now if synced is None else synced
        fv.force = int(target != ppm)
        for _ in range(50):
            rc = lib.sg_fleet_apply_at(agent.seg.base, agent.seg.size, self.h.slot,
                                       agent.seg.now_ns(), agent.word, fv)
            if rc != lib.SG_E_BUSY or not agent.holds():
                return
            time.sleep(0.001)  # a rate change of another process is under way

    def snapshot(self) -> Any:
        v = ffi.new("struct sg_fleet_view *")
        lib.sg_fleet_snapshot(self.h.slot, v)
        return v


def start_share(slot: Any, now: int) -> None:
    """Holds a fleet endpoint that has no share yet to ~0 until its agent's first grant."""
    v = ffi.new("struct sg_fleet_view *")
    lib.sg_fleet_snapshot(slot, v)
    if v.share_ppm == 0 and v.mode == lib.SG_FLEET_NONE:
        for _ in range(50):
            # only while no grant is applied (fleet word 0): never over the agent's first share
            if lib.sg_limiter_share_at(slot, now, 1, 0) != lib.SG_E_BUSY:
                return
            time.sleep(0.001)
