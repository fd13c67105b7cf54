"""Deadlines: checked before admission by every door, nested by minimum, carried into workers."""
from __future__ import annotations

import asyncio
import contextvars
import multiprocessing as mp
import threading
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor

import pytest

import shmguard as sg

import _retry_workers


def never(*_: object) -> None:
    raise AssertionError("called after the deadline")


async def never_async(*_: object) -> None:
    raise AssertionError("called after the deadline")


def test_no_deadline_means_none():
    assert sg.remaining() is None


def test_nested_deadlines_take_the_minimum():
    with sg.deadline(10) as outer:
        with sg.deadline(60) as inner:           # cannot lengthen the outer one
            assert sg.remaining() <= 10
            assert inner.at_ns > outer.at_ns
        with sg.deadline(0.5):
            assert 0 < sg.remaining() <= 0.5
        assert 0.5 < sg.remaining() <= 10
    assert sg.remaining() is None


def test_expired_deadline_never_calls_the_function(svc):
    svc.register_endpoint("dep", sg.Policy())
    with sg.deadline(0):
        assert sg.remaining() <= 0
        with pytest.raises(sg.DeadlineExceededError) as ei:
            svc.execute("dep", never)
        assert isinstance(ei.value, TimeoutError) and isinstance(ei.value, sg.ShmguardError)
        with pytest.raises(sg.DeadlineExceededError):
            svc.protect("dep")(never)()
        with pytest.raises(sg.DeadlineExceededError):
            with svc.guard("dep"):
                never()
        with pytest.raises(sg.DeadlineExceededError):
            svc.execute("dep", never, retries=3)
        assert svc.try_execute("dep", never).error.__class__ is sg.DeadlineExceededError
    st = svc.stats("dep")
    assert (st.attempts, st.breaker.successes, st.breaker.failures) == (0, 0, 0)


def test_expired_deadline_async_doors(svc):
    svc.register_endpoint("dep", sg.Policy())

    async def main() -> list[str]:
        seen = []
        async with sg.deadline(0):
            for attempt in (lambda: svc.execute_async("dep", never_async),
                            lambda: svc.protect("dep")(never_async)()):
                try:
                    await attempt()
                except sg.DeadlineExceededError:
                    seen.append("refused")
            try:
                async with svc.guard("dep"):
                    never()
            except sg.DeadlineExceededError:
                seen.append("refused")
        return seen
    assert asyncio.run(main()) == ["refused"] * 3
    assert svc.stats("dep").attempts == 0


def test_function_reads_the_time_left(svc):
    with sg.deadline(5):
        left = svc.execute("dep", sg.remaining)
    assert 0 < left <= 5


def test_limiter_wait_is_bounded_by_the_deadline(realsvc):
    realsvc.register_endpoint("slow", sg.Policy(rate=1, burst=1))
    realsvc.execute("slow", lambda: None)        # the next token comes in 1 s
    with sg.deadline(0.05), pytest.raises(sg.RateLimitedError):
        realsvc.execute("slow", never, timeout=30)   # 30 s allowed, 50 ms left: not served
    lim = realsvc.stats("slow").limiter_metrics
    assert (lim.accepted, lim.rejected, lim.waited) == (1, 1, 0)   # refused, never reserved


def test_copied_context_threads_and_tasks_inherit_it():
    with sg.deadline(3):
        ctx = contextvars.copy_context()

        async def task() -> float | None:
            return sg.remaining()
        in_task = asyncio.run(task())
    got: list[float | None] = []
    t = threading.Thread(target=lambda: got.append(ctx.run(sg.remaining)))
    t.start()
    t.join()
    assert got[0] is not None and 0 < got[0] <= 3
    assert in_task is not None and 0 < in_task <= 3
    assert sg.remaining() is None


@pytest.mark.parametrize("seconds", [-1, float("nan"), float("inf"), "1", True])
def test_bad_deadline_names_the_value(seconds):
    with pytest.raises(sg.PolicyError, match="deadline seconds"):
        sg.deadline(seconds)


def test_deadline_reaches_a_spawn_worker(segname):
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        ex = sg.ResilientExecutor(pool, segname)
        try:
            assert ex.submit("dep", _retry_workers.remaining_now).result(60) is None
            with sg.deadline(30):
                before = sg.remaining()
                left = ex.submit("dep", _retry_workers.remaining_now).result(60)
                after = sg.remaining()
            assert left is not None and after < left < before
            with sg.deadline(30):
                lefts = list(ex.map("dep", _retry_workers.remaining_after, [0, 0]))
            assert all(x is not None and 0 < x < 30 for x in lefts)
        finally:
            ex.service.close()
            ex.service.unlink()


def test_task_queued_past_its_deadline_is_not_run(segname, tmp_path):
    marks = tmp_path / "ran.txt"
    with ThreadPoolExecutor(1) as pool:
        ex = sg.ResilientExecutor(pool, segname)
        try:
            blocker = ex.submit("dep", _retry_workers.remaining_after, 0.3)  # holds the worker
            with sg.deadline(0.05):
                late = ex.submit("dep", _retry_workers.mark, str(marks))
            assert blocker.result(30) is None
            with pytest.raises(sg.DeadlineExceededError, match="queued"):
                late.result(30)
            assert not marks.exists()
            assert ex.submit("dep", _retry_workers.mark, str(marks)).result(30) == "ran"
            assert marks.read_text() == "ran\n"
        finally:
            ex.service.close()
            ex.service.unlink()


def test_a_deadline_never_starts_a_wait(svc):
    svc.register_endpoint("slow", sg.Policy(rate=1, burst=1))
    svc.execute("slow", lambda: None)
    with sg.deadline(30), pytest.raises(sg.RateLimitedError):
        svc.execute("slow", never)               # timeout=None: no wait, deadline or not
    lim = svc.stats("slow").limiter_metrics
    assert (lim.accepted, lim.rejected, lim.waited) == (1, 1, 0)


@pytest.mark.parametrize("door", ["execute", "execute_async", "acquire"])
def test_a_bulkhead_wait_is_bounded_by_the_deadline(realsvc, door):
    realsvc.register_endpoint("db", sg.Policy(max_concurrent=1, max_wait=3.0))
    bh = realsvc.bulkhead("db")
    held = bh.acquire()
    with sg.deadline(0.05):              # max_wait 3 s: the deadline ends the wait first
        with pytest.raises(sg.DeadlineExceededError, match="bulkhead of endpoint 'db'"):
            if door == "execute":
                realsvc.execute("db", never)
            elif door == "execute_async":
                asyncio.run(realsvc.execute_async("db", never_async))
            else:
                bh.acquire()
    held.release()
    st = bh.stats()
    assert (st.in_flight, st.acquired, st.rejected) == (0, 1, 1)
