"""Limiter promises across rate changes, cancels and queues (issue 10: items 6-9), explicit time."""
from __future__ import annotations

import pytest

import shmguard as sg
from shmguard._capi import ffi, lib

MS = 1_000_000
S = 1_000_000_000
T0 = 10**12
HIGH = 2


def slot_of(svc, name, policy):
    svc.register_endpoint(name, policy)
    return svc._eps[name].h.slot


def decide(slot, t_ms, cost=1, prio=HIGH, max_wait_ns=-1):
    d = ffi.new("struct sg_decision *")
    rc = lib.sg_limiter_decide_at(slot, T0 + int(t_ms * MS), cost, prio, max_wait_ns, d)
    return rc, d


def drain(slot, t_ms, prio=HIGH):
    """Admits at t_ms until refused; returns how many were admitted."""
    n = 0
    while decide(slot, t_ms, prio=prio)[0] == 0:
        n += 1
    return n


def view(slot, t_ms, prio=HIGH):
    v = ffi.new("struct sg_limiter_view *")
    assert lib.sg_limiter_snapshot_at(slot, T0 + int(t_ms * MS), prio, v) == 0
    return v


# -- item 8: cancel refunds what the reservation took ------------------------------------

def test_cancel_at_exactly_the_time_to_act_is_accepted(svc):
    slot = slot_of(svc, "act", sg.Policy(rate=10, burst=1))
    assert decide(slot, 0)[0] == 0
    rc, d = decide(slot, 0, max_wait_ns=S)
    assert rc == 0 and d.act_ns == T0 + 100 * MS
    assert lib.sg_limiter_cancel_at(slot, d.act_ns, (1 << 2) | HIGH, d) == 0   # at act: refunded
    assert decide(slot, 100)[0] == 0                          # so the place at 100 ms is free
    rc, d = decide(slot, 100, max_wait_ns=S)
    assert lib.sg_limiter_cancel_at(slot, d.act_ns + 1, (1 << 2) | HIGH, d) == 0  # past it: used
    assert decide(slot, 200)[0] == lib.SG_R_RATE_LIMITED


def test_cancel_refunds_what_it_took_not_cost_times_the_rate_now(svc):
    """A reservation made at half rate (200 ms a token) and cancelled during recovery."""
    slot = slot_of(svc, "took", sg.Policy(rate=10, burst=1, recovery=1.0))
    assert lib.sg_limiter_scale_at(slot, T0, 500_000) == 0          # 5/s: T = 200 ms
    assert decide(slot, 0)[0] == 0
    rc, d = decide(slot, 0, max_wait_ns=S)                          # waits 200 ms, took 200 ms
    assert rc == 0 and d.delay_ns == 200 * MS and d.took_ns == 200 * MS
    assert lib.sg_limiter_scale_at(slot, T0, 1_000_000) == 0        # recovering from here
    assert lib.sg_limiter_cancel_at(slot, T0 + 150 * MS, (1 << 2) | HIGH, d) == 0
    # exactly its 200 ms came back: the first token's 200 ms still stand
    assert view(slot, 150).wait_ns == pytest.approx(50 * MS, abs=MS)


# -- item 9: retry_after counts the queue -------------------------------------------------

def test_retry_after_counts_queued_reservations(svc):
    svc.register_endpoint("q", sg.Policy(rate=10, burst=1))
    lim = svc.limiter("q")
    for i in range(10):
        assert lim.reserve(max_wait=2.0).ok                          # 10 queued: 0 .. 0.9 s
    with pytest.raises(sg.RateLimitedError) as ei:
        svc.execute("q", lambda: None, priority=sg.Priority.HIGH)
    assert ei.value.retry_after == pytest.approx(1.0, abs=1e-6)
    assert lim.metrics().retry_after == pytest.approx(1.0, abs=1e-6)
