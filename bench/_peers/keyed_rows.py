"""Part 4: per-key rate limits (one bucket per tenant), in memory and on Redis.

Each contender's ``make(keys, redis_url)`` returns ``decide(key)``; every
key is hit once before timing, so the keys are live (100,000 in memory,
10,000 on Redis, where each first hit is a round trip). The timed loop
walks the keys in a shuffled order, so caches see a real spread of keys.
Every limit is configured so that every decision admits: the numbers are
the cost of the decision. ``limiter.allow()`` (one endpoint, no key) and
the bare loop are the reference rows.
"""

from __future__ import annotations

import random
import statistics
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

from .registry import HUGE

MEM_KEYS, REDIS_KEYS = 100_000, 10_000


def _shmguard_keyed(keys, url):
    import shmguard as sg

    svc = sg.ResilienceService(f"bench-k-{uuid.uuid4().hex[:8]}")
    # rate 1/s, burst 1e9: every decision admits and every key stays live (TAT > now)
    kl = svc.keyed_limiter("tenants", 1, 10**9, capacity=2 * len(keys))

    def close():
        svc.close()
        svc.unlink()
    return kl.allow, close


def _shmguard_endpoint(keys, url):
    import shmguard as sg

    svc = sg.ResilienceService(f"bench-k-{uuid.uuid4().hex[:8]}", capacity=4)
    svc.register_endpoint("ep", sg.Policy(rate=1e9, burst=10**9))
    allow = svc.limiter("ep").allow

    def close():
        svc.close()
        svc.unlink()
    return (lambda key: allow()), close


def _limits(storage):
    import limits

    strategy = limits.strategies.FixedWindowRateLimiter(storage)
    item = limits.RateLimitItemPerSecond(HUGE)
    hit = strategy.hit
    return lambda key: hit(item, key)


def _limits_memory(keys, url):
    from limits.storage import MemoryStorage

    return _limits(MemoryStorage())


def _limits_redis(keys, url):
    from limits.storage import RedisStorage

    return _limits(RedisStorage(url))


def _pyrate(new_bucket: Callable[[str], Any]):
    from pyrate_limiter import BucketFactory, Limiter, RateItem

    class PerKey(BucketFactory):
        def __init__(self) -> None:
            self.buckets: Dict[str, Any] = {}

        def wrap_item(self, name: str, weight: int = 1) -> Any:
            return RateItem(name, time.time_ns() // 1_000_000, weight=weight)

        def get(self, item: Any) -> Any:
            b = self.buckets.get(item.name)
            if b is None:
                b = self.buckets[item.name] = new_bucket(item.name)
            return b

    lim = Limiter(PerKey())
    acquire = lim.try_acquire
    return lambda key: acquire(key, 1, False)


def _pyrate_memory(keys, url):
    from pyrate_limiter import Duration, InMemoryBucket, Rate

    rates = [Rate(HUGE, Duration.SECOND)]
    return _pyrate(lambda name: InMemoryBucket(rates))


def _pyrate_redis(keys, url):
    import redis
    from pyrate_limiter import Duration, Rate, RedisBucket

    client = redis.Redis.from_url(url)
    rates = [Rate(HUGE, Duration.SECOND)]
    return _pyrate(lambda name: RedisBucket.init(rates, client, f"bench:{name}"))


def _floor(keys, url):
    return lambda key: None


# (name, make, peer, backend)
CONTENDERS = [
    ("bare loop over keys (floor)", _floor, "", "memory"),
    ("shmguard limiter.allow() (one endpoint, reference)", _shmguard_endpoint, "shmguard", "shm"),
    ("shmguard keyed_limiter.allow(key)", _shmguard_keyed, "shmguard", "shm"),
    ("limits MemoryStorage FixedWindow hit(item, key)", _limits_memory, "limits", "memory"),
    ("pyrate-limiter InMemoryBucket per key (BucketFactory)", _pyrate_memory, "pyrate-limiter",
     "memory"),
    ("limits RedisStorage FixedWindow hit(item, key)", _limits_redis, "limits", "redis"),
    ("pyrate-limiter RedisBucket per key (BucketFactory)", _pyrate_redis, "pyrate-limiter",
     "redis"),
]


def _measure(decide: Callable[[Any], Any], keys: List[str], batches: int) -> List[float]:
    order = keys[:]
    random.Random(14).shuffle(order)
    for k in keys:                       # every key live before timing
        decide(k)
    out = []
    pc = time.perf_counter_ns
    for _ in range(batches):
        t0 = pc()
        for k in order:
            decide(k)
        out.append((pc() - t0) / len(order))
    return out


def run(redis_url: Optional[str], quick: bool, log: Callable[[str], None],
        wanted: Callable[[str], bool]) -> List[Dict[str, Any]]:
    """Measures every contender; returns one row per contender (ns per decision)."""
    rows = []
    for name, make, peer, backend in CONTENDERS:
        if not wanted(name):
            continue
        row: Dict[str, Any] = {"name": name, "peer": peer, "backend": backend}
        if backend == "redis" and not redis_url:
            row["skipped"] = "skipped: no redis-server"
            log(f"  {name:<62} skipped (no redis-server)")
            rows.append(row)
            continue
        n = REDIS_KEYS if backend == "redis" else MEM_KEYS
        keys = [f"tenant-{i}" for i in range(n)]
        closer = None
        try:
            made = make(keys, redis_url)
            decide, closer = made if isinstance(made, tuple) else (made, None)
            xs = _measure(decide, keys, 2 if quick or backend == "redis" else 5)
            row.update({"keys": n, "median_ns": statistics.median(xs), "min_ns": min(xs),
                        "max_ns": max(xs)})
            log(f"  {name:<62} {row['median_ns']:>10.1f} ns  ({n:,} live keys)")
        except Exception as e:  # noqa: BLE001
            row["error"] = f"{type(e).__name__}: {e}"[:200]
            log(f"  {name:<62} ERROR {row['error']}")
        finally:
            if closer is not None:
                closer()
        rows.append(row)
    return rows


def markdown(rows: Optional[List[Dict[str, Any]]]) -> List[str]:
    """Returns the markdown lines of part 4 (none when it did not run)."""
    if not rows:
        return []
    L = ["## 4. Per-key limits (one bucket per tenant)", "",
         "Every key hit once before timing; the timed loop walks the keys shuffled.", "",
         "| contender | backend | live keys | median ns/decision | vs keyed_limiter |",
         "|---|---|---:|---:|---:|"]
    ref = next((r.get("median_ns") for r in rows if r["name"].startswith("shmguard keyed")), None)
    for r in rows:
        if "median_ns" not in r:
            L.append(f"| {r['name']} | {r['backend']} | - | {r.get('skipped') or r.get('error')} | |")
            continue
        ratio = f"{r['median_ns'] / ref:.1f}x" if ref else ""
        L.append(f"| {r['name']} | {r['backend']} | {r['keys']:,} | {r['median_ns']:.1f} | "
                 f"{ratio} |")
    L.append("")
    return L
