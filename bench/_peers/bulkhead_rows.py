"""Part 5: bulkheads (at most N calls in flight), their cost, their bound and a SIGKILL.

Contenders: a per-process semaphore (what resilience4j's Bulkhead and
Hystrix's semaphore isolation are: each process has its own N), a
``multiprocessing.BoundedSemaphore`` (a POSIX semaphore shared by fork:
host-wide, but a killed holder's permit is never given back), and
shmguard's bulkhead (try_acquire + release, and execute on a bulkhead
endpoint). For each: the cost of one acquire + release in one process; the
most calls in flight with 4 processes and a limit of 2, counted inside the
calls; and how many of the 2 permits can be taken again after a process
holding one was SIGKILLed.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import statistics
import threading
import time
import uuid
from typing import Any, Callable, Dict, List, Optional

LIMIT, PROCS = 2, 4
CTX = mp.get_context("fork")


class _Gauge:
    """Calls in flight, counted by the calls themselves, across forked processes."""

    def __init__(self) -> None:
        self.cur, self.peak, self.calls = CTX.Value("i", 0), CTX.Value("i", 0), CTX.Value("i", 0)

    def enter(self) -> None:
        with self.cur.get_lock():
            self.cur.value += 1
            self.calls.value += 1
            self.peak.value = max(self.peak.value, self.cur.value)

    def leave(self) -> None:
        with self.cur.get_lock():
            self.cur.value -= 1


# each maker returns (acquire() -> bool, release(), pair() = one acquire + release, close())
def _threading():
    sem = threading.BoundedSemaphore(LIMIT)
    a, r = sem.acquire, sem.release
    return (lambda: a(blocking=False)), r, (lambda: (a(blocking=False), r())), (lambda: None)


def _multiprocessing():
    sem = CTX.BoundedSemaphore(LIMIT)
    a, r = sem.acquire, sem.release
    return (lambda: a(block=False)), r, (lambda: (a(block=False), r())), (lambda: None)


def _shmguard(kind: str):
    import shmguard as sg

    svc = sg.ResilienceService(f"bench-bh-{uuid.uuid4().hex[:8]}")
    svc.register_endpoint("bh", sg.Policy(max_concurrent=LIMIT))
    bh = svc.bulkhead("bh")
    held: List[Any] = []

    def close() -> None:
        svc.close()
        svc.unlink()
    if kind == "execute":
        return None, None, close, svc
    a = bh.try_acquire
    return (lambda: (held.append(t) or True) if (t := a()) else False,
            lambda: held.pop().release(), (lambda: a().release()), close)


CONTENDERS: List[tuple] = [
    ("threading.BoundedSemaphore, one per process (resilience4j / Hystrix style)", "per-process",
     _threading),
    ("multiprocessing.BoundedSemaphore (POSIX semaphore, shared by fork)", "host (kernel)",
     _multiprocessing),
    ("shmguard bulkhead.try_acquire() + release()", "host (segment)", lambda: _shmguard("try")),
]


def _cost(pair: Callable[[], Any], n: int) -> float:
    xs = []
    for _ in range(5):
        t = time.perf_counter_ns()
        for _ in range(n):
            pair()
        xs.append((time.perf_counter_ns() - t) / n)
    return statistics.median(xs)


def _worker(acquire, release, gauge: _Gauge, seconds: float) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if acquire():
            gauge.enter()
            time.sleep(0.0005)
            gauge.leave()
            release()
    os._exit(0)


def _peak(acquire, release, seconds: float) -> tuple[int, int]:
    gauge = _Gauge()
    ps = [CTX.Process(target=_worker, args=(acquire, release, gauge, seconds))
          for _ in range(PROCS)]
    for p in ps:
        p.start()
    for p in ps:
        p.join()
    return gauge.peak.value, gauge.calls.value


def _holder(acquire, ready) -> None:
    acquire()
    ready.set()
    time.sleep(60)


def _after_kill(acquire, release) -> int:
    """SIGKILLs a process holding one permit; returns how many permits this one then gets."""
    ready = CTX.Event()
    p = CTX.Process(target=_holder, args=(acquire, ready))
    p.start()
    ready.wait(10)
    os.kill(p.pid, signal.SIGKILL)
    p.join()
    got, end = 0, time.monotonic() + 1.0
    while got < LIMIT and time.monotonic() < end:
        if acquire():
            got += 1
        else:
            time.sleep(0.01)
    for _ in range(got):
        release()
    return got


def _execute_row(n: int, seconds: float) -> Dict[str, Any]:
    _, _, close, svc = _shmguard("execute")
    try:
        f = (lambda: None)
        xs = []
        for _ in range(5):
            t = time.perf_counter_ns()
            for _ in range(n):
                svc.execute("bh", f)
            xs.append((time.perf_counter_ns() - t) / n)
        return {"name": "shmguard execute(bulkhead endpoint, f)", "scope": "host (segment)",
                "median_ns": statistics.median(xs)}
    finally:
        close()


def run(quick: bool, log: Callable[[str], None], wanted: Callable[[str], bool]) -> List[Dict]:
    n, seconds = (20_000, 0.5) if quick else (100_000, 1.0)
    rows: List[Dict[str, Any]] = []
    for name, scope, make in CONTENDERS:
        if not wanted(name):
            continue
        acquire, release, pair, close = make()
        try:
            row = {"name": name, "scope": scope, "median_ns": _cost(pair, n)}
            row["peak"], row["calls"] = _peak(acquire, release, seconds)
            row["back_after_kill"] = _after_kill(acquire, release)
        except Exception as e:  # noqa: BLE001
            row = {"name": name, "scope": scope, "error": f"{type(e).__name__}: {e}"[:200]}
        finally:
            close()
        rows.append(row)
        log(f"  {name:<70} {row.get('median_ns', 0):8.1f} ns  peak {row.get('peak')} of {LIMIT} "
            f"({PROCS} procs)  after SIGKILL {row.get('back_after_kill')}/{LIMIT}")
    if wanted("shmguard execute"):
        rows.append(_execute_row(n, seconds))
        log(f"  {rows[-1]['name']:<70} {rows[-1]['median_ns']:8.1f} ns")
    return rows


def markdown(rows: Optional[List[Dict[str, Any]]]) -> List[str]:
    """Returns the markdown lines of part 5 (none when it did not run)."""
    if not rows:
        return []
    L = ["## 5. Bulkheads (at most N calls in flight)", "",
         f"Limit {LIMIT}; {PROCS} processes try for the permit in a loop (hold 0.5 ms); the calls "
         "count themselves. After SIGKILL: permits this process can take again within 1 s after "
         "a process holding one was killed.", "",
         "| contender | scope | median ns acquire+release | most in flight, 4 procs | "
         "after SIGKILL |", "|---|---|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            L.append(f"| {r['name']} | {r['scope']} | {r['error']} | | |")
            continue
        peak = f"{r['peak']} (of {LIMIT})" if "peak" in r else "—"
        back = f"{r['back_after_kill']}/{LIMIT}" if "back_after_kill" in r else "—"
        if r["scope"] == "per-process":
            peak += f"; {PROCS} x {LIMIT} allowed"
            back = "(its own copy)"
        L.append(f"| {r['name']} | {r['scope']} | {r['median_ns']:.1f} | {peak} | {back} |")
    L.append("")
    return L
