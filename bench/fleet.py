"""bench/fleet.py: the fleet tier against one redis-server (never part of the test run).

    pip install -r bench/requirements.txt      # redis client, limits, pyrate-limiter
    python bench/fleet.py [--hosts 3] [--workers 2] [--rate 300] [--seconds 6]

N simulated hosts (one segment each, its own host_id) x M worker processes
offer more than the fleet rate; prints
- fleet over-admission: admitted beyond burst + rate x t (0 is the goal);
- convergence: seconds from a demand shift (host 0 stops, host 1 starts) until
  host 1 holds >= 80 % of the rate;
- Redis commands/s during the run (INFO total_commands_processed);
- per-decision cost: shmguard allow() on a fleet endpoint, beside limits
  (moving window) + Redis and pyrate-limiter (RedisBucket) + Redis, in this run.
Times are this machine's, noisy on shared cores; nothing here asserts one.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _peers.redis_server import RedisServer  # noqa: E402

import shmguard as sg  # noqa: E402

CTX = mp.get_context("fork")
ENDPOINT = "store"


def _fleet(url: str) -> sg.RedisFleet:
    return sg.RedisFleet(url, refresh=0.25, lease=2.0)


def _worker(seg: str, host: str, url: str, pol: sg.Policy, start: float, stop: float,
            active: tuple[float, float], out) -> None:
    svc = sg.ResilienceService(seg, fleet=_fleet(url), host_id=host)
    svc.register_endpoint(ENDPOINT, pol)
    allow, n = svc.limiter(ENDPOINT).allow, 0
    while (now := time.monotonic()) < stop:
        if active[0] <= now - start < active[1]:
            n += allow() and now >= start
        time.sleep(0.0005)
    out.put(n)
    svc.close()


def _run(segs, url, pol, m, start, stop, active):
    out = CTX.Queue()
    ps = [CTX.Process(target=_worker, args=(s, f"host{i}", url, pol, start, stop, active[i], out))
          for i, s in enumerate(segs) for _ in range(m)]
    for p in ps:
        p.start()
    return ps, out


def _collect(ps, out) -> int:
    total = sum(out.get(timeout=120) for _ in ps)
    for p in ps:
        p.join()
    return total


def _share(seg: str) -> float:
    svc = sg.ResilienceService(seg, create=False)
    try:
        return svc.stats(ENDPOINT).fleet.rate
    finally:
        svc.close()


def bound_run(args, url, r, pol) -> None:
    segs = [f"bench-fleet-{uuid.uuid4().hex[:8]}" for _ in range(args.hosts)]
    try:
        start = time.monotonic() + 1.5
        c0 = r.info("stats")["total_commands_processed"]
        ps, out = _run(segs, url, pol, args.workers, start, start + args.seconds,
                       [(-1e9, 1e9)] * args.hosts)
        total = _collect(ps, out)
        cmds = (r.info("stats")["total_commands_processed"] - c0) / (args.seconds + 1.5)
        bound = args.burst + args.rate * args.seconds
        print(f"fleet admitted      {total} of bound {bound:g} ({total / bound:.1%}); "
              f"over-admission {max(0, total - bound):g}")
        print(f"redis commands/s    {cmds:.1f} ({args.hosts} hosts, refresh 0.25 s)")
    finally:
        for s in segs:
            sg.unlink(s)


def shift_run(args, url, pol) -> None:
    segs = [f"bench-fleet-{uuid.uuid4().hex[:8]}" for _ in range(args.hosts)]
    try:
        start = time.monotonic() + 1.5
        active = [(-1e9, 3.0), (3.0, 1e9)] + [(1e9, 1e9)] * (args.hosts - 2)
        ps, out = _run(segs, url, pol, args.workers, start, start + 6.0, active)
        time.sleep(max(0.0, start + 3.0 - time.monotonic()))
        t0 = time.monotonic()
        while _share(segs[1]) < 0.8 * args.rate and time.monotonic() < t0 + 3.0:
            time.sleep(0.005)
        took = time.monotonic() - t0
        _collect(ps, out)
        print(f"convergence         {took:.2f} s after the demand moved (refresh 0.25 s)")
    finally:
        for s in segs:
            sg.unlink(s)


def _per_call(fn, n: int) -> float:
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e9


def cost_rows(args, url, pol) -> None:
    seg = f"bench-fleet-{uuid.uuid4().hex[:8]}"
    svc = sg.ResilienceService(seg, fleet=_fleet(url), host_id="cost")
    try:
        svc.register_endpoint(ENDPOINT, pol.replace(rate=1e9, burst=10**6).with_fleet())
        time.sleep(0.5)
        print(f"per decision        shmguard allow() (fleet endpoint)  "
              f"{_per_call(svc.limiter(ENDPOINT).allow, 200_000):8.0f} ns")
    finally:
        svc.close()
        svc.unlink()
    cfg = {"mode": "correctness", "rate": 1e6, "burst": 10**6, "redis_url": url,
           "key": "bench-fleet"}
    from _peers import shared_rows as peers
    for name, make in (("limits + Redis (moving window)", peers._child_limits_redis_moving),
                       ("pyrate-limiter + Redis (RedisBucket)", peers._child_pyrate_redis_log)):
        try:
            fn = make(dict(cfg, key=f"bench-{uuid.uuid4().hex[:6]}"))
            print(f"per decision        {name:<34} {_per_call(fn, 3000):8.0f} ns")
        except Exception as exc:  # a peer's API changed: report it, keep the rest
            print(f"per decision        {name:<34} error: {exc}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hosts", type=int, default=3)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--rate", type=float, default=300)
    ap.add_argument("--burst", type=int, default=30)
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args(argv)
    if args.hosts < 2:
        ap.error("--hosts must be >= 2 (the shift moves demand between two hosts)")
    server = RedisServer()
    if not server.start():
        print(f"bench/fleet.py: {server.skip_reason}", file=sys.stderr)
        return 1
    try:
        import redis
        r = redis.Redis.from_url(server.url)
        pol = sg.Policy(rate=args.rate, burst=args.burst).with_fleet()
        print(f"{args.hosts} hosts x {args.workers} workers, fleet rate {args.rate:g}/s "
              f"burst {args.burst}, {args.seconds:g} s; {server.version}")
        bound_run(args, server.url, r, pol)
        shift_run(args, server.url, pol)
        cost_rows(args, server.url, pol)
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
