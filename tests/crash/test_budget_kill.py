"""The retry budget under SIGKILL: every update is one CAS, so a kill anywhere leaves a valid budget."""
from __future__ import annotations

import multiprocessing as mp
import os
import random
import signal
import time

import shmguard as sg
from shmguard._capi import ffi, lib

T0 = 10**12
RATIO, MIN, WINDOW = 0.3, 2, 6.0       # the window allows 0.3 x first attempts + 12


def churn(slot_addr: int, seed: int, ops: int) -> None:
    """Deposits (70 %) and withdrawals (30 %) at one instant until killed or done."""
    slot = ffi.cast("void *", slot_addr)
    rng = random.Random(seed)
    deposit, withdraw = lib.sg_budget_deposit_at, lib.sg_budget_withdraw_at
    for _ in range(ops):
        (deposit if rng.random() < 0.7 else withdraw)(slot, T0)
    os._exit(0)


def test_sigkill_during_deposits_and_withdrawals_keeps_the_bound(svc):
    svc.register_endpoint("dep", sg.Policy(retry_budget=RATIO, retry_budget_min_per_second=MIN,
                                           retry_budget_window=WINDOW))
    slot = svc._eps["dep"].h.slot
    addr = int(ffi.cast("uintptr_t", slot))
    ctx = mp.get_context("fork")
    rng = random.Random(2026)
    kills = 0
    for round_ in range(8):
        ps = [ctx.Process(target=churn, args=(addr, round_ * 10 + i, 200_000)) for i in range(3)]
        for p in ps:
            p.start()
        time.sleep(rng.uniform(0.005, 0.03))
        for p in ps:
            if p.is_alive():
                os.kill(p.pid, signal.SIGKILL)
        for p in ps:
            p.join(10)
            kills += p.exitcode == -signal.SIGKILL
    v = ffi.new("struct sg_budget_view *")
    assert lib.sg_budget_snapshot_at(slot, T0, v) == lib.SG_OK
    att, ret = v.attempts, v.retries
    assert kills >= 8 and att < 2**22 - 1        # killed mid-churn, no count saturated
    assert att > 0 and ret > 0 and v.denied_total > 0
    # each grant was decided on the counts its CAS validated: ret - 1 <= allowed then
    assert ret <= (att - ret + 1) * 300_000 // 10**6 + MIN * WINDOW
    # the total is counted after the grant's CAS: a kill between the two loses one
    assert 0 <= ret - v.retries_total <= kills
    # and the budget still decides, for a process that never saw a kill
    assert lib.sg_budget_withdraw_at(slot, T0) in (lib.SG_OK, lib.SG_R_RETRY_BUDGET)
    for _ in range(100):
        lib.sg_budget_deposit_at(slot, T0)
    assert lib.sg_budget_withdraw_at(slot, T0) == lib.SG_OK
