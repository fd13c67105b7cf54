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
    T = kl._t.kh.t0_ns                                # rate unchanged: virtual time is time
    bound = (t1 - t0 + BURST * T) // T               # GCRA: n * T <= elapsed + tolerance (HIGH)
    worst = max(total.values())
    assert worst <= bound, f"a key was admitted {worst} times, bound {bound}"
    assert len(total) == KEYS                          # every key got some admissions
    s = kl.stats()
    assert s.accepted == sum(total.values())           # the table's count agrees exactly
    assert s.folded <= s.inserted and s.full_rejections == 0
    hot = [total[f"tenant-{i}"] for i in range(HOT)]
    assert sum(hot) >= 0.5 * HOT * bound, (hot, bound)  # hot keys are pushed to their bound


def _churn(segname: str, seed: int) -> None:
    svc = sg.ResilienceService(segname, create=False)
    kl = svc.keyed_limiter("churn", 1000, 2, capacity=16)     # 32 entries: constant reuse
    rng = random.Random(seed)
    i = 0
    while True:
        i += 1
        kl.allow(f"hot-{rng.randrange(4)}")
        kl.allow(f"new-{seed}-{i}")


def test_sigkilled_inserters_leave_one_live_entry_per_key(realsvc):
    """Processes killed at random moments while inserting and reusing entries."""
    import os
    import signal

    from _torture_keyed import _entries_of
    kl = realsvc.keyed_limiter("churn", 1000, 2, capacity=16)
    ctx = mp.get_context("fork")
    rng = random.Random(2026)
    for r in range(8):
        procs = [ctx.Process(target=_churn, args=(realsvc.name, 10 * r + j)) for j in range(2)]
        for p in procs:
            p.start()
        time.sleep(rng.uniform(0.05, 0.2))
        for p in procs:
            os.kill(p.pid, signal.SIGKILL)
            p.join(10)
            assert p.exitcode == -signal.SIGKILL
    time.sleep(0.01)                       # every TAT (<= 2 ms ahead) is in the past now
    for k in range(4):
        assert kl.allow(f"hot-{k}")        # settles anything a killed inserter left PENDING
        states = _entries_of(kl, f"hot-{k}".encode())
        # one LIVE entry takes the decisions; an insert killed before it settled may
        # leave a PENDING one after it, which never held a decision (reused after 1 ms)
        assert states[0] == 1 and set(states[1:]) <= {2}, states
    # 4 + 10 live keys cannot fill a window of 16: every new key gets an entry
    assert all(kl.allow(f"after-{i}") for i in range(10))
    s = kl.stats()
    assert s.inserted > 0 and s.used_entries <= s.entries == 32


def _race(segname: str, keys: list[str], go, out) -> None:
    svc = sg.ResilienceService(segname, create=False)
    kl = svc.keyed_limiter("race", 0.001, 1, capacity=20_000)
    go.wait()
    out.put([k for k in keys if kl.allow(k, 1, sg.Priority.HIGH)])
    svc.close()


def test_processes_racing_to_insert_the_same_keys_admit_each_once(realsvc):
    """4 processes take the same 5,000 new keys in the same order: one admission per key."""
    kl = realsvc.keyed_limiter("race", 0.001, 1, capacity=20_000)   # burst 1, no refill
    keys = [f"fresh-{i}" for i in range(5000)]
    ctx = mp.get_context("fork")
    go, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_race, args=(realsvc.name, keys, go, out)) for _ in range(4)]
    for p in procs:
        p.start()
    go.set()
    admitted: Counter[str] = Counter()
    for _ in procs:
        admitted.update(out.get(timeout=60))
    for p in procs:
        p.join(30)
    assert admitted == Counter(keys)               # every key exactly once, whoever won
    s = kl.stats()
    # one entry per key holds its debt (an extra one a slow inserter left holds none)
    assert (s.accepted, s.rejected, s.live_keys) == (5000, 15_000, 5000)
