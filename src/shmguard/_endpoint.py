"""The process-local binding of one endpoint: its slot handle, bound C calls and reads.

An :class:`Endpoint` is what the handles (:class:`~shmguard.breaker.Breaker`,
:class:`~shmguard.limiter.Limiter`), the facade and the asyncio doors share.
It holds the segment, the slot handle and the process-local policy (the
exception classification cannot live in shared memory), and it reads state
only through C snapshot calls. It never refers back to the facade: the
callbacks it fires live in an :class:`~shmguard._events.Events` object.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable, NoReturn

from shmguard import _capi, overload, probes
from shmguard._capi import ffi, lib
from shmguard.errors import (CircuitOpenError, EndpointRemovedError, InvalidNameError, PolicyError,
                             ServiceClosedError, ShmguardError, UnknownEndpointError)
from shmguard.policy import Outcome, Policy, Priority
from shmguard.stats import (BreakerMode, BreakerSnapshot, BreakerState, BulkheadStats,
                            EndpointStats, LimiterMetrics, Probe, RetryBudgetStats)

if TYPE_CHECKING:
    from shmguard._events import Events
    from shmguard.segment import Segment

__all__ = ["Endpoint", "validate_endpoint", "HO_FLAG", "LEASE_BITS", "NS", "STATES"]

NS = 1_000_000_000
LEASE_BITS = 0xF << 34  # token bits naming a half-open probe lease
HO_FLAG = 1 << 33       # token bit: this admission moved the breaker to half-open
RECLAIM_EVERY = 0.05    # seconds between two scans for dead probe holders
STATES = {0: (BreakerState.CLOSED, BreakerMode.NORMAL), 1: (BreakerState.OPEN, BreakerMode.NORMAL),
          2: (BreakerState.HALF_OPEN, BreakerMode.NORMAL),
          3: (BreakerState.OPEN, BreakerMode.FORCED_OPEN),
          4: (BreakerState.CLOSED, BreakerMode.FORCED_CLOSED),
          5: (BreakerState.CLOSED, BreakerMode.METRICS_ONLY)}


def validate_endpoint(name: object) -> bytes:
    """Returns the endpoint name as bytes; raises :class:`InvalidNameError`."""
    if not isinstance(name, str):
        raise InvalidNameError(f"endpoint name must be a str, got {name!r}")
    if not name:
        raise InvalidNameError("endpoint name must not be empty")
    if not name.isascii() or not name.isprintable():
        raise InvalidNameError(f"endpoint name {name!r} must be printable ASCII")
    raw = name.encode("ascii")
    if len(raw) > lib.SG_NAME_MAX:
        raise InvalidNameError(f"endpoint name {name[:20]!r}... is {len(raw)} bytes; "
                               f"the limit is {lib.SG_NAME_MAX}")
    return raw


class Endpoint:
    """Process-local view of one slot: handle, bound C calls, local policy, reads."""

    __slots__ = ("name", "index", "h", "hp", "policy", "seg", "events", "admit", "record",
                 "acquire", "allow1", "allow_cp", "next_reclaim", "next_metrics", "probe",
                 "next_bh", "key_allow")

    def __init__(self, seg: Segment, events: Events, name: str, index: int,
                 policy: Policy) -> None:
        self.seg = seg
        self.events = events
        self.name = name
        self.index = index
        self.policy = policy
        self.h = ffi.new("struct sg_handle *")
        raw = name.encode("ascii")
        rc = lib.sg_handle_bind(self.h, seg.base, seg.size, index, raw, len(raw))
        if rc == lib.SG_E_NOT_FOUND:  # removed (or replaced) between the lookup and here
            raise UnknownEndpointError(f"endpoint {name!r} does not exist in segment {seg.name!r}")
        _capi.check(rc, "handle", seg.name)
        self.bind()
        self.next_reclaim = 0.0
        self.next_metrics = 0.0
        self.next_bh = 0.0
        self.probe: Callable[[], Any] | None = None
        # execute(key=)'s keyed allow, cached for the C method (csrc/hot_service.c);
        # whoever assigns self.policy sets it back to None
        self.key_allow: Any = None

    def bind(self) -> None:
        self.admit, self.record, self.acquire = lib.sg_admit, lib.sg_breaker_record, lib.sg_breaker_acquire
        self.allow1, self.allow_cp = lib.sg_allow, lib.sg_allow_cp
        self.hp = int(ffi.cast("uintptr_t", self.h))  # the handle's address, for _hot

    def unbind(self) -> None:
        from shmguard import _bulkwait
        _bulkwait.stop(self)  # its asyncio watcher thread first: it may be asleep on the slot
        self.h.slot = ffi.NULL  # the C doors check it: never touch the unmapped slot
        name = self.seg.name

        def closed(*_: Any) -> Any:
            raise ServiceClosedError(f"segment {name!r} is closed in this process")
        self.admit = self.record = self.acquire = self.allow1 = self.allow_cp = closed
        self.hp = 0  # _hot calls closed_error() instead of touching the unmapped slot

    # -- called back by shmguard._hot.execute on its uncommon paths -------------
    def closed_error(self) -> NoReturn:
        raise ServiceClosedError(f"segment {self.seg.name!r} is closed in this process")

    def live_slot(self) -> Any:
        """The slot, while this handle's endpoint exists; else raises (closed or removed)."""
        if lib.sg_handle_check(self.h) != lib.SG_OK:
            raise self.rc_error(lib.SG_E_GONE)
        return self.h.slot

    def slow_admit(self, tok: int, cp: int) -> int:
        """A rejection or a probe permit: raise, reclaim, or run the health probe."""
        from shmguard import _admission
        priority = Priority(cp & 3)
        if tok < 0:
            tok = _admission.admit_slow(self, tok, priority, None)
        else:
            self.admitted(tok)
        if tok & LEASE_BITS and self.probe is not None:
            tok = _admission.probe_instead(self, tok, priority, None)
        return tok

    def admitted(self, tok: int) -> int:
        """Reports OPEN -> HALF_OPEN if admitting ``tok`` made it (once, at admission)."""
        if tok & HO_FLAG:
            self.events.transition(self, lib.SG_T_TO_HALF_OPEN, False)
        return tok

    def slow_bulkhead(self, bt: int, tok: int, cp: int) -> int:
        """The bulkhead was full (or its quota is due a recount): wait, reclaim, or raise.

        Waits up to the policy's ``max_wait``. On refusal the breaker's probe
        permit (if ``tok`` holds one) is given back before raising.
        """
        from shmguard import _tickets
        if bt == lib.SG_E_GONE:
            raise self.rc_error(bt)
        try:
            if bt >= 0:  # granted; the quota asks for a recount of the processes
                try:
                    _tickets.refresh_quota(self)
                except BaseException:
                    lib.sg_bulkhead_release(self.h, bt)
                    raise
                return bt
            if bt != _tickets.FULL:
                raise self.rc_error(bt)
            return _tickets.take(self, (cp & 3) | _tickets.QUIET, None)
        except BaseException:
            lib.sg_release_probe(self.h, tok)
            raise

    async def slow_bulkhead_async(self, guard: Any, bt: int, tok: int, cp: int) -> Any:
        """:meth:`slow_bulkhead` for the C guard's ``async with``: awaits, never blocks the loop."""
        from shmguard import aio
        return guard._entered(tok, await aio.bulkhead_slow(self, tok, Priority(cp & 3), bt))

    def refresh_bulkhead(self) -> None:
        """Counts the processes attached to the segment for a quota (shmguard._hot asks)."""
        from shmguard import _tickets
        _tickets.refresh_quota(self)

    def sync_bulkhead(self) -> None:
        """Makes the slot's ticket limit follow its policy (and counts processes for a quota)."""
        lib.sg_bulkhead_sync_at(self.live_slot(), self.seg.now_ns())
        if self.policy_view().quota_ppm:
            from shmguard import _tickets
            _tickets.refresh_quota(self)

    def record_success(self, tok: int) -> None:
        t = self.record(self.h, tok | Outcome.SUCCESS)
        if t or self.events.on_metrics_update is not None:
            self.events.after(self, t, tok)

    def record_exception(self, exc: BaseException, tok: int) -> None:
        outcome = self.policy.classify(exc) if isinstance(exc, Exception) else Outcome.IGNORE
        t = self.record(self.h, tok | outcome)
        if outcome == Outcome.FAILURE and self.policy.throttle_on:  # SG_POL_THROTTLE_ON
            lib.sg_throttle_report(self.h, self.policy.is_overload(exc))
        if t or self.events.on_metrics_update is not None:
            self.events.after(self, t, tok)

    def record_outcome(self, tok: int, outcome: int, overload: bool | None = None) -> None:
        t = self.record(self.h, tok | outcome)
        if outcome == Outcome.FAILURE and self.policy.throttle_on:  # no exception: overload
            lib.sg_throttle_report(self.h, 1 if overload is None else int(overload))
        elif outcome == Outcome.IGNORE and overload:  # a refusal that is no breaker failure
            lib.sg_throttle_report(self.h, 1)
        if t or self.events.on_metrics_update is not None:
            self.events.after(self, t, tok)

    def after_record(self, t: int, tok: int) -> None:
        self.events.after(self, t, tok)

    def permit_after(self, t: int, tok: int) -> None:
        """A two-step permit's outcome made a transition (or was refused): report it."""
        if t < 0:
            raise self.rc_error(t)
        self.events.transition(self, t & 7, bool(tok & LEASE_BITS))

    # -- breaker-only permits ---------------------------------------------------
    def acquire_permit(self) -> int:
        """A breaker-only token; if every probe permit is out, first frees dead holders'."""
        tok = int(self.acquire(self.h))
        if tok == lib.SG_R_PROBES_FULL and self.reclaim_probes():
            tok = int(self.acquire(self.h))
        return tok

    def reclaim_probes(self) -> int:
        """Frees half-open permits whose holder died; returns how many."""
        slot = self.live_slot()  # raises once closed or removed
        now = time.monotonic()
        if now < self.next_reclaim:
            return 0
        self.next_reclaim = now + RECLAIM_EVERY
        snap = self.breaker_snapshot()
        lease = self.policy_view().probe_lease_ns / NS
        freed = 0
        for p in snap.probes:
            if not probes.holder_alive(p.pid, started_before=time.time() - (lease - p.lease_left),
                                        seg=self.seg):
                freed += lib.sg_breaker_reclaim(slot, p.index, p.word) == lib.SG_OK
        return freed

    def force(self, state: int) -> None:
        """Moves the breaker to a manual ``state``; reports a change to ``on_state_change``."""
        before = self.breaker_snapshot().state
        rc = lib.sg_breaker_force_at(self.live_slot(), self.seg.now_ns(), state)
        if rc == lib.SG_E_ARG:
            raise self.rc_error(rc)
        after = self.breaker_snapshot().state
        if after != before and self.events.on_state_change is not None:
            self.events.on_state_change(self.name, before, after)

    # -- reads (one C snapshot each) ----------------------------------------------
    def policy_view(self) -> Any:
        self.seg.base  # raises once closed: never touch an unmapped slot
        v = ffi.new("struct sg_policy_view *")
        rc = lib.sg_policy_read(self.h, v)
        if rc != lib.SG_OK:
            raise self.rc_error(rc)
        return v

    def breaker_snapshot(self) -> BreakerSnapshot:
        v = ffi.new("struct sg_breaker_view *")
        _capi.check(lib.sg_breaker_snapshot_at(self.live_slot(), self.seg.now_ns(), v), "breaker",
                    self.seg.name)
        state, mode = STATES[v.state]
        pr = tuple(Probe(v.probe_pid[i], v.probe_lease_left_ns[i] / NS, i, v.probe_word[i])
                   for i in range(lib.SG_MAX_PROBES) if v.probe_pid[i])
        return BreakerSnapshot(state, mode, v.generation, v.state_age_ns / NS,
                               v.open_remaining_ns / NS, v.calls, v.failures, v.slow,
                               v.threshold_ppm / 1e6, v.baseline_ppm / 1e6,
                               v.half_open_successes, pr, v.opens, v.successes_total,
                               v.failures_total, v.ignored_total, v.rejected_total)

    def limiter_metrics(self, priority: Priority = Priority.HIGH) -> LimiterMetrics:
        v = ffi.new("struct sg_limiter_view *")
        _capi.check(lib.sg_limiter_snapshot_at(self.live_slot(), self.seg.now_ns(), int(priority), v),
                    "limiter", self.seg.name)
        by = {str(p): {"accepted": v.accepted[p], "rejected": v.rejected[p], "waited": v.waited[p]}
              for p in Priority}
        return LimiterMetrics(sum(v.accepted), sum(v.rejected), sum(v.waited), by,
                              v.win_accepted, v.win_rejected, v.win_ns / NS, v.tokens,
                              v.effective_rate, v.scale_ppm / 1e6, v.wait_ns / NS)

    def bulkhead_stats(self) -> BulkheadStats | None:
        self.live_slot()  # raises once closed or removed
        from shmguard import _tickets
        return _tickets.snapshot(self)

    def stats(self) -> EndpointStats:
        """Returns the endpoint's statistics, read from the segment."""
        b = self.breaker_snapshot()
        pv = self.policy_view()
        rate = None if pv.flags & lib.SG_POL_NO_LIMIT else NS / pv.emission_ns
        lim = self.limiter_metrics()
        v = ffi.new("struct sg_budget_view *")
        now, seg = self.seg.now_ns(), self.seg.name
        _capi.check(lib.sg_budget_snapshot_at(self.h.slot, now, v), "budget", seg)
        budget = RetryBudgetStats(v.window_ns / NS, v.attempts, v.retries, v.allowed) \
            if v.window_ns else None
        return EndpointStats(self.name, b.state, b.failure_rate, lim, b, rate, pv.burst,
                             lim.accepted, v.retries_total, v.denied_total, budget,
                             bulkhead=self.bulkhead_stats(),
                             throttle=overload.throttle_stats(self.h.slot, now, seg),
                             prediction=overload.prediction_stats(self.h.slot, now, seg))

    # -- errors ---------------------------------------------------------------------
    def rc_error(self, rc: int) -> ShmguardError:
        if rc == lib.SG_E_GONE:
            if self.seg.closed or self.h.slot == ffi.NULL:
                return ServiceClosedError(f"segment {self.seg.name!r} is closed in this process")
            return EndpointRemovedError(
                f"endpoint {self.name!r} was removed from segment {self.seg.name!r} "
                "(unregister_endpoint or `shmguard rm-endpoint`); get it again by name")
        if rc == lib.SG_E_COST:
            return PolicyError(f"cost exceeds burst {self.policy_view().burst} of "
                               f"endpoint {self.name!r}")
        try:
            _capi.check(rc, f"endpoint {self.name!r}", self.seg.name)
        except ShmguardError as exc:
            return exc
        return ShmguardError(f"endpoint {self.name!r}: unexpected code {rc}")

    def open_error(self) -> CircuitOpenError:
        wait = lib.sg_breaker_retry_after(self.h) / NS
        return CircuitOpenError(self.name, wait, f"circuit of endpoint {self.name!r} is open; "
                                                 f"retry after {wait:.3f}s")
