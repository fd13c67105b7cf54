"""Across real processes (fork and spawn): one breaker, one rate, host-wide."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal

import pytest

import shmguard as sg

import _workers

METHODS = ["fork", "spawn"]


def ctx_of(method: str):
    return mp.get_context(method)


@pytest.mark.parametrize("method", METHODS)
def test_pool_never_exceeds_the_rate(segname, realsvc, method):
    rate, burst, procs = 2000.0, 50, 3
    realsvc.register_endpoint("api", sg.Policy(rate=rate, burst=burst))
    ctx = ctx_of(method)
    go, out = ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=_workers.hammer, args=(segname, "api", go, 1.0, out))
          for _ in range(procs)]
    for p in ps:
        p.start()
    go.set()
    results = [out.get(timeout=60) for _ in ps]
    for p in ps:
        p.join(30)
        assert p.exitcode == 0
    admitted = sum(r[1] for r in results)
    first, last = min(r[3] for r in results), max(r[4] for r in results)
    bound = burst + rate * (last - first) / 1e9
    m = realsvc.limiter("api").metrics()
    assert m.accepted == admitted                      # the segment counted every one
    assert m.accepted + m.rejected == sum(r[2] for r in results)
    assert admitted <= bound + 1
    # a lower bound too (no under-admission); loose, since a starved VM can leave
    # every hammer descheduled for longer than the burst lasts (25 ms here)
    assert admitted >= 0.8 * bound


@pytest.mark.parametrize("method", METHODS)
def test_breaker_opened_in_one_process_is_open_in_all(segname, svc, method):
    try:
        svc.register_endpoint("dep", sg.Policy(min_requests=5, failure_threshold=0.5,
                                               failure_exceptions=(ConnectionError,)))
        ctx = ctx_of(method)
        cmd, out = ctx.Queue(), ctx.Queue()
        watcher = ctx.Process(target=_workers.observe, args=(segname, "dep", cmd, out))
        watcher.start()
        cmd.put("state")
        assert out.get(timeout=60) == "closed"
        failer = ctx.Process(target=_workers.fail_calls, args=(segname, "dep", 50, out))
        failer.start()
        tag, ran, state = out.get(timeout=60)
        failer.join(30)
        # exactly min_requests failures reached the dependency, then it opened
        assert (tag, ran, state) == ("failed", 5, "open")
        cmd.put("state")
        assert out.get(timeout=30) == "open"
        cmd.put("call")
        assert out.get(timeout=30) == "rejected:CircuitOpenError"
        assert svc.breaker_state("dep") == sg.BreakerState.OPEN
        svc.advance(31)                       # past open_timeout: the watcher probes
        cmd.put("call")
        assert out.get(timeout=30) == "ran"
        cmd.put("state")
        assert out.get(timeout=30) == "closed"
        cmd.put("quit")
        watcher.join(30)
    finally:
        for p in (locals().get("watcher"), locals().get("failer")):
            if p is not None and p.is_alive():
                p.kill()  # a failed assertion must not leave a worker waiting forever


def _open_breaker(svc: sg.ResilienceService, ep: str) -> None:
    br = svc.breaker(ep)
    br.open()
    assert br.state == sg.BreakerState.OPEN
    svc.advance(60)


@pytest.mark.parametrize("method", METHODS)
def test_half_open_admits_exactly_max_calls_across_processes(segname, svc, method):
    svc.register_endpoint("ho", sg.Policy(half_open_max_calls=3, open_timeout=30))
    _open_breaker(svc, "ho")
    ctx = ctx_of(method)
    out, release = ctx.Queue(), ctx.Event()
    ps = [ctx.Process(target=_workers.take_probe, args=(segname, "ho", out, release))
          for _ in range(5)]
    for p in ps:
        p.start()
    got = [out.get(timeout=60) for _ in ps]
    holders = {pid for pid, ok in got if ok}
    assert len(holders) == 3
    snap = svc.breaker("ho").snapshot()
    assert snap.state == sg.BreakerState.HALF_OPEN
    assert {p.pid for p in snap.probes} == holders
    release.set()
    for p in ps:
        p.join(30)
    # three successes (success_threshold defaults to half_open_max_calls) closed it
    assert svc.breaker_state("ho") == sg.BreakerState.CLOSED


def test_sigkilled_probe_holder_does_not_wedge_half_open(segname, svc):
    svc.register_endpoint("k", sg.Policy(half_open_max_calls=1, probe_lease=600))
    _open_breaker(svc, "k")
    ctx = ctx_of("fork")
    out, release = ctx.Queue(), ctx.Event()
    p = ctx.Process(target=_workers.take_probe, args=(segname, "k", out, release))
    p.start()
    pid, ok = out.get(timeout=60)
    assert ok
    assert svc.breaker("k").allow() is None          # holder alive: no second probe
    os.kill(pid, signal.SIGKILL)
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    # the lease (600 s) has not expired, but its holder is dead: reclaimed
    svc._eps["k"].next_reclaim = 0.0
    permit = svc.breaker("k").allow()
    assert permit is not None and permit.is_probe
    permit.success()
    assert svc.breaker_state("k") == sg.BreakerState.CLOSED


@pytest.mark.parametrize("method", METHODS)
def test_concurrent_registration_yields_one_slot(segname, realsvc, method):
    names = [f"ep{i}" for i in range(12)]
    ctx = ctx_of(method)
    go, out = ctx.Event(), ctx.Queue()
    ps = [ctx.Process(target=_workers.register, args=(segname, names[k:] + names[:k], go, out))
          for k in range(4)]
    for p in ps:
        p.start()
    go.set()
    maps = [out.get(timeout=60) for _ in ps]
    for p in ps:
        p.join(30)
    assert all(m == maps[0] for m in maps)            # everyone got the same slots
    assert len(set(maps[0].values())) == len(names)
    assert realsvc.endpoints() == sorted(names)           # each name exactly once


@pytest.mark.parametrize("method", METHODS)
def test_service_pickles_as_attach_by_name(segname, realsvc, method):
    realsvc.execute("shared", lambda: 1)
    ctx = ctx_of(method)
    out = ctx.Queue()
    p = ctx.Process(target=_workers.use_pickled_service, args=(realsvc, out))
    p.start()
    assert out.get(timeout=60) == (segname, "ok", 2)
    p.join(30)
    assert p.exitcode == 0
    assert realsvc.stats("shared").limiter_metrics.accepted == 2
