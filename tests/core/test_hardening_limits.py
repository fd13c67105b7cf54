"""Policies and costs at the extremes: exact arithmetic, no overflow, clear errors.

All on the manual clock (T0 = 1000 s), so every expectation is exact.
"""
from __future__ import annotations

import pytest

import shmguard as sg
from shmguard._capi import ffi, lib

NS = 1_000_000_000
HIGH, CRIT = sg.Priority.HIGH, sg.Priority.CRITICAL


def test_slowest_rate_one_token_per_billion_seconds(svc):
    svc.register_endpoint("slow", sg.Policy(rate=1e-9, burst=1))
    lim = svc.limiter("slow")
    assert lim.allow(1, HIGH)
    assert not lim.allow(1, HIGH)
    r = lim.reserve(1, HIGH)                      # no max_wait: granted, 1e9 s ahead
    assert (r.ok, r.delay) == (True, 1e9)
    r.cancel()                                    # handed back: still exactly empty
    assert lim.tokens(HIGH) == 0.0
    assert not lim.wait(1, timeout=0, priority=HIGH)
    svc.advance(1e9 - 1)
    assert not lim.allow(1, HIGH)
    svc.advance(1)                                # exactly one emission interval later
    assert lim.allow(1, HIGH)
    m = svc.stats("slow").limiter_metrics
    assert (m.accepted, m.rejected) == (2, 3)
    assert svc.stats("slow").rate == pytest.approx(1e-9)


def test_slowest_rate_bounded_by_the_horizon():
    sg.Policy(rate=1e-9, burst=4)                 # 4e18 ns: inside 2**62
    with pytest.raises(sg.PolicyError, match="burst 5 at rate 1e-09/s spans 5e\\+09 s"):
        sg.Policy(rate=1e-9, burst=5)


@pytest.mark.parametrize("rate", [1e12, 1e9 + 1, float("inf"), float("nan"), 0, -1e-9])
def test_rates_beyond_the_clock_or_meaningless_are_refused(rate):
    with pytest.raises(sg.PolicyError, match="rate"):
        sg.Policy(rate=rate)


def test_fastest_rate_with_the_largest_burst(svc):
    svc.register_endpoint("fast", sg.Policy(rate=1e9, burst=2**31))
    lim = svc.limiter("fast")
    assert lim.allow(2**31, HIGH)                 # the whole burst in one call
    assert not lim.allow(1, HIGH)
    svc.advance(1e-9)                             # one nanosecond: one token
    assert lim.allow(1, HIGH)
    assert not lim.allow(1, HIGH)
    svc.advance(2.147483648)                      # 2**31 ns: full again
    assert lim.tokens(HIGH) == 2**31
    crit = 2**31 * 11 // 10                       # CRITICAL: 110% of the burst, exactly
    assert lim.allow(crit, CRIT)
    svc.advance(10)
    with pytest.raises(sg.PolicyError, match=f"exceeds burst {2**31}"):
        lim.allow(crit + 1, CRIT)
    with pytest.raises(sg.PolicyError, match=f"exceeds burst {2**31}"):
        lim.allow(2**31 + 1, HIGH)


@pytest.mark.parametrize("burst", [0, -1, 2**31 + 1, 2**32, 1.5, True])
def test_bursts_outside_1_to_2_31_are_refused(burst):
    with pytest.raises(sg.PolicyError, match="burst"):
        sg.Policy(rate=10, burst=burst)


def test_cost_above_burst_is_an_error_not_a_wait(svc):
    svc.register_endpoint("one", sg.Policy(rate=1, burst=1))
    lim = svc.limiter("one")
    for call in (lambda: lim.allow(2, HIGH), lambda: lim.reserve(2, HIGH),
                 lambda: lim.wait(2, timeout=None, priority=HIGH)):
        with pytest.raises(sg.PolicyError, match=r"\(cost=2\) exceeds burst 1 of limiter 'one'"):
            call()
    # NORMAL sees 80% of a burst of 1, yet any priority may always take one token
    assert lim.allow(1, sg.Priority.LOW)
    assert svc.stats("one").limiter_metrics.accepted == 1


@pytest.mark.parametrize("cost", [0, -1, 2**40, 2.0, "1", None])
def test_meaningless_costs_are_refused(svc, cost):
    svc.register_endpoint("c", sg.Policy(rate=10, burst=10))
    with pytest.raises(sg.PolicyError, match="cost"):
        svc.limiter("c").allow(cost)


def test_huge_cost_saturates_instead_of_wrapping(svc):
    svc.register_endpoint("slow", sg.Policy(rate=1e-9, burst=4))
    slot = svc._eps["slow"].h.slot
    d = ffi.new("struct sg_decision *")
    t0 = 10**12
    # cost * 1e18 ns overflows 64 bits: it must read as "never conforms", not wrap small
    assert lib.sg_limiter_decide_at(slot, t0, 2**39, 2, -1, d) == lib.SG_E_COST
    assert lib.sg_limiter_decide_at(slot, t0, 2**63, 2, -1, d) == lib.SG_E_COST
    assert lib.sg_limiter_decide_at(slot, t0, 4, 2, -1, d) == lib.SG_OK       # 4e18 ns
    assert lib.sg_limiter_decide_at(slot, t0, 1, 2, 0, d) == lib.SG_R_RATE_LIMITED
    assert d.delay_ns == 10**18                                                # exactly 1 T
    # a TAT of t0 + 5e18 ns is past the limiter's 2^62 ns horizon: never stored, refused
    assert lib.sg_limiter_decide_at(slot, t0, 1, 2, 2**63 - 1, d) == lib.SG_R_RATE_LIMITED
    assert (d.delay_ns, d.act_ns) == (10**18, t0 + 10**18)
    assert svc.stats("slow").limiter_metrics.accepted == 1


def test_breaker_numbers_at_their_limits(svc):
    p = sg.Policy(min_requests=2**31, window=10**7, window_buckets=16, open_timeout=10**7,
                  probe_lease=86400 * 20, half_open_max_calls=8, success_threshold=2**20 - 1)
    svc.register_endpoint("big", p)
    br = svc.breaker("big")
    for _ in range(50):
        br.allow().failure()
    assert br.state == sg.BreakerState.CLOSED     # 2**31 calls needed: no overflow trips it
    br.open()
    assert br.snapshot().open_remaining == pytest.approx(1e7, abs=0.01)
    svc.advance(1e7)
    permits = [br.allow() for _ in range(9)]
    assert [q is not None and q.is_probe for q in permits] == [True] * 8 + [False]
    lease = br.snapshot().probes[0].lease_left
    assert 86400 * 20 - 0.002 <= lease <= 86400 * 20       # never more than the lease
    for q in permits[:8]:
        q.success()
    assert br.snapshot().half_open_successes == 8
    with pytest.raises(sg.PolicyError, match="success_threshold"):
        sg.Policy(success_threshold=2**20)
    with pytest.raises(sg.PolicyError, match="min_requests"):
        sg.Policy(min_requests=2**31 + 1)


def test_backoff_growth_is_capped_not_overflowed(svc):
    svc.register_endpoint("b", sg.Policy(open_timeout=0.001, open_timeout_max=10**7, backoff=1000,
                                         min_requests=1, half_open_max_calls=1))
    br = svc.breaker("b")
    br.allow().failure()                          # opens: 1 ms
    for _ in range(6):                            # each failed probe: x1000, capped at 1e7 s
        svc.advance(br.snapshot().open_remaining + 0.002)
        br.allow().failure()
    assert br.snapshot().open_remaining == pytest.approx(1e7, abs=0.01)


# -- found by fuzzing: ratios above 100% read from a corrupt slot ------------------------

def _policy_u32(svc, ep: str, offset: int, value: int) -> None:
    """Writes a u32 field of both policy buffers of ``ep``'s slot (struct sg_policy_raw)."""
    base = int(ffi.cast("uintptr_t", svc._eps[ep].h.slot))
    for buf in (128, 256):
        ffi.cast("uint32_t *", base + buf + offset)[0] = value


def test_corrupt_jitter_cannot_wrap_the_open_duration(svc):
    svc.register_endpoint("j", sg.Policy(open_timeout=10, jitter=0.5, min_requests=1))
    _policy_u32(svc, "j", 116, 2**32 - 1)         # jitter_ppm: 429496%
    br = svc.breaker("j")
    for _ in range(20):                           # jitter is drawn per generation
        br.open()
        assert br.snapshot().open_remaining <= 20.0
        br.reset()


def test_corrupt_adaptive_ceiling_cannot_stop_the_breaker_opening(svc):
    svc.register_endpoint("a", sg.Policy(min_requests=2, failure_threshold=0.9, adaptive=True))
    _policy_u32(svc, "a", 88, 2**32 - 1)          # adaptive_max_ppm far above 100%
    br = svc.breaker("a")
    assert br.snapshot().threshold <= 1.0
    for _ in range(2):
        br.allow().failure()
    assert br.state == sg.BreakerState.OPEN       # 100% failures always reach the threshold
