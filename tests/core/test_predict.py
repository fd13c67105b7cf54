"""Predictive breaking: Holt forecast step tables (explicit now_ns) and the bench scenarios, small."""
from __future__ import annotations

import importlib.util
import os
import sys

import pytest

import shmguard as sg
from shmguard import overload as ov
from shmguard._capi import ffi, lib

S = 1_000_000_000
T0 = 10**12
OK, FAIL = 1, 2
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def slot_of(svc, name="dep", **kw):
    base = {"failure_threshold": 1.0, "min_requests": 1, "window": 10.0, "window_buckets": 10,
            "predict_horizon": 2.0}
    svc.register_endpoint(name, sg.Policy(**{**base, **kw}))
    return svc._eps[name].h.slot


def bucket(slot, second, failures, calls, slow=0):
    """Fills the 1 s bucket starting at ``second`` (relative to T0), failures spread evenly."""
    tr = []
    for i in range(calls):
        t = T0 + second * S + i * (S // (2 * calls))
        tok = lib.sg_breaker_acquire_at(slot, t, 4242)
        if tok < 0:
            tr.append(tok)
            continue
        took = int(0.3 * S) if i >= calls - slow else 0  # the last `slow` calls take 300 ms
        failed = (i + 1) * failures // calls > i * failures // calls
        tr.append(lib.sg_breaker_record_at(slot, t + took, tok | (FAIL if failed else OK)))
    return tr


def observe(slot, t_s, since_s=0.0):
    v = ffi.new("struct sg_predict_view *")
    trip = lib.sg_predict_observe_at(slot, T0 + int(t_s * S), T0 + int(since_s * S) if since_s else 0, v)
    return trip, v


def test_holt_step_table(svc):
    slot = slot_of(svc)
    rows = [
        # (bucket ratio of second s, then observed at s + 1: level, trend, forecast) in ppm;
        # alpha 0.3, beta 0.1, horizon 2 s, forecast from the middle of the last bucket
        (0, 1, 100000, 0, 100000),          # first bucket: level = ratio, no trend
        (1, 2, 130000, 3000, 137500),       # L = 100000 + 0.3 * 100000; T = 0.1 * 30000
        (2, 4, 213100, 11010, 240625),      # Lp = 133000; L = Lp + 0.3 * 267000
        (3, 4, 276877, 16286, 317592),      # Lp = 224110; T = 11010 + 0.1 * (63777 - 11010)
        (4, 2, 265215, 13492, 298945),      # the ratio falls: the trend bends down
    ]
    for s, failures, level, trend, forecast in rows:
        bucket(slot, s, failures, 10)
        trip, v = observe(slot, s + 1)
        assert (v.valid & 1, v.level_ppm, v.trend_ppm, v.forecast_ppm) == (1, level, trend, forecast), s
        assert trip == 0
    snap = ov.predict_view(slot, T0 + 5 * S, "t")  # read only: the same state
    assert (snap.level_ppm, snap.trend_ppm, snap.forecast_ppm) == (265215, 13492, 298945)
    assert snap.horizon_ns == 2 * S and snap.opens == 0


def test_gaps_and_empty_buckets(svc):
    slot = slot_of(svc)
    bucket(slot, 0, 2, 10)
    bucket(slot, 3, 5, 10)                   # seconds 1-2 hold no calls: dt = 3
    _, v = observe(slot, 4)
    # Lp = 200000; L = 200000 + 0.3 * 300000 = 290000; T = 0.1 * (90000 / 3) = 3000
    assert (v.level_ppm, v.trend_ppm) == (290000, 3000)
    bucket(slot, 15, 1, 10)                  # older than the window: the series restarts
    _, v = observe(slot, 16)
    assert (v.level_ppm, v.trend_ppm) == (100000, 0)


def test_a_new_breaker_state_restarts_the_series(svc):
    slot = slot_of(svc)
    for s in range(4):
        bucket(slot, s, 2 * s + 1, 10)
    _, v = observe(slot, 4)
    assert v.trend_ppm > 0
    bucket(slot, 5, 9, 10)
    _, v = observe(slot, 6, since_s=4.5)     # the state began in bucket 4: buckets 0-3 are gone
    assert (v.level_ppm, v.trend_ppm) == (900000, 0)


def test_rising_trend_opens_early_and_threshold_mode_does_not(svc):
    pred = slot_of(svc, "pred", failure_threshold=0.5, min_requests=20)
    plain = slot_of(svc, "plain", failure_threshold=0.5, min_requests=20, predict_horizon=None)
    # (second, failures of 10, transition of the last call in predictive mode)
    opened_at = None
    for s, f in enumerate([1, 2, 3, 4, 5, 6, 7, 8]):
        tr = bucket(pred, s, f, 10)
        assert lib.SG_T_TO_OPEN not in bucket(plain, s, f, 10)
        if lib.SG_T_TO_OPEN in tr and opened_at is None:
            opened_at = s
    assert opened_at == 6                      # window 22/62 = 35 %, but the forecast reached 50 %
    st = svc.stats("pred")
    assert st.prediction.opens == 1 and st.breaker.opens == 1
    assert st.breaker.state == sg.BreakerState.OPEN
    # threshold mode: opens only when the window itself reaches 50 % (never within 8 s here)
    assert svc.stats("plain").breaker.opens == 0


def test_falling_trend_never_opens_early(svc):
    slot = slot_of(svc, failure_threshold=0.6, min_requests=20)
    for s, f in enumerate([6, 5, 5, 4, 4, 3, 3, 2]):
        assert lib.SG_T_TO_OPEN not in bucket(slot, s, f, 10)
    _, v = observe(slot, 8)
    assert v.trend_ppm < 0 and v.level_ppm > 200000
    assert svc.stats("dep").prediction.opens == svc.stats("dep").breaker.opens == 0


def test_latency_series(svc):
    slot = slot_of(svc, failure_threshold=1.0, slow_call_duration=0.2, slow_call_threshold=0.5)
    for s, slow in enumerate([0, 1, 2, 3]):
        bucket(slot, s, 0, 10, slow=slow)
    trip, v = observe(slot, 4)
    # slow ratios 0, 10, 20, 30 %: L 0 -> 30000 -> 83100 -> 153777; T 0 -> 3000 -> 8010 -> 14276
    assert v.valid == 3 and (v.slow_level_ppm, v.slow_trend_ppm) == (153777, 14276)
    assert v.forecast_ppm == 0 and trip == 0
    assert v.slow_forecast_ppm == 153777 + 14276 * 5 // 2


def _bench():
    spec = importlib.util.spec_from_file_location("bench_overload", os.path.join(ROOT, "bench", "overload.py"))
    mod = importlib.util.module_from_spec(spec)
    sys.modules["bench_overload"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("seed", [0, 1])
def test_bench_scenarios_small(segname, seed):
    b = _bench()
    runs = {(sc, h): b.run(sc, h, seed, rate=20, segment=f"{segname}-{sc}-{0 if h is None else int(h)}")
            for sc in ("ramp", "noisy", "latency") for h in (None, 2.0)}
    for sc in ("ramp", "latency"):
        thr, pred = runs[(sc, None)], runs[(sc, 2.0)]
        assert thr.first_open is not None and pred.first_open is not None
        assert pred.bad_before_open < 0.75 * thr.bad_before_open, sc
        assert pred.first_open < thr.first_open, sc
    assert runs[("noisy", None)].opens == 0 and runs[("noisy", 2.0)].opens == 0
    assert runs[("noisy", 2.0)].calls == 60 * 20  # never opened: every call admitted
