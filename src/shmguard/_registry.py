"""The service's life cycle and its endpoint table: create or attach, register, close.

Endpoint name -> :class:`~shmguard._endpoint.Endpoint` is cached per process,
so the hot path is one dict lookup. Registration claims a slot in C (one
process wins, every other one finds the same slot) and publishes policies.
"""
from __future__ import annotations

import os
import random
import threading
import time
import warnings
from typing import Any, Callable

from shmguard import _capi, _slots, policychange
from shmguard._slots import (CLAIM_STALE_NS, REGISTER_WAIT, close_segment, judge_claim,
                             publish_policy, reclaim_abandoned)
from shmguard._capi import ffi, lib
from shmguard._endpoint import NS, Endpoint, validate_endpoint
from shmguard._events import Events
from shmguard.errors import (CapacityError, PolicyConflictError, PolicyError, SegmentError,
                             ServiceClosedError, ShmguardError, UnknownEndpointError)
from shmguard.limiter import change_rate
from shmguard.policy import Policy, PolicyPresets
from shmguard.segment import Segment, validate_name
from shmguard.segment import unlink as unlink_segment
from shmguard.stats import BreakerState, EndpointStats

__all__ = ["Registry", "REGISTER_WAIT", "CLAIM_STALE_NS"]

class Registry:
    """Segment, endpoint table, clock and callbacks of one service (see ResilienceService)."""

    def __init__(self, name: str | None = None, *, policy: Policy | None = None,
                 capacity: int = 256, manual_clock: bool = False, allow_foreign: bool = False,
                 create: bool = True, lazy: bool = False, shared_namespaces: bool = False,
                 default_policy: Policy | None = None) -> None:
        if name is None:
            name = os.environ.get("SHMGUARD_SEGMENT") or "default"
        for what, p in (("policy", policy), ("default_policy", default_policy)):
            if p is not None and not isinstance(p, Policy):
                raise PolicyError(f"{what} must be a shmguard.Policy, got {p!r}")
        self.default_policy = policy or default_policy or PolicyPresets.standard()
        #: registers endpoints absent from the segment on first use (None: they raise)
        self.implicit_policy = default_policy
        self.name = validate_name(name)
        if isinstance(capacity, bool) or not isinstance(capacity, int) or not (
                1 <= capacity <= lib.SG_MAX_CAPACITY):  # checked now, also for a lazy service
            raise SegmentError(f"capacity must be 1..{lib.SG_MAX_CAPACITY}, got {capacity!r}")
        self._segment_args = {"create": create, "capacity": capacity,
                              "manual_clock": manual_clock, "allow_foreign": allow_foreign,
                              "shared_namespaces": shared_namespaces}
        self._segment: Segment | None = None
        self._closed = False
        if not lazy:
            self._segment = Segment(name, **self._segment_args)  # type: ignore[arg-type]
        self._eps: dict[str, Endpoint] = {}
        self._lock = threading.Lock()  # guards _eps inserts only (process-local)
        self._events = Events()
        self._keyed: dict[str, Any] = {}  # keyed limiter name -> KeyedLimiter (shmguard.keyed)
        #: called as on_policy_change(endpoint, {field: (old, new)}) when this process changes a policy
        self.on_policy_change: policychange.OnPolicyChange | None = None

    # -- callbacks (see shmguard._events) -------------------------------------------
    @property
    def on_state_change(self) -> Callable[[str, BreakerState, BreakerState], Any] | None:
        return self._events.on_state_change

    @on_state_change.setter
    def on_state_change(self, fn: Callable[[str, BreakerState, BreakerState], Any] | None) -> None:
        self._events.on_state_change = fn

    @property
    def on_metrics_update(self) -> Callable[[str, BreakerState, EndpointStats], Any] | None:
        return self._events.on_metrics_update

    @on_metrics_update.setter
    def on_metrics_update(self, fn: Callable[[str, BreakerState, EndpointStats], Any] | None) -> None:
        self._events.on_metrics_update = fn

    @property
    def metrics_interval(self) -> float:
        return self._events.metrics_interval

    @metrics_interval.setter
    def metrics_interval(self, seconds: float) -> None:
        self._events.metrics_interval = seconds

    # -- life cycle -----------------------------------------------------------
    @property
    def segment(self) -> Segment:
        """The mapped segment; a lazy service creates or attaches to it here, on first use."""
        seg = self._segment
        if seg is None:
            with self._lock:
                if self._closed:
                    raise ServiceClosedError(f"segment {self.name!r} is closed in this process")
                if self._segment is None:
                    self._segment = Segment(self.name, **self._segment_args)  # type: ignore[arg-type]
                seg = self._segment
        return seg

    @property
    def attached(self) -> bool:
        """Reports whether this process has the segment mapped (a lazy service: after first use)."""
        return self._segment is not None and not self._segment.closed

    def close(self) -> None:
        """Detaches this process; the segment stays for the others. Idempotent.

        Safe while other threads use the service: their calls in flight finish
        or raise :class:`ServiceClosedError`. With other threads alive the
        shared pages are swapped for private zero pages at once (a call still
        inside C reads those, never unmapped memory) and the address range is
        released when the process next closes a service with no other thread.
        """
        self._closed = True
        for ep in list(self._eps.values()):
            ep.unbind()
        for kl in list(self._keyed.values()):
            kl.close()
        if self._segment is not None:
            close_segment(self._segment)

    def unlink(self) -> bool:
        """Removes the segment's name (and its keyed limiters') from the host; reports whether it existed."""
        return unlink_segment(self.name)

    @property
    def closed(self) -> bool:
        return self._closed or (self._segment is not None and self._segment.closed)

    # -- clock --------------------------------------------------------------------
    def now_ns(self) -> int:
        return self.segment.now_ns()

    def set_clock(self, now_ns: int) -> None:
        self.segment.set_clock(now_ns)

    def advance(self, seconds: float) -> int:
        """Moves the manual clock on by ``seconds``; returns the new time (ns)."""
        now = self.segment.now_ns() + int(seconds * NS)
        self.segment.set_clock(now)
        return now

    # -- registration ---------------------------------------------------------------
    def register_endpoint(self, name: str, policy: Policy | None = None, *,
                          on_conflict: str | None = None, replace: bool = False,
                          health_probe: Callable[[], Any] | None = None) -> None:
        """Registers ``name`` with ``policy`` (default: the service's).

        Idempotent for the same policy. For an endpoint that exists with
        another policy (a deploy changed it), ``on_conflict`` decides:

        - ``None`` (default): the new policy takes effect for every process
          of the host, with a :class:`~shmguard.PolicyChangedWarning` naming
          the fields that changed; a deploy never fails on it;
        - ``"replace"`` (or ``replace=True``): the same, without the warning;
        - ``"keep"``: the segment keeps its numbers; this process classifies
          exceptions with ``policy``;
        - ``"raise"``: :class:`PolicyConflictError` naming the changed fields.

        A policy changed by ``shmguard set-rate`` is marked overridden; a
        later registration of the code's policy restores it (except ``"keep"``).
        When this process changes the policy, ``on_policy_change(endpoint,
        {field: (old, new)})`` is called.

        :param health_probe: see :meth:`set_health_probe`.
        """
        if on_conflict not in (None, "replace", "keep", "raise"):
            raise PolicyError(f"on_conflict must be 'replace', 'keep' or 'raise', got {on_conflict!r}")
        if replace is True:
            on_conflict = "replace"
        policy = policy or self.default_policy
        if not isinstance(policy, Policy):
            raise PolicyError(f"policy must be a shmguard.Policy, got {policy!r}")
        ep, created = self._register(name, policy)
        if health_probe is not None:
            self.set_health_probe(name, health_probe)
        old = ep.policy_view()
        overridden = bool(old.flags & lib.SG_POL_OVERRIDDEN)
        if created or (old.fingerprint == policy.fingerprint and not overridden) \
                or on_conflict == "keep":
            ep.policy, ep.key_allow = policy, None  # execute(key=) re-reads the keyed limit
            return
        new = policy.fill_view(ffi.new("struct sg_policy_view *"))
        diff = policychange.changes(old, new)
        if on_conflict == "raise" and old.fingerprint != policy.fingerprint:
            raise PolicyConflictError(
                f"endpoint {name!r} already exists in segment {self.name!r} with another policy "
                f"({policychange.describe(diff)}); pass on_conflict='replace' to replace it "
                "for every process")
        rc = publish_policy(ep.h, new, f"endpoint {name!r}", self.segment)
        if rc != lib.SG_OK:
            raise ep.rc_error(rc)
        change_rate(lambda: lib.sg_limiter_retune_at(ep.h.slot, self.segment.now_ns()),
                    f"new rate of {name!r}", self.name)   # the debt is kept in tokens
        ep.sync_bulkhead()
        ep.policy, ep.key_allow = policy, None  # execute(key=) re-reads the keyed limit
        if on_conflict is None:
            what = "restored the registered policy over a CLI override" if \
                old.fingerprint == policy.fingerprint else "replaced the policy"
            warnings.warn(f"endpoint {name!r} of segment {self.name!r}: {what} for every "
                          f"process ({policychange.describe(diff)})",
                          policychange.PolicyChangedWarning, stacklevel=2)
        if self.on_policy_change is not None:
            self.on_policy_change(name, diff)

    def _register(self, name: str, policy: Policy) -> tuple[Endpoint, bool]:
        raw = validate_endpoint(name)
        view = policy.fill_view(ffi.new("struct sg_policy_view *"))
        idx, claim = ffi.new("uint32_t *"), ffi.new("uint64_t *")
        deadline = time.monotonic() + _slots.REGISTER_WAIT
        seg = self.segment
        while True:
            rc = lib.sg_table_register(seg.base, seg.size, raw, len(raw), view, os.getpid(),
                                       idx, claim)
            if rc == lib.SG_E_FULL and reclaim_abandoned(seg):
                continue
            if rc != lib.SG_E_BUSY:
                break
            # a claim is in the way: dead owner -> free it; stalled -> set it aside
            if judge_claim(seg, idx[0], claim[0]):
                continue
            if time.monotonic() > deadline:
                raise ShmguardError(f"endpoint {name!r}: a slot claim stayed busy")
            time.sleep(random.uniform(0.0002, 0.001))  # jitter: two claimants never lockstep
        if rc == lib.SG_E_FULL:
            raise CapacityError(f"cannot register endpoint {name!r}: segment {self.name!r} is "
                                f"full ({seg.capacity} slots); create it with a larger capacity")
        _capi.check(rc, f"register {name!r}", self.name)
        ep = self._bind(name, idx[0], policy)
        ep.sync_bulkhead()
        return ep, rc == lib.SG_CREATED

    def _bind(self, name: str, index: int, policy: Policy) -> Endpoint:
        with self._lock:
            ep = self._eps.get(name)
            if ep is None or ep.index != index or lib.sg_handle_check(ep.h) != lib.SG_OK:
                ep = Endpoint(self.segment, self._events, name, index, policy)
                self._eps[name] = ep
        return ep

    def _endpoint(self, name: str, create: bool = True) -> Endpoint:
        """The endpoint ``name`` of the segment; absent: registered with ``default_policy``
        if the service has one and ``create``, else :class:`UnknownEndpointError`."""
        if self._closed:
            raise ServiceClosedError(f"segment {self.name!r} is closed in this process")
        ep = self._eps.get(name)
        if ep is not None and lib.sg_handle_check(ep.h) == lib.SG_OK:
            return ep
        raw = validate_endpoint(name)
        seg, idx = self.segment, ffi.new("uint32_t *")
        rc = lib.sg_table_find(seg.base, seg.size, raw, len(raw), idx)
        if rc == lib.SG_OK:
            return self._bind(name, idx[0], ep.policy if ep is not None else self.default_policy)
        if rc != lib.SG_E_NOT_FOUND:
            _capi.check(rc, f"find {name!r}", self.name)
        if create and self.implicit_policy is not None:
            return self._register(name, self.implicit_policy)[0]
        raise UnknownEndpointError(
            f"endpoint {name!r} does not exist in segment {self.name!r}; register it first "
            "(register_endpoint), or create the service with default_policy= to register "
            "endpoints on first use")

    def unregister_endpoint(self, name: str) -> None:
        """Removes endpoint ``name`` from the segment, for every process; its slot becomes reusable.

        Every process still holding it (a handle, a cached endpoint, a bulkhead
        ticket) gets :class:`EndpointRemovedError` on its next call, never the
        state of an endpoint that later reuses the slot; ``execute`` by name
        looks the name up again.

        :raises UnknownEndpointError: no endpoint of that name exists.
        """
        raw = validate_endpoint(name)
        seg = self.segment
        rc = lib.sg_table_unregister(seg.base, seg.size, raw, len(raw))
        if rc == lib.SG_E_NOT_FOUND:
            raise UnknownEndpointError(f"endpoint {name!r} does not exist in segment {self.name!r}")
        _capi.check(rc, f"unregister {name!r}", self.name)
        with self._lock:
            self._eps.pop(name, None)

    def set_health_probe(self, endpoint: str, probe: Callable[[], Any] | None) -> None:
        """Lets ``probe()`` stand in for real traffic as the half-open probe.

        When this process gets a probe permit, it runs ``probe()`` (an
        exception or a false result is a failure) instead of the caller's
        call; if that closes the breaker the call proceeds, otherwise it is
        rejected with :class:`CircuitOpenError`. Per process.
        """
        if probe is not None and not callable(probe):
            raise PolicyError(f"health_probe must be callable, got {probe!r}")
        self._endpoint(endpoint).probe = probe

    def endpoints(self) -> list[str]:
        """Returns the names of every endpoint in the segment (all processes)."""
        seg, out = self.segment, []
        v = ffi.new("struct sg_slot_view *")
        for i in range(seg.refresh().capacity):
            if lib.sg_slot_snapshot(seg.base, seg.size, i, v) == 0 and v.kind == lib.SG_SLOT_READY:
                out.append(ffi.unpack(v.name, v.name_len).decode("ascii", "replace"))
        return sorted(out)

