"""KeyedLimiter through the service: verbs, reuse over time, on_full, execute(key=), life cycle."""
from __future__ import annotations

import asyncio
import os
import time

import pytest

import shmguard as sg
from shmguard._capi import ffi
from shmguard.segment import SHM_DIR

NS = 1_000_000_000


def tables(segname: str) -> list[str]:
    prefix = f"shmguard.{os.geteuid()}.{segname}~kl~"
    return sorted(e[len(prefix):] for e in os.listdir(SHM_DIR) if e.startswith(prefix))


def test_verbs_per_key(svc):
    kl = svc.keyed_limiter("api", rate=10, burst=5)
    assert [kl.allow("u1") for _ in range(5)] == [True] * 4 + [False]   # NORMAL: 80% of 5
    assert kl.allow("u1", priority=sg.Priority.HIGH) and not kl.allow("u1", priority=sg.Priority.HIGH)
    assert kl.allow(b"u1") is False                  # str keys hash as their UTF-8 bytes
    assert kl.allow("ü") and kl.allow("ü".encode())   # any text
    assert kl.tokens("u2") == 5.0 and kl.tokens("u1") == 0.0
    assert kl.retry_after("u1", priority=sg.Priority.HIGH) == pytest.approx(0.1)
    r = kl.reserve("u1", max_wait=0.05)
    assert not r.ok and r.delay == pytest.approx(0.2)   # NORMAL: its 4 tokens, and 1 more
    r = kl.reserve("u1", 2, priority=sg.Priority.HIGH, max_wait=1.0)
    assert r.ok and r.delay == pytest.approx(0.2)
    r.cancel()
    assert kl.retry_after("u1", priority=sg.Priority.HIGH) == pytest.approx(0.1)
    svc.advance(1.0)
    assert kl.tokens("u1") == 5.0
    long_key = "x" * 10_000                           # longer keys are hashed, not refused
    assert kl.allow(long_key) and kl.tokens(long_key) == 4.0
    with pytest.raises(TypeError, match="key must be str or bytes, got int"):
        kl.allow(42)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="got int"):
        kl.tokens(42)  # type: ignore[arg-type]
    with pytest.raises(sg.PolicyError, match=r"allow\(cost=6\) exceeds burst 5 of keyed limiter"):
        kl.allow("u3", 6, sg.Priority.HIGH)
    with pytest.raises(sg.PolicyError, match="cost"):
        kl.allow("u3", 0)


def test_wait_sleeps_the_computed_delay(svc):
    kl = svc.keyed_limiter("w", rate=100, burst=1)      # the manual clock: delays are exact
    assert kl.wait("k", priority=sg.Priority.HIGH)
    assert not kl.wait("k", timeout=0.001, priority=sg.Priority.HIGH)   # needs 10 ms
    assert kl.wait("k", timeout=1.0, priority=sg.Priority.HIGH)        # reserved 10 ms ahead
    assert asyncio.run(kl.wait_async("k", timeout=1.0, priority=sg.Priority.HIGH))  # 20 ms
    assert not asyncio.run(kl.wait_async("k", timeout=0.0, priority=sg.Priority.HIGH))
    s = kl.stats()
    assert (s.accepted, s.waited, s.rejected) == (3, 2, 2)


def test_attach_by_name_and_conflicting_numbers(svc, segname):
    a = svc.keyed_limiter("t", rate=5, burst=2, capacity=100)
    other = sg.ResilienceService(segname, create=False)
    try:
        b = other.keyed_limiter("t", rate=5, burst=2, capacity=100)
        assert a.allow("k") and not b.allow("k")         # one bucket per key, both processes
        with pytest.raises(sg.PolicyConflictError, match=r"rate 5/s, burst 2, capacity 100, "
                                                         r"on_full 'reject', not rate 6/s"):
            other.keyed_limiter("t", rate=6, burst=2, capacity=100)
    finally:
        other.close()
    assert tables(segname) == ["t"]


@pytest.mark.parametrize("kw, match", [
    ({"rate": 0}, "rate"), ({"rate": float("nan")}, "rate"), ({"burst": 0}, "burst"),
    ({"burst": 1.5}, "burst"), ({"capacity": 2**27}, "capacity"), ({"on_full": "drop"}, "on_full"),
    ({"rate": 1e-9, "burst": 2**31}, "horizon"),
])
def test_bad_numbers_name_the_field(svc, kw, match):
    args = {"rate": 1, "burst": 1, **kw}
    with pytest.raises(sg.PolicyError, match=match):
        svc.keyed_limiter("x", args.pop("rate"), args.pop("burst"), **args)


@pytest.mark.parametrize("name", ["", "a/b", "..", "x" * 65, "a~kl~b", 3])
def test_bad_names(svc, name):
    with pytest.raises(sg.InvalidNameError, match="keyed limiter name"):
        svc.keyed_limiter(name, 1, 1)


def test_a_1000_entry_table_serves_20000_keys_over_time(svc):
    """Keys arrive at 2,000/s and each stays 100 ms: about 200 alive at once in 1,000 entries."""
    kl = svc.keyed_limiter("stream", rate=10, burst=1, capacity=500)
    admitted = 0
    for i in range(20_000):
        if i % 20 == 0:
            svc.advance(0.01)
        admitted += kl.allow(f"tenant-{i}", priority=sg.Priority.HIGH)
    s = kl.stats()
    assert s.entries == 1000 and s.memory_bytes == 1024 + 16_000
    assert admitted == 20_000 and s.accepted == 20_000
    assert (s.inserted, s.full_rejections, s.folded) == (20_000, 0, 0)
    assert s.evicted >= 19_000                 # expired entries taken over, without loss
    assert s.used_entries <= 1000 and s.live_keys <= 220


@pytest.mark.parametrize("on_full", ["reject", "allow"])
def test_2000_live_keys_in_1000_entries(svc, on_full):
    kl = svc.keyed_limiter("crowd", rate=0.001, burst=1, capacity=500, on_full=on_full)
    first = [kl.allow(f"k{i}", priority=sg.Priority.HIGH) for i in range(2000)]
    second = [kl.allow(f"k{i}", priority=sg.Priority.HIGH) for i in range(2000)]
    s = kl.stats()
    held = s.accepted                          # keys that got an entry (one token each)
    assert 900 <= held <= 1000 and s.live_keys == held and s.inserted == held
    if on_full == "reject":
        assert sum(first) == held and sum(second) == 0
        assert s.full_rejections == 2 * (2000 - held) and s.full_allowed == 0
        assert s.rejected == held              # their second request: bucket empty
    else:
        assert all(first) and sum(second) == 2000 - held
        assert s.full_allowed == 2 * (2000 - held) and s.full_rejections == 0


def test_seed_differs_per_segment(svc, segname):
    other = sg.ResilienceService(segname + "-2", manual_clock=True)
    try:
        a = svc.keyed_limiter("s", 1, 1)._t.kh
        b = other.keyed_limiter("s", 1, 1)._t.kh
        assert (a.k0, a.k1) != (b.k0, b.k1) and a.k0 | a.k1 and b.k0 | b.k1
    finally:
        other.close()
        other.unlink()
    assert tables(segname + "-2") == []


def test_stats_and_hot_keys(svc):
    kl = svc.keyed_limiter("h", rate=10, burst=5)
    for key, n in (("a", 1), ("b", 4), ("c", 2)):
        for _ in range(n):
            kl.allow(key, priority=sg.Priority.HIGH)
    s = kl.stats(top=2)
    assert (s.live_keys, s.accepted, s.rejected) == (3, 7, 0)
    assert [h.tokens for h in s.hot] == [1.0, 3.0] and s.hot[0].refill == pytest.approx(0.4)
    assert s.acceptance_rate() == 1.0
    with pytest.raises(sg.PolicyError, match="top"):
        kl.stats(top=-1)


def test_execute_with_key(svc):
    kl = svc.keyed_limiter("per-user", rate=1, burst=2)
    svc.register_endpoint("api", sg.PolicyBuilder().with_keyed_limit("per-user").build())
    assert [svc.execute("api", lambda: 1, key="alice") for _ in range(1)] == [1]
    with pytest.raises(sg.RateLimitedError, match="key 'alice' of endpoint 'api' is rate "
                                                   "limited by keyed limiter 'per-user'") as ei:
        svc.execute("api", lambda: 1, key="alice")
    assert ei.value.retry_after == pytest.approx(0.4)    # NORMAL sees 1.6 of 2 tokens
    assert svc.execute("api", lambda: 2, key="bob") == 2
    assert svc.try_execute("api", lambda: 3, key="alice").error is not None
    assert asyncio.run(_run_async(svc)) == 4
    assert (kl.stats().accepted, kl.stats().rejected) == (3, 2)   # one decision per refusal
    svc.register_endpoint("plain", sg.Policy())
    with pytest.raises(sg.PolicyError, match="has no keyed limit"):
        svc.execute("plain", lambda: 1, key="alice")
    svc.register_endpoint("ghost", sg.Policy(keyed_limit="nobody"))
    with pytest.raises(sg.ShmguardError, match="'nobody'.*does not exist"):
        svc.execute("ghost", lambda: 1, key="x")


async def _run_async(svc):
    async def f():
        return 4
    return await svc.execute_async("api", f, key="carol")


def test_policy_names_the_keyed_limit():
    p = sg.PolicyBuilder().with_keyed_limit("k").build()
    assert p.keyed_limit == "k" and p.fingerprint != sg.Policy().fingerprint
    with pytest.raises(sg.InvalidNameError):
        sg.Policy(keyed_limit="a/b")


def test_life_cycle(segname):
    svc = sg.ResilienceService(segname)
    kl = svc.keyed_limiter("a", 1, 1, capacity=1_000_000)      # 32 MB, lazily zero pages
    svc.keyed_limiter("b", 1, 1)
    assert tables(segname) == ["a", "b"] and kl.stats().memory_bytes <= 32 * 2**20
    assert segname in sg.list_segments() and not any("~" in n for n in sg.list_segments())
    svc.close()
    with pytest.raises(sg.ShmguardError, match="closed"):
        kl.allow("k")
    with pytest.raises(sg.ShmguardError, match="closed"):
        kl.tokens("k")
    assert sg.unlink(segname) and tables(segname) == []


def test_executor_passes_the_key(svc):
    from concurrent.futures import ThreadPoolExecutor
    svc.keyed_limiter("per-user", rate=1, burst=1)
    with ThreadPoolExecutor(2) as pool:   # the ticket carries the policy, and so its keyed limit
        ex = sg.ResilientExecutor(pool, svc.name, policy=sg.Policy(keyed_limit="per-user"))
        assert ex.submit("api", lambda: 7, key="dora", priority=sg.Priority.HIGH).result() == 7
        with pytest.raises(sg.RateLimitedError, match="key 'dora'"):
            ex.submit("api", lambda: 7, key="dora", priority=sg.Priority.HIGH).result()


def test_execute_when_the_table_is_full(svc):
    svc.keyed_limiter("small", rate=10, burst=1, capacity=8)      # 16 entries, one window
    svc.register_endpoint("api", sg.Policy(keyed_limit="small"))
    for i in range(16):
        svc.execute("api", int, key=f"k{i}", priority=sg.Priority.HIGH)
    with pytest.raises(sg.RateLimitedError, match="keyed limiter 'small' is full") as ei:
        svc.execute("api", int, key="late")
    assert ei.value.retry_after == pytest.approx(0.1)


def test_guard_and_admit_take_a_key(svc):
    svc.keyed_limiter("per-user", rate=1, burst=1)
    svc.register_endpoint("api", sg.Policy(keyed_limit="per-user"))
    with svc.guard("api", key="erin", priority=sg.Priority.HIGH):
        pass
    with pytest.raises(sg.RateLimitedError, match="key 'erin'"):
        with svc.guard("api", key="erin", priority=sg.Priority.HIGH):
            pass
    tok = svc.admit("api", sg.Priority.HIGH, key="finn")
    svc.record("api", tok, sg.Outcome.SUCCESS)
    with pytest.raises(sg.RateLimitedError, match="key 'finn'"):
        svc.admit("api", sg.Priority.HIGH, key="finn")

    async def go():
        async with svc.guard("api", key="gus", priority=sg.Priority.HIGH):
            pass
        with pytest.raises(sg.RateLimitedError, match="key 'gus'"):
            async with svc.guard("api", key="gus", priority=sg.Priority.HIGH):
                pass
    asyncio.run(go())


def test_replace_changes_rate_and_burst_for_every_process(svc, segname):
    kl = svc.keyed_limiter("r", rate=10, burst=3)
    assert sum(kl.allow("k", priority=sg.Priority.HIGH) for _ in range(4)) == 3
    other = sg.ResilienceService(segname, create=False)
    try:
        seen = other.keyed_limiter("r", rate=10, burst=3)
        with pytest.raises(sg.PolicyConflictError, match="pass replace=True"):
            other.keyed_limiter("r", rate=1, burst=3)
        with pytest.raises(sg.PolicyConflictError, match="capacity and on_full are fixed"):
            other.keyed_limiter("r", rate=1, burst=3, capacity=10, replace=True)
        other.keyed_limiter("r", rate=1, burst=3, replace=True)
        assert kl.tokens("k") == 0.0                       # still exhausted: debt in tokens
        svc.advance(0.5)
        assert seen.tokens("k") == pytest.approx(0.5)      # at the new rate, seen by both
        s = kl.stats()
        assert (s.rate, s.burst, s.rate_changes) == (1.0, 3, 1)
        assert svc.keyed_limiter("r", rate=1, burst=3) is kl   # the new numbers now match
    finally:
        other.close()


def test_a_dead_rate_writers_lease_is_taken_over(svc):
    import subprocess
    import sys

    import psutil
    kl = svc.keyed_limiter("r", rate=10, burst=3)
    p = subprocess.Popen([sys.executable, "-c", "pass"])    # a pid that is dead (a zombie)
    while psutil.Process(p.pid).status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.005)
    try:
        words = ffi.cast("uint64_t *", kl._t.kh.table)
        words[2 * 8 + 1] = (p.pid << 32) | int(time.time())   # its lease, left mid-change
        svc.keyed_limiter("r", rate=5, burst=3, replace=True)
        assert kl.stats().rate == 5.0 and kl._t.refresh().lease == 0
    finally:
        p.wait()


def test_execute_with_key_follows_the_policy_and_a_closed_limiter(svc):
    a = svc.keyed_limiter("a", rate=1, burst=100)
    b = svc.keyed_limiter("b", rate=1, burst=100)
    svc.register_endpoint("api", sg.PolicyBuilder().with_keyed_limit("a").build())
    for _ in range(3):
        svc.execute("api", int, key="k")
    svc.register_endpoint("api", sg.PolicyBuilder().with_keyed_limit("b").build(),
                          on_conflict="replace")
    svc.execute("api", int, key="k")                 # the new policy's limiter, not a cached one
    assert (a.stats().accepted, b.stats().accepted) == (3, 1)
    b.close()                                        # this process's handle of it
    svc.execute("api", int, key="k")                 # attached again by name
    assert svc.keyed_limiter("b", rate=1, burst=100).stats().accepted == 2
