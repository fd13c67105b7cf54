"""Breaker promises under every interleaving (issue 10: items 1-5 and 18), C level, explicit time.

Interleavings are replayed with ``sg_breaker_acquire_seen``: the caller acts
on a breaker word it read earlier, exactly as a process preempted between
its load of the word and its lease CAS does.
"""
from __future__ import annotations

import asyncio
import os

import shmguard as sg
from shmguard._capi import ffi, lib

S = 1_000_000_000
T0 = 10**12
OK, FAIL, IGN = 1, 2, 3
BWORD = 8 * 8          # the breaker word: line 8 of the slot, in uint64 words


def slot_of(svc, name, **kw):
    policy = sg.Policy(**{"failure_threshold": 0.5, "min_requests": 4, "window": 10.0,
                          "window_buckets": 10, "open_timeout": 5.0, **kw})
    svc.register_endpoint(name, policy)
    return svc._eps[name].h.slot


def word(slot) -> int:
    return ffi.cast("uint64_t *", slot)[BWORD]


def view(slot, t):
    v = ffi.new("struct sg_breaker_view *")
    assert lib.sg_breaker_snapshot_at(slot, T0 + int(t * S), v) == 0
    return v


def call(slot, t, outcome, pid=4242, took=0.0):
    """Acquire at t, record outcome at t + took; returns (token, transition)."""
    tok = lib.sg_breaker_acquire_at(slot, T0 + int(t * S), pid)
    if tok < 0:
        return tok, None
    return tok, lib.sg_breaker_record_at(slot, T0 + int((t + took) * S), tok | outcome)


def trip(slot, t=0.0):
    for _ in range(4):
        call(slot, t, FAIL)
    assert view(slot, t).state == lib.SG_OPEN


# -- item 1: no permit for a generation that has ended ---------------------------------

def test_stale_caller_gets_no_lease_of_an_ended_generation(svc):
    """Read HALF_OPEN, the probe fails and reopens, then the stale caller CASes its lease."""
    slot = slot_of(svc, "stale", half_open_max_calls=1)
    trip(slot)
    me = os.getpid()
    probe = lib.sg_breaker_acquire_at(slot, T0 + 5 * S, me)     # half-opens, takes lease 0
    assert probe >= 0 and (probe >> 34) & 0xF == 1
    seen = word(slot)                                           # B reads HALF_OPEN here...
    gen = view(slot, 5).generation
    assert lib.sg_breaker_record_at(slot, T0 + 5 * S, probe | FAIL) == lib.SG_T_TO_OPEN
    assert view(slot, 5).probe_word[0] == 0                     # ...the probe's lease is freed
    # ...and B, resuming, finds lease 0 free: it must not be granted anything
    assert lib.sg_breaker_acquire_seen(slot, T0 + 5 * S, 7777, seen) == lib.SG_R_OPEN
    v = view(slot, 5)
    assert (v.state, v.generation) == (lib.SG_OPEN, gen + 1)
    assert v.probe_word[0] == 0                                 # and leaves no lease behind


def test_stale_caller_moves_on_to_the_current_episode(svc):
    """A stale caller whose episode ended while a NEW half-open began probes the new one."""
    slot = slot_of(svc, "next", half_open_max_calls=1, open_timeout=1.0)
    trip(slot)
    probe = lib.sg_breaker_acquire_at(slot, T0 + 1 * S, os.getpid())
    seen = word(slot)
    gen = view(slot, 1).generation
    lib.sg_breaker_record_at(slot, T0 + 1 * S, probe | FAIL)    # reopen: gen + 1
    # 1 s later (the backoff is 1x) the stale caller resumes: the breaker may half-open again
    tok = lib.sg_breaker_acquire_seen(slot, T0 + 3 * S, 7777, seen)
    assert tok >= 0 and (tok >> 38) & 0x1FFFFFF == gen + 2      # a permit of the NEW episode
    assert (tok >> 34) & 0xF == 1 and tok & (1 << 33)           # it made that transition
    assert view(slot, 3).probe_pid[0] == 7777


def test_stale_closed_word_is_not_a_pass_when_the_lease_is_of_an_ended_episode(svc):
    """The word the caller saw was HALF_OPEN; meanwhile the episode CLOSED: a plain permit."""
    slot = slot_of(svc, "closed", half_open_max_calls=2, success_threshold=1)
    trip(slot)
    probe = lib.sg_breaker_acquire_at(slot, T0 + 5 * S, os.getpid())
    seen = word(slot)
    assert lib.sg_breaker_record_at(slot, T0 + 5 * S, probe | OK) == lib.SG_T_TO_CLOSED
    tok = lib.sg_breaker_acquire_seen(slot, T0 + 5 * S, 7777, seen)
    assert tok >= 0 and (tok >> 34) & 0xF == 0                 # closed: no lease at all
    assert view(slot, 5).probe_word[1] == 0


# -- item 2: a success that brings the window to min_requests judges it ----------------

def test_success_reaching_min_requests_trips(svc):
    """F F F S S at threshold 0.5, min_requests 5: 60% at the 5th call opens (resilience4j)."""
    slot = slot_of(svc, "min5", min_requests=5)
    steps = [(0.0, FAIL, lib.SG_T_NONE), (0.1, FAIL, lib.SG_T_NONE), (0.2, FAIL, lib.SG_T_NONE),
             (0.3, OK, lib.SG_T_NONE),       # 4 calls < 5
             (0.4, OK, lib.SG_T_TO_OPEN)]    # 5 calls, 3 failures: 60% >= 50%
    for t, outcome, trans in steps:
        assert call(slot, t, outcome)[1] == trans, t
    assert view(slot, 0.4).state == lib.SG_OPEN


def test_successes_without_failures_in_the_window_never_judge(svc):
    """The cheap path: failures that left the window leave successes unjudged (and untripped)."""
    slot = slot_of(svc, "old", min_requests=2)
    call(slot, 0.0, FAIL)
    for i in range(20):                          # 11 s later the failure is out of the window
        assert call(slot, 11.0 + i * 0.01, OK)[1] == lib.SG_T_NONE
    assert view(slot, 11.5).failures == 0


def test_a_success_judges_again_once_old_successes_leave_the_window(svc):
    """A judgement's 'no trip' is reused only in its own bucket period and generation."""
    slot = slot_of(svc, "hint", min_requests=4)
    for t in (0.0, 0.1, 0.2):
        call(slot, t, OK)
    assert call(slot, 5.0, FAIL)[1] == lib.SG_T_NONE     # 4 calls, 25%
    assert call(slot, 5.1, FAIL)[1] == lib.SG_T_NONE     # 5 calls, 40%: judged, no trip
    assert call(slot, 5.2, OK)[1] == lib.SG_T_NONE       # same bucket: 33%, not summed
    # 10.5 s: the three early successes left the window; F F S are 3 calls, one more is 4
    assert call(slot, 10.5, OK)[1] == lib.SG_T_TO_OPEN   # 2 of 4 = 50%: judged again, trips


# -- item 3: a slow failure counts as slow too ------------------------------------------

def test_slow_failure_counts_as_slow(svc):
    slot = slot_of(svc, "slowf", failure_threshold=1.0, slow_call_threshold=0.5,
                   slow_call_duration=1.0, min_requests=2)
    assert call(slot, 0.0, FAIL, took=2.0)[1] == lib.SG_T_NONE     # 1 call < 2
    v = view(slot, 2.0)
    assert (v.calls, v.failures, v.slow) == (1, 1, 1)               # slow AND failed
    assert call(slot, 2.1, OK)[1] == lib.SG_T_TO_OPEN               # slow 1 of 2 = 50%


# -- item 5: mode changes start a fresh window -------------------------------------------

def test_mode_changes_start_a_fresh_window(svc):
    slot = slot_of(svc, "modes", min_requests=100)
    for i in range(3):
        call(slot, 0.1, FAIL)
    assert view(slot, 0.1).calls == 3
    for mode in (lib.SG_METRICS_ONLY, lib.SG_FORCED_CLOSED, lib.SG_FORCED_OPEN, lib.SG_CLOSED):
        lib.sg_breaker_force_at(slot, T0 + S // 5, mode)            # same bucket as the calls
        v = view(slot, 0.2)
        assert (v.calls, v.failures) == (0, 0), mode
    lib.sg_breaker_force_at(slot, T0 + S // 5, lib.SG_METRICS_ONLY)
    call(slot, 0.3, FAIL)
    assert view(slot, 0.3).calls == 1                               # counted from the change on
    lib.sg_breaker_force_at(slot, T0 + S // 2, lib.SG_CLOSED)       # reset
    assert view(slot, 0.5).calls == 0


# -- item 18: old buckets never alias back ------------------------------------------------

def test_window_epochs_never_alias_old_failures_back(svc):
    """16 buckets of 1 s: 2^20 buckets later a bucket's 20-bit epoch matches again."""
    slot = slot_of(svc, "alias", window=16.0, window_buckets=16, min_requests=4)
    for i in range(3):
        call(slot, 0.0, FAIL)
    assert view(slot, 0.0).calls == 3
    later = float(1 << 20)                     # same bucket index, same 20-bit epoch
    call(slot, later - 100.0, OK)              # some traffic in between (another bucket)
    assert view(slot, later).calls == 0
    assert call(slot, later, FAIL)[1] == lib.SG_T_NONE   # 1 failure, not 4
    v = view(slot, later)
    assert (v.calls, v.failures, v.state) == (1, 1, lib.SG_CLOSED)


def test_window_epochs_never_alias_after_idle(svc):
    slot = slot_of(svc, "idle", window=16.0, window_buckets=16, min_requests=4)
    for i in range(3):
        call(slot, 0.0, FAIL)
    later = float(1 << 20)
    assert call(slot, later, FAIL)[1] == lib.SG_T_NONE
    assert view(slot, later).calls == 1


# -- item 4: OPEN -> HALF_OPEN reported once, when it happens ----------------------------

def _events(svc):
    seen: list[tuple[str, str]] = []
    svc.on_state_change = lambda ep, old, new: seen.append((str(old), str(new)))
    return seen


def _open_then_due(svc, name, **kw):
    svc.register_endpoint(name, sg.Policy(min_requests=1, failure_threshold=0.5,
                                          open_timeout=1.0, **kw))
    svc.breaker(name).open()
    svc.advance(1.5)


def test_half_open_is_reported_at_admission_by_execute(svc):
    _open_then_due(svc, "ex")
    seen = _events(svc)
    during: list[list] = []
    assert svc.execute("ex", lambda: during.append(list(seen)) or 7) == 7
    assert during == [[("open", "half-open")]]                  # before the call ran
    assert seen == [("open", "half-open"), ("half-open", "closed")]   # each once


def test_half_open_is_reported_once_when_the_probe_fails(svc):
    _open_then_due(svc, "fail")
    seen = _events(svc)

    def boom():
        assert seen == [("open", "half-open")]
        raise ConnectionError("down")
    try:
        svc.execute("fail", boom)
    except ConnectionError:
        pass
    assert seen == [("open", "half-open"), ("half-open", "open")]


def test_half_open_is_reported_once_per_door(svc):
    for door in ("admit", "allow", "timeout"):
        _open_then_due(svc, door, success_threshold=2, half_open_max_calls=2)
        seen = _events(svc)
        if door == "admit":
            toks = [svc.admit(door), svc.admit(door)]
            for t in toks:
                svc.record(door, t, sg.Outcome.SUCCESS)
        elif door == "allow":
            permits = [svc.breaker(door).allow(), svc.breaker(door).allow()]
            for p in permits:
                p.success()
        else:
            for _ in range(2):
                with svc.guard(door, timeout=1.0):
                    pass
        assert seen == [("open", "half-open"), ("half-open", "closed")], door


def test_half_open_is_reported_by_async_retry_and_bulkhead_doors(svc):
    async def nothing():
        return None

    doors = {"async": lambda d: asyncio.run(svc.execute_async(d, nothing)),
             "retries": lambda d: svc.execute(d, int, retries=1),
             "bh-execute": lambda d: svc.execute(d, int),
             "bh-async": lambda d: asyncio.run(svc.execute_async(d, nothing))}
    for door, call in doors.items():
        _open_then_due(svc, door, **({"max_concurrent": 2} if door.startswith("bh") else {}))
        seen = _events(svc)
        call(door)
        assert seen == [("open", "half-open"), ("half-open", "closed")], door
