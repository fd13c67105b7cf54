"""Bulkheads across real processes: the exact bound, quota, wake-one, timeouts and cancellation."""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import os
import signal
import time
from concurrent.futures import ProcessPoolExecutor

import pytest

import shmguard as sg
from shmguard._capi import ffi, lib

CTX = mp.get_context("fork")
NORMAL = int(sg.Priority.NORMAL) | lib.SG_BH_QUIET


class InFlight:
    """Counts calls inside the protected function itself, across processes."""

    def __init__(self) -> None:
        self.cur = CTX.Value("i", 0)
        self.peak = CTX.Value("i", 0)
        self.calls = CTX.Value("i", 0)

    def __call__(self, hold: float = 0.002) -> int:
        with self.cur.get_lock():
            self.cur.value += 1
            self.calls.value += 1
            n = self.cur.value
            if n > self.peak.value:
                self.peak.value = n
        time.sleep(hold)
        with self.cur.get_lock():
            self.cur.value -= 1
        return n


def _call_many(segname: str, probe: InFlight, n: int, go, out) -> None:
    svc = sg.ResilienceService(segname, create=False)
    go.wait()
    got = [svc.execute("db", probe) for _ in range(n)]
    out.put((os.getpid(), len(got)))
    svc.close()


def test_six_processes_never_exceed_two_in_flight(realsvc, segname):
    realsvc.register_endpoint("db", sg.Policy(max_concurrent=2, max_wait=60.0))
    probe, go, out = InFlight(), CTX.Event(), CTX.Queue()
    ps = [CTX.Process(target=_call_many, args=(segname, probe, 30, go, out)) for _ in range(6)]
    for p in ps:
        p.start()
    go.set()
    done = [out.get(timeout=120) for _ in ps]
    for p in ps:
        p.join(30)
    assert sorted(n for _, n in done) == [30] * 6
    assert probe.calls.value == 180
    assert probe.peak.value == 2                       # measured by the called function itself
    b = realsvc.stats("db").bulkhead
    assert (b.max_concurrent, b.in_flight, b.peak, b.acquired, b.rejected) == (2, 0, 2, 180, 0)
    assert b.waited > 0                                # six processes did queue for two tickets


_POOL_PROBE: list[InFlight] = []   # set before the pool forks its workers (inherited)


def _pool_call(hold: float) -> int:
    return _POOL_PROBE[0](hold)


def test_resilient_executor_pool_holds_the_bulkhead(segname):
    probe = InFlight()
    _POOL_PROBE[:] = [probe]
    policy = sg.Policy(max_concurrent=1, max_wait=60.0)
    with ProcessPoolExecutor(3, mp_context=CTX) as pool:
        ex = sg.ResilientExecutor(pool, segname, policy=policy)
        try:
            assert sorted(ex.map("db", _pool_call, [0.002] * 12)) == [1] * 12
            assert probe.peak.value == 1
            assert ex.service.stats("db").bulkhead.acquired == 12
        finally:
            ex.service.close()
            ex.service.unlink()


def _waiter(segname: str, ready, out) -> None:
    """Sleeps in one futex slice of 20 s; reports (got a ticket, woken by a release)."""
    svc = sg.ResilienceService(segname, create=False)
    buf = ffi.new("int64_t[2]")
    ready.put(os.getpid())
    t = lib.sg_bulkhead_wait(svc._eps["db"].h if "db" in svc._eps else svc.bulkhead("db")._ep.h,
                             NORMAL | lib.SG_BH_WAITED, 20 * 10**9, buf)
    out.put((os.getpid(), t > 0, int(buf[1])))
    time.sleep(30)


def test_a_release_wakes_exactly_one_waiter(realsvc, segname):
    realsvc.register_endpoint("db", sg.Policy(max_concurrent=2))
    h = realsvc._eps["db"].h
    mine = [lib.sg_bulkhead_acquire(h, NORMAL) for _ in range(2)]
    assert all(t > 0 for t in mine)
    ready, out = CTX.Queue(), CTX.Queue()
    ps = [CTX.Process(target=_waiter, args=(segname, ready, out), daemon=True) for _ in range(3)]
    try:
        for p in ps:
            p.start()
        for _ in ps:
            ready.get(timeout=30)
        deadline = time.monotonic() + 30
        while realsvc.bulkhead("db").stats() and _sleepers(realsvc) < 3:
            assert time.monotonic() < deadline, "waiters never went to sleep"
            time.sleep(0.005)
        assert lib.sg_bulkhead_release(h, mine[0]) == 1       # FUTEX_WAKE woke one process
        first = out.get(timeout=30)
        assert first[1:] == (True, 1)                          # it was woken and got the ticket
        assert _sleepers(realsvc) == 2                         # the other two sleep on
        assert out.empty()
        assert lib.sg_bulkhead_release(h, mine[1]) == 1
        second = out.get(timeout=30)
        assert second[1:] == (True, 1) and second[0] != first[0]
        assert _sleepers(realsvc) == 1
        assert realsvc.stats("db").bulkhead.in_flight == 2    # now held by the two woken
    finally:
        for p in ps:
            p.kill()
            p.join()


def _sleepers(svc) -> int:
    v = ffi.new("struct sg_bulkhead_view *")
    lib.sg_bulkhead_snapshot_at(svc._eps["db"].h.slot, svc.now_ns(), v)
    return int(v.sleepers)


def test_timeout_returns_nothing_held(realsvc):
    realsvc.register_endpoint("db", sg.Policy(max_concurrent=1, max_wait=0.05))
    bh = realsvc.bulkhead("db")
    t = bh.acquire()
    with pytest.raises(sg.BulkheadFullError) as ei:
        bh.acquire(timeout=0.05)
    assert ei.value.endpoint == "db" and isinstance(ei.value, sg.RejectedError)
    with pytest.raises(sg.BulkheadFullError):
        realsvc.execute("db", lambda: 1)                 # waits the policy's max_wait
    s = bh.stats()
    assert (s.in_flight, s.rejected) == (1, 2) and _sleepers(realsvc) == 0
    assert [h.index for h in s.holders] == [t.index]
    t.release()
    assert bh.try_acquire() is not None                  # dropped at once: __del__ gives it back
    assert bh.in_flight == 0
    with bh.acquire() as t2:
        assert bh.in_flight == 1 and t2.held
    assert bh.in_flight == 0 and not t2.held


def test_asyncio_wait_does_not_block_and_cancel_leaves_nothing(realsvc):
    realsvc.register_endpoint("db", sg.Policy(max_concurrent=1, max_wait=30.0))
    bh = realsvc.bulkhead("db")

    async def main() -> tuple[int, int]:
        held = bh.acquire()
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)
        tick = asyncio.create_task(ticker())
        waiting = asyncio.create_task(realsvc.execute_async("db", asyncio.sleep, 0))
        await asyncio.sleep(0.1)
        assert not waiting.done()
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        seen = ticks
        held.release()
        running = asyncio.create_task(realsvc.execute_async("db", asyncio.sleep, 10))
        await asyncio.sleep(0.05)
        in_call = bh.in_flight
        running.cancel()                                  # cancelled inside the call
        with pytest.raises(asyncio.CancelledError):
            await running
        tick.cancel()
        return seen, in_call
    seen, in_call = asyncio.run(main())
    assert seen > 10                                      # the loop ran while the task waited
    assert in_call == 1
    assert bh.in_flight == 0
    again = bh.try_acquire()
    assert again is not None and bh.in_flight == 1


@pytest.mark.parametrize("door", ["guard", "execute_async"])
def test_async_doors_wait_for_a_ticket_without_blocking_the_loop(realsvc, door):
    # the C guard (async with, no timeout) and execute_async's fast path: a
    # full bulkhead with max_wait is awaited; blocking the loop there would
    # keep the holder (a task of the same loop) from ever giving it back
    realsvc.register_endpoint("db", sg.Policy(max_concurrent=1, max_wait=5.0))
    bh = realsvc.bulkhead("db")
    order: list[str] = []

    async def body(name: str) -> None:
        order.append(f"{name} in {bh.in_flight}")
        await asyncio.sleep(0.05)
        order.append(f"{name} out")

    async def call(name: str) -> None:
        if door == "guard":
            async with realsvc.guard("db"):
                await body(name)
        else:
            await realsvc.execute_async("db", body, name)

    async def main() -> None:
        first = asyncio.create_task(call("first"))
        await asyncio.sleep(0.01)
        await asyncio.gather(first, call("second"))

    asyncio.run(main())
    assert order == ["first in 1", "first out", "second in 1", "second out"]
    st = bh.stats()
    assert (st.in_flight, st.acquired, st.waited, st.rejected) == (0, 2, 1, 0)


def _interrupted(segname: str, out) -> None:
    svc = sg.ResilienceService(segname, create=False)
    out.put("waiting")
    try:
        svc.bulkhead("db").acquire(timeout=30)
        out.put("acquired?!")
    except KeyboardInterrupt:
        mine = [h for h in svc.bulkhead("db").stats().holders if h.pid == os.getpid()]
        out.put(("interrupted", len(mine), _sleepers(svc)))
    svc.close()


def test_keyboard_interrupt_while_waiting_leaves_nothing(realsvc, segname):
    realsvc.register_endpoint("db", sg.Policy(max_concurrent=1))
    held = realsvc.bulkhead("db").acquire()
    out = CTX.Queue()
    p = CTX.Process(target=_interrupted, args=(segname, out))
    p.start()
    assert out.get(timeout=30) == "waiting"
    deadline = time.monotonic() + 30
    while _sleepers(realsvc) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.kill(p.pid, signal.SIGINT)
    assert out.get(timeout=30) == ("interrupted", 0, 0)
    p.join(30)
    assert realsvc.stats("db").bulkhead.in_flight == 1
    held.release()


def _attached(segname: str, ready) -> None:
    sg.ResilienceService(segname, create=False)
    ready.put(os.getpid())
    time.sleep(60)                                         # killed by the test


def test_quota_follows_the_attached_processes(realsvc, segname):
    realsvc.register_endpoint("q", sg.Policy(quota=0.5))
    bh = realsvc.bulkhead("q")
    assert bh.max_concurrent == 1                          # ceil(0.5 x 1): this process
    ready = CTX.Queue()
    ps = [CTX.Process(target=_attached, args=(segname, ready)) for _ in range(4)]
    try:
        for p in ps:
            p.start()
        for _ in ps:
            ready.get(timeout=30)
        assert bh.refresh() == 3 and bh.max_concurrent == 3   # ceil(0.5 x 5)
        assert realsvc.stats("q").bulkhead.processes == 5
        tickets = [bh.try_acquire() for _ in range(4)]
        assert [t is not None for t in tickets] == [True, True, True, False]
        for p in ps[:2]:
            p.kill()
            p.join()
        assert bh.refresh() == 2                           # ceil(0.5 x 3); three still out
        assert bh.in_flight == 3 and bh.try_acquire() is None
        for t in tickets[:3]:
            t.release()
        got = [bh.try_acquire() for _ in range(3)]
        assert [t is not None for t in got] == [True, True, False]
    finally:
        for p in ps:
            p.kill()
            p.join(30)


def test_every_door_takes_a_ticket_and_gives_it_back(realsvc):
    realsvc.register_endpoint("db", sg.Policy(max_concurrent=1))
    bh = realsvc.bulkhead("db")
    seen = []

    def inside() -> None:
        seen.append((bh.in_flight, bh.try_acquire() is None))

    async def ainside() -> None:
        inside()

    realsvc.execute("db", inside)                          # one C crossing (_hot)
    realsvc.execute("db", inside, timeout=1.0)             # the Python path
    with realsvc.guard("db"):                              # the C guard
        inside()
    with realsvc.guard("db", timeout=1.0):                 # the Python guard
        inside()
    realsvc.protect("db")(inside)()

    async def doors() -> None:
        await realsvc.execute_async("db", ainside)
        async with realsvc.guard("db", timeout=1.0):
            inside()
        await realsvc.protect("db")(ainside)()
    asyncio.run(doors())
    assert seen == [(1, True)] * 8
    with pytest.raises(ZeroDivisionError):
        realsvc.execute("db", lambda: 1 / 0)
    s = bh.stats()
    assert (s.in_flight, s.acquired, s.rejected) == (0, 9, 8)   # 8 nested tries refused


def test_a_closed_service_refuses_and_its_tickets_do_nothing(segname):
    svc = sg.ResilienceService(segname, capacity=8)
    try:
        svc.register_endpoint("db", sg.Policy(max_concurrent=1))
        bh = svc.bulkhead("db")
        held = bh.acquire()
        svc.close()
        with pytest.raises(sg.ShmguardError, match="closed"):
            bh.acquire()
        with pytest.raises(sg.ShmguardError, match="closed"):
            bh.try_acquire()
        held.release()                                    # the mapping is gone: nothing to do
        assert not held.held
    finally:
        svc.unlink()


def test_each_retry_attempt_holds_a_ticket_of_its_own(realsvc):
    realsvc.register_endpoint("db", sg.Policy(max_concurrent=1, failure_exceptions=(OSError,)))
    bh = realsvc.bulkhead("db")
    seen = []

    def flaky() -> str:
        seen.append(bh.in_flight)
        if len(seen) < 3:
            raise OSError("again")
        return "ok"

    async def aflaky() -> str:
        return flaky()
    assert realsvc.execute("db", flaky, retries=3, backoff=0.001) == "ok"
    seen.clear()
    assert asyncio.run(realsvc.execute_async("db", aflaky, retries=3, backoff=0.001)) == "ok"
    assert seen == [1, 1, 1]                              # every attempt in flight, alone
    s = bh.stats()
    assert (s.in_flight, s.acquired) == (0, 6)


def test_ticket_lease_frees_a_hung_holders_ticket(svc):
    """Off by default; with ticket_lease a ticket held longer is free (manual clock)."""
    svc.register_endpoint("db", sg.Policy(max_concurrent=1, ticket_lease=0.5))
    bh = svc.bulkhead("db")
    hung = bh.acquire()
    svc.advance(0.4)
    assert bh.try_acquire() is None                      # within its lease: still held
    svc.advance(0.2)
    fresh = bh.try_acquire()                             # past it: taken over
    assert fresh is not None and bh.stats().reclaimed == 1
    hung.release()                                       # the late holder frees nothing
    assert bh.in_flight == 1 and fresh.held
    fresh.release()
    assert bh.in_flight == 0


def test_a_call_recounts_a_stale_quota_by_itself(svc, segname):
    """Once per second of segment time, the call that gets the ticket recounts (C asks)."""
    svc.register_endpoint("q", sg.Policy(quota=0.5))
    bh = svc.bulkhead("q")
    assert bh.max_concurrent == 1
    ready = CTX.Queue()
    ps = [CTX.Process(target=_attached, args=(segname, ready)) for _ in range(3)]
    try:
        for p in ps:
            p.start()
        for _ in ps:
            ready.get(timeout=30)
        assert svc.execute("q", lambda: 1) == 1          # counted 0 s ago: no recount
        assert bh.max_concurrent == 1
        svc.advance(1.1)
        assert svc.execute("q", lambda: 2) == 2          # this one recounts (one C crossing)
        assert bh.max_concurrent == 2 and bh.stats().processes == 4
        with svc.guard("q"):                             # and the guard, try_acquire too
            t = bh.try_acquire()
            assert t is not None and bh.in_flight == 2
    finally:
        for p in ps:
            p.kill()
            p.join(30)


def _hold_until(segname: str, held, go) -> None:
    svc = sg.ResilienceService(segname, create=False)
    ticket = svc.bulkhead("db").acquire()
    held.set()
    go.wait(30)
    ticket.release()
    svc.close()


def test_an_async_waiter_sleeps_until_a_release_in_another_process(realsvc, segname):
    from shmguard import _bulkwait
    realsvc.register_endpoint("db", sg.Policy(max_concurrent=1, max_wait=30.0))
    held, go = CTX.Event(), CTX.Event()
    holder = CTX.Process(target=_hold_until, args=(segname, held, go))
    holder.start()
    assert held.wait(30)

    async def main() -> int:
        before = _bulkwait.tries
        waiting = asyncio.create_task(realsvc.execute_async("db", asyncio.sleep, 0, "served"))
        await asyncio.sleep(0.3)             # six slices with the holder alive: no try
        assert not waiting.done() and _bulkwait.tries - before == 1   # the newcomer's turn
        go.set()                             # the holder releases, in its own process
        assert await waiting == "served"
        return _bulkwait.tries - before
    assert asyncio.run(main()) == 2          # one turn on joining, one for the release
    holder.join(30)
    st = realsvc.bulkhead("db").stats()
    assert (holder.exitcode, st.in_flight, st.acquired, st.waited) == (0, 0, 2, 1)


def test_async_waiters_are_served_in_arrival_order(realsvc):
    realsvc.register_endpoint("db", sg.Policy(max_concurrent=1, max_wait=30.0))
    bh = realsvc.bulkhead("db")
    order: list[str] = []

    async def body(name: str) -> None:
        order.append(name)
        await asyncio.sleep(0.01)

    async def main() -> None:
        held = bh.acquire()
        tasks = []
        for name in "abcd":
            tasks.append(asyncio.create_task(realsvc.execute_async("db", body, name)))
            await asyncio.sleep(0.02)        # each queues behind the one before
        held.release()
        await asyncio.gather(*tasks)
    asyncio.run(main())
    assert order == list("abcd")
    assert bh.stats().in_flight == 0
