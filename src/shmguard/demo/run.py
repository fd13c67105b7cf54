"""``shmguard demo``: see a pool share one breaker and one rate limit, live, in ~20 s.

A loopback HTTP "remote cache" serves well, strains (it serves only part of
the load: adaptive throttling sheds the rest before it is sent), falls ill
(503s and slow answers), then recovers. N worker processes fetch from it through one
endpoint of a :class:`~shmguard.executor.ResilientExecutor`; when a fetch is
refused or fails they "build locally" instead. The live view shows the
endpoint as every process sees it; the summary then checks, from the
segment's own counters, that (a) the pool kept the rate limit, (b) the
breaker opened for all workers at once and the failing calls stopped, and
(c) it recovered through half-open to closed. A third kind of lane calls a
slow dependency ("db") through a bulkhead that lets the pool hit it only N at
a time; (d) checks, from the dependency's own count, that it never served
more at once. Exit status 1 if a check fails.
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import uuid
from contextlib import contextmanager
from concurrent.futures import ProcessPoolExecutor
from types import FrameType
from typing import Any, Iterator

from shmguard.demo import worker
from shmguard.demo.checks import DbEvidence, Evidence, check_all
from shmguard.demo.server import FlakyCache, Schedule
from shmguard.demo.view import Sample, Tally, make_view
from shmguard.errors import (BulkheadFullError, CircuitOpenError, InvalidNameError,
                             RateLimitedError, ThrottledError)
from shmguard.executor import ResilientExecutor
from shmguard.limiter import NS
from shmguard.policy import NETWORK_ERRORS, Policy
from shmguard.segment import list_segments, unlink, validate_name
from shmguard.service import ResilienceService
from shmguard.stats import BreakerState

__all__ = ["main", "demo_policy"]

ENDPOINT = "cache"
DB = "db"
RATE_WAIT = 0.05    # a fetch may wait this long for its rate-limit slot
LOCAL_BUILD = 0.02  # what a refused or failed fetch costs instead
SAMPLE_EVERY = 0.05
MIN_WORKERS, MAX_WORKERS = 2, 64      # "in every worker" needs two; more only thrashes
MIN_DURATION, MAX_DURATION = 4.0, 3600.0


def demo_policy(rate: float) -> Policy:
    """Returns the demo's policy: 75% of >= 5 calls in a short window opens it for 1 s.

    The window (1 s, longer below 10 req/s) holds about ten calls. Adaptive
    throttling (k = 2 over the same window) is the soft brake before it: an
    overloaded cache that answers a part of the calls is sent about twice
    what it answers, and the breaker stays closed.
    """
    window = max(1.0, 10 / rate)
    return Policy(failure_threshold=0.75, min_requests=5, window=window,
                  window_buckets=10, throttle_k=2.0, throttle_window=window,
                  throttle_min_requests=10,
                  open_timeout=1.0, half_open_max_calls=1, probe_lease=2.0, rate=rate,
                  burst=max(1, round(rate / 5)),
                  failure_exceptions=NETWORK_ERRORS + (worker.CacheDown,))


def db_policy(tickets: int) -> Policy:
    """Returns the slow dependency's policy: ``tickets`` calls at once, refused at once beyond."""
    return Policy(max_concurrent=tickets, max_wait=0.0)


class _DbTally:
    """What the db lanes' calls came to (client side); thread safe."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.served = self.refused = 0

    def add(self, served: bool) -> None:
        with self.lock:
            if served:
                self.served += 1
            else:
                self.refused += 1


def _db_lane(i: int, ex: ResilientExecutor, url: str, tally: _DbTally, stop: threading.Event,
             errors: list[BaseException]) -> None:
    """A client of the slow dependency: query; when the bulkhead refuses, do without a while."""
    n = 0
    while not stop.is_set():
        n += 1
        try:
            ex.submit(DB, worker.query, url, f"row-{i}-{n}").result()
            tally.add(True)
            continue
        except BulkheadFullError:
            tally.add(False)
        except BaseException as exc:
            errors.append(exc)
            stop.set()
            return
        stop.wait(LOCAL_BUILD)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="shmguard demo", description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", type=int, default=4,
                   help=f"worker processes (default 4, {MIN_WORKERS}..{MAX_WORKERS})")
    p.add_argument("--duration", type=float, default=20.0,
                   help=f"seconds (default 20, {MIN_DURATION:g}..{MAX_DURATION:g})")
    p.add_argument("--rate", type=float, default=50.0,
                   help="the endpoint's rate limit, requests/s for the whole pool (default 50, min 5)")
    p.add_argument("--plain", action="store_true", help="plain lines even on a terminal")
    p.add_argument("--segment", default=None, help="segment name (default: a fresh one)")
    return p


def _lane(i: int, ex: ResilientExecutor, url: str, tally: Tally, stop: threading.Event,
          errors: list[BaseException]) -> None:
    """One client: fetch, and on refusal or failure build locally, until told to stop."""
    n = 0
    while not stop.is_set():
        n += 1
        try:
            pid, _ = ex.submit(ENDPOINT, worker.fetch, url, f"artifact-{i}-{n}",
                               timeout=RATE_WAIT).result()
            tally.add(pid, "ok")
            continue
        except CircuitOpenError as exc:
            tally.add(getattr(exc, "worker_pid", 0), "open")
        except RateLimitedError as exc:
            tally.add(getattr(exc, "worker_pid", 0), "limited")
        except ThrottledError as exc:
            tally.add(getattr(exc, "worker_pid", 0), "throttled")
        except worker.CacheDown as exc:
            tally.add(exc.pid, "failed")
        except BaseException as exc:  # a broken pool, say: stop the run
            errors.append(exc)
            stop.set()
            return
        stop.wait(LOCAL_BUILD)


class _Interrupted(Exception):
    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise _Interrupted(signum)


def _sample(svc: ResilienceService, cache: FlakyCache, db: _DbTally) -> Sample:
    st = svc.stats(ENDPOINT)
    b, m = st.breaker, st.limiter_metrics
    assert b is not None
    return Sample(cache.now(), cache.phase(), b.state, b.failure_rate, m.accepted, m.rejected,
                  b.rejected, len(cache.hits()), db_in_flight=cache.db()[0],
                  db_refused=db.refused, throttle_p=st.throttle_probability)


def _watch(svc: ResilienceService, cache: FlakyCache, tally: Tally, db: _DbTally, view: Any,
           duration: float, stop: threading.Event) -> None:
    """Main thread: sample the segment, report transitions and probes, redraw."""
    state, seen, next_draw = BreakerState.CLOSED, 0, 0.0
    while not stop.is_set() and cache.now() < duration:
        now_state = svc.breaker_state(ENDPOINT)
        hits = cache.hits()
        for h in hits[seen:]:
            if h.state == BreakerState.HALF_OPEN:
                if state != BreakerState.HALF_OPEN:  # too brief for sampling to catch
                    view.event(h.t, f"breaker {state} -> {h.state}: one probe may go")
                    state = BreakerState.HALF_OPEN
                verdict = "ok: closes it" if h.status == 200 else f"{h.status}: reopens it"
                view.event(h.t, f"probe from {tally.label(h.pid)} -> {verdict}")
        seen = len(hits)
        if now_state != state:
            view.event(cache.now(), f"breaker {state} -> {now_state} (seen by every worker)")
            state = now_state
        if cache.now() >= next_draw:
            view.update(_sample(svc, cache, db), tally.workers())
            next_draw += view.interval
        stop.wait(SAMPLE_EVERY)


def _run(args: argparse.Namespace, segment: str) -> int:
    policy, tickets = demo_policy(args.rate), max(1, args.workers // 2)
    schedule = Schedule.for_duration(args.duration)
    tally, db, stop = Tally(), _DbTally(), threading.Event()
    errors: list[BaseException] = []
    lanes: list[threading.Thread] = []
    view: Any = None
    t0 = 0
    with ProcessPoolExecutor(args.workers, initializer=worker.ignore_sigint) as pool:
        ex = ResilientExecutor(pool, segment, policy=policy)
        ex_db = ResilientExecutor(pool, segment, policy=db_policy(tickets))
        svc = ex.service
        cache: FlakyCache | None = None
        try:
            svc.register_endpoint(ENDPOINT, policy)
            svc.register_endpoint(DB, db_policy(tickets))
            # start every worker before any thread of ours exists (fork safety)
            for f in [pool.submit(worker.warm_up, segment, 0.1) for _ in range(args.workers)]:
                f.result()
            cache = FlakyCache(schedule, lambda: svc.breaker_state(ENDPOINT),
                               capacity=max(1.0, 0.4 * args.rate))
            view = make_view(args.plain)
            view.start(f"shmguard demo: {args.workers} workers -> endpoint {ENDPOINT!r} "
                       f"(limit {args.rate:g}/s, burst {policy.effective_burst}) -> flaky cache "
                       f"{cache.url}; strained (serves {cache.capacity:g}/s) from "
                       f"{schedule.strained_from or 0:.1f}s, ill from {schedule.sick_from:.1f}s "
                       f"to {schedule.sick_until:.1f}s; {tickets + 1} lanes -> slow dependency "
                       f"{DB!r} through a bulkhead of {tickets} ticket(s)")
            t0 = svc.now_ns()
            cache.begin()
            lanes = [threading.Thread(target=_lane, args=(i, ex, cache.url, tally, stop, errors),
                                      name=f"lane-{i}", daemon=True) for i in range(args.workers)]
            lanes += [threading.Thread(target=_db_lane, args=(i, ex_db, cache.url, db, stop, errors),
                                       name=f"db-lane-{i}", daemon=True) for i in range(tickets + 1)]
            for lane in lanes:
                lane.start()
            _watch(svc, cache, tally, db, view, args.duration, stop)
        finally:
            stop.set()
            for lane in lanes:
                lane.join()
            if view is not None:
                view.stop()
            if cache is not None:
                cache.stop()
            pool.shutdown(wait=True, cancel_futures=True)
        elapsed = (svc.now_ns() - t0) / NS
    if errors:
        print(f"demo failed: {errors[0]!r}", file=sys.stderr)
        return 1
    bh = svc.stats(DB).bulkhead
    assert bh is not None
    _, peak, served = cache.db()
    ev = Evidence(svc.stats(ENDPOINT), args.rate, policy.half_open_max_calls, elapsed,
                  tally.workers(), args.workers, cache.hits(),
                  DbEvidence(tickets, tickets + 1, peak, served, db.refused, bh.peak))
    svc.close()
    return _report(ev, segment)


def _report(ev: Evidence, segment: str) -> int:
    checks = check_all(ev)
    w = [c for _, _, c in ev.workers]
    print(f"\nSummary, from the counters of segment {segment!r} (endpoint {ENDPOINT!r}):")
    print(f"  calls: {sum(c.ok for c in w)} served, {sum(c.failed for c in w)} failed, "
          f"{sum(c.open + c.limited + c.throttled for c in w)} rejected; the cache saw "
          f"{len(ev.hits)} requests in {ev.elapsed:.1f}s")
    print(f"  rejections by cause: breaker open {sum(c.open for c in w)}, "
          f"rate limit {sum(c.limited for c in w)}, adaptive throttling (soft brake) "
          f"{sum(c.throttled for c in w)}")
    for c in checks:
        print(c.line())
    bad = [c.label for c in checks if not c.ok]
    idle = [c.label for c in checks if c.ok and not c.exercised]
    if bad:
        print(f"FAILED: check(s) {', '.join(bad)}")
    elif idle:
        print(f"Passed, but check(s) {', '.join(f'({c})' for c in idle)} not exercised: "
              "nothing was at stake "
              "(for (a), lower --rate until calls are rate-limited).")
    else:
        words = {3: "three", 4: "four"}
        print(f"All {words.get(len(checks), len(checks))} checks passed.")
    return 1 if bad else 0


@contextmanager
def _signals() -> Iterator[None]:
    """SIGTERM ends the run like Ctrl-C does (only the main thread may set handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def main(argv: list[str]) -> int:
    """Runs the demo with command-line ``argv`` (without the program name); returns the exit status."""
    try:
        args = _parser().parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) if not isinstance(exc.code, str) else 2
    if not (MIN_WORKERS <= args.workers <= MAX_WORKERS
            and MIN_DURATION <= args.duration <= MAX_DURATION and 5 <= args.rate <= 10_000):
        print(f"shmguard demo: need {MIN_WORKERS} <= --workers <= {MAX_WORKERS}, "
              f"{MIN_DURATION:g} <= --duration <= {MAX_DURATION:g} and 5 <= --rate <= 10000 "
              f"(got --workers {args.workers} --duration {args.duration:g} --rate {args.rate:g})",
              file=sys.stderr)
        return 2
    segment = args.segment or f"demo-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        validate_name(segment)
    except InvalidNameError as exc:
        print(f"shmguard demo: {exc}", file=sys.stderr)
        return 2
    if segment in list_segments():  # the demo removes its segment at the end: never another's
        print(f"shmguard demo: segment {segment!r} already exists", file=sys.stderr)
        return 2
    try:
        with _signals():
            return _run(args, segment)
    except (KeyboardInterrupt, _Interrupted) as exc:
        print("\ninterrupted: workers stopped, segment removed", file=sys.stderr)
        return 128 + (exc.signum if isinstance(exc, _Interrupted) else signal.SIGINT)
    finally:
        unlink(segment)


