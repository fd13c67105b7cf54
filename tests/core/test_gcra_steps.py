"""GCRA at the C level: step tables with explicit now_ns (rate_test.go style)."""
from __future__ import annotations

import pytest

import shmguard as sg
from shmguard._capi import ffi, lib

MS = 1_000_000
T0 = 10**12
NORMAL, HIGH, LOW, CRIT = 1, 2, 0, 3


def slot_of(svc: sg.ResilienceService, name: str, policy: sg.Policy):
    svc.register_endpoint(name, policy)
    return svc._eps[name].h.slot


def decide(slot, t_ms, cost=1, prio=HIGH, max_wait_ns=-1):
    d = ffi.new("struct sg_decision *")
    rc = lib.sg_limiter_decide_at(slot, T0 + int(t_ms * MS), cost, prio, max_wait_ns, d)
    return rc, d


def tokens(slot, t_ms, prio=HIGH):
    v = ffi.new("struct sg_limiter_view *")
    assert lib.sg_limiter_snapshot_at(slot, T0 + int(t_ms * MS), prio, v) == 0
    return v.tokens


# rate 10/s (T = 100 ms), burst 3, HIGH priority sees the whole burst.
STEPS = [
    # (t_ms, cost, ok, tokens_after)
    (0, 1, True, 2.0),
    (0, 1, True, 1.0),
    (0, 1, True, 0.0),
    (0, 1, False, 0.0),      # burst used up
    (50, 1, False, 0.5),     # half a token has come back: not enough
    (100, 1, True, 0.0),     # one emission interval later: exactly one
    (400, 2, True, 1.0),     # 3 tokens back (capped at burst), take 2
    (400, 2, False, 1.0),    # only 1 left: cost 2 does not conform, nothing taken
    (1000, 3, True, 0.0),    # full again: the whole burst at once
    (10_000, 1, True, 2.0),  # idle time never accrues beyond burst
]


def test_gcra_step_table(svc):
    slot = slot_of(svc, "steps", sg.Policy(rate=10, burst=3))
    for t_ms, cost, ok, after in STEPS:
        rc, _ = decide(slot, t_ms, cost)
        assert (rc == 0) == ok, (t_ms, cost)
        assert tokens(slot, t_ms) == pytest.approx(after, abs=1e-6), (t_ms, cost)


def test_priorities_are_tolerances(svc):
    # burst 10: LOW sees 5, NORMAL 8, HIGH 10, CRITICAL 11
    slot = slot_of(svc, "prio", sg.Policy(rate=1, burst=10))
    admitted = {p: 0 for p in (LOW, NORMAL, HIGH, CRIT)}
    for p in (LOW, NORMAL, HIGH, CRIT):
        while decide(slot, 0, 1, p)[0] == 0:
            admitted[p] += 1
    # each priority fills up to its own tolerance, on top of the lower ones
    assert admitted == {LOW: 5, NORMAL: 3, HIGH: 2, CRIT: 1}


def test_reserve_reports_exact_delay_and_cancel_refunds(svc):
    slot = slot_of(svc, "res", sg.Policy(rate=10, burst=1))
    assert decide(slot, 0)[0] == 0
    rc, d = decide(slot, 0, max_wait_ns=50 * MS)          # needs 100 ms: refused
    assert rc == lib.SG_R_RATE_LIMITED and d.delay_ns == 100 * MS
    rc, d = decide(slot, 0, max_wait_ns=100 * MS)         # fits: reserved
    assert rc == 0 and d.delay_ns == 100 * MS and d.act_ns == T0 + 100 * MS
    rc2, d2 = decide(slot, 0, max_wait_ns=10**9)          # queued behind it
    assert rc2 == 0 and d2.delay_ns == 200 * MS
    # cancelling the first refunds nothing: a later reservation depends on it
    assert lib.sg_limiter_cancel_at(slot, T0 + 10 * MS, (1 << 2) | HIGH, d) == 0
    rc3, d3 = decide(slot, 10, max_wait_ns=10**9)
    assert d3.delay_ns == 290 * MS
    # cancelling the newest one gives its place back
    assert lib.sg_limiter_cancel_at(slot, T0 + 10 * MS, (1 << 2) | HIGH, d3) == 0
    rc4, d4 = decide(slot, 10, max_wait_ns=10**9)
    assert d4.delay_ns == 290 * MS


def test_cost_above_burst_is_an_error(svc):
    slot = slot_of(svc, "cost", sg.Policy(rate=10, burst=3))
    assert decide(slot, 0, cost=4)[0] == lib.SG_E_COST
    assert decide(slot, 0, cost=3)[0] == 0
    lim = svc.limiter("cost")
    with pytest.raises(sg.PolicyError, match=r"wait\(cost=5\) exceeds burst 3 of limiter 'cost'"):
        lim.wait(cost=5)


def test_adaptive_rate_drops_at_once_and_recovers_gradually(svc):
    slot = slot_of(svc, "adapt", sg.Policy(rate=100, burst=1, recovery=10.0, rate_floor=0.1))
    v = ffi.new("struct sg_limiter_view *")

    def rate_at(t_s):
        lib.sg_limiter_snapshot_at(slot, T0 + int(t_s * 1e9), HIGH, v)
        return v.effective_rate

    assert rate_at(0) == pytest.approx(100)
    assert lib.sg_limiter_scale_at(slot, T0, 400_000) == 0   # health 0.4
    assert rate_at(0) == pytest.approx(40, rel=1e-3)          # at once
    assert lib.sg_limiter_scale_at(slot, T0, 1_000_000) == 0  # healthy again
    assert rate_at(0) == pytest.approx(40, rel=1e-2)
    assert rate_at(5) == pytest.approx(70, rel=2e-2)          # half way through recovery
    assert rate_at(11) == pytest.approx(100, rel=1e-3)
    assert lib.sg_limiter_scale_at(slot, T0 + 20 * 10**9, 0) == 0  # floor holds
    assert rate_at(20) == pytest.approx(10, rel=1e-3)


def test_extreme_rates_saturate(svc):
    slot = slot_of(svc, "slow", sg.Policy(rate=1e-9, burst=1))   # one per 31.7 years
    assert decide(slot, 0)[0] == 0
    assert decide(slot, 0)[0] == lib.SG_R_RATE_LIMITED
    assert decide(slot, 10**11)[0] == lib.SG_R_RATE_LIMITED       # 3 years later: not yet
    assert decide(slot, 10**12)[0] == 0                            # 31.7 years later: one more
    slot = slot_of(svc, "wide", sg.Policy(rate=1e9, burst=2**31))
    assert decide(slot, 0, cost=2**31)[0] == 0                     # whole burst at once
    assert decide(slot, 0)[0] == lib.SG_R_RATE_LIMITED
    with pytest.raises(sg.PolicyError, match="horizon"):
        sg.Policy(rate=1e-9, burst=2**31)
    slot = slot_of(svc, "fast", sg.Policy(rate=1e9, burst=1))
    assert decide(slot, 0)[0] == 0
    assert decide(slot, 0)[0] == lib.SG_R_RATE_LIMITED
    assert decide(slot, 0.000001)[0] == 0            # 1 ns later
    with pytest.raises(sg.PolicyError, match="rate"):
        sg.Policy(rate=1e12)
