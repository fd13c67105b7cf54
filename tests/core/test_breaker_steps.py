"""The breaker word at the C level: explicit now_ns, generations, leases."""
from __future__ import annotations

import shmguard as sg
from shmguard._capi import ffi, lib

S = 1_000_000_000
T0 = 10**12
OK, FAIL, IGN = 1, 2, 3


def slot_of(svc, name, **kw):
    policy = sg.Policy(**{"failure_threshold": 0.5, "min_requests": 4, "window": 10.0,
                          "window_buckets": 10, "open_timeout": 5.0, **kw})
    svc.register_endpoint(name, policy)
    return svc._eps[name].h.slot


def view(slot, t):
    v = ffi.new("struct sg_breaker_view *")
    assert lib.sg_breaker_snapshot_at(slot, T0 + int(t * S), v) == 0
    return v


def call(slot, t, outcome, pid=4242):
    """Acquire at t and record outcome at t; returns (token, transition)."""
    tok = lib.sg_breaker_acquire_at(slot, T0 + int(t * S), pid)
    if tok < 0:
        return tok, None
    return tok, lib.sg_breaker_record_at(slot, T0 + int(t * S), tok | outcome)


def test_closed_opens_on_ratio_after_min_requests(svc):
    slot = slot_of(svc, "b")
    steps = [
        # (t_s, outcome, transition, state_after)
        (0.0, FAIL, lib.SG_T_NONE, lib.SG_CLOSED),
        (0.1, FAIL, lib.SG_T_NONE, lib.SG_CLOSED),
        (0.2, FAIL, lib.SG_T_NONE, lib.SG_CLOSED),   # 3 calls < min_requests 4
        (0.3, OK, lib.SG_T_TO_OPEN, lib.SG_OPEN),    # 4 calls, 75%: a success judges too
    ]
    for t, outcome, trans, state in steps:
        _, tr = call(slot, t, outcome)
        assert tr == trans, t
        assert view(slot, t).state == state, t
    v = view(slot, 0.3)
    assert v.generation == 1 and v.opens == 1
    assert v.open_remaining_ns == 5 * S


def test_ignored_outcomes_count_as_neither(svc):
    slot = slot_of(svc, "ign")
    for i in range(10):
        call(slot, i * 0.01, IGN)
    v = view(slot, 0.2)
    assert v.calls == 0 and v.state == lib.SG_CLOSED and v.ignored_total == 10


def test_window_forgets_old_buckets(svc):
    slot = slot_of(svc, "win")
    for i in range(3):
        call(slot, i * 0.1, FAIL)
    assert view(slot, 0.5).calls == 3
    assert view(slot, 9.5).calls == 3          # still inside the 10 s window
    assert view(slot, 10.5).calls == 0         # rotated out
    _, tr = call(slot, 10.6, FAIL)             # so one more failure does not trip
    assert tr == lib.SG_T_NONE


def test_open_half_open_closed_cycle_with_generations(svc):
    slot = slot_of(svc, "cyc", half_open_max_calls=2, success_threshold=2)
    for i in range(4):
        call(slot, 0, FAIL)
    assert view(slot, 0).state == lib.SG_OPEN
    assert lib.sg_breaker_acquire_at(slot, T0 + 4 * S, 1) == lib.SG_R_OPEN
    # 5 s later the first caller moves it to half-open and takes probe 1
    p1 = lib.sg_breaker_acquire_at(slot, T0 + 5 * S, 1)
    assert p1 >= 0 and p1 & (1 << 33)                       # it made the transition
    p2 = lib.sg_breaker_acquire_at(slot, T0 + 5 * S, 2)
    assert p2 >= 0 and not p2 & (1 << 33)
    assert lib.sg_breaker_acquire_at(slot, T0 + 5 * S, 3) == lib.SG_R_PROBES_FULL
    v = view(slot, 5)
    assert v.state == lib.SG_HALF_OPEN and v.generation == 2 and v.probes_in_flight == 2
    assert sorted(v.probe_pid[i] for i in range(8) if v.probe_pid[i]) == [1, 2]
    # two successes close it (records from pid 1 and 2 release their leases by pid;
    # here the recording process differs, so leases stay until the generation moves)
    assert lib.sg_breaker_record_at(slot, T0 + 5 * S, p1 | OK) == lib.SG_T_NONE
    assert lib.sg_breaker_record_at(slot, T0 + 5 * S, p2 | OK) == lib.SG_T_TO_CLOSED
    v = view(slot, 5)
    assert v.state == lib.SG_CLOSED and v.generation == 3 and v.calls == 0  # window reset
    # a late outcome from generation 2 is dropped
    assert lib.sg_breaker_record_at(slot, T0 + 6 * S, p1 | FAIL) == lib.SG_T_STALE


def test_half_open_failure_reopens_and_backoff_grows(svc):
    slot = slot_of(svc, "back", backoff=2.0, open_timeout_max=20.0)
    for i in range(4):
        call(slot, 0, FAIL)
    p = lib.sg_breaker_acquire_at(slot, T0 + 5 * S, 7)
    assert lib.sg_breaker_record_at(slot, T0 + 5 * S, p | FAIL) == lib.SG_T_TO_OPEN
    v = view(slot, 5)
    assert v.state == lib.SG_OPEN and v.open_streak == 2
    assert v.open_remaining_ns == 10 * S                     # 5 s * 2
    assert lib.sg_breaker_acquire_at(slot, T0 + 14 * S, 7) == lib.SG_R_OPEN
    assert lib.sg_breaker_acquire_at(slot, T0 + 15 * S, 7) >= 0


def test_expired_lease_is_taken_over(svc):
    slot = slot_of(svc, "lease", probe_lease=2.0)
    for i in range(4):
        call(slot, 0, FAIL)
    assert lib.sg_breaker_acquire_at(slot, T0 + 5 * S, 11) >= 0
    assert lib.sg_breaker_acquire_at(slot, T0 + 6 * S, 12) == lib.SG_R_PROBES_FULL
    # past the 2 s lease the permit is free again, for another holder
    tok = lib.sg_breaker_acquire_at(slot, T0 + 7 * S + S // 10, 12)
    assert tok >= 0
    assert view(slot, 7.2).probe_pid[0] == 12


def test_reclaim_needs_the_exact_word(svc):
    slot = slot_of(svc, "recl")
    for i in range(4):
        call(slot, 0, FAIL)
    assert lib.sg_breaker_acquire_at(slot, T0 + 5 * S, 99) >= 0
    word = view(slot, 5).probe_word[0]
    assert lib.sg_breaker_reclaim(slot, 0, word ^ 1) == lib.SG_E_BUSY
    assert lib.sg_breaker_reclaim(slot, 0, word) == lib.SG_OK
    assert view(slot, 5).probes_in_flight == 0
    assert lib.sg_breaker_reclaim(slot, 8, word) == lib.SG_E_ARG


def test_forced_modes(svc):
    slot = slot_of(svc, "force")
    assert lib.sg_breaker_force_at(slot, T0, lib.SG_FORCED_OPEN) == lib.SG_T_TO_OPEN
    assert lib.sg_breaker_acquire_at(slot, T0 + 10**6 * S, 1) == lib.SG_R_OPEN  # never half-opens
    lib.sg_breaker_force_at(slot, T0, lib.SG_FORCED_CLOSED)
    for i in range(20):
        _, tr = call(slot, 0, FAIL)
        assert tr == lib.SG_T_NONE
    assert view(slot, 0).calls == 0                     # disabled: records nothing
    lib.sg_breaker_force_at(slot, T0, lib.SG_METRICS_ONLY)
    for i in range(20):
        call(slot, 0, FAIL)
    v = view(slot, 0)
    assert v.state == lib.SG_METRICS_ONLY and v.calls == 20   # counts, never opens
    assert lib.sg_breaker_force_at(slot, T0, lib.SG_CLOSED) == lib.SG_T_TO_CLOSED
    assert view(slot, 0).calls == 0 and view(slot, 0).state == lib.SG_CLOSED
    assert lib.sg_breaker_force_at(slot, T0, lib.SG_HALF_OPEN) == lib.SG_E_ARG


def test_slow_calls_trip(svc):
    slot = slot_of(svc, "slow", slow_call_duration=1.0, slow_call_threshold=0.5)
    for i in range(4):
        tok = lib.sg_breaker_acquire_at(slot, T0 + i * S, 1)
        tr = lib.sg_breaker_record_at(slot, T0 + i * S + 2 * S, tok | OK)   # 2 s each
    assert tr == lib.SG_T_TO_OPEN
    assert view(slot, 6).slow == 4 or view(slot, 6).state == lib.SG_OPEN


def test_adaptive_threshold_rises_with_chronic_failures(svc):
    slot = slot_of(svc, "adapt", adaptive=True, failure_threshold=0.3, min_requests=1000,
                   adaptive_max_threshold=0.6)
    assert view(slot, 0).threshold_ppm == 300_000
    # 20% failures for 60 s: each rotated bucket feeds the baseline
    for sec in range(60):
        for k in range(10):
            call(slot, sec + k * 0.05, FAIL if k < 2 else OK)
    v = view(slot, 60)
    assert 150_000 < v.baseline_ppm <= 200_000
    assert v.threshold_ppm == 300_000 + v.baseline_ppm   # within [0.3, 0.6]


def test_deterministic_jitter(svc):
    a = slot_of(svc, "j1", jitter=0.5, jitter_seed=7)
    b = slot_of(svc, "j2", jitter=0.5, jitter_seed=7)
    for s in (a, b):
        for i in range(4):
            call(s, 0, FAIL)
    ra, rb = view(a, 0).open_remaining_ns, view(b, 0).open_remaining_ns
    assert 2.5 * S <= ra <= 7.5 * S
    # same seed, same generation: the same duration in every process
    c = slot_of(svc, "j3", jitter=0.5, jitter_seed=8)
    for i in range(4):
        call(c, 0, FAIL)
    assert ra == rb or view(c, 0).open_remaining_ns != ra


def test_failed_probe_reopens_before_its_permit_is_free(svc):
    import os
    slot = slot_of(svc, "order")
    for i in range(4):
        call(slot, 0, FAIL)
    me = os.getpid()
    p = lib.sg_breaker_acquire_at(slot, T0 + 5 * S, me)
    assert p >= 0 and view(slot, 5).probes_in_flight == 1
    assert lib.sg_breaker_record_at(slot, T0 + 5 * S, p | FAIL) == lib.SG_T_TO_OPEN
    assert view(slot, 5).probe_word[0] == 0                    # permit given back...
    assert lib.sg_breaker_acquire_at(slot, T0 + 5 * S, 2) == lib.SG_R_OPEN  # ...to an open breaker


def test_record_echo_only_decorates_transitions(svc):
    h = svc._eps.get("echo") or (svc.register_endpoint("echo"), svc._eps["echo"])[1]
    assert lib.sg_breaker_record(h.h, -5) == lib.SG_E_ARG
    assert lib.sg_breaker_record(h.h, (1 << 33) | 0) == lib.SG_E_ARG   # no outcome: no echo
