"""A stalled registrant or policy writer never writes over state someone else now owns.

Deterministic stalls: a child process started with env SHMGUARD_TEST_STALL
stops itself (SIGSTOP) at that point of the C code (table.c "fill", right
after its slot claim; policy.c "publish", right after taking the writer
lease); the test acts while it is stopped, then SIGCONTs (or SIGKILLs) it.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

import shmguard as sg
import shmguard._slots as registry
from shmguard._capi import ffi, lib

CHILD = r"""
import sys, shmguard as sg
seg, name, rate = sys.argv[1], sys.argv[2], float(sys.argv[3])
svc = sg.ResilienceService(seg, create=False)
svc.register_endpoint(name, sg.Policy(rate=rate, burst=7), on_conflict="replace")
print(svc.stats(name).rate, flush=True)
svc.close()
"""


def fnv1a(name: str) -> int:
    h = 0xCBF29CE484222325
    for b in name.encode():
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def stalled_child(segname: str, point: str, name: str, rate: float) -> subprocess.Popen[str]:
    """Starts CHILD and returns once it has stopped itself at ``point``."""
    env = {**os.environ, "SHMGUARD_TEST_STALL": point}
    p = subprocess.Popen([sys.executable, "-c", CHILD, segname, name, str(rate)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with open(f"/proc/{p.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return p
        assert p.poll() is None, p.communicate()
        time.sleep(0.005)
    p.kill()
    raise AssertionError(f"child never stopped at {point!r}")


def finish(p: subprocess.Popen[str], sig: int = signal.SIGCONT) -> tuple[int, str, str]:
    os.kill(p.pid, sig)
    out, err = p.communicate(timeout=30)
    return p.returncode, out, err


def slot_seq(svc: sg.ResilienceService, name: str) -> int:
    v = ffi.new("struct sg_slot_view *")
    seg = svc.segment
    assert lib.sg_slot_snapshot(seg.base, seg.size, svc._eps[name].index, v) == lib.SG_OK
    return int(v.policy_seq)


@pytest.fixture
def small(segname: str):
    s = sg.ResilienceService(segname, capacity=2, manual_clock=True)
    s.set_clock(10**12)
    yield s
    s.close()
    s.unlink()


def test_stalled_registrant_never_overwrites_a_live_endpoint(small, segname, monkeypatch):
    # "b" and "a" share a home slot: the newcomer meets the stalled claim on its path
    b = next(n for n in (f"b{i}" for i in range(100)) if fnv1a(n) % 2 == fnv1a("a") % 2)
    child = stalled_child(segname, "fill", b, 50)
    try:
        monkeypatch.setattr(registry, "CLAIM_STALE_NS", 0)  # set the claim aside at once
        small.register_endpoint("a", sg.Policy(rate=10, burst=3))
        lim = small.limiter("a")
        assert 1 <= sum(lim.allow() for _ in range(4)) <= 3 and not lim.allow()  # exhausted
        small.breaker("a").force_open()
    finally:
        rc, out, err = finish(child)
    assert rc == 0, err
    assert float(out) == pytest.approx(50)  # the resumed registrant gave its claim up and registered anew
    assert small.endpoints() == sorted(["a", b])
    st = small.stats("a")  # untouched: name, breaker, bucket, policy
    assert st.endpoint == "a" and st.rate == pytest.approx(10) and st.burst == 3
    assert small.breaker_state("a") == sg.BreakerState.OPEN
    assert lim.allow() is False


def test_a_dead_registrants_claim_is_taken_over(small, segname):
    child = stalled_child(segname, "fill", "a", 50)
    rc, _, _ = finish(child, signal.SIGKILL)
    assert rc == -signal.SIGKILL
    small.register_endpoint("a", sg.Policy(rate=10, burst=3))  # proven dead: the slot is free
    assert small.endpoints() == ["a"] and small.stats("a").rate == pytest.approx(10)


def test_a_live_stalled_claim_is_never_reused(small, segname, monkeypatch):
    monkeypatch.setattr(registry, "CLAIM_STALE_NS", 0)
    child = stalled_child(segname, "fill", "x", 50)
    try:
        small.register_endpoint("a")  # the other slot
        with pytest.raises(sg.CapacityError):  # the abandoned slot stays out of use
            small.register_endpoint("c")
    finally:
        rc, out, err = finish(child)
    assert rc == 0, err  # resumed: its publish failed, it gave the slot up and claimed it anew
    assert small.endpoints() == ["a", "x"] and small.stats("x").rate == pytest.approx(50)


def test_stalled_policy_writer_keeps_its_lease_and_publishes_whole(svc, segname, monkeypatch):
    svc.register_endpoint("a", sg.Policy(rate=10, burst=3))
    seq0 = slot_seq(svc, "a")
    child = stalled_child(segname, "publish", "a", 77)
    try:
        monkeypatch.setattr(registry, "REGISTER_WAIT", 0.8)  # past the lease's 0.5 s deadline
        with pytest.raises(sg.ShmguardError, match="held by live process"):
            svc.register_endpoint("a", sg.Policy(rate=20, burst=5), on_conflict="replace")
        assert slot_seq(svc, "a") == seq0  # nothing published
        assert svc.stats("a").rate == pytest.approx(10)
    finally:
        rc, out, err = finish(child)
    assert rc == 0, err
    st = svc.stats("a")
    assert (float(out), st.rate, st.burst) == (pytest.approx(77), pytest.approx(77), 7)
    assert slot_seq(svc, "a") == seq0 + 1
    svc.register_endpoint("a", sg.Policy(rate=20, burst=5), on_conflict="replace")
    st = svc.stats("a")
    assert (st.rate, st.burst, slot_seq(svc, "a")) == (pytest.approx(20), 5, seq0 + 2)


def test_a_dead_policy_writers_lease_is_taken_over(svc, segname):
    svc.register_endpoint("a", sg.Policy(rate=10, burst=3))
    seq0 = slot_seq(svc, "a")
    rc, _, _ = finish(stalled_child(segname, "publish", "a", 77), signal.SIGKILL)
    assert rc == -signal.SIGKILL
    svc.register_endpoint("a", sg.Policy(rate=20, burst=5), on_conflict="replace")
    st = svc.stats("a")
    assert (st.rate, st.burst, slot_seq(svc, "a")) == (pytest.approx(20), 5, seq0 + 1)
