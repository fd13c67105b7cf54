"""Crash safety: SIGKILL at random moments, dead and stalled claimants, dead probe holders.

The quick torture run (tests/_torture.py, ~10 s) is the statistical proof;
the other tests pin each crash path down deterministically.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
import uuid
from contextlib import ExitStack

import psutil

import shmguard as sg
import shmguard.service
from shmguard._capi import ffi, lib

import _torture

HARNESS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "_torture.py")
NS = 1_000_000_000
T0 = 1_000_000_000_000
STALE = shmguard.service.CLAIM_STALE_NS


def test_torture_quick():
    """4 workers hammer one segment for 10 s while a killer SIGKILLs and SIGSTOPs them and
    changes a rate; 0 violations."""
    # not a "t-" name: a concurrent pytest session's end-of-run sweep must not remove it
    segname = f"torture-{uuid.uuid4().hex[:12]}"
    seed = random.randrange(2**32)
    cmd = [sys.executable, HARNESS, "--seconds", "10", "--workers", "4", "--seed", str(seed),
           "--name", segname, "--json"]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    finally:
        sg.unlink(segname)     # normally gone already; not if the harness was killed
    assert r.stdout, r.stderr
    rep = json.loads(r.stdout.strip().splitlines()[-1])
    print(_torture.summary(rep))
    assert rep["violations"] == [], f"seed {seed}: {rep['violations']}"
    assert r.returncode == 0, r.stderr
    assert rep["kills"] >= 20
    assert [s["decisions"] for s in rep["sprints"]] == [_torture.SPRINT] * 5
    assert [s["who"] for s in rep["sprints"]] == ["survivor"] * 4 + ["fresh"]
    for ep, m in rep["limiter"].items():
        assert 0 < m["accepted"] <= m["bound"], ep
        assert m["rejected"] > 0, ep        # the limiter was really pushed past its rate
    assert rep["probes"]["permits_logged"] > 0
    kd = rep["keyed"]   # keyed inserts and reuse under SIGKILL (tests/_torture_keyed.py)
    assert 0 < kd["most_admitted"] <= kd["bound_per_key"] and kd["evicted"] > 0
    assert rep["probes"]["max_at_once"]["brk"] <= 3
    assert rep["probes"]["max_at_once"]["bh"] <= 2   # bulkhead bound
    assert rep["bulkhead"]["acquired"] > 0
    assert rep["probes"]["p1_checked"] > 0 and rep["probes"]["p1_ended_generation"] == 0
    assert rep["stops"] > 0 and rep["rate_changes"] > 0
    assert rep["limiter"]["lim"]["rate_changes"] == rep["rate_changes"]
    assert rep["table"]["claims_live"] == 0
    assert not os.path.exists(f"/dev/shm/shmguard.{os.geteuid()}.{segname}")


# -- slot claims left behind --------------------------------------------------------

def _zombie() -> subprocess.Popen:
    """A child that has exited but is not reaped: its pid is dead and cannot be reused."""
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    for _ in range(2000):
        if psutil.Process(p.pid).status() == psutil.STATUS_ZOMBIE:
            return p
        time.sleep(0.005)
    raise AssertionError("child did not exit")


def _slot_view(svc, index):
    v = ffi.new("struct sg_slot_view *")
    assert lib.sg_slot_snapshot(svc.segment.base, svc.segment.size, index, v) == lib.SG_OK
    return v


def test_claim_left_by_a_killed_registrant_is_taken_over(svc):
    svc.register_endpoint("other", sg.Policy())
    corpse = _zombie()
    try:
        idx = _torture.plant_claim(svc, "orders", corpse.pid)
        assert idx is not None
        v = _slot_view(svc, idx)
        assert (v.kind, v.claim_pid) == (1, corpse.pid)      # CLAIMED by a dead process
        svc.register_endpoint("orders", sg.Policy(rate=5, burst=5))
        assert svc._eps["orders"].index == idx               # the claimed slot, taken over
        table, bad = _torture.table_report(svc, {"other", "orders"})
        assert bad == []
        assert table == {"ready": 2, "claims_live": 0, "claims_dead": 0}
        # and another process sees the same single slot
        other = sg.ResilienceService(svc.name, create=False)
        other.register_endpoint("orders", sg.Policy(rate=5, burst=5))
        assert other._eps["orders"].index == idx
        other.close()
    finally:
        corpse.wait()


def _kind(svc, idx: int) -> int:
    v = ffi.new("struct sg_slot_view *")
    assert lib.sg_slot_snapshot(svc.segment.base, svc.segment.size, idx, v) == lib.SG_OK
    return int(v.kind)


def test_claim_of_a_stalled_live_registrant_is_set_aside_after_the_bound(svc):
    # a live pid (ours) whose claim is older than the bound (2 s): stalled, not dead. Its slot
    # is set aside (never reused while the owner lives: it may resume inside its fill)
    idx = _torture.plant_claim(svc, "orders", os.getpid(), time.monotonic_ns() - STALE - NS)
    assert idx is not None
    svc.register_endpoint("orders", sg.Policy())
    assert svc._eps["orders"].index != idx and _kind(svc, idx) == lib.SG_SLOT_ABANDONED
    assert _torture.table_report(svc, {"orders"})[1] == []


def test_young_claim_of_a_live_registrant_is_waited_for_then_set_aside(svc):
    # 0.3 s short of the bound: the registrant waits (the claimant may finish), then sets it aside
    young = time.monotonic_ns() - STALE + 3 * NS // 10
    idx = _torture.plant_claim(svc, "orders", os.getpid(), young)
    assert idx is not None
    svc.register_endpoint("orders", sg.Policy())
    assert svc._eps["orders"].index != idx and _kind(svc, idx) == lib.SG_SLOT_ABANDONED
    table, bad = _torture.table_report(svc, {"orders"})
    assert bad == [] and table["ready"] == 1


def test_policy_writer_killed_mid_publish_blocks_nobody_past_its_lease(realsvc):
    svc = realsvc
    svc.register_endpoint("p", sg.Policy(rate=10, burst=10))
    corpse = _zombie()
    try:
        # policy_lease is the 5th word of the slot: pid 22 | deadline (ns >> 20) 42
        deadline = ((time.monotonic_ns() + 3 * NS // 10) >> 20) & ((1 << 42) - 1)
        p = ffi.cast("uint64_t *", _torture.slot_addr(svc, svc._eps["p"].index))
        p[4] = ((corpse.pid & 0x3FFFFF) << 42) | deadline
        svc.register_endpoint("p", sg.Policy(rate=20, burst=20), replace=True)
        assert svc.stats("p").burst == 20
        assert p[4] == 0                                  # the lease was taken and released
    finally:
        corpse.wait()


# -- half-open probe permits across processes ------------------------------------------

HOLDER = r"""
import sys, shmguard as sg
svc = sg.ResilienceService(sys.argv[1], create=False)
br = svc.breaker("dep")
print("ready", flush=True)
sys.stdin.readline()
p = br.allow()
print("probe" if p is not None and p.is_probe else ("permit" if p else "none"), flush=True)
sys.stdin.readline()
"""

PROBE_POLICY = sg.Policy(half_open_max_calls=3, open_timeout=1.0, probe_lease=60.0)


def _holders(stack: ExitStack, segname: str, n: int) -> list[subprocess.Popen]:
    ps = [_child(stack, [sys.executable, "-c", HOLDER, segname], stdin=subprocess.PIPE)
          for _ in range(n)]
    for p in ps:
        assert p.stdout.readline().strip() == "ready"
    return ps


def _child(stack: ExitStack, cmd: list[str], **kw) -> subprocess.Popen:
    """Starts ``cmd``; on leaving ``stack`` it is killed, reaped and its pipes closed."""
    p = stack.enter_context(subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, **kw))
    stack.callback(p.kill)
    return p


def _half_open(svc):
    svc.register_endpoint("dep", PROBE_POLICY)
    svc.breaker("dep").open()
    svc.advance(1.5)           # past open_timeout: the next caller turns it half-open


def test_half_open_admits_exactly_n_probes_across_processes(svc):
    _half_open(svc)
    with ExitStack() as stack:
        ps = _holders(stack, svc.name, 6)
        for p in ps:
            p.stdin.write("go\n")
            p.stdin.flush()
        got = {p.pid: p.stdout.readline().strip() for p in ps}
        assert sorted(got.values()) == ["none"] * 3 + ["probe"] * 3
        snap = svc.breaker("dep").snapshot()
        assert snap.state == sg.BreakerState.HALF_OPEN
        assert {pr.pid for pr in snap.probes} == {pid for pid, g in got.items() if g == "probe"}
        assert svc.breaker("dep").allow() is None        # holders alive: nothing to reclaim


def test_probe_permits_of_killed_holders_are_reclaimed(svc):
    _half_open(svc)
    with ExitStack() as stack:
        ps = _holders(stack, svc.name, 3)
        for p in ps:
            p.stdin.write("go\n")
            p.stdin.flush()
        assert [p.stdout.readline().strip() for p in ps] == ["probe"] * 3
        assert svc.breaker("dep").allow() is None
        for p in ps:
            p.send_signal(signal.SIGKILL)
            p.wait()
        # the lease (60 s) has not run out: the permits come back because the holders died
        fresh = sg.ResilienceService(svc.name, create=False)
        permits = [fresh.breaker("dep").allow() for _ in range(4)]
        assert [p is not None and p.is_probe for p in permits] == [True] * 3 + [False]
        assert {pr.pid for pr in fresh.breaker("dep").snapshot().probes} == {os.getpid()}
        for p in permits[:3]:
            p.success()
        assert fresh.breaker("dep").state == sg.BreakerState.CLOSED
        fresh.close()


def test_probe_permit_ends_with_its_lease(svc):
    """C level, explicit time: a permit is live up to its deadline and free from it on."""
    svc.register_endpoint("dep", sg.Policy(half_open_max_calls=1, open_timeout=1.0,
                                           probe_lease=0.5))
    slot = svc._eps["dep"].h.slot
    svc.breaker("dep").open()
    t = T0 + 2 * NS
    tok = lib.sg_breaker_acquire_at(slot, t, 1111)
    assert tok >= 0 and (tok >> 34) & 0xF == 1                  # probe permit, lease word 0
    expiry = (t + NS // 2) >> 20 << 20                           # deadline in 2**20 ns units
    assert lib.sg_breaker_acquire_at(slot, t + 1, 2222) == lib.SG_R_PROBES_FULL
    assert lib.sg_breaker_acquire_at(slot, expiry - 1, 2222) == lib.SG_R_PROBES_FULL
    v = ffi.new("struct sg_breaker_view *")
    assert lib.sg_breaker_snapshot_at(slot, expiry - 1, v) == 0
    assert (v.probes_in_flight, v.probe_pid[0]) == (1, 1111)
    assert 0 < v.probe_lease_left_ns[0] <= NS // 2
    assert lib.sg_breaker_snapshot_at(slot, expiry, v) == 0
    assert v.probes_in_flight == 0                               # expired: no longer counted
    tok2 = lib.sg_breaker_acquire_at(slot, expiry, 2222)
    assert tok2 >= 0 and (tok2 >> 34) & 0xF == 1                 # the same permit, re-leased
    assert lib.sg_breaker_snapshot_at(slot, expiry, v) == 0
    assert (v.probes_in_flight, v.probe_pid[0]) == (1, 2222)


def test_sigkill_inside_c_loops_leaves_a_valid_segment(segname):
    """SIGKILL children that spin in C calls (admit + record); the state stays usable."""
    code = r"""
import sys, shmguard as sg
from shmguard._capi import lib
svc = sg.ResilienceService(sys.argv[1], create=False)
svc.register_endpoint("x", sg.Policy(rate=1e6, burst=1000, min_requests=1, open_timeout=0.001,
                                     half_open_max_calls=8, failure_threshold=0.5))
h = svc._eps["x"].h
print("ready", flush=True)
i = 0
while True:
    t = lib.sg_admit(h, 4 | 2)
    if t >= 0:
        lib.sg_breaker_record(h, t | (1 + (i & 1)))
    i += 1
"""
    svc = sg.ResilienceService(segname, capacity=8)
    try:
        svc.register_endpoint("x", sg.Policy(rate=1e6, burst=1000, min_requests=1,
                                             open_timeout=0.001, half_open_max_calls=8,
                                             failure_threshold=0.5))
        rng = random.Random()
        for _ in range(3):
            with ExitStack() as stack:
                ps = [_child(stack, [sys.executable, "-c", code, segname]) for _ in range(2)]
                for p in ps:
                    assert p.stdout.readline().strip() == "ready"
                time.sleep(rng.uniform(0.01, 0.05))
                for p in ps:
                    p.kill()
                    p.wait()
        snap = svc.breaker("x").snapshot()
        assert len(snap.probes) <= 8
        assert svc.limiter("x").tokens() <= 1000
        assert all(svc.limiter("x").wait(1, timeout=1.0) for _ in range(10))
        svc.breaker("x").reset()
        assert svc.execute("x", lambda: 7) == 7
        assert _torture.table_report(svc, {"x"})[1] == []
    finally:
        svc.close()
        svc.unlink()
