"""One fleet breaker's sync: publish this host's opens and closes, apply the others'.

Each refresh the agent compares the local breaker with what it saw last:
an OPEN of this host's own evidence is published as (endpoint, episode,
open until); a CLOSED after OPEN/HALF_OPEN is published as a close. A newer
episode from another host moves the local breaker to OPEN for the remaining
time, or CLOSED, through :c:func:`sg_breaker_fleet_at`, which acts only if
the local breaker is still in the generation the agent saw (newer local
evidence and manual control always win). Near the end of an OPEN, a host
goes on to half-open only if it holds the fleet's probe lease (Redis
``SET NX PX``); the others stay OPEN a little longer, so one host at a time
probes. Redis unreachable: the breaker simply stays host-local.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shmguard._capi import ffi, lib
from shmguard.fleet.coordinator import Episode, FleetError

if TYPE_CHECKING:
    from shmguard.fleet.agent import Agent

__all__ = ["BreakerSync"]

NS = 1_000_000_000
OPEN, HALF_OPEN, CLOSED = lib.SG_OPEN, lib.SG_HALF_OPEN, lib.SG_CLOSED


class BreakerSync:
    """Process-local state of one fleet breaker (the agent's thread only)."""

    def __init__(self, name: str, handle: Any) -> None:
        self.name = name
        self.h = handle
        self.last: tuple[int, int] | None = None  # (state, generation) at the last sync
        self.mine = -1        # generation this agent set from the fleet (not to publish back)
        self.born = -1        # the Redis record we follow (a restart makes a new one)
        self.seen = -1        # newest episode acted on
        self.open_seq = -1    # episode of the local OPEN (a close must be newer)

    def snapshot(self, now: int) -> Any:
        v = ffi.new("struct sg_breaker_view *")
        lib.sg_breaker_snapshot_at(self.h.slot, now, v)
        return v

    def event(self, b: Any) -> tuple[str, float]:
        """Returns what to publish for the local breaker: ("open", seconds), ("close", 0), ("read", 0)."""
        if b.generation == self.mine or b.generation == (self.last or (-1, -1))[1]:
            return "read", 0.0
        if b.state == OPEN:
            return "open", b.open_remaining_ns / NS
        if b.state == CLOSED and self.last is not None and self.last[0] in (OPEN, HALF_OPEN):
            return "close", 0.0
        return "read", 0.0

    def sync(self, agent: Agent, pv: Any) -> None:
        now = agent.seg.now_ns()
        b = self.snapshot(now)
        if b.state > HALF_OPEN:  # manual control: host-local
            self.last = (b.state, b.generation)
            return
        op, rem = self.event(b)
        try:
            ep = agent.remote(agent.coordinator().breaker, self.name, agent.host_id, op, rem)
            if op == "open":
                self.open_seq = ep.seq
            self.follow(agent, b, ep, op, now)
            self.gate(agent, pv, ep)
        except FleetError as exc:
            lib.sg_fleet_error(self.h.slot)
            agent.last_error = str(exc)
            if op != "read":
                return  # not published: try again at the next sync
        # what we acted on: a change after the snapshot is an event of the next sync
        self.last = (b.state, b.generation)

    def follow(self, agent: Agent, b: Any, ep: Episode, op: str, now: int) -> None:
        """Applies an episode newer than the last one seen (from another host)."""
        if ep.born != self.born:
            self.born, self.seen = ep.born, (-1 if ep.open else ep.seq)  # a new record
        if ep.seq <= self.seen:
            return
        self.seen = ep.seq
        if op != "read":
            return  # our own event made this episode
        if ep.open and ep.remaining > 0 and b.state in (CLOSED, HALF_OPEN):
            self.apply(now, b.generation, OPEN, ep.remaining)
            self.open_seq = ep.seq
        elif not ep.open and b.state in (OPEN, HALF_OPEN) and ep.seq > self.open_seq:
            self.apply(now, b.generation, CLOSED, 0.0)

    def apply(self, now: int, gen: int, state: int, remaining: float) -> None:
        if lib.sg_breaker_fleet_at(self.h.slot, now, gen, state, int(remaining * NS)) == lib.SG_OK:
            self.mine = (gen + 1) & ((1 << 25) - 1)

    def gate(self, agent: Agent, pv: Any, ep: Episode) -> None:
        """Near half-open: go on only with the fleet's probe lease, else stay OPEN a bit longer."""
        now = agent.seg.now_ns()
        b = self.snapshot(now)
        margin = max(3 * agent.cfg.refresh, agent.cfg.lease / 4)
        if not (b.state == HALF_OPEN or (b.state == OPEN and b.open_remaining_ns / NS <= margin)):
            return
        # held from here until a probe granted at the end of the OPEN (up to a margin and
        # a refresh away) has run its lease; the holder extends it at each gate
        hold = pv.probe_lease_ns / NS + margin + agent.cfg.refresh
        if agent.remote(agent.coordinator().probe_gate, self.name, agent.host_id, hold):
            return
        b = self.snapshot(agent.seg.now_ns())  # the breaker may have moved during the call
        now = agent.seg.now_ns()
        if b.state == OPEN:  # extend, same generation
            lib.sg_breaker_fleet_at(self.h.slot, now, b.generation, OPEN, int(2 * margin * NS))
        elif b.state == HALF_OPEN:  # back to OPEN while the lease holder probes
            self.apply(now, b.generation, OPEN, 2 * margin)
