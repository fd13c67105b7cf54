"""Bulkhead tickets under SIGKILL and SIGSTOP: a dead holder's come back, a stalled one's stay."""
from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time

import pytest

import shmguard as sg
from shmguard._capi import lib

CTX = mp.get_context("fork")


def _hold(segname: str, n: int, out) -> None:
    """Takes ``n`` tickets, reports, then holds them until killed (or told to go)."""
    svc = sg.ResilienceService(segname, create=False)
    bh = svc.bulkhead("db")
    held = [bh.acquire(timeout=10) for _ in range(n)]
    out.put((os.getpid(), [t.index for t in held]))
    time.sleep(60)


def _wait_one(segname: str, out) -> None:
    svc = sg.ResilienceService(segname, create=False)
    out.put("waiting")
    try:
        t = svc.bulkhead("db").acquire(timeout=30)
        out.put(("got", t.index))
    except sg.BulkheadFullError:
        out.put(("full", -1))
    time.sleep(60)


def test_sigkilled_holder_of_every_ticket_gives_them_back(realsvc, segname):
    """No lease is involved (ticket_lease is off): death alone frees the tickets."""
    realsvc.register_endpoint("db", sg.Policy(max_concurrent=2))
    bh = realsvc.bulkhead("db")
    out = CTX.Queue()
    holder = CTX.Process(target=_hold, args=(segname, 2, out))
    holder.start()
    pid, idx = out.get(timeout=30)
    assert sorted(idx) == [0, 1] and bh.try_acquire() is None
    waiter = CTX.Process(target=_wait_one, args=(segname, out))
    waiter.start()
    try:
        assert out.get(timeout=30) == "waiting"
        os.kill(pid, signal.SIGKILL)
        holder.join()
        kind, _ = out.get(timeout=30)                 # the sleeping waiter got one
        assert kind == "got"
        mine = bh.acquire(timeout=10)                 # and this process the other
        s = bh.stats()
        assert (s.in_flight, s.reclaimed) == (2, 2)
        assert sorted(h.pid for h in s.holders) == sorted([waiter.pid, os.getpid()])
        mine.release()
    finally:
        waiter.kill()
        waiter.join()


def test_sigstopped_holder_keeps_its_ticket(realsvc, segname):
    realsvc.register_endpoint("db", sg.Policy(max_concurrent=1, max_wait=0.2))
    bh = realsvc.bulkhead("db")
    out = CTX.Queue()
    holder = CTX.Process(target=_hold, args=(segname, 1, out))
    holder.start()
    pid, _ = out.get(timeout=30)
    os.kill(pid, signal.SIGSTOP)
    try:
        for _ in range(3):                            # each look runs the dead-holder scan
            time.sleep(0.06)
            assert bh.try_acquire() is None
        with pytest.raises(sg.BulkheadFullError):
            realsvc.execute("db", lambda: None)       # waits max_wait, then refuses
        s = bh.stats()
        assert (s.in_flight, s.reclaimed) == (1, 0) and s.holders[0].pid == pid
    finally:
        os.kill(pid, signal.SIGCONT)
        holder.kill()
        holder.join()
    assert bh.acquire(timeout=10).held                # dead now: taken back at once
    assert bh.stats().reclaimed == 1


def test_reused_pid_is_not_the_holder(realsvc):
    """A ticket naming a live pid whose process started after the grant is a dead holder's.

    The word below names this very process but was granted at clock time
    2**20 ns (just after boot), long before this process started: psutil's
    start time says the pid was reused, so the ticket is taken back.
    """
    realsvc.register_endpoint("db", sg.Policy(max_concurrent=1))
    slot = realsvc._eps["db"].h.slot
    assert lib.sg_bulkhead_acquire_at(slot, 1 << 20, os.getpid(), 1) > 0
    assert realsvc.bulkhead("db").acquire(timeout=5).held
    assert realsvc.bulkhead("db").stats().reclaimed == 1


def _sleep_in_wait(segname: str, ready) -> None:
    from shmguard._capi import ffi
    svc = sg.ResilienceService(segname, create=False)
    buf = ffi.new("int64_t[2]")
    ready.put(os.getpid())
    lib.sg_bulkhead_wait(svc.bulkhead("db")._ep.h, 1 | lib.SG_BH_QUIET, 60 * 10**9, buf)


def _sleepers(svc) -> int:
    from shmguard._capi import ffi
    v = ffi.new("struct sg_bulkhead_view *")
    lib.sg_bulkhead_snapshot_at(svc._eps["db"].h.slot, svc.now_ns(), v)
    return int(v.sleepers)


def test_a_killed_sleeper_is_forgotten_by_the_next_release(realsvc, segname):
    """A waiter SIGKILLed asleep stays counted until a release wakes nobody: then forgotten."""
    realsvc.register_endpoint("db", sg.Policy(max_concurrent=1))
    h = realsvc._eps["db"].h
    tok = lib.sg_bulkhead_acquire(h, 1 | lib.SG_BH_QUIET)
    assert tok > 0
    ready = CTX.Queue()
    p = CTX.Process(target=_sleep_in_wait, args=(segname, ready))
    p.start()
    ready.get(timeout=30)
    deadline = time.monotonic() + 30
    while _sleepers(realsvc) < 1:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    p.kill()
    p.join()
    assert _sleepers(realsvc) == 1                       # counted, but dead
    assert lib.sg_bulkhead_release(h, tok) == 0          # the wake-up woke nobody
    assert _sleepers(realsvc) == 0                       # so it is forgotten
