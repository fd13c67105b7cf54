"""ResilientExecutor over thread pools and process pools (fork, spawn, forkserver).

Exact counts from the segment, never times: manual-clock segments where the
clock must not move, the segment clock where it must.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import pickle
import signal
import threading
from concurrent.futures import Executor, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Iterator

import pytest

import shmguard as sg
from shmguard.executor import ResilientExecutor, attach, detach

HIGH = sg.Priority.HIGH
NO_FORK_WARNING = pytest.mark.filterwarnings("ignore:.*fork.*:DeprecationWarning")

# -- task functions (module level so spawn children can import them) ---------------------------


def double(x: int) -> int:
    return 2 * x


def scaled(x: int, *, by: int = 1) -> tuple[int, int]:
    return x * by, os.getpid()


def raise_(kind: str) -> None:
    raise {"conn": ConnectionError, "value": ValueError}[kind](kind)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


_BARRIER: Any = None


def set_barrier(barrier: Any) -> None:
    global _BARRIER
    _BARRIER = barrier


def fail_together() -> None:
    """Fails once every worker of the pool is in here: each worker fails once."""
    _BARRIER.wait(30)
    raise ConnectionError("dependency down")


def seen_by_worker(segment: str, endpoint: str) -> tuple[int, str]:
    """Once every worker is in here, tries the endpoint from this worker."""
    _BARRIER.wait(30)
    try:
        attach(segment).execute(endpoint, double, 1)
        return os.getpid(), "admitted"
    except sg.CircuitOpenError:
        return os.getpid(), "rejected"


# -- pools -----------------------------------------------------------------------------------------


def make_pool(kind: str, n: int, **kw: Any) -> Executor:
    if kind == "thread":
        return ThreadPoolExecutor(n)
    return ProcessPoolExecutor(n, mp_context=mp.get_context(kind), **kw)


@pytest.fixture
def detached(segname: str) -> Iterator[None]:
    """Closes this process's cached attachment (thread pools attach in the test process)."""
    yield
    detach(segname)


POOLS = [pytest.param("fork", marks=NO_FORK_WARNING), "spawn", "forkserver", "thread"]


@pytest.mark.parametrize("kind", POOLS)
def test_map_and_submit_keep_order_and_count(kind: str, segname: str, detached: None) -> None:
    with make_pool(kind, 2) as pool:
        ex = ResilientExecutor(pool, segname, policy=sg.Policy())
        assert list(ex.map("dep", double, range(20))) == [2 * i for i in range(20)]
        futs = [ex.submit("dep", scaled, i, by=3) for i in range(5)]
        assert [f.result()[0] for f in futs] == [0, 3, 6, 9, 12]
    b = ex.service.breaker("dep").snapshot()
    assert (b.successes, b.failures, b.rejected) == (25, 0, 0)
    ex.service.close()


@pytest.mark.parametrize("kind", [pytest.param("fork", marks=NO_FORK_WARNING), "spawn", "thread"])
def test_pool_as_a_whole_keeps_the_rate(kind: str, svc: sg.ResilienceService, segname: str,
                                        detached: None) -> None:
    # manual clock: time does not move, so exactly `burst` calls get through
    svc.register_endpoint("api", sg.Policy(rate=10, burst=5))
    with make_pool(kind, 2) as pool:
        ex = ResilientExecutor(pool, segname)
        pids: set[int] = set()
        outcomes = []
        for round_ in range(2):
            futs = [ex.submit("api", double, i, priority=HIGH) for i in range(40)]
            for f in futs:
                exc = f.exception()
                outcomes.append("ok" if exc is None else type(exc).__name__)
                if exc is not None:
                    assert isinstance(exc, sg.RateLimitedError)
                    assert exc.endpoint == "api" and exc.retry_after > 0
                    pids.add(getattr(exc, "worker_pid"))
            svc.advance(1.0)
    m = svc.stats("api").limiter_metrics
    assert outcomes.count("ok") == m.accepted == 10  # burst 5, then 1 s x 10/s capped at burst 5
    assert outcomes.count("RateLimitedError") == m.rejected == 70
    assert m.accepted <= 5 + 10 * 1.0 + 1
    assert os.getpid() in pids if kind == "thread" else os.getpid() not in pids
    ex.service.close()


@NO_FORK_WARNING
def test_rate_bound_on_the_real_clock(realsvc: sg.ResilienceService, segname: str) -> None:
    burst, rate, n = 10, 200.0, 400
    realsvc.register_endpoint("api", sg.Policy(rate=rate, burst=burst))
    with make_pool("fork", 2) as pool:
        ex = ResilientExecutor(pool, segname)
        t0 = realsvc.now_ns()
        futs = [ex.submit("api", double, i, priority=HIGH) for i in range(n)]
        errors = [f.exception() for f in futs]
        elapsed = (realsvc.now_ns() - t0) / 1e9
    m = realsvc.stats("api").limiter_metrics
    ok = sum(e is None for e in errors)
    assert ok == m.accepted and n - ok == m.rejected
    assert all(isinstance(e, sg.RateLimitedError) for e in errors if e is not None)
    assert m.accepted <= burst + rate * elapsed + 1
    ex.service.close()


@pytest.mark.parametrize("kind", [pytest.param("fork", marks=NO_FORK_WARNING), "spawn"])
def test_failing_dependency_opens_the_breaker_for_every_worker(
        kind: str, svc: sg.ResilienceService, segname: str) -> None:
    svc.register_endpoint("dep", sg.Policy(min_requests=2, failure_threshold=0.5))
    barrier = mp.get_context(kind).Barrier(2)
    with make_pool(kind, 2, initializer=set_barrier, initargs=(barrier,)) as pool:
        ex = ResilientExecutor(pool, segname)
        failed = [ex.submit("dep", fail_together) for _ in range(2)]
        assert all(isinstance(f.exception(), ConnectionError) for f in failed)
        assert svc.breaker_state("dep") == sg.BreakerState.OPEN
        seen = [f.result() for f in [pool.submit(seen_by_worker, segname, "dep")
                                     for _ in range(2)]]
        assert len({pid for pid, _ in seen}) == 2 and {v for _, v in seen} == {"rejected"}
        later = [ex.submit("dep", double, i) for i in range(10)]
        assert all(isinstance(f.exception(), sg.CircuitOpenError) for f in later)
        assert {getattr(f.exception(), "worker_pid") for f in later} <= {pid for pid, _ in seen}
    b = svc.breaker("dep").snapshot()
    assert (b.failures, b.successes, b.rejected, b.opens) == (2, 0, 12, 1)
    ex.service.close()


@NO_FORK_WARNING
def test_killed_worker_does_not_wedge_the_segment(svc: sg.ResilienceService,
                                                  segname: str) -> None:
    svc.register_endpoint("dep", sg.Policy(open_timeout=1.0, probe_lease=600.0))
    svc.breaker("dep").open()
    svc.advance(2.0)  # past open_timeout: the next call is the half-open probe
    with make_pool("fork", 1) as pool:
        ex = ResilientExecutor(pool, segname)
        with pytest.raises(BrokenProcessPool):
            ex.submit("dep", die).result()
    snap = svc.breaker("dep").snapshot()
    assert snap.state == sg.BreakerState.HALF_OPEN and len(snap.probes) == 1  # a dead holder
    with make_pool("fork", 1) as pool:  # a new pool on the same segment
        ex = ResilientExecutor(pool, segname)
        assert ex.submit("dep", double, 21).result() == 42  # reclaims the probe, closes
    snap = svc.breaker("dep").snapshot()
    assert snap.state == sg.BreakerState.CLOSED and snap.probes == ()
    ex.service.close()


def test_rejections_pickle() -> None:
    for cls in (sg.CircuitOpenError, sg.RateLimitedError, sg.RejectedError):
        exc = pickle.loads(pickle.dumps(cls("cache", 1.5, "no")))
        assert type(exc) is cls and (exc.endpoint, exc.retry_after, str(exc)) == ("cache", 1.5, "no")


@NO_FORK_WARNING
def test_unpicklable_arguments_give_the_executors_error(segname: str) -> None:
    with make_pool("fork", 1) as pool:
        ex = ResilientExecutor(pool, segname)
        with pytest.raises(TypeError, match="pickle"):
            ex.submit("dep", double, threading.Lock()).result()
        with pytest.raises((pickle.PicklingError, AttributeError)):
            ex.submit("dep", lambda: 1).result()
        assert ex.submit("dep", double, 2).result() == 4  # the pool survives
    assert ex.service.breaker("dep").snapshot().successes == 1
    ex.service.close()


@pytest.mark.parametrize("kind", [pytest.param("fork", marks=NO_FORK_WARNING), "thread"])
def test_workers_classify_with_the_executors_policy(kind: str, segname: str,
                                                     detached: None) -> None:
    policy = sg.Policy(failure_exceptions=(ConnectionError,), min_requests=100)
    with make_pool(kind, 1) as pool:
        ex = ResilientExecutor(pool, segname, policy=policy)
        assert isinstance(ex.submit("dep", raise_, "value").exception(), ValueError)
        assert isinstance(ex.submit("dep", raise_, "conn").exception(), ConnectionError)
    b = ex.service.breaker("dep").snapshot()
    assert (b.successes, b.failures) == (1, 1)  # ValueError is not a failure here
    ex.service.close()


def test_bad_arguments_fail_at_submit(segname: str) -> None:
    with ResilientExecutor(ThreadPoolExecutor(1), segname) as ex:
        with pytest.raises(sg.PolicyError):
            ex.submit("dep", double, 1, priority=7)  # type: ignore[arg-type]
        with pytest.raises(sg.PolicyError):
            ex.submit("dep", double, 1, timeout=-1)
        with pytest.raises(sg.InvalidNameError):
            ex.submit("", double, 1)
        with pytest.raises(TypeError):
            ResilientExecutor(object(), segname)  # type: ignore[arg-type]
    ex.service.close()


@NO_FORK_WARNING
def test_service_created_before_fork_works_in_the_child(svc: sg.ResilienceService,
                                                        segname: str) -> None:
    svc.register_endpoint("dep", sg.Policy())
    mine = attach(segname)
    pid = os.fork()
    if pid == 0:  # child: the inherited service, and a fresh attachment of its own
        code = 1
        try:
            ok = svc.execute("dep", double, 2) == 4 and attach(segname) is not mine
            code = 0 if ok and attach(segname).execute("dep", double, 3) == 6 else 1
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert svc.breaker("dep").snapshot().successes == 2
    assert detach(segname) == 1


def test_a_segment_made_anew_is_not_mixed_up_with_the_old(segname: str, detached: None) -> None:
    with ThreadPoolExecutor(1) as pool:
        old = ResilientExecutor(pool, segname)
        assert old.submit("dep", double, 1).result() == 2
        sg.unlink(segname)
        new = ResilientExecutor(pool, segname)  # same name, another segment
        assert new.submit("dep", double, 2).result() == 4  # the worker re-attaches
        with pytest.raises(sg.SegmentError, match="made anew"):
            old.submit("dep", double, 3).result()
    assert old.service.breaker("dep").snapshot().successes == 1
    assert new.service.breaker("dep").snapshot().successes == 1
    old.service.close()
    new.service.close()
