"""The limiter's hold (a server's Retry-After) and delay, at the C level with explicit now_ns."""
from __future__ import annotations

import pytest

import shmguard as sg
from shmguard._capi import ffi, lib

MS = 1_000_000
T0 = 10**12
LOW, NORMAL, HIGH, CRIT = 0, 1, 2, 3


def _slot(svc: sg.ResilienceService, policy: sg.Policy):
    svc.register_endpoint("held", policy)
    return svc._eps["held"].h.slot


def _ok(slot, t_ms: float, prio: int = HIGH) -> bool:
    d = ffi.new("struct sg_decision *")
    return lib.sg_limiter_decide_at(slot, T0 + int(t_ms * MS), 1, prio, -1, d) == 0


def _delay_ms(slot, t_ms: float, prio: int = HIGH) -> float:
    out = ffi.new("int64_t *")
    assert lib.sg_limiter_delay_at(slot, T0 + int(t_ms * MS), (1 << 2) | prio, out) == 0
    return out[0] / MS


def test_hold_admits_no_priority_before_its_end(svc: sg.ResilienceService) -> None:
    # rate 10/s (T = 100 ms), burst 4: CRITICAL's tolerance 4.4 T is the largest
    slot = _slot(svc, sg.Policy(rate=10, burst=4))
    assert lib.sg_limiter_hold_at(slot, T0, T0 + 1000 * MS) == 0
    for prio in (LOW, NORMAL, HIGH, CRIT):
        assert not _ok(slot, 999, prio), prio
    assert _delay_ms(slot, 0, CRIT) == 1000
    assert _delay_ms(slot, 0, HIGH) == pytest.approx(1040)   # 0.4 T less tolerance
    assert _ok(slot, 1000, CRIT)                            # CRITICAL first, at the end
    assert not _ok(slot, 1000, HIGH)                         # then the rate, empty burst
    assert _ok(slot, 1140, HIGH)


# (t_ms of the hold call, hold until t_ms, then: first HIGH admission at t_ms)
STEPS = [
    (0, 500, 540),      # plain hold: until + (tol_crit - tol_high)
    (0, 0, 0),          # a hold that ended already does nothing
    (200, 100, 200),    # until in the past: nothing
]


@pytest.mark.parametrize("at, until, first", STEPS)
def test_hold_step_table(svc: sg.ResilienceService, at: int, until: int, first: int) -> None:
    slot = _slot(svc, sg.Policy(rate=10, burst=4))
    assert lib.sg_limiter_hold_at(slot, T0 + at * MS, T0 + until * MS) == 0
    assert _delay_ms(slot, at) == pytest.approx(max(0, first - at))
    if first > at:
        assert not _ok(slot, first - 1)
    assert _ok(slot, first)


def test_hold_never_moves_the_schedule_back(svc: sg.ResilienceService) -> None:
    slot = _slot(svc, sg.Policy(rate=10, burst=4))
    assert lib.sg_limiter_hold_at(slot, T0, T0 + 2000 * MS) == 0
    assert lib.sg_limiter_hold_at(slot, T0, T0 + 500 * MS) == 0   # shorter: no effect
    assert _delay_ms(slot, 0, CRIT) == 2000


def test_no_limit_has_nothing_to_hold(svc: sg.ResilienceService) -> None:
    slot = _slot(svc, sg.Policy())
    assert lib.sg_limiter_hold_at(slot, T0, T0 + 2000 * MS) == 0
    assert _ok(slot, 1) and _delay_ms(slot, 1) == 0


def test_python_hold_and_delay_and_exact_retry_after(svc: sg.ResilienceService) -> None:
    svc.register_endpoint("api", sg.Policy(rate=10, burst=4))
    lim = svc.limiter("api")
    lim.hold(3.0)
    assert lim.delay(priority=sg.Priority.CRITICAL) == 3.0
    with pytest.raises(sg.RateLimitedError) as info:
        svc.execute("api", lambda: 1, priority=sg.Priority.CRITICAL)
    assert info.value.retry_after == 3.0   # the hold's end, not one emission interval
    svc.advance(3.0)
    assert svc.execute("api", lambda: 1, priority=sg.Priority.CRITICAL) == 1
    with pytest.raises(sg.PolicyError, match="hold seconds"):
        lim.hold(-1)
