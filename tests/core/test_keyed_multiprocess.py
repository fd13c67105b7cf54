"""Keyed limits across processes: every key within burst + rate x elapsed, exactly."""
from __future__ import annotations

import multiprocessing as mp
import random
import time
from collections import Counter

import shmguard as sg

NS = 1_000_000_000
RATE, BURST = 40.0, 4
KEYS = 300
HOT = 10          # keys 0..9 get half of all requests


def _hammer(segname: str, seed: int, go, seconds: float, out) -> None:
    svc = sg.ResilienceService(segname, create=False)
    kl = svc.keyed_limiter("tenants", RATE, BURST, capacity=1000)
    rng = random.Random(seed)
    keys = [f"tenant-{i}" for i in range(KEYS)]
    picks = [keys[rng.randrange(HOT)] if rng.random() < 0.5 else rng.choice(keys)
             for _ in range(4096)]
    allow, high = kl.allow, sg.Priority.HIGH
    got: Counter[str] = Counter()
    go.wait()
    first = svc.now_ns()
    stop = time.monotonic() + seconds
    i = 0
    while time.monotonic() < stop:
        for _ in range(256):
            k = picks[i & 4095]
            i += 1
            if allow(k, 1, high):
                got[k] += 1
    last = svc.now_ns()
    out.put((dict(got), first, last, i))
    svc.close()


def test_four_processes_300_keys_each_within_its_bound(realsvc):
    kl = realsvc.keyed_limiter("tenants", RATE, BURST, capacity=1000)
    ctx = mp.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_hammer, args=(realsvc.name, 100 + n, go, 1.5, out))
             for n in range(4)]
    for p in procs:
        p.start()
    go.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    total: Counter[str] = Counter()
    for got, _, _, _ in results:
        total.update(got)
    t0 = min(r[1] for r in results)
    t1 = max(r[2] for r in results)
    T = kl._t.kh.emission_ns
    bound = (t1 - t0 + kl._t.kh.tol[2]) // T         # GCRA: n * T <= elapsed + tolerance
    worst = max(total.values())
    assert worst <= bound, f"a key was admitted {worst} times, bound {bound}"
    assert len(total) == KEYS                          # every key got some admissions
    s = kl.stats()
    assert s.accepted == sum(total.values())           # the table's count agrees exactly
    assert s.folded <= s.inserted and s.full_rejections == 0
    hot = [total[f"tenant-{i}"] for i in range(HOT)]
    assert sum(hot) >= 0.5 * HOT * bound, (hot, bound)  # hot keys are pushed to their bound
