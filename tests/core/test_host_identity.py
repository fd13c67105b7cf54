"""One clock: a segment from another boot, or a clock behind its times, never yields weeks of waiting.

Header line 3 records the creator's boot id, namespaces, clock offset and
monotonic time at creation. The foreign values are written into a real
segment at the offsets the C contract names (SG_HOST_LINE, struct
sg_host_view), as a persisted /dev/shm or a restored checkpoint would
present them; nothing in the clock code is replaced.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import time
import uuid

import pytest

import shmguard as sg
from shmguard._capi import ffi, lib
from shmguard.segment import SHM_DIR

T0 = 1_000_000_000_000  # the svc fixture's manual clock start (conftest)
NS = 1_000_000_000
DAY = 86_400 * NS
HIGH = sg.Priority.HIGH


def _poke(name: str, field: str, data: bytes) -> None:
    path = os.path.join(SHM_DIR, f"shmguard.{os.geteuid()}.{name}")
    with open(path, "r+b") as f:
        f.seek(lib.SG_HOST_LINE + ffi.offsetof("struct sg_host_view", field))
        f.write(data)


def _boot_id() -> str:
    with open("/proc/sys/kernel/random/boot_id") as f:
        return f.read().strip()


def test_the_header_records_this_boot_and_namespaces(segname):
    with sg.ResilienceService(segname, capacity=2) as svc:
        h = svc.segment.header.host
        raw = int(h.boot_id[0]).to_bytes(8, "little") + int(h.boot_id[1]).to_bytes(8, "little")
        assert str(uuid.UUID(bytes=raw)) == _boot_id()
        assert h.pid_ns == os.stat("/proc/self/ns/pid").st_ino
        if os.path.exists("/proc/self/ns/time"):
            assert h.time_ns == os.stat("/proc/self/ns/time").st_ino
        assert 0 < h.created_mono_ns <= time.monotonic_ns()
        assert h.mixed == 0
        svc.unlink()


def test_a_segment_from_another_boot_is_refused_naming_both_ids(segname):
    sg.ResilienceService(segname, capacity=2).close()
    other = uuid.uuid4()
    _poke(segname, "boot_id", other.bytes)
    with pytest.raises(sg.SegmentError) as e:
        sg.ResilienceService(segname, create=False)
    msg = str(e.value)
    assert str(other) in msg and _boot_id() in msg and f"shmguard rm {segname}" in msg
    with pytest.raises(sg.SegmentError, match="another boot"):
        sg.ResilienceService(segname)              # create=True attaches: refused as well
    r = subprocess.run([sys.executable, "-m", "shmguard", "rm", segname], capture_output=True,
                       text=True, timeout=60)      # the advice works
    assert r.returncode == 0, r.stderr
    assert sg.list_segments() == [] or segname not in sg.list_segments()


def test_a_clock_behind_the_segments_creation_is_refused(segname):
    sg.ResilienceService(segname, capacity=2).close()
    _poke(segname, "created_mono_ns", struct.pack("<Q", time.monotonic_ns() + 30 * DAY))
    with pytest.raises(sg.SegmentError, match="monotonic clock .* is behind the segment's creation"):
        sg.ResilienceService(segname, create=False)


def test_a_tat_from_a_clock_30_days_ahead_gives_bounded_waits(svc):
    """The limiter's clock is 30 days behind its TAT: waits and retry-after stay bounded."""
    svc.register_endpoint("api", sg.Policy(rate=100, burst=10))
    lim = svc.limiter("api")
    svc.set_clock(T0 + 30 * DAY)                   # a process whose clock is ahead...
    assert sum(lim.allow(priority=HIGH) for _ in range(11)) == 10
    svc.set_clock(T0)                              # ...and one 30 days behind it
    assert not lim.allow(priority=HIGH)            # nothing admitted early
    r = lim.reserve(1, HIGH)                       # no max_wait: still never weeks
    assert not r.ok and 0 < r.delay <= 3600 + 0.11  # tol + queued bound: 0.1 s + 1 h
    assert not lim.wait(1, timeout=None, priority=HIGH)   # refused at once, no 30-day sleep
    with pytest.raises(sg.RateLimitedError) as e:
        svc.execute("api", lambda: 1)
    assert 0 < e.value.retry_after <= 3600 + 0.11
    assert lim.tokens(HIGH) == 0.0
    svc.set_clock(T0 + 30 * DAY + NS)              # the clocks agree again: refilled, exact
    assert sum(lim.allow(priority=HIGH) for _ in range(11)) == 10


def test_reservations_and_holds_never_reach_past_the_bound(svc):
    svc.register_endpoint("api", sg.Policy(rate=1, burst=1))
    lim = svc.limiter("api")
    assert lim.allow(priority=HIGH)
    ok = [lim.reserve(1, HIGH).ok for _ in range(3601)]
    assert ok.count(True) == 3600                  # 1 h of queue (ahead of the 1 s burst)
    assert not ok[-1]


def test_a_clock_behind_never_takes_a_live_ticket_as_expired(svc):
    """Bulkhead ticket leases: a grant 20 days in our future is not old (stamps are serial
    over 2^31 units of 2^20 ns: 26 days)."""
    svc.register_endpoint("db", sg.Policy(max_concurrent=1, ticket_lease=1.0))
    slot = svc._eps["db"].h.slot
    ahead = T0 + 20 * DAY
    assert lib.sg_bulkhead_acquire_at(slot, ahead, 101, 1) > 0     # granted by a clock ahead
    assert lib.sg_bulkhead_acquire_at(slot, T0, 102, 1) == lib.SG_R_BULKHEAD_FULL
    assert lib.sg_bulkhead_acquire_at(slot, ahead + NS // 2, 102, 1) == lib.SG_R_BULKHEAD_FULL
    assert lib.sg_bulkhead_acquire_at(slot, ahead + 2 * NS, 102, 1) > 0   # its lease ended


def test_a_probe_lease_from_a_clock_ahead_reports_at_most_its_lease(svc):
    svc.register_endpoint("ep", sg.Policy(half_open_max_calls=1, probe_lease=10, open_timeout=30))
    br = svc.breaker("ep")
    br.open()
    svc.set_clock(T0 + 20 * DAY)                   # a clock 20 days ahead takes the probe
    permit = br.allow()
    assert permit is not None and permit.is_probe
    svc.set_clock(T0)                              # seen from a clock behind: still held...
    with pytest.raises(sg.CircuitOpenError) as e:
        svc.execute("ep", lambda: 1)
    assert 0 < e.value.retry_after <= 10           # ...for at most its lease, not 20 days
    svc.set_clock(T0 + 20 * DAY + NS)
    permit.success()
    assert svc.breaker_state("ep") == sg.BreakerState.CLOSED


def test_a_host_behind_a_clock_ahead_is_served_once_the_bound_has_passed(svc):
    """The bound is real, not only reported: a TAT written by a clock 30 days ahead is taken
    down to it, so the host behind is served again after retry_after, not after 30 days."""
    svc.register_endpoint("api", sg.Policy(rate=100, burst=10))
    lim = svc.limiter("api")
    svc.set_clock(T0 + 30 * DAY)
    assert sum(lim.allow(priority=HIGH) for _ in range(11)) == 10
    svc.set_clock(T0)
    with pytest.raises(sg.RateLimitedError) as e:
        svc.execute("api", lambda: 1)
    wait = e.value.retry_after
    assert 0 < wait <= 3600 + 0.11
    svc.set_clock(T0 + int(wait * NS) - NS)        # a second before: still nothing early
    assert not lim.allow(priority=HIGH)
    svc.set_clock(T0 + int(wait * NS) + 2 * NS)    # honoured: served again (not in 30 days)
    assert lim.allow(priority=HIGH)


def test_a_probe_lease_from_a_clock_ahead_ends_when_its_retry_after_says(svc):
    """The probe lease's bound is real too: a host behind gets the probe once the retry-after
    it was told has passed (the holder's lease is taken down to one policy lease), not after
    20 days; the holder's release still matches it (pid and generation kept)."""
    svc.register_endpoint("ep", sg.Policy(half_open_max_calls=1, probe_lease=10, open_timeout=30))
    br = svc.breaker("ep")
    br.open()
    svc.set_clock(T0 + 20 * DAY)                   # a clock 20 days ahead takes the probe
    held = br.allow()
    assert held is not None and held.is_probe
    svc.set_clock(T0)
    with pytest.raises(sg.CircuitOpenError) as e:
        svc.execute("ep", lambda: 1)
    wait = e.value.retry_after
    assert 0 < wait <= 10
    svc.set_clock(T0 + int(wait * NS) - NS // 2)   # before it: the lease still holds
    assert br.allow() is None
    svc.set_clock(T0 + int(wait * NS) + NS // 2)   # after it: ours (the lease ended)
    mine = br.allow()
    assert mine is not None and mine.is_probe
    mine.success()
    assert svc.breaker_state("ep") == sg.BreakerState.CLOSED


def test_an_init_claim_holder_is_dead_only_on_proof():
    """probes.claim_holder_dead, the one judge of pids: alive (even SIGSTOPped), gone, reused,
    another pid namespace's tag."""
    import signal
    from shmguard import _hostid, probes
    me = _hostid.current()
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        ticks = _hostid.start_ticks(child.pid)[0]
        word = (child.pid << 41) | ((me.pid_ns & 0x1FF) << 32) | (ticks & 0xFFFFFFFF)
        assert not probes.claim_holder_dead(word, me)
        child.send_signal(signal.SIGSTOP)                      # stalled, not dead
        assert not probes.claim_holder_dead(word, me)
        assert probes.claim_holder_dead(word ^ 1, me)          # its pid now a later process
        other_ns = word ^ (1 << 32)                             # a tag of another namespace
        assert not probes.claim_holder_dead(other_ns ^ 1, me)  # its pid proves nothing here
        assert not probes.claim_holder_dead(word | _hostid.CLAIM_DONE, me)
    finally:
        child.kill()
        child.wait()
    assert probes.claim_holder_dead(word, me)                  # gone


def test_a_debt_past_the_bound_after_a_rate_cut_is_capped_and_its_retry_after_honoured(svc):
    """One clock: an hour queued at 100/s, then the rate cut to 0.1/s keeps the debt in tokens
    (41 days at the new rate), past the bound. The wait reported is the bound, and it is the
    real one (before the cap, the caller told ~1 h was still refused then)."""
    svc.register_endpoint("api", sg.Policy(rate=100, burst=10))
    lim = svc.limiter("api")
    while lim.reserve(10, HIGH).ok:
        pass
    svc.register_endpoint("api", sg.Policy(rate=0.1, burst=10), replace=True)
    with pytest.raises(sg.RateLimitedError) as e:
        svc.execute("api", lambda: 1)              # execute's priority: NORMAL
    wait = e.value.retry_after
    assert 3600 < wait <= 3600 + 100 + 0.01        # tol (10 x 10 s) + 1 h, not 41 days
    svc.set_clock(T0 + int(wait * NS) - NS)
    assert not lim.allow(priority=sg.Priority.NORMAL)   # still exhausted until then
    svc.set_clock(T0 + int(wait * NS) + NS)
    assert lim.allow(priority=sg.Priority.NORMAL)
