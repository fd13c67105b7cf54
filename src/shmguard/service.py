"""ResilienceService: the per-process facade over one shared segment.

The facade is assembled from one module per seam: :mod:`shmguard._registry`
(life cycle, endpoint table, registration, callbacks), :mod:`shmguard._calls`
(execute and the other call doors); this module adds the handles, state,
statistics and control, and pickling.
"""
from __future__ import annotations

import dataclasses
import os
import threading
import weakref
from typing import Any

from shmguard import _capi
from shmguard._admission import run_probe
from shmguard._calls import Calls
from shmguard._capi import lib
from shmguard._endpoint import LEASE_BITS
from shmguard._registry import CLAIM_STALE_NS, REGISTER_WAIT
from shmguard.breaker import Breaker
from shmguard.bulkhead import Bulkhead
from shmguard.errors import PolicyConflictError, PolicyError, ShmguardError, UnknownEndpointError
from shmguard.keyed import KeyedLimiter
from shmguard.limiter import Limiter, change_rate
from shmguard.policy import Policy
from shmguard.stats import BreakerState, EndpointStats

__all__ = ["ResilienceService", "CLAIM_STALE_NS", "REGISTER_WAIT"]


class ResilienceService(Calls):
    """Host-wide breakers and rate limiters for named endpoints.

    Creates the segment ``name`` (default: env ``SHMGUARD_SEGMENT``, else
    "default") or attaches to it. Fork children inherit the mapping; spawn
    children and unrelated processes attach by name.

    Thread safe and process safe. Callbacks (``on_state_change(endpoint, old,
    new)``, ``on_metrics_update(endpoint, state, metrics)``) run in the
    process, and thread, whose call made the transition, never under a lock;
    an exception in a callback propagates to that call.
    ``on_policy_change(endpoint, {field: (old, new)})`` runs in the process
    whose registration changed a policy (see :meth:`register_endpoint`).

    :param policy: the policy ``register_endpoint(name)`` uses when given none
        (``PolicyPresets.standard()``).
    :param default_policy: register endpoints absent from the segment on first
        use (``execute``, ``breaker()``, ``limiter()``...) with this policy.
        Without it such calls raise :class:`UnknownEndpointError` (a typo
        never takes a slot); an endpoint any process registered works
        everywhere. Read-only calls (``breaker_state``, ``stats``) never register.
    :param capacity: slots when creating (ignored when attaching).
    :param manual_clock: on creation, a clock that only moves when told
        (:meth:`set_clock`, :meth:`advance`), shared by all processes (tests).
    :param fleet: a Redis URL or :class:`~shmguard.RedisFleet`: endpoints whose
        policy is ``with_fleet()`` share their rate across every host using
        it (see README, "Beyond one host"); ``redis`` is imported only then.
    :param host_id: this host's name in the fleet (default: the hostname).
    :param lazy: create or attach on first use instead of now: a service made
        at import time then costs nothing (no mapping, no fd) in processes that
        never use it, and does not keep the segment attached for ``shmguard rm``.
        Attach errors (missing, foreign, corrupt) are raised by that first use.
    :param shared_namespaces: attach although the segment was created in
        another pid or time namespace (containers sharing /dev/shm; refused
        otherwise). Lease owners are then judged by deadline only; a slot claim
        older than 2 s is set aside (its slot stays unused).

    >>> with ResilienceService("doc-example") as svc:   # doctest: +SKIP
    ...     svc.register_endpoint("cache", PolicyPresets.network())
    ...     svc.execute("cache", lambda: 42)
    42
    """

    def __init__(self, name: str | None = None, *, policy: Policy | None = None,
                 capacity: int = 256, manual_clock: bool = False, allow_foreign: bool = False,
                 create: bool = True, lazy: bool = False, shared_namespaces: bool = False,
                 default_policy: Policy | None = None, fleet: Any = None,
                 host_id: str | None = None) -> None:
        self._fleet: Any = None
        if fleet is not None:
            from shmguard.fleet.agent import Agent
            from shmguard.fleet.config import coerce, default_host_id
            self._fleet = Agent(lambda: self.segment, coerce(fleet), default_host_id(host_id))
        super().__init__(name, policy=policy, capacity=capacity, manual_clock=manual_clock,
                         allow_foreign=allow_foreign, create=create, lazy=lazy,
                         shared_namespaces=shared_namespaces, default_policy=default_policy)
        _LIVE.add(self)
        if self._fleet is not None and not lazy:
            self._fleet.start()

    def _register(self, name: str, policy: Policy) -> tuple[Any, bool]:
        ep, created = super()._register(name, policy)
        if self._fleet is not None and (policy.fleet_rate or policy.fleet_breaker):
            self._fleet.attach(ep.h.slot, policy.fleet_rate)  # rate: ~0 until the first grant
        return ep, created

    def close(self) -> None:
        if self._fleet is not None and not self.closed:
            self._fleet.stop()
        super().close()

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickles as "attach to the same segment by name" (spawn children, executors).

        A lazy service not attached yet stays lazy (and keeps its ``create``).
        """
        args, lazy = self._segment_args, self._segment is None
        return (_reattach, (self.name, self.default_policy, bool(args["allow_foreign"]),
                            lazy and bool(args["create"]), lazy, bool(args["shared_namespaces"]),
                            self.implicit_policy))

    def __enter__(self) -> ResilienceService:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- handles ------------------------------------------------------------------------
    def breaker(self, endpoint: str) -> Breaker:
        """Returns the breaker handle of ``endpoint`` (see ``default_policy`` for a new one)."""
        return Breaker(self._endpoint(endpoint))

    def limiter(self, endpoint: str) -> Limiter:
        """Returns the limiter handle of ``endpoint`` (see ``default_policy`` for a new one)."""
        return Limiter(self._endpoint(endpoint))

    def bulkhead(self, endpoint: str) -> Bulkhead:
        """Returns the bulkhead handle of ``endpoint`` (see ``default_policy`` for a new one)."""
        return Bulkhead(self._endpoint(endpoint))
    def keyed_limiter(self, name: str, rate: float, burst: int, *, capacity: int = 100_000,
                      on_full: str = "reject", replace: bool = False) -> KeyedLimiter:
        """Returns the keyed limiter ``name`` (a rate limit per key), creating it if missing.

        Every process asking for ``name`` shares one table. Another rate or
        burst raises :class:`PolicyConflictError` unless ``replace=True``,
        which publishes them to every process at once, keeping each key's
        debt in tokens (an exhausted key stays exhausted). ``capacity`` and
        ``on_full`` are fixed when the table is made.

        :param rate: tokens per second of each key; ``burst``: tokens of each key's bucket.
        :param capacity: keys not at a full bucket the table holds at once
            (32 bytes each); a key at a full bucket needs no entry.
        :param on_full: a new key with no free entry is refused ("reject") or
            admitted without a limit ("allow"); both are counted.
        """
        from shmguard import _keyed_shm
        cfg = _keyed_shm.keyed_config(rate, burst, capacity, on_full)
        kl = self._keyed.get(name)
        if kl is None or kl.closed:
            kl = KeyedLimiter(_keyed_shm.KeyedTable(self.segment, name, cfg))
            with self._lock:
                self._keyed[name] = kl
        view = kl._t.refresh()
        fixed = view.capacity != cfg.capacity or view.flags != cfg.flags
        if fixed or (view.fingerprint != cfg.fingerprint and not replace):
            why = ("capacity and on_full are fixed when it is made" if fixed else
                   "pass replace=True to change its rate and burst for every process")
            raise PolicyConflictError(
                f"keyed limiter {name!r} already exists in segment {self.name!r} with "
                f"{_keyed_shm.describe(view)}, not {_keyed_shm.describe(cfg)} ({why})")
        if view.fingerprint != cfg.fingerprint:
            kl._t.set_rate(cfg, self.now_ns())
        return kl

    def probe(self, endpoint: str) -> bool | None:
        """Runs the endpoint's health probe if a half-open permit is free now.

        :returns: the probe's outcome (True: healthy), or None when no probe
            was due (closed, still open, or every permit out).
        """
        ep = self._endpoint(endpoint)
        if ep.probe is None:
            raise ShmguardError(f"endpoint {endpoint!r} has no health probe in this process")
        tok = ep.acquire_permit()
        if tok < 0 or not tok & LEASE_BITS:
            return None  # nothing due; a closed-state token needs no record
        return run_probe(ep, ep.admitted(tok))

    # -- state and statistics --------------------------------------------------------------
    def breaker_state(self, endpoint: str) -> BreakerState:
        """Reports the endpoint's breaker state (host-wide); never registers it.

        :raises UnknownEndpointError: no such endpoint in the segment.
        """
        return self._endpoint(endpoint, create=False).breaker_snapshot().state

    def stats(self, endpoint: str) -> EndpointStats:
        """Returns the endpoint's statistics, read from the segment; never registers it.

        :raises UnknownEndpointError: no such endpoint in the segment.
        """
        ep = self._endpoint(endpoint, create=False)
        st, pv = ep.stats(), ep.policy_view()
        if pv.flags & lib.SG_POL_FLEET_RATE:
            from shmguard.fleet.view import fleet_stats
            seg = self.segment
            st = dataclasses.replace(st, fleet=fleet_stats(seg.base, seg.size, ep.h.slot,
                                                           seg.now_ns(), pv))
        return st

    def all_stats(self) -> list[EndpointStats]:
        """Returns statistics for every endpoint in the segment."""
        out = []
        for n in self.endpoints():
            try:
                out.append(self.stats(n))
            except UnknownEndpointError:  # removed meanwhile
                pass
        return out

    def adjust_rate(self, endpoint: str, health: float) -> None:
        """Scales the endpoint's rate by a health score in [0, 1] (drops at once, recovers gradually)."""
        if isinstance(health, bool) or not isinstance(health, (int, float)) or not 0 <= health <= 1:
            raise PolicyError(f"health must be in [0, 1], got {health!r}")
        ep = self._endpoint(endpoint)
        ppm = round(health * 1e6)
        change_rate(lambda: lib.sg_limiter_scale_at(ep.live_slot(), self.now_ns(), ppm),
                    f"adjust_rate({endpoint!r})", self.name)


_LIVE: weakref.WeakSet[ResilienceService] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A parent thread may have held a service's lock at fork: the child's
    # copy would stay locked forever. The mapping itself is inherited as is.
    for svc in list(_LIVE):
        svc._lock = threading.Lock()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _reattach(name: str, policy: Policy, allow_foreign: bool, create: bool = False,
              lazy: bool = False, shared_namespaces: bool = False,
              default_policy: Policy | None = None) -> ResilienceService:
    return ResilienceService(name, policy=policy, create=create, allow_foreign=allow_foreign,
                             lazy=lazy, shared_namespaces=shared_namespaces,
                             default_policy=default_policy)
