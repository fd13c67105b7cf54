"""Overload bench: threshold breaking against predictive breaking, on simulated time.

    python bench/overload.py [--seeds N] [--horizons 2,5] [--rates 20,100] [--pool] [--cost]

Three scenarios at 20 and 100 calls/s, driven through the C breaker calls with
explicit times on a manual-clock segment (fast and deterministic: a seed
gives the same figures on every run):

  ramp      failure ratio rising 0 -> 80 % over 20 s, then held (30 s)
  noisy     healthy but noisy: each second's failure ratio drawn in 10-30 % (60 s)
  latency   latency rising 20 ms -> 400 ms over 20 s (x0.5..1.5 jitter), slow
            above 200 ms, then held (30 s)

Breaker: 50 % failures (or 50 % slow calls) over a 10 s window of 10 buckets,
at least 20 calls, open 5 s. For each mode the table shows the failed (or
slow) calls that reached the dependency before the first open, the time of
the first open, and the opens of the noisy scenario (all of them false).
With --pool it runs adaptive throttling against a dependency whose capacity
drops to 30 % of the load, pooled in one slot against one slot per worker.
With --cost it also measures what the features add to execute() on a
healthy endpoint (real clock; nothing is throttled, no failure lands).
Prints figures; asserts nothing. tests/core/test_predict.py runs the same
scenarios at small scale and asserts the counts.
"""
from __future__ import annotations

import argparse
import heapq
import os
import random
import statistics
import uuid
from dataclasses import dataclass
from typing import Callable

import shmguard as sg
from shmguard._capi import lib

S = 1_000_000_000
T0 = 1000 * S
RATE = 100
Draw = Callable[[float, random.Random], "tuple[bool, float]"]  # t -> (failed, latency s)


def ramp(t: float, rng: random.Random) -> tuple[bool, float]:
    return rng.random() < min(0.8, 0.04 * t), 0.005


def noisy_draw(seed: int) -> Draw:
    ratios = random.Random(seed * 7919 + 1)
    per_second: dict[int, float] = {}

    def draw(t: float, rng: random.Random) -> tuple[bool, float]:
        p = per_second.setdefault(int(t), ratios.uniform(0.1, 0.3))
        return rng.random() < p, 0.005
    return draw


def latency(t: float, rng: random.Random) -> tuple[bool, float]:
    base = 0.02 + 0.38 * min(t, 20.0) / 20.0
    return False, base * rng.uniform(0.5, 1.5)


SCENARIOS: dict[str, tuple[float, Callable[[int], Draw]]] = {
    "ramp": (30.0, lambda seed: ramp),
    "noisy": (60.0, noisy_draw),
    "latency": (30.0, lambda seed: latency),
}


@dataclass
class Result:
    bad_before_open: int      # failed or slow calls admitted before the first open
    first_open: float | None  # seconds from the start
    opens: int
    calls: int                # calls admitted


def policy(horizon: float | None) -> sg.Policy:
    return sg.Policy(failure_threshold=0.5, min_requests=20, window=10.0, window_buckets=10,
                     open_timeout=5.0, slow_call_duration=0.2, slow_call_threshold=0.5,
                     predict_horizon=horizon)


def run(scenario: str, horizon: float | None, seed: int, *, seconds: float | None = None,
        rate: int = RATE, segment: str | None = None) -> Result:
    """Runs one scenario on a fresh segment; returns what the breaker did."""
    total, make = SCENARIOS[scenario]
    total = seconds or total
    draw, rng = make(seed), random.Random(seed)
    name = segment or f"bench-ov-{uuid.uuid4().hex[:8]}"
    svc = sg.ResilienceService(name, capacity=4, manual_clock=True)
    try:
        svc.set_clock(T0)
        svc.register_endpoint("dep", policy(horizon))
        return _drive(svc._eps["dep"].h.slot, draw, rng, total, rate)
    finally:
        svc.close()
        svc.unlink()


def _drive(slot: object, draw: Draw, rng: random.Random, total: float, rate: int) -> Result:
    pid, res = os.getpid(), Result(0, None, 0, 0)
    due: list[tuple[int, int, int, bool]] = []  # (record time, seq, token|outcome, bad)
    step = S // rate
    for i in range(int(total * rate)):
        now = T0 + i * step
        while due and due[0][0] <= now:
            _finish(slot, heapq.heappop(due), res)
        tok = lib.sg_breaker_acquire_at(slot, now, pid)
        if tok < 0:
            continue
        failed, lat = draw(i / rate, rng)
        res.calls += 1
        slow = lat >= 0.2
        if (failed or slow) and res.first_open is None:
            res.bad_before_open += 1
        outcome = 2 if failed else 1
        heapq.heappush(due, (now + int(lat * S), i, tok | outcome, failed or slow))
    while due:
        _finish(slot, heapq.heappop(due), res)
    return res


def _finish(slot: object, ev: tuple[int, int, int, bool], res: Result) -> None:
    t = lib.sg_breaker_record_at(slot, ev[0], ev[2])
    if t >= 0 and t & 7 == lib.SG_T_TO_OPEN:
        res.opens += 1
        if res.first_open is None:
            res.first_open = (ev[0] - T0) / S


def table(seeds: int, horizons: list[float], rate: int) -> str:
    modes: list[tuple[str, float | None]] = [("threshold", None)]
    modes += [(f"predictive {h:g} s", h) for h in horizons]
    rows = ["| mode | ramp: failed calls before open | ramp: time to open | "
            "latency: slow calls before open | latency: time to open | noisy: false opens |",
            "|---|---|---|---|---|---|"]
    for label, h in modes:
        r = [run("ramp", h, s, rate=rate) for s in range(seeds)]
        lat = [run("latency", h, s, rate=rate) for s in range(seeds)]
        noise = [run("noisy", h, s, rate=rate) for s in range(seeds)]
        rows.append(f"| {label} | {_mean(x.bad_before_open for x in r)} | {_when(r)} | "
                    f"{_mean(x.bad_before_open for x in lat)} | {_when(lat)} | "
                    f"{sum(x.opens for x in noise)} in {seeds} runs |")
    return "\n".join(rows)


def _mean(xs: object) -> str:
    return f"{statistics.mean(xs):.0f}"  # type: ignore[arg-type]


def _when(rs: list[Result]) -> str:
    opened = [r.first_open for r in rs if r.first_open is not None]
    if not opened:
        return "never"
    return f"{statistics.mean(opened):.2f} s" + ("" if len(opened) == len(rs) else
                                                f" ({len(opened)}/{len(rs)} opened)")


def pool_run(pooled: bool, workers: int, rate: int, seconds: float = 30.0,
             drop_at: float = 10.0) -> tuple[int, int, int]:
    """Adaptive throttling against a dependency whose capacity drops to 30 % of the load.

    ``workers`` take turns calling; pooled, they share one slot (shmguard), else
    each counts in its own (per-process throttling, as gRPC-Go and go-zero do).
    Returns (calls sent, failed at the dependency, throttled) after the drop.
    """
    svc = sg.ResilienceService(f"bench-ov-{uuid.uuid4().hex[:8]}", capacity=workers + 1,
                               manual_clock=True)
    try:
        pol = sg.Policy(throttle_k=2.0, throttle_window=10.0, throttle_min_requests=10)
        for i in range(1 if pooled else workers):
            svc.register_endpoint(f"w{i}", pol)
        slots = [ep.h.slot for ep in svc._eps.values()]
        served: list[float] = []  # answer times within the last second (capacity model)
        sent = failed = throttled = 0
        for i in range(int(seconds * rate)):
            now, t = T0 + i * (S // rate), i / rate
            slot = slots[i % len(slots)]
            if lib.sg_throttle_decide_at(slot, now) < 0:
                throttled += t >= drop_at
                continue
            served = [x for x in served if x > t - 1.0]
            ok = t < drop_at or len(served) < 0.3 * rate
            served += [t] if ok else []
            lib.sg_throttle_record_at(slot, now, 1 if ok else 2)
            sent, failed = sent + (t >= drop_at), failed + (t >= drop_at and not ok)
        return sent, failed, throttled
    finally:
        svc.close()
        svc.unlink()


def pool_table() -> str:
    rows = ["| workers | calls/s (all) | throttling | sent after the drop | failed there | "
            "throttled |", "|---:|---:|---|---:|---:|---:|"]
    for workers, rate in ((8, 400), (32, 32), (16, 8)):
        for pooled in (True, False):
            sent, failed, thr = pool_run(pooled, workers, rate)
            rows.append(f"| {workers} | {rate} | {'pooled (host-wide)' if pooled else 'per process'}"
                        f" | {sent} | {failed} | {thr} |")
    return "\n".join(rows)


def cost(reps: int = 7, n: int = 200_000) -> str:
    """Median ns per execute() of a no-op on a healthy endpoint, per feature set."""
    import time
    name = f"bench-ov-{uuid.uuid4().hex[:8]}"
    svc = sg.ResilienceService(name, capacity=4)
    try:
        eps = {"neither": sg.Policy(), "throttling": sg.Policy(throttle_k=2.0),
               "throttling + prediction": sg.Policy(throttle_k=2.0, predict_horizon=2.0)}
        for ep, pol in eps.items():
            svc.register_endpoint(ep, pol)

        def per_call(ep: str) -> float:
            ex, f = svc.execute, (lambda: None)
            t = time.perf_counter_ns()
            for _ in range(n):
                ex(ep, f)
            return (time.perf_counter_ns() - t) / n
        rows = ["| endpoint | execute() median ns |", "|---|---:|"]
        for ep in eps:
            per_call(ep)  # warm up
            rows.append(f"| {ep} | {statistics.median(per_call(ep) for _ in range(reps)):.1f} |")
        return "\n".join(rows)
    finally:
        svc.close()
        svc.unlink()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--horizons", default="2,5")
    ap.add_argument("--rates", default="20,100")
    ap.add_argument("--cost", action="store_true")
    ap.add_argument("--pool", action="store_true", help="pooled vs per-process throttling")
    args = ap.parse_args()
    horizons = [float(h) for h in args.horizons.split(",") if h]
    for rate in (int(r) for r in args.rates.split(",") if r):
        print(f"\n{rate} calls/s, {args.seeds} seeds per cell, means (simulated time)\n")
        print(table(args.seeds, horizons, rate))
    if args.pool:
        print("\nthrottling: capacity drops to 30 % of the load at 10 s; 20 s after it\n")
        print(pool_table())
    if args.cost:
        print("\nexecute() on a healthy endpoint (real clock)\n")
        print(cost())


if __name__ == "__main__":
    main()
