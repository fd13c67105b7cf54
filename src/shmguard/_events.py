"""Callbacks of one service: state changes and periodic metrics, fired by the caller.

``on_state_change(endpoint, old, new)`` and ``on_metrics_update(endpoint,
state, stats)`` run in the process, and thread, whose call made the
transition, when it made it, never under a lock: OPEN -> HALF_OPEN when
that call was admitted (before it runs), HALF_OPEN -> CLOSED / OPEN and
CLOSED -> OPEN when its outcome was recorded. Each transition is reported
once. An exception in a callback propagates to that call.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

from shmguard._capi import lib
from shmguard.stats import BreakerState, EndpointStats

if TYPE_CHECKING:
    from shmguard._endpoint import Endpoint

__all__ = ["Events"]

_NEW = {1: BreakerState.OPEN, 2: BreakerState.HALF_OPEN, 3: BreakerState.CLOSED}


class Events:
    """The callbacks a service's endpoints fire, and the rule for when."""

    __slots__ = ("on_state_change", "on_metrics_update", "metrics_interval")

    def __init__(self) -> None:
        self.on_state_change: Callable[[str, BreakerState, BreakerState], Any] | None = None
        self.on_metrics_update: Callable[[str, BreakerState, EndpointStats], Any] | None = None
        self.metrics_interval = 1.0

    def after(self, ep: Endpoint, t: int, tok: int) -> None:
        """Fires callbacks for what sg_breaker_record reported (``t``)."""
        if t < 0:
            raise ep.rc_error(t)  # a bad token: never decode it as a transition
        t &= 7
        if t in _NEW:
            self.transition(ep, t, bool((tok >> 34) & 0xF))
        elif self.on_metrics_update is not None and time.monotonic() >= ep.next_metrics:
            ep.next_metrics = time.monotonic() + self.metrics_interval
            st = ep.stats()
            self.on_metrics_update(ep.name, st.breaker_state, st)

    def transition(self, ep: Endpoint, t: int, was_probe: bool) -> None:
        """Reports the transition ``t`` (an ``SG_T_*``) of ``ep`` to the callbacks."""
        new = _NEW.get(t)
        if new is None:
            return
        old = {BreakerState.OPEN: BreakerState.HALF_OPEN if was_probe else BreakerState.CLOSED,
               BreakerState.HALF_OPEN: BreakerState.OPEN,
               BreakerState.CLOSED: BreakerState.HALF_OPEN}[new]
        if self.on_state_change is not None:
            self.on_state_change(ep.name, old, new)
        if self.on_metrics_update is not None:
            ep.next_metrics = time.monotonic() + self.metrics_interval
            self.on_metrics_update(ep.name, new, ep.stats())
