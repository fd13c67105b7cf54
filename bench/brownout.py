"""Brownout: how much load retries add to a dependency that fails half its calls.

    python bench/brownout.py [--workers 4] [--seconds 3] [--rate 200]

Each worker process sends ``rate`` requests per second for ``seconds`` to a
dependency that can serve half of that load: it sheds what exceeds its
capacity (a host-wide GCRA limiter of its own stands for it), so without
retries it fails 50 % of the calls (a brownout: a breaker that opens only
at 100 % failures stays closed), and every retry adds load that it sheds again.
Four ways to retry, each printed with the dependency load amplification
(dependency calls / requests) and the share of requests that succeeded:

- no retries;
- ``retries=3`` in every process (the classic setting);
- ``retries=3`` with a retry budget per process (Finagle style: each worker
  its own budget, so the minimum reserve adds up over the pool);
- ``retries=3`` with ONE host-wide budget in the endpoint's slot (shmguard).

Budgets: ratio 0.2, minimum 10 retries/s, window 10 s. Prints figures,
asserts nothing about time. Well under 60 s with the defaults.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import time
import uuid

import shmguard as sg

BUDGET = dict(retry_budget=0.2, retry_budget_min_per_second=10, retry_budget_window=10.0)
BROWNOUT = dict(failure_threshold=1.0, min_requests=20)  # only a full outage opens it
CAPACITY = "dependency-capacity"


def worker(segname: str, endpoint: str, own_budget: bool, retries: int, rate: float,
           seconds: float, go, out) -> None:
    svc = sg.ResilienceService(segname, create=False)
    if own_budget:  # a per-process budget: an endpoint of this process alone
        endpoint = f"{endpoint}-{os.getpid()}"
        svc.register_endpoint(endpoint, sg.Policy(**BROWNOUT, **BUDGET))
    capacity = svc.limiter(CAPACITY).allow  # the dependency's own capacity, host-wide
    calls = 0

    def dependency() -> str:
        nonlocal calls
        calls += 1
        if not capacity():
            raise ConnectionError("overloaded: shed")
        return "ok"
    go.wait()
    requests = ok = 0
    start = time.monotonic()
    while (now := time.monotonic()) < start + seconds:
        requests += 1
        try:
            svc.execute(endpoint, dependency, retries=retries, backoff=0.001, max_backoff=0.01)
            ok += 1
        except (ConnectionError, sg.RejectedError):
            pass
        time.sleep(max(0.0, start + requests / rate - time.monotonic()))
    st = svc.stats(endpoint)
    out.put((requests, calls, ok, st.retries_denied if own_budget else 0))
    svc.close()


def scenario(label: str, policy: sg.Policy, own_budget: bool, retries: int,
             args: argparse.Namespace) -> tuple[str, int, int, int, int]:
    name = f"brownout-{uuid.uuid4().hex[:8]}"
    ctx = mp.get_context("fork")
    with sg.ResilienceService(name, capacity=64) as svc:
        try:
            svc.register_endpoint("dep", policy)
            cap = args.workers * args.rate / 2             # half the offered load
            svc.register_endpoint(CAPACITY, sg.Policy(rate=cap, burst=max(1, round(cap / 20))))
            go, out = ctx.Event(), ctx.Queue()
            ps = [ctx.Process(target=worker, args=(name, "dep", own_budget, retries, args.rate,
                                                   args.seconds, go, out))
                  for _ in range(args.workers)]
            for p in ps:
                p.start()
            go.set()
            rows = [out.get(timeout=args.seconds + 60) for _ in ps]
            for p in ps:
                p.join()
            denied = sum(r[3] for r in rows) + svc.stats("dep").retries_denied
        finally:
            svc.unlink()
    return (label, sum(r[0] for r in rows), sum(r[1] for r in rows), sum(r[2] for r in rows),
            denied)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--rate", type=float, default=200.0, help="requests/s per worker")
    args = ap.parse_args()
    plain, budget = sg.Policy(**BROWNOUT), sg.Policy(**BROWNOUT, **BUDGET)
    rows = [scenario("no retries", plain, False, 0, args),
            scenario("retries=3, per process", plain, False, 3, args),
            scenario("retries=3, budget per process", plain, True, 3, args),
            scenario("retries=3, host-wide budget", budget, False, 3, args)]
    print(f"{args.workers} workers x {args.rate:g} requests/s x {args.seconds:g} s; the "
          f"dependency serves {args.workers * args.rate / 2:g}/s and sheds the rest; budgets "
          f"{BUDGET['retry_budget']:.0%} + "
          f"{BUDGET['retry_budget_min_per_second']:g}/s over {BUDGET['retry_budget_window']:g} s")
    print("\n| retries | requests | dependency calls | amplification | requests served "
          "| retries denied |\n|---|---:|---:|---:|---:|---:|")
    for label, req, calls, ok, denied in rows:
        print(f"| {label} | {req:,} | {calls:,} | {calls / req:.2f}x | {ok / req:.1%} "
              f"| {denied:,} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
