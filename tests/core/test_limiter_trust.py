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


def test_cancel_after_a_rate_change_gives_back_nothing_more_than_it_took(svc):
    """A reservation made at 10/s; the rate becomes 1/s; cancelling it must not wipe the debt."""
    slot = slot_of(svc, "took", sg.Policy(rate=10, burst=1))
    assert decide(slot, 0)[0] == 0
    rc, d = decide(slot, 0, max_wait_ns=S)                      # waits 100 ms, took 100 ms
    assert rc == 0 and d.took_ns == 100 * MS
    svc.register_endpoint("took", sg.Policy(rate=1, burst=1), replace=True)
    assert lib.sg_limiter_cancel_at(slot, T0 + 10 * MS, (1 << 2) | HIGH, d) == 0
    assert decide(slot, 10)[0] == lib.SG_R_RATE_LIMITED         # 2 tokens of debt stand


def test_cancel_during_recovery_refunds_exactly_what_it_took(svc):
    slot = slot_of(svc, "ramp", sg.Policy(rate=10, burst=1, recovery=1.0))
    assert lib.sg_limiter_scale_at(slot, T0, 500_000) == 0
    assert lib.sg_limiter_scale_at(slot, T0, 1_000_000) == 0      # recovering from 0.5
    assert decide(slot, 0)[0] == 0
    before = view(slot, 10).wait_ns
    rc, d = decide(slot, 10, max_wait_ns=10 * S)
    assert rc == 0 and d.took_ns == 100 * MS                     # a token at the target's T
    assert lib.sg_limiter_cancel_at(slot, T0 + 10 * MS, (1 << 2) | HIGH, d) == 0
    assert view(slot, 10).wait_ns == before


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


# -- item 6: a rate change keeps the debt in tokens ---------------------------------------

def test_lower_rate_by_adjust_rate_keeps_an_exhausted_limiter_exhausted(svc):
    """Rate 100, burst 100, exhausted at one instant: adjust_rate(0.1) admits nothing more."""
    slot = slot_of(svc, "a", sg.Policy(rate=100, burst=100, rate_floor=0.0))
    assert drain(slot, 0) == 100
    svc.adjust_rate("a", 0.1)
    assert drain(slot, 0) == 0
    assert drain(slot, 99) == 0                                 # 10/s now: one token is 100 ms
    assert drain(slot, 101) == 1


def test_health_zero_does_not_unlimit_or_lock_out(svc):
    slot = slot_of(svc, "z", sg.Policy(rate=1000, burst=1000, rate_floor=0.0, recovery=1.0))
    assert drain(slot, 0) == 1000
    svc.adjust_rate("z", 0.0)                                   # 1 ppm: 0.001/s
    assert drain(slot, 0) == 0                                  # not 1,900 more
    assert drain(slot, 60_000) == 0                             # a minute: still in debt
    svc.adjust_rate("z", 1.0)                                   # healthy again at 60 s
    # the 1,000-token debt is repaid at the recovering rate: gone within about 1.5 s
    assert drain(slot, 60_000 + 1_600) > 0
    v = view(slot, 63_000)
    assert v.scale_ppm == 1_000_000 and v.tokens == pytest.approx(1000, abs=1)


def test_replace_with_a_lower_rate_keeps_the_debt_in_tokens(svc):
    slot = slot_of(svc, "r", sg.Policy(rate=100, burst=100))
    assert drain(slot, 0) == 100
    svc.register_endpoint("r", sg.Policy(rate=10, burst=100), replace=True)
    assert drain(slot, 0) == 0
    assert drain(slot, 99) == 0
    assert drain(slot, 101) == 1                                # 10/s from here


def test_raised_rate_serves_the_backlog_at_the_new_rate(svc):
    """1/s -> 1000/s: a 1-token debt is 1 ms at the new rate, not 1 s."""
    slot = slot_of(svc, "up", sg.Policy(rate=1, burst=1))
    assert drain(slot, 0) == 1
    svc.register_endpoint("up", sg.Policy(rate=1000, burst=1), replace=True)
    assert drain(slot, 0) == 0
    assert drain(slot, 1) == 1
    assert drain(slot, 1.5) == 0
    assert drain(slot, 2) == 1


def test_cli_set_rate_keeps_the_debt_in_tokens(svc):
    from shmguard.cli import control
    slot = slot_of(svc, "cli", sg.Policy(rate=100, burst=100))
    assert drain(slot, 0) == 100
    control.set_rate(svc.segment, "cli", 10.0, None)
    assert drain(slot, 0) == 0 and drain(slot, 101) == 1


# -- item 7: the recovery ramp never wraps --------------------------------------------------

def test_recovery_is_over_for_good(svc):
    """Today's ramp word kept its start in 24 bits of 2^22 ns: the drop came back 19.5 h later."""
    slot = slot_of(svc, "w", sg.Policy(rate=100, burst=1, recovery=10.0, rate_floor=0.1))
    assert lib.sg_limiter_scale_at(slot, T0, 100_000) == 0
    assert lib.sg_limiter_scale_at(slot, T0, 1_000_000) == 0
    for t_s in (11, 2**46 / 1e9 + 1, 2**46 / 1e9 + 5, 86400 * 400):
        v = view(slot, t_s * 1000)
        assert (v.scale_ppm, v.effective_rate) == (1_000_000, pytest.approx(100)), t_s


# -- a change left half done (its changer died) ---------------------------------------------

TAT_W, RCHANGE_W = 14 * 8, 14 * 8 + 1     # line 14 of the slot, in uint64 words


def test_a_change_whose_changer_died_is_finished_by_the_others(svc):
    """Killed after publishing its regime, before converting the TAT, still holding its claim."""
    slot = slot_of(svc, "dead", sg.Policy(rate=100, burst=100, rate_floor=0.0))
    words = ffi.cast("uint64_t *", slot)
    assert drain(slot, 0) == 100
    tat_before = words[TAT_W]
    assert lib.sg_limiter_scale_at(slot, T0, 100_000) == 0          # 10/s
    done = words[RCHANGE_W]
    seq, active = (done >> 40) & 0x3FFFFF, (done >> 62) & 1
    deadline = ((T0 + S) >> 20) & ((1 << 40) - 1)
    words[TAT_W] = tat_before                                        # not converted
    words[RCHANGE_W] = (1 << 63) | (active << 62) | ((seq - 1) << 40) | deadline
    assert drain(slot, 0) == 0             # a decider converts the TAT itself: still exhausted
    assert lib.sg_limiter_scale_at(slot, T0, 200_000) == lib.SG_E_BUSY      # claim not due
    assert lib.sg_limiter_scale_at(slot, T0 + 2 * S, 1_000_000) == lib.SG_E_BUSY  # finished it
    assert (words[RCHANGE_W] >> 63) == 0
    assert lib.sg_limiter_scale_at(slot, T0 + 2 * S, 1_000_000) == 0        # and goes on
    assert drain(slot, 2000) == 20         # 2 s at 10/s repaid 20 of the 100 tokens of debt
