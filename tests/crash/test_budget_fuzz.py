"""The retry budget reads untrusted words: any budget area and any retry policy give valid answers.

Run under ASan/UBSan by .ci/sanitize.sh. SHMGUARD_FUZZ_EXAMPLES sets the examples (default 200).
"""
from __future__ import annotations

import os

import hypothesis.strategies as st
from hypothesis import HealthCheck, given, settings

import shmguard as sg
from shmguard._capi import ffi, lib

EXAMPLES = int(os.environ.get("SHMGUARD_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture])
U64 = st.integers(0, 2**64 - 1)
U32 = st.integers(0, 2**32 - 1)
RC = {lib.SG_OK, lib.SG_R_RETRY_BUDGET}


@FUZZ
@given(area=st.lists(U64, min_size=8, max_size=8), window=U64, ratio=U32, minimum=U32,
       nows=st.lists(U64, min_size=1, max_size=12))
def test_fuzz_budget_words_and_policy(svc, area, window, ratio, minimum, nows):
    if "dep" not in svc._eps:
        svc.register_endpoint("dep", sg.Policy(retry_budget=0.2))
    ep = svc._eps["dep"]
    pv = ep.policy_view()
    pv.retry_window_ns, pv.retry_ratio_ppm, pv.retry_min_milli = window, ratio, minimum
    assert lib.sg_policy_publish(ep.h, pv, 1, ffi.NULL) == lib.SG_OK
    words = ffi.cast("uint64_t *", ffi.cast("char *", ep.h.slot) + 27 * 64)
    for i, w in enumerate(area):
        words[i] = w
    v = ffi.new("struct sg_budget_view *")
    for now in nows:
        assert lib.sg_budget_deposit_at(ep.h.slot, now) == lib.SG_OK
        assert lib.sg_budget_withdraw_at(ep.h.slot, now) in RC
        assert lib.sg_budget_snapshot_at(ep.h.slot, now, v) == lib.SG_OK
        assert v.attempts <= lib.SG_BUDGET_BUCKETS * (2**22 - 1)
        assert v.retries <= lib.SG_BUDGET_BUCKETS * (2**22 - 1)
        assert v.window_ns == window
    t = lib.sg_admit(ep.h, 5)                 # the admission path deposits too
    assert t >= 0 or t in {lib.SG_R_OPEN, lib.SG_R_PROBES_FULL, lib.SG_R_RATE_LIMITED}
    assert lib.sg_budget_withdraw(ep.h) in RC
