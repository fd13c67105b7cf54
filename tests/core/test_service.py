"""ResilienceService: execute, registration, callbacks, statistics (manual clock)."""
from __future__ import annotations

import os

import pytest

import shmguard as sg

HIGH = sg.Priority.HIGH


def boom():
    raise ConnectionError("down")


def test_execute_passes_value_and_records(svc):
    assert svc.execute("ep", lambda a, b=0: a + b, 2, b=3) == 5
    s = svc.stats("ep")
    assert (s.breaker.successes, s.limiter_metrics.accepted) == (1, 1)


def test_execute_auto_registers_with_default_policy(svc):
    svc.execute("auto", lambda: None)
    assert svc.endpoints() == ["auto"]
    assert svc.stats("auto").rate == pytest.approx(100)  # standard preset


def test_failures_open_then_reject_with_retry_after(svc):
    svc.register_endpoint("dep", sg.Policy(min_requests=3, open_timeout=7.0))
    for _ in range(3):
        with pytest.raises(ConnectionError):
            svc.execute("dep", boom)
    assert svc.breaker_state("dep") == sg.BreakerState.OPEN
    ran = []
    with pytest.raises(sg.CircuitOpenError) as ei:
        svc.execute("dep", lambda: ran.append(1))
    assert ran == []
    assert ei.value.endpoint == "dep" and ei.value.retry_after == pytest.approx(7.0, abs=0.01)
    svc.advance(3)
    with pytest.raises(sg.CircuitOpenError) as ei:
        svc.execute("dep", lambda: 1)
    assert ei.value.retry_after == pytest.approx(4.0, abs=0.01)


def test_try_execute(svc):
    assert svc.try_execute("t", lambda: 4).unwrap() == 4
    r = svc.try_execute("t", boom)
    assert r.is_err() and isinstance(r.error, ConnectionError)
    with pytest.raises(ConnectionError):
        r.unwrap()
    assert r.unwrap_or(9) == 9 and sg.Ok(1).is_ok() and sg.Ok(1).value == 1


def test_exception_classification(svc):
    svc.register_endpoint("net", sg.PolicyPresets.network().replace(min_requests=2))
    for _ in range(5):
        with pytest.raises(KeyError):
            svc.execute("net", lambda: {}["x"])          # not a network error: a success
    assert svc.breaker_state("net") == sg.BreakerState.CLOSED
    svc.register_endpoint("ign", sg.Policy(min_requests=2, ignored_exceptions=(KeyError,)))
    for _ in range(5):
        with pytest.raises(KeyError):
            svc.execute("ign", lambda: {}["x"])
    b = svc.stats("ign").breaker
    assert (b.ignored, b.window_calls, b.state) == (5, 0, sg.BreakerState.CLOSED)


def test_base_exceptions_are_ignored(svc):
    with pytest.raises(KeyboardInterrupt):
        svc.execute("k", lambda: (_ for _ in ()).throw(KeyboardInterrupt()))
    assert svc.stats("k").breaker.ignored == 1


def test_rate_limited_error(svc):
    svc.register_endpoint("rl", sg.Policy(rate=10, burst=5))
    got = [svc.try_execute("rl", lambda: 1, priority=HIGH) for _ in range(7)]
    assert [r.is_ok() for r in got] == [True] * 5 + [False] * 2
    err = got[-1].error
    assert isinstance(err, sg.RateLimitedError) and err.retry_after == pytest.approx(0.1, abs=1e-3)
    svc.advance(0.1)
    assert svc.try_execute("rl", lambda: 1, priority=HIGH).is_ok()
    m = svc.stats("rl").limiter_metrics
    assert (m.accepted, m.rejected) == (6, 2)
    assert m.by_priority["high"] == {"accepted": 6, "rejected": 2, "waited": 0}
    assert m.acceptance_rate() == pytest.approx(6 / 8)


def test_execute_waits_within_timeout(svc):
    # manual clock: the second call reserves 20 ms ahead and sleeps them; the
    # clock does not move, so the third needs 40 ms, more than its timeout
    svc.register_endpoint("w", sg.Policy(rate=50, burst=1))
    assert svc.execute("w", lambda: 1, priority=HIGH) == 1
    assert svc.execute("w", lambda: 2, priority=HIGH, timeout=1.0) == 2
    with pytest.raises(sg.RateLimitedError):
        svc.execute("w", lambda: 3, priority=HIGH, timeout=0.001)
    m = svc.stats("w").limiter_metrics
    assert (m.accepted, m.rejected, m.waited) == (2, 1, 1)


def test_register_is_idempotent_and_conflicts(segname, svc):
    p = sg.Policy(rate=10, burst=5)
    svc.register_endpoint("r", p)
    svc.register_endpoint("r", sg.Policy(rate=10, burst=5))          # same policy: fine
    with pytest.raises(sg.PolicyConflictError, match="'r' already exists.*rate 10.0 -> 20.0"):
        svc.register_endpoint("r", sg.Policy(rate=20, burst=5), on_conflict="raise")
    other = sg.ResilienceService(segname, create=False)
    try:
        other.register_endpoint("r", sg.Policy(rate=20, burst=7), replace=True)
        # the first process sees the new policy at once
        assert svc.stats("r").rate == pytest.approx(20) and svc.stats("r").burst == 7
    finally:
        other.close()


def test_callbacks_fire_in_the_transitioning_process(svc):
    changes, metrics = [], []
    svc.on_state_change = lambda ep, old, new: changes.append((ep, str(old), str(new)))
    svc.on_metrics_update = lambda ep, st, m: metrics.append((ep, str(st)))
    svc.register_endpoint("cb", sg.Policy(min_requests=2, open_timeout=1.0))
    for _ in range(2):
        with pytest.raises(ConnectionError):
            svc.execute("cb", boom)
    svc.advance(1.5)
    svc.execute("cb", lambda: None)
    assert changes == [("cb", "closed", "open"), ("cb", "open", "half-open"),
                       ("cb", "half-open", "closed")]
    assert ("cb", "open") in metrics and ("cb", "closed") in metrics


def test_breaker_two_step_and_manual_control(svc):
    br = svc.breaker("m")
    p = br.allow()
    p.failure()
    with pytest.raises(RuntimeError, match="once"):
        p.success()
    br.force_open()
    assert br.allow() is None and br.state == sg.BreakerState.OPEN
    assert br.mode == sg.BreakerMode.FORCED_OPEN
    svc.advance(3600)
    assert br.allow() is None                      # forced: never half-opens
    br.force_closed()
    assert br.state == sg.BreakerState.CLOSED and br.allow() is not None
    br.reset()
    assert br.mode == sg.BreakerMode.NORMAL
    with pytest.raises(sg.CircuitOpenError):
        br.force_open() or br.call(lambda: 1)


def test_protect_and_guard(svc):
    svc.register_endpoint("p", sg.Policy(min_requests=2))

    @svc.protect("p")
    def f(x):
        if x < 0:
            raise ConnectionError("neg")
        return x * 2
    assert f(4) == 8
    with svc.guard("p"):
        pass
    with pytest.raises(ConnectionError):
        with svc.guard("p"):
            raise ConnectionError()
    with pytest.raises(ConnectionError):
        f(-1)
    assert svc.breaker_state("p") == sg.BreakerState.OPEN
    with pytest.raises(sg.CircuitOpenError):
        f(1)


def test_limiter_verbs(svc):
    svc.register_endpoint("l", sg.Policy(rate=10, burst=2))
    lim = svc.limiter("l")
    assert lim.tokens() == pytest.approx(2)
    assert lim.allow(2, HIGH) and not lim.allow(priority=HIGH)
    r = lim.reserve(priority=HIGH, max_wait=0.05)
    assert not r.ok and r.delay == pytest.approx(0.1)
    r = lim.reserve(priority=HIGH)
    assert r.ok and r.delay == pytest.approx(0.1)
    r.cancel()
    svc.advance(0.1)
    assert lim.tokens() == pytest.approx(1)
    assert lim.wait(priority=HIGH, timeout=0) is True
    assert lim.wait(priority=HIGH, timeout=0) is False
    with pytest.raises(sg.PolicyError, match="cost"):
        lim.allow(0)
    with pytest.raises(sg.PolicyError, match="priority"):
        lim.allow(1, 7)


def test_adjust_rate(svc):
    svc.register_endpoint("a", sg.Policy(rate=100, burst=10, recovery=10.0))
    svc.adjust_rate("a", 0.4)
    assert svc.stats("a").limiter_metrics.effective_rate == pytest.approx(40, rel=1e-3)
    svc.adjust_rate("a", 1.0)
    svc.advance(5)
    assert svc.stats("a").limiter_metrics.effective_rate == pytest.approx(70, rel=0.02)
    with pytest.raises(sg.PolicyError, match="health"):
        svc.adjust_rate("a", 1.5)


def test_all_stats_is_host_wide(segname, svc):
    other = sg.ResilienceService(segname, create=False, default_policy=sg.PolicyPresets.standard())
    try:
        other.execute("x", lambda: 1)
        svc.execute("y", lambda: 1)
        names = [s.endpoint for s in svc.all_stats()]
        assert names == ["x", "y"]
        assert [s.limiter_metrics.accepted for s in other.all_stats()] == [1, 1]
    finally:
        other.close()


def test_health_probe_stands_in_for_real_traffic(svc):
    healthy = []
    svc.register_endpoint("hp", sg.Policy(min_requests=2, open_timeout=5.0),
                          health_probe=lambda: healthy and healthy[-1])
    for _ in range(2):
        with pytest.raises(ConnectionError):
            svc.execute("hp", boom)
    assert svc.probe("hp") is None                    # still open: no probe due
    svc.advance(5)
    ran = []
    healthy.append(False)
    with pytest.raises(sg.CircuitOpenError):
        svc.execute("hp", lambda: ran.append(1))      # the probe failed instead of the call
    assert ran == [] and svc.breaker_state("hp") == sg.BreakerState.OPEN
    svc.advance(5)
    healthy.append(True)
    assert svc.execute("hp", lambda: ran.append(1) or "real") == "real"
    assert ran == [1] and svc.breaker_state("hp") == sg.BreakerState.CLOSED
    # explicit probing from a monitor thread or loop
    svc.breaker("hp").open()
    svc.advance(60)
    assert svc.probe("hp") is True and svc.breaker_state("hp") == sg.BreakerState.CLOSED
    assert svc.probe("hp") is None


def test_bad_token_raises_instead_of_a_false_transition(svc):
    seen = []
    svc.on_state_change = lambda *a: seen.append(a)
    svc.execute("bt", lambda: 1)
    with pytest.raises(sg.ShmguardError, match="invalid argument"):
        svc.record("bt", -1, sg.Outcome.SUCCESS)
    assert seen == [] and svc.breaker_state("bt") == sg.BreakerState.CLOSED


def test_rejections_pickle_with_their_fields():
    import pickle
    for cls in (sg.CircuitOpenError, sg.RateLimitedError):
        e = cls("ep", 1.5, "message")
        e.worker_pid = 42
        f = pickle.loads(pickle.dumps(e))
        assert (type(f), f.endpoint, f.retry_after, str(f), f.worker_pid) == (cls, "ep", 1.5, "message", 42)


def test_one_crossing_path_is_in_use_and_matches_the_python_path(svc):
    from shmguard import _calls
    # the C fast path was built (tests/core/test_paths.py reruns this file without it)
    assert (_calls._hot_execute is None) == (os.environ.get("SHMGUARD_NO_HOT") == "1")
    svc.register_endpoint("hot", sg.Policy(min_requests=3, open_timeout=1.0))
    assert svc.execute("kw", lambda *a, **k: (a, k), 1, 2, x=3) == ((1, 2), {"x": 3})
    seen = []
    svc.on_state_change = lambda ep, old, new: seen.append(str(new))
    for _ in range(3):
        with pytest.raises(ConnectionError) as ei:
            svc.execute("hot", boom)
        assert ei.value.__traceback__ is not None
    assert seen == ["open"]
    with pytest.raises(sg.CircuitOpenError):
        svc.execute("hot", lambda: 1)
    svc.advance(1.0)
    assert svc.execute("hot", lambda: "probe") == "probe"
    assert seen == ["open", "half-open", "closed"]
    svc.on_state_change = lambda *a: 1 / 0              # a raising callback surfaces
    for _ in range(2):
        with pytest.raises(ConnectionError):
            svc.execute("hot", boom)
    with pytest.raises(ZeroDivisionError):
        svc.execute("hot", boom)                        # the third failure trips it
    b = svc.stats("hot").breaker
    assert (b.successes, b.failures, b.state) == (1, 6, sg.BreakerState.OPEN)
