"""Three "hosts" (three segments, each its own host_id) against one real redis-server.

Each host runs one worker process; the worker's service runs the host's
agent thread. Exact bounds on admissions; times only as generous deadlines.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from typing import Any

import pytest

import shmguard as sg
from _fleet_workers import ENDPOINT, POLICY, idle, worker

CTX = mp.get_context("fork")
RATE, BURST, SECONDS = 300, 30, 6.0


def _make(segs: list[str]) -> None:
    for s in segs:
        svc = sg.ResilienceService(s, capacity=16)
        svc.register_endpoint(ENDPOINT, POLICY)
        svc.close()


def _run(segs: list[str], url: str, start: float, stop: float,
         active: list[tuple[float, float]] | None = None) -> tuple[list[Any], Any]:
    out = CTX.Queue()
    procs = []
    for i, s in enumerate(segs):
        act = active[i] if active else (-1e9, 1e9)
        p = CTX.Process(target=worker, args=(s, f"host{i}", url, start, stop, out, act))
        p.start()
        procs.append(p)
    return procs, out


def _collect(procs: list[Any], out: Any) -> dict[str, int]:
    got = {}
    for _ in procs:
        host, _pid, n = out.get(timeout=60)
        got[host] = n
    for p in procs:
        p.join(timeout=30)
    return got


def _fleet(seg: str) -> sg.FleetStats:
    svc = sg.ResilienceService(seg, create=False)
    try:
        st = svc.stats(ENDPOINT).fleet
        assert st is not None
        return st
    finally:
        svc.close()


def test_three_hosts_share_the_fleet_rate(redis_server, segnames) -> None:
    _make(segnames)
    start = time.monotonic() + 1.5  # the agents sync before the window opens
    procs, out = _run(segnames, redis_server.url, start, start + SECONDS)
    got = _collect(procs, out)
    total = sum(got.values())
    bound = BURST + RATE * SECONDS
    assert total <= bound, got
    assert total >= 0.7 * bound, got


def test_redis_killed_and_restarted_mid_run_keeps_the_bound(redis_server, segnames) -> None:
    _make(segnames)
    start = time.monotonic() + 1.5
    procs, out = _run(segnames, redis_server.url, start, start + SECONDS)
    time.sleep(max(0.0, start + 2.0 - time.monotonic()))
    redis_server.kill()
    time.sleep(0.5)
    redis_server.start()  # empty: no save, no append-only file
    got = _collect(procs, out)
    assert sum(got.values()) <= BURST + RATE * SECONDS, got
    shares = [_fleet(s) for s in segnames]
    assert all(f.mode == "granted" for f in shares), shares
    assert sum(f.rate for f in shares) <= RATE * (1 + 1e-9), shares


def test_demand_moving_to_another_host_moves_the_shares(redis_server, segnames) -> None:
    _make(segnames)
    start = time.monotonic() + 1.5
    # host0 busy for the first 2 s, host1 from then on, host2 never
    active = [(-1e9, 2.0), (2.0, 1e9), (1e9, 1e9)]
    procs, out = _run(segnames, redis_server.url, start, start + 5.0, active)
    time.sleep(max(0.0, start + 1.8 - time.monotonic()))
    assert _fleet(segnames[0]).rate > 0.8 * RATE
    deadline = start + 4.5  # generous: the agents refresh every 0.1 s
    while time.monotonic() < deadline and _fleet(segnames[1]).rate < 0.8 * RATE:
        time.sleep(0.02)
    moved = time.monotonic() - (start + 2.0)
    assert _fleet(segnames[1]).rate >= 0.8 * RATE, f"not moved after {moved:.2f} s"
    got = _collect(procs, out)
    assert sum(got.values()) <= BURST + RATE * 5.0, got


def test_agent_sigkilled_another_process_of_the_host_takes_over(redis_server, segnames) -> None:
    _make(segnames)
    ready = CTX.Queue()
    spare = CTX.Process(target=idle, args=(segnames[0], "host0", redis_server.url, ready))
    start = time.monotonic() + 1.5
    procs, out = _run(segnames, redis_server.url, start, start + SECONDS)
    spare.start()
    spare_pid = ready.get(timeout=30)
    try:
        time.sleep(max(0.0, start + 1.0 - time.monotonic()))
        holder = _fleet(segnames[0]).agent_pid
        assert holder in (procs[0].pid, spare_pid)
        os.kill(holder, signal.SIGKILL)
        survivor = spare_pid if holder == procs[0].pid else procs[0].pid
        deadline = time.monotonic() + 10  # generous; the agent lease is 0.5 s
        while time.monotonic() < deadline and ((st := _fleet(segnames[0])).agent_pid != survivor
                                               or st.sync_age is None or st.sync_age > 0.3):
            time.sleep(0.02)
        # the survivor synced (the holder's last sync was >= 0.5 s before it took over)
        assert st.agent_pid == survivor and st.mode == "granted" and st.sync_age <= 0.3, st
        hosts = redis_server.client().hgetall(f"shmguard:rate:{ENDPOINT}")
        assert b"h:host0" in hosts
        got = _collect([p for p in procs if p.pid != holder], out)
        assert sum(got.values()) <= BURST + RATE * SECONDS, got
    finally:
        for p in [spare, *procs]:
            if p.is_alive():
                p.kill()
            p.join(timeout=10)


def test_agent_sigstopped_is_replaced_and_stays_out_when_resumed(redis_server, segnames) -> None:
    _make(segnames[:1])
    ready = CTX.Queue()
    procs = [CTX.Process(target=idle, args=(segnames[0], "host0", redis_server.url, ready))
             for _ in range(2)]
    for p in procs:
        p.start()
    pids = {ready.get(timeout=30) for _ in procs}
    try:
        deadline = time.monotonic() + 10
        while (st := _fleet(segnames[0])).agent_pid not in pids or st.mode != "granted":
            assert time.monotonic() < deadline
            time.sleep(0.02)
        holder = st.agent_pid
        os.kill(holder, signal.SIGSTOP)
        other = (pids - {holder}).pop()
        # the other takes over after the lease (0.5 s) and syncs
        while (st := _fleet(segnames[0])).agent_pid != other or st.sync_age is None \
                or st.sync_age > 0.3:
            assert time.monotonic() < deadline + 10
            time.sleep(0.02)
        os.kill(holder, signal.SIGCONT)
        for _ in range(20):  # the resumed agent finds the lease taken and stays out
            st = _fleet(segnames[0])
            assert st.agent_pid == other and st.mode == "granted", st
            time.sleep(0.05)
    finally:
        for p in procs:
            p.kill()
            p.join(timeout=10)


def _child_of_a_fleet_service(svc: sg.ResilienceService, out: Any) -> None:
    svc.register_endpoint("child-only", POLICY)  # starts this process's own agent candidate
    alive = svc._fleet._thread is not None and svc._fleet._thread.is_alive()
    svc.close()                                   # never blocks on a lock held at fork
    out.put((alive, svc._fleet._thread.is_alive()))


def test_a_fork_child_of_a_fleet_service_runs_its_own_agent(redis_server, segnames) -> None:
    cfg = sg.RedisFleet(redis_server.url, refresh=0.01, lease=1.0, timeout=0.2)
    svc = sg.ResilienceService(segnames[0], capacity=8, fleet=cfg, host_id="h0")
    try:
        svc.register_endpoint(ENDPOINT, POLICY)
        out = CTX.Queue()
        for _ in range(5):  # fork while the parent's agent is busy (refresh 10 ms)
            p = CTX.Process(target=_child_of_a_fleet_service, args=(svc, out))
            p.start()
            assert out.get(timeout=30) == (True, False)
            p.join(timeout=30)
            assert p.exitcode == 0
        assert svc._fleet._thread.is_alive()
    finally:
        svc.close()
