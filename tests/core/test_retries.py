"""Retries: backoff under the breaker, the deadline and the host-wide retry budget."""
from __future__ import annotations

import multiprocessing as mp

import pytest

import shmguard as sg
from shmguard import retry

import _retry_workers

NO_OPEN = dict(min_requests=10**6)  # the breaker never opens: retries meet only the budget


class Flaky:
    """Fails ``n`` times with ``exc``, then returns "ok"; counts its runs."""

    def __init__(self, n: int, exc: type[Exception] = ConnectionError) -> None:
        self.n, self.exc, self.runs = n, exc, 0

    def __call__(self) -> str:
        self.runs += 1
        if self.runs <= self.n:
            raise self.exc(f"run {self.runs}")
        return "ok"


def test_failures_are_retried_until_success(svc):
    svc.register_endpoint("dep", sg.Policy(**NO_OPEN))
    fn = Flaky(2)
    assert svc.execute("dep", fn, retries=3, backoff=0) == "ok"
    st = svc.stats("dep")
    assert (fn.runs, st.attempts, st.retries, st.retries_denied) == (3, 3, 2, 0)
    assert (st.breaker.failures, st.breaker.successes) == (2, 1)


def test_retries_run_out_and_the_last_error_is_raised(svc):
    svc.register_endpoint("dep", sg.Policy(**NO_OPEN))
    fn = Flaky(10)
    with pytest.raises(ConnectionError, match="run 4"):
        svc.execute("dep", fn, retries=3, backoff=0)
    assert fn.runs == 4 and svc.stats("dep").retries == 3


def test_only_failures_are_retried_unless_retry_on_says_so(svc):
    svc.register_endpoint("dep", sg.Policy(failure_exceptions=(ConnectionError,), **NO_OPEN))
    fn = Flaky(1, ValueError)          # a success by the policy: the dependency answered
    with pytest.raises(ValueError):
        svc.execute("dep", fn, retries=3, backoff=0)
    assert fn.runs == 1
    fn = Flaky(1, ValueError)
    assert svc.execute("dep", fn, retries=3, backoff=0, retry_on=ValueError) == "ok"
    assert fn.runs == 2


def test_no_retry_into_an_open_breaker(svc):
    svc.register_endpoint("dep", sg.Policy(min_requests=2, failure_threshold=0.5))
    fn = Flaky(10)
    with pytest.raises(ConnectionError, match="run 2"):   # the 2nd failure opened it
        svc.execute("dep", fn, retries=5, backoff=0)
    assert fn.runs == 2 and svc.breaker_state("dep") == sg.BreakerState.OPEN
    assert svc.stats("dep").retries == 1


def test_a_refused_retry_raises_the_last_error_at_once(svc):
    # no ratio, minimum 0.5/s over 6 s: 3 retries in the window, host-wide
    svc.register_endpoint("dep", sg.Policy(retry_budget=0.0, retry_budget_min_per_second=0.5,
                                           retry_budget_window=6.0, **NO_OPEN))
    fn = Flaky(100)
    with pytest.raises(ConnectionError, match="run 4"):
        svc.execute("dep", fn, retries=5, backoff=0)
    with pytest.raises(ConnectionError, match="run 5"):
        svc.execute("dep", fn, retries=5, backoff=0)
    st = svc.stats("dep")
    assert (fn.runs, st.attempts, st.retries, st.retries_denied) == (5, 5, 3, 2)
    assert st.retry_budget == sg.stats.RetryBudgetStats(6.0, 5, 3, 3)


def test_backoff_never_sleeps_past_the_deadline(svc):
    svc.register_endpoint("dep", sg.Policy(**NO_OPEN))
    retry.seed(7)
    first = retry.Plan(1, 10.0, 10.0, None, None).delay(0)
    assert first > 0.5                     # the seeded draw this test relies on
    retry.seed(7)
    fn = Flaky(10)
    with sg.deadline(0.5), pytest.raises(ConnectionError, match="run 1"):
        svc.execute("dep", fn, retries=3, backoff=10.0, max_backoff=10.0)
    assert fn.runs == 1 and svc.stats("dep").retries == 0


def test_full_jitter_is_bounded_by_the_exponential_cap():
    plan = retry.Plan(5, 0.1, 0.5, None, None)
    retry.seed(3)
    for attempt, cap in [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.5), (10, 0.5)]:
        draws = [plan.delay(attempt) for _ in range(200)]
        assert all(0 <= d <= cap for d in draws) and max(draws) > cap / 2, attempt


@pytest.mark.parametrize("bad", [dict(retries=-1), dict(retries=1.5), dict(retries=2, backoff=-1),
                                 dict(retries=2, max_backoff=float("nan")),
                                 dict(retries=2, retry_on="ValueError"), dict(fallback=3)])
def test_bad_retry_arguments_name_the_value(svc, bad):
    with pytest.raises(sg.PolicyError, match=list(bad)[-1]):
        svc.execute("dep", lambda: 1, **bad)


def test_retry_budget_policy_is_validated():
    for kw in (dict(retry_budget=-0.1), dict(retry_budget_window=0),
               dict(retry_budget_min_per_second=float("inf"))):
        with pytest.raises(sg.PolicyError, match=next(iter(kw))):
            sg.Policy(**kw)
    p = sg.PolicyBuilder().with_retry_budget(0.1, min_per_second=3, window=5).build()
    assert (p.retry_budget, p.retry_budget_min_per_second, p.retry_budget_window) == (0.1, 3, 5)


async def _flaky_async(fn: Flaky) -> str:
    return fn()


def test_async_retries_and_budget(svc):
    import asyncio
    svc.register_endpoint("dep", sg.Policy(retry_budget=0.0, retry_budget_min_per_second=0.5,
                                           retry_budget_window=6.0, **NO_OPEN))
    fn = Flaky(2)
    assert asyncio.run(svc.execute_async("dep", _flaky_async, fn, retries=3, backoff=0)) == "ok"
    fn = Flaky(100)
    with pytest.raises(ConnectionError, match="run 2"):    # 1 retry left in the budget
        asyncio.run(svc.execute_async("dep", _flaky_async, fn, retries=3, backoff=0))
    st = svc.stats("dep")
    assert (st.retries, st.retries_denied) == (3, 1)


@pytest.mark.parametrize("budget", [0.2, None])
def test_budget_caps_retries_of_all_processes_together(svc, segname, budget):
    """4 processes x 150 calls, retries=3, to a dependency that always fails."""
    procs, calls, retries = 4, 150, 3
    svc.register_endpoint("dep", sg.Policy(retry_budget=budget, retry_budget_min_per_second=10,
                                           retry_budget_window=10.0, **NO_OPEN))
    ctx = mp.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=_retry_workers.fail_with_retries,
                      args=(segname, "dep", calls, retries, go, out)) for _ in range(procs)]
    for p in ps:
        p.start()
    go.set()
    ran = sum(out.get(timeout=60) for _ in ps)
    for p in ps:
        p.join(30)
        assert p.exitcode == 0
    st = svc.stats("dep")
    first = procs * calls
    assert ran == st.attempts == first + st.retries     # every granted retry ran, once
    if budget is None:
        assert (st.retries, st.retries_denied) == (first * retries, 0)    # 1,800
        return
    # the manual clock stands still: one window holds every attempt
    bound = int(0.2 * first) + 10 * 10                  # ratio x first attempts + min x window
    assert 100 <= st.retries <= bound == 220
    assert st.retries_denied >= 1
    # each call ends with its retries spent or with exactly one refusal
    assert st.retries <= retries * first and st.retries_denied <= first


def test_executor_passes_retries_to_the_worker(segname):
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(1) as pool:
        ex = sg.ResilientExecutor(pool, segname, policy=sg.Policy(**NO_OPEN))
        try:
            fn = Flaky(2)
            assert ex.submit("dep", fn, retries=2, backoff=0).result(30) == "ok"
            assert fn.runs == 3 and ex.service.stats("dep").retries == 2
        finally:
            ex.service.close()
            ex.service.unlink()
