"""The service's life cycle and its endpoint table: create or attach, register, close.

Endpoint name -> :class:`~shmguard._endpoint.Endpoint` is cached per process,
so the hot path is one dict lookup. Registration claims a slot in C (one
process wins, every other one finds the same slot) and publishes policies.
"""
from __future__ import annotations

import os
import threading
import time
from typing import Any, Callable

from shmguard import _capi, probes
from shmguard._capi import ffi, lib
from shmguard._endpoint import NS, Endpoint, validate_endpoint
from shmguard._events import Events
from shmguard.errors import CapacityError, PolicyConflictError, PolicyError, ShmguardError
from shmguard.policy import Policy, PolicyPresets
from shmguard.segment import Segment
from shmguard.stats import BreakerState, EndpointStats

__all__ = ["Registry", "REGISTER_WAIT", "CLAIM_STALE_NS"]

REGISTER_WAIT = 5.0
CLAIM_STALE_NS = 2 * NS


class Registry:
    """Segment, endpoint table, clock and callbacks of one service (see ResilienceService)."""

    def __init__(self, name: str | None = None, *, policy: Policy | None = None,
                 capacity: int = 256, manual_clock: bool = False, allow_foreign: bool = False,
                 create: bool = True) -> None:
        if name is None:
            name = os.environ.get("SHMGUARD_SEGMENT") or "default"
        if policy is not None and not isinstance(policy, Policy):
            raise PolicyError(f"policy must be a shmguard.Policy, got {policy!r}")
        self.default_policy = policy or PolicyPresets.standard()
        self.segment = Segment(name, create=create, capacity=capacity, manual_clock=manual_clock,
                               allow_foreign=allow_foreign)
        self.name = name
        self._eps: dict[str, Endpoint] = {}
        self._lock = threading.Lock()  # guards _eps inserts only (process-local)
        self._events = Events()
        self._keyed: dict[str, Any] = {}  # keyed limiter name -> KeyedLimiter (shmguard.keyed)

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
    def close(self) -> None:
        """Detaches this process; the segment stays for the others."""
        for ep in self._eps.values():
            ep.unbind()
        for kl in self._keyed.values():
            kl.close()
        self.segment.close()

    def unlink(self) -> bool:
        """Removes the segment's name (and its keyed limiters') from the host; reports whether it existed."""
        return self.segment.unlink()

    @property
    def closed(self) -> bool:
        return self.segment.closed

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
                          replace: bool = False,
                          health_probe: Callable[[], Any] | None = None) -> None:
        """Registers ``name`` with ``policy`` (default: the service's).

        Idempotent for the same policy. Another policy for an existing
        endpoint raises :class:`PolicyConflictError` unless ``replace=True``,
        which publishes it to every process.

        :param health_probe: see :meth:`set_health_probe`.
        """
        policy = policy or self.default_policy
        if not isinstance(policy, Policy):
            raise PolicyError(f"policy must be a shmguard.Policy, got {policy!r}")
        ep, created = self._register(name, policy)
        if health_probe is not None:
            self.set_health_probe(name, health_probe)
        if created:
            return
        if ep.policy_view().fingerprint == policy.fingerprint:
            ep.policy = policy
            return
        if not replace:
            raise PolicyConflictError(
                f"endpoint {name!r} already exists in segment {self.name!r} with another policy "
                "(pass replace=True to replace it for every process)")
        new = policy.fill_view(ffi.new("struct sg_policy_view *"))
        deadline = time.monotonic() + REGISTER_WAIT
        while (rc := lib.sg_policy_publish(ep.h, new, os.getpid())) == lib.SG_E_BUSY:
            if time.monotonic() > deadline:
                raise ShmguardError(f"endpoint {name!r}: policy writer lease stayed busy")
            time.sleep(0.001)
        _capi.check(rc, f"publish policy of {name!r}", self.name)
        ep.policy = policy

    def _register(self, name: str, policy: Policy) -> tuple[Endpoint, bool]:
        raw = validate_endpoint(name)
        view = policy.fill_view(ffi.new("struct sg_policy_view *"))
        idx, claim = ffi.new("uint32_t *"), ffi.new("uint64_t *")
        deadline = time.monotonic() + REGISTER_WAIT
        seg = self.segment
        while True:
            rc = lib.sg_table_register(seg.base, seg.size, raw, len(raw), view, os.getpid(),
                                       CLAIM_STALE_NS, idx, claim)
            if rc != lib.SG_E_BUSY:
                break
            # a claim by another process is in the way: is its owner alive?
            if not probes.pid_alive((claim[0] >> 32) & 0x3FFFFFFF):
                lib.sg_table_takeover(seg.base, seg.size, idx[0], claim[0])
                continue
            if time.monotonic() > deadline:
                raise ShmguardError(f"endpoint {name!r}: a slot claim stayed busy")
            time.sleep(0.0005)
        if rc == lib.SG_E_FULL:
            raise CapacityError(f"cannot register endpoint {name!r}: segment {self.name!r} is "
                                f"full ({seg.capacity} slots); create it with a larger capacity")
        _capi.check(rc, f"register {name!r}", self.name)
        with self._lock:
            ep = self._eps.get(name)
            if ep is None or ep.index != idx[0]:
                ep = Endpoint(seg, self._events, name, idx[0], policy)
                self._eps[name] = ep
        return ep, rc == lib.SG_CREATED

    def _endpoint(self, name: str) -> Endpoint:
        ep = self._eps.get(name)
        if ep is None:
            ep, _ = self._register(name, self.default_policy)
        return ep

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
