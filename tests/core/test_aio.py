"""asyncio doors: execute_async, protect on ``async def``, ``async with guard``.

Manual-clock services, so the limiter's tokens only move when the test says;
waits still sleep (briefly) on the loop's real clock.
"""
from __future__ import annotations

import asyncio
import inspect
import os
from typing import Any

import pytest

import shmguard as sg
from shmguard import aio

HIGH = sg.Priority.HIGH


async def value(x: Any) -> Any:
    return x


async def fail() -> None:
    raise ConnectionError("down")


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def test_execute_async_records_outcomes(svc: sg.ResilienceService) -> None:
    async def main() -> None:
        assert await aio.execute_async(svc, "dep", value, 7) == 7
        with pytest.raises(ConnectionError):
            await aio.execute_async(svc, "dep", fail)
    run(main())
    b = svc.breaker("dep").snapshot()
    assert (b.successes, b.failures) == (1, 1)


@pytest.mark.skipif(not hasattr(sg.ResilienceService, "execute_async"),
                    reason="ResilienceService.execute_async is not bound yet")
def test_service_method(svc: sg.ResilienceService) -> None:
    assert run(svc.execute_async("dep", value, 3, priority=HIGH)) == 3  # type: ignore[attr-defined]


def test_binds_as_a_service_method(svc: sg.ResilienceService,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sg.ResilienceService, "execute_async", aio.execute_async, raising=False)
    assert run(svc.execute_async("dep", value, 4, timeout=1.0)) == 4  # type: ignore[attr-defined]


def test_protect_and_guard(svc: sg.ResilienceService) -> None:
    @svc.protect("dep")
    async def fetch(x: int) -> int:
        return x + 1

    async def main() -> None:
        assert inspect.iscoroutinefunction(fetch) and fetch.__name__ == "fetch"
        assert await fetch(1) == 2
        async with svc.guard("dep"):
            await asyncio.sleep(0)
        with pytest.raises(ConnectionError):
            async with svc.guard("dep"):
                raise ConnectionError("down")
    run(main())
    b = svc.breaker("dep").snapshot()
    assert (b.successes, b.failures) == (2, 1)


def test_rejections(svc: sg.ResilienceService) -> None:
    svc.register_endpoint("dep", sg.Policy(rate=10, burst=1))
    called = []

    async def body() -> None:
        called.append(1)

    async def main() -> None:
        await aio.execute_async(svc, "dep", body, priority=HIGH)
        with pytest.raises(sg.RateLimitedError):
            await aio.execute_async(svc, "dep", body, priority=HIGH)
        with pytest.raises(sg.RateLimitedError):  # would need 0.1 s
            await aio.execute_async(svc, "dep", body, priority=HIGH, timeout=0.05)
        svc.breaker("dep").force_open()
        with pytest.raises(sg.CircuitOpenError):
            await aio.admit_async(svc, "dep", HIGH, 1.0)
    run(main())
    assert called == [1]
    assert svc.stats("dep").limiter_metrics.rejected == 2


def test_waiting_does_not_block_the_loop(svc: sg.ResilienceService) -> None:
    svc.register_endpoint("dep", sg.Policy(rate=5, burst=1))  # the second call waits 0.2 s

    async def main() -> int:
        await aio.execute_async(svc, "dep", value, 0, priority=HIGH)
        waiter = asyncio.create_task(
            aio.execute_async(svc, "dep", value, 1, priority=HIGH, timeout=1.0))
        ticks = 0
        for _ in range(20):  # a blocked loop would let the waiter finish before tick 1
            await asyncio.sleep(0)
            ticks += not waiter.done()
        assert await waiter == 1
        return ticks
    assert run(main()) == 20
    m = svc.stats("dep").limiter_metrics
    assert (m.accepted, m.waited, m.rejected) == (2, 1, 0)  # one reservation, no polling


def test_cancelling_a_waiter_refunds_its_reservation(svc: sg.ResilienceService) -> None:
    svc.register_endpoint("dep", sg.Policy(rate=10, burst=2))
    lim = svc.limiter("dep")
    assert lim.allow(priority=HIGH) and lim.allow(priority=HIGH)
    before = lim.metrics()
    ran = []

    async def body() -> None:
        ran.append(1)

    async def main() -> None:
        task = asyncio.create_task(aio.execute_async(svc, "dep", body, priority=HIGH,
                                                     timeout=5.0))
        await asyncio.sleep(0)  # the task reserves its place and sleeps 0.1 s
        assert lim.metrics().accepted == before.accepted + 1 and lim.metrics().waited == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    run(main())
    after = lim.metrics()
    assert (after.accepted, after.waited, ran) == (before.accepted, 0, [])
    assert before.tokens == after.tokens == 0.0
    svc.advance(0.1)  # one emission interval: the refunded token is back
    assert lim.tokens() == pytest.approx(1.0)


def test_cancelling_a_waiter_returns_its_probe(svc: sg.ResilienceService) -> None:
    svc.register_endpoint("dep", sg.Policy(rate=10, burst=1, open_timeout=1.0))
    br, lim = svc.breaker("dep"), svc.limiter("dep")
    br.open()
    svc.advance(1.5)
    assert lim.allow(priority=HIGH)  # no token left: the probe will have to wait

    async def main() -> None:
        task = asyncio.create_task(aio.execute_async(svc, "dep", value, 1, priority=HIGH,
                                                     timeout=5.0))
        await asyncio.sleep(0)
        snap = br.snapshot()
        assert snap.state == sg.BreakerState.HALF_OPEN
        assert [p.pid for p in snap.probes] == [os.getpid()]
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert br.snapshot().probes == ()
        svc.advance(0.1)
        assert await aio.execute_async(svc, "dep", value, 2, priority=HIGH) == 2  # the probe
    run(main())
    assert br.state == sg.BreakerState.CLOSED


def test_cancelling_a_running_probe_counts_as_ignored(svc: sg.ResilienceService) -> None:
    svc.register_endpoint("dep", sg.Policy(open_timeout=1.0))
    br = svc.breaker("dep")
    br.open()
    svc.advance(1.5)
    before = br.snapshot()

    async def hang() -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        for door in ("execute", "guard"):
            if door == "execute":
                task = asyncio.create_task(aio.execute_async(svc, "dep", hang))
            else:
                task = asyncio.create_task(_guarded(svc, hang))
            await asyncio.sleep(0)
            assert len(br.snapshot().probes) == 1
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert br.snapshot().probes == ()
    run(main())
    after = br.snapshot()
    assert after.state == sg.BreakerState.HALF_OPEN
    assert (after.successes, after.failures) == (before.successes, before.failures)
    assert after.ignored == before.ignored + 2


async def _guarded(svc: sg.ResilienceService, body: Any) -> None:
    async with svc.guard("dep"):
        await body()


@pytest.mark.parametrize("healthy", [True, False])
def test_health_probe_stands_in_for_the_call(svc: sg.ResilienceService, healthy: bool) -> None:
    svc.register_endpoint("dep", sg.Policy(open_timeout=1.0))
    probed, ran = [], []

    async def probe() -> bool:
        probed.append(1)
        return healthy

    async def body() -> str:
        ran.append(1)
        return "done"

    svc.set_health_probe("dep", probe)
    svc.breaker("dep").open()
    svc.advance(1.5)
    if healthy:
        assert run(aio.execute_async(svc, "dep", body)) == "done"
    else:
        with pytest.raises(sg.CircuitOpenError):
            run(aio.execute_async(svc, "dep", body))
    assert (probed, ran) == ([1], [1] if healthy else [])
    assert svc.breaker_state("dep") == (sg.BreakerState.CLOSED if healthy else sg.BreakerState.OPEN)
