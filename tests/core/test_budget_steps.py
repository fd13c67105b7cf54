"""The retry budget at the C level (csrc/budget.c): step tables with explicit now_ns."""
from __future__ import annotations

import shmguard as sg
from shmguard._capi import ffi, lib

MS = 1_000_000
T0 = 10**12
OK, DENIED = lib.SG_OK, lib.SG_R_RETRY_BUDGET


def slot_of(svc: sg.ResilienceService, name: str, policy: sg.Policy):
    svc.register_endpoint(name, policy)
    return svc._eps[name].h.slot


def view(slot, t_ms):
    v = ffi.new("struct sg_budget_view *")
    assert lib.sg_budget_snapshot_at(slot, T0 + t_ms * MS, v) == OK
    return v


# ratio 0.2, min 1/s over a 6 s window: 6 buckets of 1 s; the window allows
# 0.2 x first attempts + 6, first attempts = attempts - retries.
STEPS = [
    # (t_ms, op, n, rc of the last op, (attempts, retries, allowed) after)
    (0, "withdraw", 6, OK, (0, 6, 6)),          # the minimum alone: 6 retries
    (0, "withdraw", 1, DENIED, (0, 6, 6)),      # the 7th is refused, nothing counted
    (0, "deposit", 30, OK, (30, 6, 10)),        # 24 first attempts: +4 (0.2 x 24)
    (500, "withdraw", 4, OK, (30, 10, 10)),
    (900, "withdraw", 1, DENIED, (30, 10, 10)),
    (900, "deposit", 5, OK, (35, 10, 11)),      # 25 first: 0.2 x 25 = 5, + 6
    (900, "withdraw", 1, OK, (35, 11, 10)),     # a retry also lowers "first" by one
    (5_999, "withdraw", 1, DENIED, (35, 11, 10)),  # still in the window
    (6_000, "withdraw", 1, OK, (0, 1, 6)),      # bucket 0 aged out: a fresh window
    (6_500, "deposit", 50, OK, (50, 1, 15)),    # 49 first: 9 + 6
    (60_000, "withdraw", 1, OK, (0, 1, 6)),     # long idle: every bucket is stale
]


def test_budget_step_table(svc):
    slot = slot_of(svc, "steps", sg.Policy(retry_budget=0.2, retry_budget_min_per_second=1,
                                           retry_budget_window=6.0))
    for t_ms, op, n, rc_last, after in STEPS:
        fn = lib.sg_budget_withdraw_at if op == "withdraw" else lib.sg_budget_deposit_at
        rcs = [fn(slot, T0 + t_ms * MS) for _ in range(n)]
        assert rcs[:-1] == [OK] * (n - 1) and rcs[-1] == rc_last, (t_ms, op, rcs)
        v = view(slot, t_ms)
        assert (v.attempts, v.retries, v.allowed) == after, (t_ms, op)
    v = view(slot, 60_000)
    assert (v.retries_total, v.denied_total, v.window_ns) == (13, 3, 6 * 10**9)


def test_without_a_budget_retries_are_granted_and_counted(svc):
    slot = slot_of(svc, "free", sg.Policy())
    for _ in range(5):
        assert lib.sg_budget_deposit_at(slot, T0) == OK      # no budget: nothing deposited
        assert lib.sg_budget_withdraw_at(slot, T0) == OK
    v = view(slot, 0)
    assert (v.attempts, v.retries, v.allowed, v.window_ns) == (0, 0, 0, 0)
    assert (v.retries_total, v.denied_total) == (5, 0)


def test_admission_deposits_only_while_a_budget_is_set(svc):
    svc.register_endpoint("b", sg.Policy(retry_budget=0.5, retry_budget_window=6.0))
    svc.register_endpoint("n", sg.Policy())
    for _ in range(7):
        svc.execute("b", lambda: None)
        svc.execute("n", lambda: None)
    assert view(svc._eps["b"].h.slot, 0).attempts == 7
    assert view(svc._eps["n"].h.slot, 0).attempts == 0
    st = svc.stats("b")
    assert (st.attempts, st.retries, st.retries_denied) == (7, 0, 0)
    assert st.retry_budget == sg.stats.RetryBudgetStats(6.0, 7, 0, 3 + 60)
    assert svc.stats("n").retry_budget is None


def test_zero_ratio_and_minimum_denies_every_retry(svc):
    slot = slot_of(svc, "none", sg.Policy(retry_budget=0.0, retry_budget_min_per_second=0))
    for _ in range(100):
        lib.sg_budget_deposit_at(slot, T0)
    assert lib.sg_budget_withdraw_at(slot, T0) == DENIED


def test_corrupt_budget_words_give_valid_decisions(svc):
    slot = slot_of(svc, "bad", sg.Policy(retry_budget=0.2, retry_budget_window=6.0))
    area = ffi.cast("uint64_t *", ffi.cast("char *", slot) + 27 * 64)
    for i in range(lib.SG_BUDGET_BUCKETS):
        area[i] = 2**64 - 1                    # every count saturated, a foreign epoch
    assert lib.sg_budget_withdraw_at(slot, T0) in (OK, DENIED)
    v = view(slot, 0)
    assert v.attempts <= lib.SG_BUDGET_BUCKETS * (2**22 - 1)
