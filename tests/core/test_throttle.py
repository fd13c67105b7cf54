"""Adaptive throttling (SRE client-side throttling, host-wide): C step tables and real doors."""
from __future__ import annotations

import asyncio
import multiprocessing as mp
import pickle

import pytest

import shmguard as sg
from shmguard import overload as ov
from shmguard._capi import lib

import _overload_workers

S = 1_000_000_000
T0 = 10**12
OK, FAIL, IGN = 1, 2, 3
MASK = 2**64 - 1


def throttled_policy(**kw) -> sg.Policy:
    base = {"throttle_k": 2.0, "throttle_window": 10.0, "throttle_min_requests": 4,
            "failure_threshold": 1.0, "min_requests": 10**6}
    return sg.Policy(**{**base, **kw})


def slot_of(svc, name="dep", **kw):
    svc.register_endpoint(name, throttled_policy(**kw))
    return svc._eps[name].h.slot


def snap(slot, t):
    v = ov.throttle_view(slot, T0 + int(t * S), "test")
    return v.requests, v.accepts, v.working, v.probability_ppm


def test_probability_formula_step_by_step(svc):
    slot = slot_of(svc)
    steps = [
        # (t_s, outcome, n, requests, accepts, working, p_ppm); 1 s buckets, K = 2, min 4
        (0.0, FAIL, 3, 3, 0, 0, 0),          # 3 requests < min_requests 4
        (0.1, FAIL, 1, 4, 0, 0, 800000),     # (4 - 0) / (4 + 1)
        (0.2, OK, 1, 5, 1, 0, 500000),       # (5 - 2) / 6: bucket 0 holds an overload
        (0.3, OK, 1, 6, 2, 0, 285714),       # (6 - 4) / 7
        (0.4, OK, 1, 7, 3, 0, 125000),       # (7 - 6) / 8
        (0.5, OK, 1, 8, 4, 0, 0),            # 8 - 2 * 4 = 0: never negative
        (0.6, IGN, 5, 8, 4, 0, 0),           # ignored outcomes are neither
        (1.0, FAIL, 4, 12, 4, 0, 307692),    # (12 - 8) / 13
        (2.0, OK, 1, 13, 5, 1, 192857),      # (13 - 10) / 14 * 9/10: one healthy bucket
        (3.0, OK, 1, 14, 6, 2, 106666),      # (14 - 12) / 15 * 8/10
        (10.0, None, 0, 6, 2, 2, 228571),    # bucket 0 left the window: (6 - 4) / 7 * 8/10
        (11.0, None, 0, 2, 2, 2, 0),         # bucket 1 left too: 2 < min_requests
    ]
    for t, outcome, n, req, acc, working, p in steps:
        for _ in range(n):
            assert lib.sg_throttle_record_at(slot, T0 + int(t * S), outcome) == lib.SG_OK
        assert snap(slot, t) == (req, acc, working, p), t
    v = ov.throttle_view(slot, T0 + 11 * S, "test")
    assert (v.requests_total, v.accepts_total, v.throttled_total) == (14, 6, 0)
    assert v.k_milli == 2000 and v.window_ns == 10 * S


def splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK
    return x ^ (x >> 31)


def model_decisions(seed: int, req: int, acc: int, n: int, k_milli: int = 2000) -> list[int]:
    """The decisions sg_throttle_decide_at must make, in one bucket (working = 0)."""
    out, draws, forced = [], 0, False
    for _ in range(n):
        if not forced:  # last_pass is 0: nothing passed for a bucket's width
            forced = True
            out.append(lib.SG_OK)
            continue
        num, den = (req * 1000 - k_milli * acc) * 10, (req + 1) * 1000 * 10
        r = splitmix64((seed + draws) & MASK) % den
        draws += 1
        if r >= num:
            out.append(lib.SG_OK)
        else:
            req += 1  # a throttled call is a request
            out.append(lib.SG_R_THROTTLED)
    return out


@pytest.mark.parametrize("failures,successes", [(20, 0), (30, 10), (12, 5)])
def test_draws_follow_the_seeded_sequence(svc, failures, successes):
    slot = slot_of(svc)
    now = T0 + S // 2
    for outcome, n in ((FAIL, failures), (OK, successes)):
        for _ in range(n):
            lib.sg_throttle_record_at(slot, now, outcome)
    seed = svc._eps["dep"].policy.fingerprint
    got = [lib.sg_throttle_decide_at(slot, now) for _ in range(300)]
    assert got == model_decisions(seed, failures + successes, successes, 300)
    assert got.count(lib.SG_R_THROTTLED) == ov.throttle_view(slot, now, "t").throttled_total


def test_healthy_endpoint_draws_nothing(svc):
    slot = slot_of(svc)
    for _ in range(50):
        lib.sg_throttle_record_at(slot, T0, OK)
    assert all(lib.sg_throttle_decide_at(slot, T0) == lib.SG_OK for _ in range(100))
    assert snap(slot, 0) == (50, 50, 1, 0)


class Backend:
    """A dependency that refuses 9 calls in 10 (deterministically) until it recovers."""

    def __init__(self) -> None:
        self.reached = 0
        self.healthy = False

    def __call__(self) -> str:
        self.reached += 1
        if not self.healthy and self.reached % 10:
            raise ConnectionError("overloaded")
        return "ok"


def drive(svc, backend, calls, start_s, step_s=0.01):
    """Makes ``calls`` calls 10 ms apart from ``start_s``; returns (reached, throttled)."""
    before, throttled = backend.reached, 0
    for i in range(calls):
        svc.set_clock(T0 + int((start_s + i * step_s) * S))
        try:
            svc.execute("dep", backend)
        except ConnectionError:
            pass
        except sg.ThrottledError:
            throttled += 1
    return backend.reached - before, throttled


def test_overloaded_backend_is_shielded_host_wide_and_recovers(svc, segname):
    svc.register_endpoint("dep", throttled_policy(throttle_min_requests=10))
    backend = Backend()
    drive(svc, backend, 500, 0.0)                       # warm-up: 5 s
    reached, throttled = drive(svc, backend, 1000, 5.0)  # 10 s of overload
    assert reached + throttled == 1000
    assert reached < 400                                 # fewer than 40 % reach it
    # a second process, with no history of its own, is throttled by the same counts
    p_here = svc.stats("dep").throttle_probability
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    child = ctx.Process(target=_overload_workers.overloaded_calls, args=(segname, "dep", 100, out))
    child.start()
    c_reached, c_throttled, c_p = out.get(timeout=60)
    child.join(30)
    assert child.exitcode == 0
    assert c_p == p_here > 0.9
    assert c_reached + c_throttled == 100 and c_reached <= 5
    # recovery: one window of healthy answers, then more than 95 % pass
    backend.healthy = True
    drive(svc, backend, 1000, 15.0)
    reached, throttled = drive(svc, backend, 500, 25.0)
    assert reached + throttled == 500 and reached > 475
    assert svc.stats("dep").throttle_probability == 0.0


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_concurrent_processes_count_exactly(realsvc, segname, method):
    realsvc.register_endpoint("dep", throttled_policy(throttle_window=600.0,
                                                      throttle_min_requests=10))
    ctx = mp.get_context(method)
    go, out = ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=_overload_workers.mixed_calls, args=(segname, "dep", 1500, go, out))
          for _ in range(3)]
    for p in ps:
        p.start()
    go.set()
    got = [out.get(timeout=120) for _ in ps]
    for p in ps:
        p.join(30)
        assert p.exitcode == 0
    reached, accepted, throttled = (sum(g[i] for g in got) for i in range(3))
    t = realsvc.stats("dep").throttle
    assert reached + throttled == 4500 and throttled > 0
    assert (t.requests_total, t.accepts_total, t.throttled) == (4500, accepted, throttled)
    assert (t.requests, t.accepts) == (4500, accepted)   # all inside the 600 s window
    assert realsvc.stats("dep").breaker.failures == reached - accepted


def test_throttle_on_narrows_what_counts_as_overload(svc):
    svc.register_endpoint("dep", throttled_policy(throttle_on=(ConnectionError,)))

    def refuse(exc):
        def call():
            raise exc
        return call
    for i in range(200):
        svc.set_clock(T0 + i * 10**7)
        with pytest.raises(ValueError):  # a failure for the breaker, an answer for the throttle
            svc.execute("dep", refuse(ValueError("bad input")))
    st = svc.stats("dep")
    assert (st.throttle.requests, st.throttle.accepts, st.throttle.throttled) == (200, 200, 0)
    assert st.breaker.failures == 200
    throttled = 0
    for i in range(200):
        svc.set_clock(T0 + 12 * S + i * 10**7)  # the accepts above left the window
        try:
            svc.execute("dep", refuse(ConnectionError("busy")))
        except ConnectionError:
            pass
        except sg.ThrottledError:
            throttled += 1
    st = svc.stats("dep")
    assert throttled > 0 and st.throttle.throttled == throttled
    assert (st.throttle.requests, st.throttle.accepts) == (200, 0)
    assert (st.throttle.requests_total, st.throttle.accepts_total) == (400, 200)


def test_admit_and_record_door_counts_like_execute(svc):
    svc.register_endpoint("dep", throttled_policy(throttle_on=(ConnectionError,)))
    for outcome in (sg.Outcome.SUCCESS, sg.Outcome.FAILURE, sg.Outcome.IGNORE):
        svc.record("dep", svc.admit("dep"), outcome)
    with pytest.raises(ValueError), svc.guard("dep"):
        raise ValueError("an answer, not overload")
    with pytest.raises(ConnectionError), svc.guard("dep"):
        raise ConnectionError("overload")
    t = svc.stats("dep").throttle
    # a failure without an exception is overload; ignored counts as neither
    assert (t.requests, t.accepts) == (4, 2)


def overload(svc, name="dep", **kw):
    """An endpoint whose window holds 1000 overload failures, and whose forced pass is used."""
    slot = slot_of(svc, name, **kw)
    for _ in range(1000):
        lib.sg_throttle_record_at(slot, T0, FAIL)
    assert lib.sg_throttle_decide_at(slot, T0) == lib.SG_OK  # the forced pass of this bucket
    return slot


def test_every_door_raises_throttled_error(svc):
    overload(svc)
    with pytest.raises(sg.ThrottledError) as ei:
        svc.execute("dep", lambda: "ran")
    assert ei.value.endpoint == "dep" and ei.value.retry_after is None
    assert ei.value.probability == pytest.approx(1000 / 1001, abs=1e-5)
    assert isinstance(ei.value, sg.ShmguardError)
    with pytest.raises(sg.ThrottledError):
        with svc.guard("dep"):
            pass
    with pytest.raises(sg.ThrottledError):
        svc.protect("dep")(lambda: "ran")()
    with pytest.raises(sg.ThrottledError):
        svc.admit("dep")
    with pytest.raises(sg.ThrottledError):
        svc.execute("dep", lambda: "ran", timeout=1.0)

    async def coro() -> str:
        return "ran"
    with pytest.raises(sg.ThrottledError):
        asyncio.run(svc.execute_async("dep", coro))
    assert svc.stats("dep").throttle.throttled == 6
    back = pickle.loads(pickle.dumps(ei.value))
    assert (type(back), back.endpoint, back.probability, str(back)) == (
        sg.ThrottledError, "dep", ei.value.probability, str(ei.value))


def test_breaker_is_the_hard_stop_and_probes_are_never_throttled(svc):
    overload(svc, failure_threshold=0.5, min_requests=5, open_timeout=5.0)
    svc.breaker("dep").open()
    with pytest.raises(sg.CircuitOpenError):  # the breaker decides first
        svc.execute("dep", lambda: "ran")
    svc.set_clock(T0 + 6 * S)                  # half-open: the probe goes to the dependency
    assert svc.execute("dep", lambda: "probe") == "probe"
    assert svc.breaker_state("dep") == sg.BreakerState.CLOSED
    assert svc.stats("dep").throttle.throttled == 0


def test_metrics_only_mode_still_throttles(svc):
    overload(svc)
    svc.breaker("dep").metrics_only()
    with pytest.raises(sg.ThrottledError):
        svc.execute("dep", lambda: "ran")
    svc.breaker("dep").force_closed()
    with pytest.raises(sg.ThrottledError):
        svc.execute("dep", lambda: "ran")


def test_reset_forgets_the_throttle_window(svc):
    slot = overload(svc)
    with pytest.raises(sg.ThrottledError):
        svc.execute("dep", lambda: "ran")
    svc.breaker("dep").reset()
    t = svc.stats("dep").throttle
    assert (t.requests, t.accepts, t.throttle_probability) == (0, 0, 0.0)
    assert t.requests_total == 1001 and t.throttled == 1   # totals are kept
    assert svc.execute("dep", lambda: "ran") == "ran"
    assert lib.sg_throttle_decide_at(slot, T0) == lib.SG_OK


def test_off_by_default(svc):
    svc.register_endpoint("plain", sg.Policy())
    slot = svc._eps["plain"].h.slot
    for _ in range(100):
        with pytest.raises(ConnectionError):
            svc.execute("plain", Backend())
        svc.breaker("plain").reset()
    st = svc.stats("plain").throttle
    assert not st.enabled and st.requests == st.requests_total == 0
    pred = svc.stats("plain").prediction
    assert not pred.enabled and pred.failure_forecast is None and pred.opens == 0
    assert lib.sg_throttle_decide_at(slot, T0) == lib.SG_OK


@pytest.mark.parametrize("kw,field", [
    ({"throttle_k": 0.5}, "throttle_k"), ({"throttle_k": float("nan")}, "throttle_k"),
    ({"throttle_window": 0.0}, "throttle_window"),
    ({"throttle_min_requests": 0}, "throttle_min_requests"),
    ({"throttle_on": (int,)}, "throttle_on"), ({"predict_horizon": -1.0}, "predict_horizon"),
])
def test_bad_policy_names_the_field(kw, field):
    with pytest.raises(sg.PolicyError, match=field):
        sg.Policy(**kw)


def test_builder_sets_the_fields():
    p = (sg.PolicyBuilder().with_adaptive_throttling(k=1.5, window=60.0, min_requests=7,
                                                     throttle_on=(TimeoutError,))
         .with_prediction(horizon=3.0).build())
    assert (p.throttle_k, p.throttle_window, p.throttle_min_requests) == (1.5, 60.0, 7)
    assert p.throttle_on == (TimeoutError,) and p.predict_horizon == 3.0
    assert p.is_overload(TimeoutError()) and not p.is_overload(ValueError())
