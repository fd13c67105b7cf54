"""Timing harnesses and the analysis of what they recorded.

In-process: ``bench_inproc`` times batches of N calls with
``time.perf_counter_ns`` (N calibrated so a batch lasts ~``batch_ms``), and
reports the median and p25/p75 over the batches of ns per call.  The loop
overhead is in every row; the "bare Python call" floor shows how much it is.
GC stays enabled (allocation-heavy peers pay for it as they would in use).

Multi-process: ``run_workers`` starts N processes (forkserver), waits until
every one has finished its setup (barrier), publishes a common start time on
CLOCK_MONOTONIC (shared by all processes on Linux), then each worker runs
until start + duration and sends back what it recorded.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import signal
import statistics
import time
import traceback
from array import array
from threading import BrokenBarrierError
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

# ----------------------------------------------------------------------------
# in-process
# ----------------------------------------------------------------------------


def _time_sync(fn: Callable[[], Any], n: int) -> int:
    pc = time.perf_counter_ns
    rep = itertools.repeat(None, n)
    t0 = pc()
    for _ in rep:
        fn()
    return pc() - t0


def _time_async(afn: Callable[[], Any], n: int, loop: asyncio.AbstractEventLoop) -> int:
    async def batch():
        pc = time.perf_counter_ns
        rep = itertools.repeat(None, n)
        t0 = pc()
        for _ in rep:
            await afn()
        return pc() - t0

    return loop.run_until_complete(batch())


def bench_inproc(make: Callable[[], Any], is_async: bool, repeats: int = 20,
                 batch_ms: float = 5.0, max_calls: int = 2_000_000) -> Dict[str, Any]:
    made = make()
    fn, closer = (made if isinstance(made, tuple) else (made, None))
    loop = asyncio.new_event_loop() if is_async else None
    try:
        if is_async:
            timer = lambda n: _time_async(fn, n, loop)  # noqa: E731
        else:
            timer = lambda n: _time_sync(fn, n)  # noqa: E731
        # calibrate
        n = 64
        while True:
            dt = timer(n)
            if dt >= batch_ms * 1e6 * 0.5 or n >= max_calls:
                break
            n = min(max_calls, n * 4 if dt < batch_ms * 1e5 else n * 2)
        n = max(16, min(max_calls, int(n * (batch_ms * 1e6) / max(dt, 1))))
        timer(n)  # warm-up batch
        per_call: List[float] = [timer(n) / n for _ in range(repeats)]
    finally:
        if loop is not None:
            loop.close()
        if closer is not None:
            try:
                closer()
            except Exception:
                pass
    q = np.percentile(per_call, [25, 50, 75])
    return {"median_ns": float(q[1]), "p25_ns": float(q[0]), "p75_ns": float(q[2]),
            "calls_per_batch": n, "batches": repeats,
            "min_ns": float(min(per_call)), "mean_ns": float(statistics.fmean(per_call)),
            "per_batch_ns": [round(x, 2) for x in per_call]}


# ----------------------------------------------------------------------------
# multi-process
# ----------------------------------------------------------------------------

MAX_LAT_SAMPLES = 100_000


def _wait_until(t_ns: int) -> None:
    while True:
        d = t_ns - time.monotonic_ns()
        if d <= 0:
            return
        time.sleep(min(d / 1e9, 0.01) if d > 2_000_000 else 0)


def _loop_latency(decide, deadline_ns):
    """Run until deadline; one clock read per decision."""
    lat = array("q")
    app = lat.append
    pc = time.perf_counter_ns
    n = denied = errors = 0
    first_error = None
    start = pc()
    end = start + (deadline_ns - time.monotonic_ns())
    prev = start
    while prev < end:
        try:
            r = decide()
        except Exception as e:  # noqa: BLE001 - a peer's error is a result
            errors += 1
            r = None
            if first_error is None:
                first_error = repr(e)[:300]
        else:
            if r is False:
                denied += 1
        cur = pc()
        app(cur - prev)
        prev = cur
        n += 1
    elapsed = prev - start
    stride = max(1, len(lat) // MAX_LAT_SAMPLES)
    sample = lat[::stride] if stride > 1 else lat
    return {"n": n, "denied": denied, "errors": errors, "first_error": first_error,
            "elapsed_ns": elapsed, "lat": sample, "stride": stride}


def _loop_admits(decide, deadline_ns):
    """Run until deadline; record [before, after] CLOCK_MONOTONIC of each admit."""
    a_list, b_list = array("q"), array("q")
    mono = time.monotonic_ns
    n = denied = errors = 0
    first_error = None
    while True:
        a = mono()
        if a >= deadline_ns:
            break
        try:
            r = decide()
        except Exception as e:  # noqa: BLE001
            errors += 1
            if first_error is None:
                first_error = repr(e)[:300]
            n += 1
            continue
        b = mono()
        n += 1
        if r is False:
            denied += 1
        else:
            a_list.append(a)
            b_list.append(b)
    return {"n": n, "denied": denied, "errors": errors, "first_error": first_error,
            "a": a_list, "b": b_list}


class DependencyDown(Exception):
    pass


def _loop_breaker(guarded, deadline_ns, dep_s):
    """Call a failing dependency through the breaker until deadline."""
    calls, ends = array("q"), array("q")
    mono = time.monotonic_ns
    sleep = time.sleep

    def dep():
        calls.append(mono())
        if dep_s:
            sleep(dep_s)
        ends.append(mono())
        raise DependencyDown("dependency down")

    n = 0
    while mono() < deadline_ns:
        n += 1
        try:
            guarded(dep)
        except Exception:  # noqa: BLE001 - breaker-open errors and dep failures alike
            pass
    return {"n": n, "calls": calls, "ends": ends}


def _worker(kind, setup, cfg, ready, go, start_val, duration_ns, opts, conn):
    # Ctrl-C is the parent's business: it terminates the workers by pid.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        try:
            decide = setup(cfg)
            if kind == "latency":
                # warm up connections / scripts / caches (never in correctness runs)
                t_end = time.monotonic_ns() + 50_000_000
                for _ in range(2000):
                    decide()
                    if time.monotonic_ns() > t_end:
                        break
        except Exception:  # noqa: BLE001
            conn.send({"error": "setup: " + traceback.format_exc(limit=3)[-800:]})
            ready.abort()
            return
        ready.wait(timeout=120)
        go.wait(timeout=30)
        start = start_val.value
        _wait_until(start)
        deadline = start + duration_ns
        if kind == "latency":
            res = _loop_latency(decide, deadline)
        elif kind == "admits":
            res = _loop_admits(decide, deadline)
        else:
            res = _loop_breaker(decide, deadline, opts.get("dep_s", 0.0))
        res["pid"] = os.getpid()
        conn.send(res)
    except BrokenBarrierError:
        try:
            conn.send({"error": "aborted: another worker failed its setup"})
        except Exception:
            pass
    except KeyboardInterrupt:
        pass
    finally:
        conn.close()


def run_workers(ctx, kind: str, setup, cfg: Dict[str, Any], nprocs: int, duration_s: float,
                opts: Optional[Dict[str, Any]] = None) -> Dict[str, Any]:
    """Start nprocs workers, barrier, common start, collect. Returns per-worker results."""
    opts = opts or {}
    ready = ctx.Barrier(nprocs + 1)
    go = ctx.Barrier(nprocs + 1)
    start_val = ctx.Value("q", 0, lock=False)
    duration_ns = int(duration_s * 1e9)
    procs, conns = [], []
    for _ in range(nprocs):
        r, w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=_worker, args=(kind, setup, cfg, ready, go, start_val,
                                              duration_ns, opts, w), daemon=True)
        procs.append(p)
        conns.append(r)
    results: List[Dict[str, Any]] = []
    errors: List[str] = []
    try:
        for p in procs:
            p.start()
        started = False
        try:
            ready.wait(timeout=120)
            start_val.value = time.monotonic_ns() + 30_000_000  # 30 ms from now
            go.wait(timeout=30)
            started = True
        except BrokenBarrierError:
            pass
        wait_s = duration_s + 60 if started else 10
        t_end = time.monotonic() + wait_s
        for c in conns:
            if c.poll(max(0.0, t_end - time.monotonic())):
                try:
                    msg = c.recv()
                except EOFError:
                    errors.append("worker exited without a result")
                    continue
                if "error" in msg:
                    errors.append(msg["error"])
                else:
                    results.append(msg)
            else:
                errors.append("worker timed out")
        return {"results": results, "errors": errors,
                "start_ns": start_val.value, "duration_s": duration_s}
    finally:
        for p in procs:
            if p.pid is None:  # never started
                continue
            p.join(timeout=5)
            if p.is_alive():
                p.terminate()
                p.join(timeout=5)
        for c in conns:
            c.close()


# ----------------------------------------------------------------------------
# analysis
# ----------------------------------------------------------------------------


def weighted_percentiles(samples: Sequence[np.ndarray], weights: Sequence[int],
                         qs: Sequence[float]) -> List[float]:
    vals = np.concatenate([np.asarray(s, dtype=np.float64) for s in samples]) if samples else np.array([])
    if vals.size == 0:
        return [float("nan")] * len(qs)
    w = np.concatenate([np.full(len(s), wt, dtype=np.float64) for s, wt in zip(samples, weights)])
    order = np.argsort(vals)
    vals, w = vals[order], w[order]
    cw = np.cumsum(w)
    cw /= cw[-1]
    return [float(vals[min(len(vals) - 1, np.searchsorted(cw, q / 100.0))]) for q in qs]


def summarize_throughput(run: Dict[str, Any]) -> Dict[str, Any]:
    res = run["results"]
    if not res:
        return {"error": "; ".join(run["errors"]) or "no result"}
    ops = sum(r["n"] / (r["elapsed_ns"] / 1e9) for r in res if r["elapsed_ns"] > 0)
    p50, p99 = weighted_percentiles([np.frombuffer(r["lat"], dtype=np.int64) for r in res],
                                    [r["stride"] for r in res], [50, 99])
    n = sum(r["n"] for r in res)
    out = {"ops_per_s": ops, "p50_us": p50 / 1e3, "p99_us": p99 / 1e3,
           "decisions": n, "denied": sum(r["denied"] for r in res),
           "errors": sum(r["errors"] for r in res), "workers_ok": len(res),
           "per_worker": [{"decisions": r["n"], "elapsed_s": r["elapsed_ns"] / 1e9,
                           "denied": r["denied"], "errors": r["errors"]} for r in res]}
    errs = [r["first_error"] for r in res if r.get("first_error")]
    if errs:
        out["first_error"] = errs[0]
    if run["errors"]:
        out["worker_errors"] = run["errors"]
    return out


def _max_sliding(a: np.ndarray, b: np.ndarray, window_ns: int) -> int:
    """max over i of #{j : a_j >= a_i and b_j < a_i + window} (certain co-window count)."""
    order = np.argsort(a)
    a, b = a[order], b[order]
    best = 0
    for i in range(0, len(a), max(1, len(a) // 5000)):
        bs = b[i:]
        c = int(np.count_nonzero(bs < a[i] + window_ns))
        if c > best:
            best = c
    return best


def _max_token_excess(a: np.ndarray, b: np.ndarray, rate: float) -> float:
    """max over i, e of #{j: a_j >= a_i, b_j <= e} - rate*(e - a_i): a lower bound
    of the largest burst the admits certainly needed."""
    order = np.argsort(a)
    a, b = a[order], b[order]
    best = 0.0
    for i in range(0, len(a), max(1, len(a) // 5000)):
        bs = np.sort(b[i:])
        cnt = np.arange(1, len(bs) + 1)
        ex = cnt - rate * (bs - a[i]) / 1e9
        m = float(ex.max())
        if m > best:
            best = m
    return best


CLOCK_SLACK_NS = 2_000_000  # peers stamp items with a millisecond clock


def analyze_admits(run: Dict[str, Any], promise: Optional[Dict[str, Any]],
                   rate: float, burst: int) -> Dict[str, Any]:
    res = run["results"]
    if not res:
        return {"error": "; ".join(run["errors"]) or "no result"}
    a = np.concatenate([np.frombuffer(r["a"], dtype=np.int64) for r in res]) if res else np.array([], np.int64)
    b = np.concatenate([np.frombuffer(r["b"], dtype=np.int64) for r in res]) if res else np.array([], np.int64)
    d = run["duration_s"]
    admitted = int(a.size)
    bound = burst + rate * d
    out: Dict[str, Any] = {
        "admitted": admitted, "attempts": sum(r["n"] for r in res),
        "errors": sum(r["errors"] for r in res), "duration_s": d,
        "bound_rate_burst": bound, "ratio_to_bound": admitted / bound if bound else float("nan"),
        "over_rate_burst": admitted > bound + 1,
        "workers_ok": len(res),
        "per_worker": [{"attempts": r["n"], "admitted": len(r["a"]), "denied": r["denied"],
                        "errors": r["errors"]} for r in res],
    }
    errs = [r["first_error"] for r in res if r.get("first_error")]
    if errs:
        out["first_error"] = errs[0]
    if run["errors"]:
        out["worker_errors"] = run["errors"]
    if promise is None or admitted == 0:
        return out
    out["promise"] = promise
    kind = promise["kind"]
    if kind == "token":
        seen = _max_token_excess(a, b, promise["rate"])
        out["own_total_bound"] = promise["burst"] + promise["rate"] * d
        out["worst_seen"] = seen
        out["worst_allowed"] = promise["burst"]
        out["worst_label"] = f"max burst {seen:.0f} (allowed {promise['burst']})"
        out["own_promise_broken"] = seen > promise["burst"] + 1
    else:
        w_ns = int(promise["window_s"] * 1e9) - CLOCK_SLACK_NS
        seen = _max_sliding(a, b, w_ns)
        limit = promise["limit"]
        allowed = limit if kind == "sliding" else 2 * limit
        nwin = int(np.ceil(d / promise["window_s"] - 1e-9))
        out["own_total_bound"] = limit * (nwin + (1 if kind == "fixed" else 0))
        out["worst_seen"] = seen
        out["worst_allowed"] = allowed
        what = "rolling" if kind == "sliding" else "rolling (fixed windows allow 2x)"
        out["worst_label"] = f"max {seen} in any {promise['window_s'] * 1000:.0f} ms {what}, allowed {allowed}"
        out["own_promise_broken"] = seen > allowed
    return out


def analyze_breaker(run: Dict[str, Any], threshold: Optional[int], gap_s: float = 0.4) -> Dict[str, Any]:
    res = run["results"]
    if not res:
        return {"error": "; ".join(run["errors"]) or "no result"}
    calls = np.concatenate([np.frombuffer(r["calls"], dtype=np.int64) for r in res])
    ends = np.concatenate([np.frombuffer(r["ends"], dtype=np.int64) for r in res])
    order = np.argsort(calls)
    calls, ends = calls[order], ends[order]
    attempts = sum(r["n"] for r in res)
    out: Dict[str, Any] = {"dependency_calls": int(calls.size), "attempts": attempts,
                           "rejected_by_breaker": attempts - int(calls.size),
                           "duration_s": run["duration_s"], "threshold": threshold,
                           "per_worker_dependency_calls": [len(r["calls"]) for r in res]}
    if run["errors"]:
        out["worker_errors"] = run["errors"]
    if calls.size == 0:
        return out
    breaks = np.nonzero(np.diff(calls) > gap_s * 1e9)[0]
    bounds = [0, *(breaks + 1).tolist(), int(calls.size)]
    clusters = [bounds[k + 1] - bounds[k] for k in range(len(bounds) - 1)]
    first = clusters[0]
    probes = clusters[1:]
    out["calls_before_first_open"] = first
    out["calls_after_threshold"] = None
    if threshold is not None and first >= threshold:
        # the moment the threshold-th failure returned to its caller: calls that
        # started later leaked past the breaker (earlier ones were in flight)
        t_thr = np.sort(ends[:first])[threshold - 1]
        out["calls_after_threshold"] = int(np.count_nonzero(calls[:first] > t_thr))
        out["in_flight_at_threshold"] = int(first - threshold - out["calls_after_threshold"])
    out["probes_per_recovery"] = probes
    out["recoveries"] = len(probes)
    out["max_probes"] = max(probes) if probes else None
    out["mean_probes"] = float(np.mean(probes)) if probes else None
    return out
