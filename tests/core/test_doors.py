"""The two-step doors (limiter.allow, breaker.allow -> Permit, guard) on both paths.

The same assertions hold whether the door runs in C (shmguard._hot) or in
Python (SHMGUARD_NO_HOT=1, see test_paths.py).
"""
from __future__ import annotations

import asyncio

import pytest

import shmguard as sg


def boom() -> None:
    raise ConnectionError("down")


def test_limiter_allow_takes_tokens_until_the_burst_is_gone(svc):
    svc.register_endpoint("a", sg.Policy(rate=1, burst=5))
    lim = svc.limiter("a")
    # NORMAL sees 80 % of the burst (4 tokens); HIGH, with arguments, all 5
    assert [lim.allow() for _ in range(5)] == [True, True, True, True, False]
    assert lim.allow(1, sg.Priority.HIGH) is True and lim.allow(1, sg.Priority.HIGH) is False
    svc.advance(1.0)
    assert lim.allow(1, sg.Priority.HIGH) and not lim.allow()
    with pytest.raises(sg.PolicyError, match=r"allow\(cost=9\) exceeds burst 5 of limiter 'a'"):
        lim.allow(9)
    with pytest.raises(sg.PolicyError, match="cost must be a whole number"):
        lim.allow(0)
    assert svc.stats("a").limiter_metrics.accepted == 6


def test_breaker_permits_count_and_trip(svc):
    svc.register_endpoint("b", sg.Policy(min_requests=2, failure_threshold=0.5, open_timeout=1.0))
    seen = []
    svc.on_state_change = lambda ep, old, new: seen.append((str(old), str(new)))
    br = svc.breaker("b")
    p = br.allow()
    assert isinstance(p, sg.Permit) and not p.is_probe and p.token >= 0
    p.success()
    with pytest.raises(RuntimeError, match="report an outcome once"):
        p.failure()
    br.allow().failure()                                  # 1 of 2 failed: opens
    assert seen == [("closed", "open")] and br.allow() is None
    svc.advance(1.0)
    probe = br.allow()
    assert probe.is_probe and seen[-1] == ("open", "half-open")
    assert br.allow() is None                             # the one probe is out
    probe.done(True)
    assert seen[-1] == ("half-open", "closed")
    s = svc.stats("b").breaker
    assert (s.successes, s.failures) == (2, 1)


def test_released_permit_is_ignored_and_frees_the_probe(svc):
    svc.register_endpoint("r", sg.Policy(min_requests=1, open_timeout=1.0))
    br = svc.breaker("r")
    br.allow().failure()
    svc.advance(1.0)
    p = br.allow()
    p.release()
    p.release()                                           # a second release does nothing
    assert br.allow().is_probe                            # the probe came back
    assert svc.stats("r").breaker.ignored == 1


def test_guard_records_the_blocks_outcome(svc):
    svc.register_endpoint("g", sg.Policy(min_requests=4, failure_threshold=0.5,
                                         failure_exceptions=(ConnectionError,)))
    with svc.guard("g"):
        pass
    with pytest.raises(ValueError):
        with svc.guard("g"):
            raise ValueError("an answer: counts as a success")
    for _ in range(2):
        with pytest.raises(ConnectionError):
            with svc.guard("g"):
                boom()
    with pytest.raises(sg.CircuitOpenError):
        with svc.guard("g"):
            pytest.fail("an open breaker never runs the block")
    b = svc.stats("g").breaker
    assert (b.successes, b.failures, b.rejected, b.state) == (2, 2, 1, sg.BreakerState.OPEN)


def test_async_guard(svc):
    svc.register_endpoint("ag", sg.Policy(rate=1, burst=1))

    async def main() -> list[str]:
        out = []
        for _ in range(2):
            try:
                async with svc.guard("ag"):
                    out.append("ran")
            except sg.RateLimitedError:
                out.append("limited")
        return out
    assert asyncio.run(main()) == ["ran", "limited"]


def test_doors_after_close_raise_a_shmguard_error(segname):
    svc = sg.ResilienceService(segname, capacity=8)
    try:
        svc.register_endpoint("c")
        lim, br, g = svc.limiter("c"), svc.breaker("c"), svc.guard("c")
        permit = br.allow()
        svc.close()
        for door in (lim.allow, br.allow, g.__enter__, permit.success):
            with pytest.raises(sg.ShmguardError, match="closed"):
                door()
    finally:
        svc.unlink()
