"""Core benchmarks of shmguard (issue targets), printed as a table.

    python bench/core.py [--quick]

Targets on a 2-core machine (medians): limiter.allow() <= 200 ns; execute()
overhead over a bare call <= 700 ns; C-level GCRA decision <= 40 ns; two
processes on one endpoint >= 3 M allow()/s together; slot <= 1 KiB;
keyed_limiter.allow(key) within 2x of limiter.allow() with 100,000 live keys.
Prints figures; asserts nothing about time.
"""
from __future__ import annotations

import argparse
import itertools
import multiprocessing as mp
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import shmguard as sg
from shmguard._capi import lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc")


def per_call(fn, n: int, reps: int) -> tuple[float, float, float]:
    """Median, p25 and p75 ns per call of ``fn(n)`` (a loop of n calls)."""
    fn(n // 10)  # warm up
    xs = []
    for _ in range(reps):
        t = time.perf_counter_ns()
        fn(n)
        xs.append((time.perf_counter_ns() - t) / n)
    q = statistics.quantiles(xs, n=4)
    return statistics.median(xs), q[0], q[2]


def python_rows(n: int, reps: int) -> list[tuple[str, float, float, float]]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    svc = sg.ResilienceService(name, capacity=8)
    try:
        svc.register_endpoint("ep", sg.Policy(rate=1e9, burst=10**9))
        svc.register_endpoint("bh", sg.Policy(max_concurrent=4))
        svc.keyed_limiter("tenants", 1e9, 10**9, capacity=64)
        svc.register_endpoint("kd", sg.PolicyBuilder().with_rate_limit(1e9, 10**9)
                              .with_keyed_limit("tenants").build())
        lim, br, bh = svc.limiter("ep"), svc.breaker("ep"), svc.bulkhead("bh")

        def f() -> None:
            return None

        def bare(k: int) -> None:
            for _ in range(k):
                f()

        def allow(k: int) -> None:
            a = lim.allow
            for _ in range(k):
                a()

        def breaker(k: int) -> None:
            a = br.allow
            for _ in range(k):
                a().success()

        def execute(k: int) -> None:
            e = svc.execute
            for _ in range(k):
                e("ep", f)

        def bulkhead(k: int) -> None:
            a = bh.try_acquire
            for _ in range(k):
                a().release()

        def execute_bh(k: int) -> None:
            e = svc.execute
            for _ in range(k):
                e("bh", f)

        def execute_key(k: int) -> None:
            e = svc.execute
            for _ in range(k):
                e("kd", f, key="tenant-1")

        def guard(k: int) -> None:
            g = svc.guard
            for _ in range(k):
                with g("ep"):
                    f()

        rows = [("bare call f()", *per_call(bare, n, reps)),
                ("limiter.allow()", *per_call(allow, n, reps)),
                ("breaker.allow() + success()", *per_call(breaker, n, reps))]
        ex = per_call(execute, n, reps)
        rows.append(("svc.execute(ep, f)", *ex))
        rows.append(("execute overhead over f()", ex[0] - rows[0][1], ex[1] - rows[0][1],
                     ex[2] - rows[0][1]))
        rows.append(("bulkhead.try_acquire() + release()", *per_call(bulkhead, n, reps)))
        rows.append(("svc.execute(bulkhead ep, f)", *per_call(execute_bh, n, reps)))
        rows.append(("svc.execute(keyed ep, f, key=k)", *per_call(execute_key, n, reps)))
        rows.append(("with svc.guard(ep): f()", *per_call(guard, n, reps)))
        rows.extend(_deadline_rows(svc, execute, f, n, reps))  # last: it sets a deadline
        return rows
    finally:
        svc.close()
        svc.unlink()


def _deadline_rows(svc: sg.ResilienceService, execute, f, n: int,
                   reps: int) -> list[tuple[str, float, float, float]]:
    """execute() once this process has used a deadline: none in force, then one in force."""
    with sg.deadline(3600):
        pass

    def under(k: int) -> None:
        with sg.deadline(3600):
            execute(k)
    return [("execute, deadlines used, none in force", *per_call(execute, n, reps)),
            ("execute under sg.deadline()", *per_call(under, n, reps))]


def keyed_rows(n: int, reps: int) -> list[tuple[str, float, float, float]]:
    """keyed_limiter.allow(key): one key, and 100,000 live keys in shuffled order."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    svc = sg.ResilienceService(name, capacity=8)
    try:
        kl = svc.keyed_limiter("tenants", 1, 10**9, capacity=200_000)  # every key stays live
        keys = [f"tenant-{i}" for i in range(100_000)]
        for k in keys:
            kl.allow(k)
        order = keys[:]
        random.Random(14).shuffle(order)

        def one(k: int) -> None:
            a = kl.allow
            for _ in range(k):
                a("tenant-7")

        def many(k: int) -> None:
            a = kl.allow
            for key in itertools.islice(itertools.cycle(order), k):
                a(key)

        def walk(k: int) -> None:
            for _ in itertools.islice(itertools.cycle(order), k):
                pass
        rows = [("keyed_limiter.allow(key), one key", *per_call(one, n, reps))]
        m, w = per_call(many, n, reps), per_call(walk, n, reps)
        rows.append(("keyed_limiter.allow(key), 100,000 live keys", *m))
        rows.append(("  ... less the loop over the keys", m[0] - w[0], m[1] - w[0], m[2] - w[0]))
        return rows
    finally:
        svc.close()
        svc.unlink()


def keyed_create_ms() -> float:
    """Milliseconds to create a 1,000,000-key keyed limiter (32 MB, zero pages on demand)."""
    name = f"bench-{uuid.uuid4().hex[:8]}"
    svc = sg.ResilienceService(name, capacity=8)
    try:
        t = time.perf_counter()
        svc.keyed_limiter("million", 10, 10, capacity=1_000_000)
        return (time.perf_counter() - t) * 1000
    finally:
        svc.close()
        svc.unlink()


def c_rows() -> list[tuple[str, float, float, float]]:
    with tempfile.TemporaryDirectory() as tmp:
        exe = os.path.join(tmp, "gcra_bench")
        sys.path.insert(0, CSRC)
        from ffi_build import SOURCES, flags  # the one list of C sources, and their flags
        srcs = [os.path.join(CSRC, f) for f in SOURCES]
        subprocess.run(["gcc", *flags(), "-I", CSRC,
                        os.path.join(ROOT, "bench", "gcra_bench.c"), *srcs, "-o", exe,
                        "-lpthread"], check=True)
        out = subprocess.run([exe], check=True, capture_output=True, text=True).stdout
    labels = {"gcra_decide_ns": "C: GCRA decision (explicit now)",
              "allow_with_clock_ns": "C: sg_allow (reads the clock)",
              "breaker_acquire_record_ns": "C: breaker acquire + record",
              "bulkhead_acquire_release_ns": "C: bulkhead ticket acquire + release"}
    rows = []
    for line in out.splitlines():
        k, med, lo, hi = line.split()
        rows.append((labels[k], float(med), float(lo), float(hi)))
    return rows


def _hammer(name: str, go, out, seconds: float) -> None:
    svc = sg.ResilienceService(name, create=False)
    a = svc.limiter("ep").allow
    go.wait()
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(1000):
            a()
        n += 1000
    out.put(n)
    svc.close()


def _hammer_keyed(name: str, go, out, seconds: float) -> None:
    svc = sg.ResilienceService(name, create=False)
    a = svc.keyed_limiter("tenants", 1, 10**9, capacity=100_000).allow
    keys = [f"{os.getpid()}-{i}" for i in range(1000)]   # each process its own keys
    go.wait()
    n, end = 0, time.perf_counter() + seconds
    while time.perf_counter() < end:
        for k in keys:
            a(k)
        n += 1000
    out.put(n)
    svc.close()


def multi_rows(seconds: float) -> list[tuple[str, float]]:
    name = f"bench-{uuid.uuid4().hex[:8]}"
    svc = sg.ResilienceService(name, capacity=8)
    rows = []
    try:
        svc.register_endpoint("ep", sg.Policy(rate=1e9, burst=10**9))
        svc.keyed_limiter("tenants", 1, 10**9, capacity=100_000)
        ctx = mp.get_context("fork")
        for target, what in ((_hammer, "one endpoint: allow()/s"),
                             (_hammer_keyed, "keyed limiter, 1,000 keys each: allow(key)/s")):
            for procs in (1, 2):
                go, out = ctx.Event(), ctx.Queue()
                ps = [ctx.Process(target=target, args=(name, go, out, seconds))
                      for _ in range(procs)]
                for p in ps:
                    p.start()
                time.sleep(0.2)
                go.set()
                total = sum(out.get() for _ in ps)
                for p in ps:
                    p.join()
                rows.append((f"{procs} process(es), {what}", total / seconds))
    finally:
        svc.close()
        svc.unlink()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions")
    args = ap.parse_args()
    n, reps, secs = (50_000, 7, 1.0) if args.quick else (200_000, 15, 2.0)
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if "model name" in l), "?")
    print(f"machine: {os.cpu_count()} cores, {cpu}, Python {sys.version.split()[0]}")
    print(f"\n| decision | median ns | p25 | p75 |\n|---|---:|---:|---:|")
    for label, med, lo, hi in python_rows(n, reps) + keyed_rows(n, reps) + c_rows():
        print(f"| {label} | {med:.1f} | {lo:.1f} | {hi:.1f} |")
    print(f"\nA 1,000,000-key keyed limiter ({lib.sg_kl_size(1_000_000) / 2**20:.1f} MiB) is "
          f"created in {keyed_create_ms():.2f} ms.")
    print("\n| across processes | decisions/s |\n|---|---:|")
    for label, rate in multi_rows(secs):
        print(f"| {label} | {rate / 1e6:.2f} M |")
    print(f"\nslot size (breaker + limiter + stats): {lib.SG_SLOT_SIZE} bytes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
