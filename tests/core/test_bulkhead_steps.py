"""The bulkhead at the C level: explicit now_ns and pids, step tables, bad input."""
from __future__ import annotations

import pytest

import shmguard as sg
from shmguard._capi import ffi, lib

MS = 1_000_000
T0 = 10**12
FULL, NOT_FOUND, BUSY, ARG = (lib.SG_R_BULKHEAD_FULL, lib.SG_E_NOT_FOUND, lib.SG_E_BUSY,
                              lib.SG_E_ARG)
LOW, NORMAL, HIGH, CRIT = 0, 1, 2, 3


def slot_of(svc, name, **kw):
    svc.register_endpoint(name, sg.Policy(**kw))
    return svc._eps[name].h.slot


def view(slot, t_ms=0):
    v = ffi.new("struct sg_bulkhead_view *")
    assert lib.sg_bulkhead_snapshot_at(slot, T0 + t_ms * MS, v) == lib.SG_OK
    return v


def run(slot, steps):
    """Walks (t_ms, op, who, prio, expect, in_flight_after); keeps who -> token."""
    held = {}
    for row in steps:
        t, op, who, prio, expect, after = row
        now = T0 + t * MS
        if op == "acq":
            tok = lib.sg_bulkhead_acquire_at(slot, now, who, prio)
            assert (tok > 0) == (expect == "ok"), row
            if expect != "ok":
                assert tok == expect, row
            else:
                held.setdefault(who, []).append(tok)
        else:
            rc = lib.sg_bulkhead_release_at(slot, who, held[who].pop(0))
            assert (rc >= 0 if expect == "ok" else rc == expect), row
        assert view(slot, t).in_flight == after, row
    return held


def test_fixed_limit_step_table(svc):
    slot = slot_of(svc, "db", max_concurrent=3)
    run(slot, [
        # (t_ms, op, pid, priority, expected, in flight after)
        (0, "acq", 101, NORMAL, "ok", 1),
        (0, "acq", 102, NORMAL, "ok", 2),
        (1, "acq", 101, LOW, "ok", 3),       # one process may hold several
        (2, "acq", 103, HIGH, FULL, 3),      # every priority sees the same 3 without a reserve
        (3, "rel", 102, NORMAL, "ok", 2),
        (3, "acq", 103, NORMAL, "ok", 3),
        (4, "rel", 101, NORMAL, "ok", 2),
        (4, "rel", 101, NORMAL, "ok", 1),
        (5, "rel", 103, NORMAL, "ok", 0),
    ])
    v = view(slot, 5)
    assert (v.limit, v.acquired, v.rejected, v.peak, v.waited, v.reclaimed) == (3, 4, 1, 3, 0, 0)


def test_critical_reserve_step_table(svc):
    slot = slot_of(svc, "db", max_concurrent=4, critical_reserve=1)
    run(slot, [
        (0, "acq", 1, NORMAL, "ok", 1),
        (0, "acq", 2, HIGH, "ok", 2),
        (0, "acq", 3, LOW, "ok", 3),
        (0, "acq", 4, HIGH, FULL, 3),        # the 4th ticket is CRITICAL's alone
        (0, "acq", 5, CRIT, "ok", 4),
        (0, "acq", 6, CRIT, FULL, 4),        # the reserve is a share, not extra: exact
        (1, "rel", 1, NORMAL, "ok", 3),
        (1, "acq", 7, CRIT, "ok", 4),        # CRITICAL may take any free ticket
        (2, "acq", 8, NORMAL, FULL, 4),
    ])
    assert view(slot).reserve == 1


def test_release_is_exact_word_only(svc):
    slot = slot_of(svc, "db", max_concurrent=2)
    tok = lib.sg_bulkhead_acquire_at(slot, T0, 500, NORMAL)
    assert lib.sg_bulkhead_release_at(slot, 501, tok) == NOT_FOUND   # another pid's ticket
    assert lib.sg_bulkhead_release_at(slot, 500, tok ^ 1) == NOT_FOUND  # another grant
    assert lib.sg_bulkhead_release_at(slot, 500, tok) == 0           # 0 sleepers woken
    assert lib.sg_bulkhead_release_at(slot, 500, tok) == NOT_FOUND   # twice: nothing
    assert view(slot).in_flight == 0


def test_reclaim_takes_back_the_exact_word_seen(svc):
    slot = slot_of(svc, "db", max_concurrent=1)
    tok = lib.sg_bulkhead_acquire_at(slot, T0, 600, NORMAL)
    v = view(slot)
    i = next(k for k in range(64) if v.word[k])
    assert v.holder_pid[i] == 600
    assert lib.sg_bulkhead_reclaim(slot, i, v.word[i] + 1) == BUSY     # not the word there
    assert lib.sg_bulkhead_reclaim(slot, i, v.word[i]) == lib.SG_OK
    assert lib.sg_bulkhead_release_at(slot, 600, tok) == NOT_FOUND     # the holder's late release
    assert lib.sg_bulkhead_acquire_at(slot, T0, 601, NORMAL) > 0
    assert view(slot).reclaimed == 1


def test_ticket_lease_step_table(svc):
    slot = slot_of(svc, "db", max_concurrent=1, ticket_lease=0.1)
    held = run(slot, [
        (0, "acq", 1, NORMAL, "ok", 1),
        (50, "acq", 2, NORMAL, FULL, 1),     # lease not over: the holder keeps it
        (101, "acq", 2, NORMAL, "ok", 1),    # over (2**20 ns units): taken over, still exact
    ])
    assert lib.sg_bulkhead_release_at(slot, 1, held[1][0]) == NOT_FOUND  # the late holder
    assert view(slot, 101).in_flight == 1 and view(slot, 101).reclaimed == 1


def test_shrinking_limit_drains_before_granting(svc):
    slot = slot_of(svc, "db", max_concurrent=4)
    toks = [lib.sg_bulkhead_acquire_at(slot, T0, 10 + k, NORMAL) for k in range(4)]
    assert all(t > 0 for t in toks)
    svc.register_endpoint("db", sg.Policy(max_concurrent=2), replace=True)
    v = view(slot)
    assert (v.limit, v.span, v.in_flight) == (2, 4, 4)   # held tickets are not revoked
    by_index = {(t >> 42) & 63: (10 + k, t) for k, t in enumerate(toks)}
    steps = []
    for idx in (0, 1, 2):                   # give back 3 tickets, the words 0, 1, 2
        pid, t = by_index[idx]
        assert lib.sg_bulkhead_release_at(slot, pid, t) >= 0
        # word 3 (>= the new limit) is still out: no ticket yet, though 2 > 1 held
        steps.append(lib.sg_bulkhead_acquire_at(slot, T0, 99, NORMAL))
    assert steps == [FULL, FULL, FULL]
    pid, t = by_index[3]
    assert lib.sg_bulkhead_release_at(slot, pid, t) >= 0
    got = [lib.sg_bulkhead_acquire_at(slot, T0, 99, NORMAL) for _ in range(3)]
    assert [g > 0 for g in got] == [True, True, False]   # drained: exactly the new 2
    v = view(slot)
    assert (v.limit, v.span, v.in_flight) == (2, 2, 2)


def test_quota_follows_the_processes_counted(svc):
    slot = slot_of(svc, "q", quota=0.5)
    rows = [
        # (procs counted, limit = ceil(0.5 x procs))
        (1, 1), (2, 1), (3, 2), (4, 2), (7, 4), (200, 64),  # at most 64 tickets
        (0, 1),                                             # never below one
    ]
    for procs, lim in rows:
        assert lib.sg_bulkhead_set_procs_at(slot, T0, procs) == lim, procs
        assert view(slot).limit == lim and view(slot).procs == procs


def test_quota_recount_goes_to_one_caller_per_interval(svc):
    slot = slot_of(svc, "q", quota=1.0)
    lib.sg_bulkhead_set_procs_at(slot, T0, 3)
    refresh = lib.SG_BH_REFRESH
    t1 = lib.sg_bulkhead_acquire_at(slot, T0 + 500 * MS, 1, NORMAL)
    assert t1 > 0 and not t1 & refresh                  # counted 0.5 s ago
    t2 = lib.sg_bulkhead_acquire_at(slot, T0 + 1100 * MS, 2, NORMAL)
    t3 = lib.sg_bulkhead_acquire_at(slot, T0 + 1100 * MS, 3, NORMAL)
    assert t2 & refresh and t3 > 0 and not t3 & refresh  # one recount per interval
    assert lib.sg_bulkhead_release_at(slot, 2, t2) >= 0  # the flag does not spoil the ticket


def test_no_bulkhead_answers_zero(svc):
    slot = slot_of(svc, "plain", rate=10)
    assert lib.sg_bulkhead_acquire_at(slot, T0, 1, NORMAL) == 0
    assert lib.sg_bulkhead_acquire(svc._eps["plain"].h, NORMAL) == 0
    assert view(slot).limit == 0 and view(slot).acquired == 0
    assert svc.stats("plain").bulkhead is None


def test_bad_input_is_refused(svc):
    slot = slot_of(svc, "db", max_concurrent=2)
    assert lib.sg_bulkhead_acquire_at(ffi.NULL, T0, 1, 0) == ARG
    assert lib.sg_bulkhead_acquire_at(slot, T0, 0, 0) == ARG            # pid 0
    assert lib.sg_bulkhead_release_at(slot, 1, 0) == ARG
    assert lib.sg_bulkhead_release_at(slot, 1, -5) == ARG
    assert lib.sg_bulkhead_release_at(slot, 1, 12345) == ARG            # not a ticket token
    assert lib.sg_bulkhead_reclaim(slot, 64, 1) == ARG
    assert lib.sg_bulkhead_reclaim(slot, 0, 0) == ARG
    assert lib.sg_bulkhead_snapshot_at(slot, T0, ffi.NULL) == ARG


def test_corrupt_limit_word_stays_in_bounds(svc):
    """A scribbled limit word (span 255) never indexes past the 64 ticket words."""
    slot = slot_of(svc, "db", max_concurrent=2)
    words = ffi.cast("uint64_t *", ffi.cast("char *", slot) + 18 * 64)
    words[1] = (1 << 63) | (0x7F << 56) | (255 << 48) | (255 << 40)
    assert lib.sg_bulkhead_acquire_at(slot, T0, 7, NORMAL) > 0   # resynced to the policy
    v = view(slot)
    assert v.limit == 2 and v.span <= 64


@pytest.mark.parametrize("kw, field", [
    (dict(max_concurrent=0), "max_concurrent"), (dict(max_concurrent=65), "max_concurrent"),
    (dict(max_concurrent=2.5), "max_concurrent"), (dict(quota=0), "quota"),
    (dict(quota=1.5), "quota"), (dict(max_concurrent=2, quota=0.5), "not both"),
    (dict(max_concurrent=2, max_wait=-1), "max_wait"),
    (dict(max_concurrent=2, critical_reserve=2), "critical_reserve"),
    (dict(max_concurrent=2, ticket_lease=0), "ticket_lease"),
    (dict(max_wait=1.0), "need a bulkhead"),
])
def test_policy_names_the_bad_bulkhead_field(kw, field):
    with pytest.raises(sg.PolicyError, match=field):
        sg.Policy(**kw)


def test_builder_wants_exactly_one_of_limit_and_quota():
    b = sg.PolicyBuilder()
    with pytest.raises(sg.PolicyError, match="exactly one"):
        b.with_bulkhead()
    with pytest.raises(sg.PolicyError, match="exactly one"):
        b.with_bulkhead(2, quota=0.5)
    p = sg.PolicyBuilder().with_bulkhead(8, 0.5, critical_reserve=2).build()
    v = p.fill_view(ffi.new("struct sg_policy_view *"))
    assert (v.max_concurrent, v.max_wait_ns, v.quota_ppm) == (8 | 2 << 8, 500_000_000, 0)
    q = sg.PolicyBuilder().with_bulkhead(quota=0.25).build().fill_view(
        ffi.new("struct sg_policy_view *"))
    assert (q.max_concurrent, q.quota_ppm) == (0, 250_000)


def test_any_bytes_in_the_bulkhead_area_give_codes_not_crashes(svc):
    """The slot is untrusted: scribbled area words and policy fields stay in bounds."""
    import random
    rng = random.Random(2026)
    slot = slot_of(svc, "db", max_concurrent=3)
    area = ffi.cast("uint64_t *", ffi.cast("char *", slot) + 18 * 64)
    pol = ffi.cast("uint32_t *", ffi.cast("char *", slot) + 2 * 64)   # both policy buffers
    ok = {FULL, 0}
    for i in range(400):
        for k in rng.sample(range(72), rng.randrange(1, 12)):
            area[k] = rng.getrandbits(64)
        if i % 4 == 0:
            pol[rng.randrange(96)] = rng.getrandbits(32)
        now = T0 + rng.getrandbits(40)
        t = lib.sg_bulkhead_acquire_at(slot, now, rng.randrange(1, 1 << 22), rng.randrange(4))
        assert t > 0 or t in ok, t
        if t > 0:   # another pid's release: refused; the granting pid's: given back
            assert lib.sg_bulkhead_release_at(slot, 1, t) in (NOT_FOUND, 0)
        assert lib.sg_bulkhead_set_procs_at(slot, now, rng.randrange(1 << 17)) <= 64
        assert 0 <= lib.sg_bulkhead_sync_at(slot, now) <= 64
        v = view(slot, 0)
        assert v.limit <= 64 and v.span <= 64 and v.reserve < max(1, v.limit) + 1
        assert lib.sg_bulkhead_reclaim(slot, rng.randrange(64), rng.getrandbits(64) | 1) in (
            lib.SG_OK, BUSY)
