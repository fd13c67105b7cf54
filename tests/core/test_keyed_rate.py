"""Keyed limiter rate changes at the C level: virtual time keeps each key's debt in tokens."""
from __future__ import annotations

import pytest

from shmguard._capi import ffi, lib
from test_keyed_steps import MS, T0, decide, table, tokens


# -- changing the rate keeps each key's debt in tokens ------------------------------------------

def set_rate(t, t_ms: float, rate: float, burst: int, lease: int = 1 << 32) -> int:
    return lib.sg_kl_set_rate_at(t.kh, T0 + int(t_ms * MS), int(1e9 / rate), burst, 77, lease)


RATE_STEPS = [
    # (t_ms, action, key, expected) -- rate 10/s burst 3 (HIGH), then 1/s, then burst 5
    (0, "take", b"a", 3),          # a exhausted: 3 tokens of debt
    (0, "rate", (1, 3), 0),
    (0, "tokens", b"a", 0.0),      # still exhausted: the debt is in tokens, not in time
    (0, "tokens", b"b", 3.0),      # a fresh key has its full burst
    (100, "tokens", b"a", 0.1),    # at 1/s: a tenth of a token per 100 ms (10/s gave 1)
    (1000, "take", b"a", 1),
    (1000, "rate", (1, 5), 0),     # burst 3 -> 5: debt stays, room grows
    (1000, "tokens", b"a", 2.0),   # 5 - 3 of debt
    (3000, "tokens", b"a", 4.0),
    (3000, "rate", (10, 3), 0),    # back to 10/s, burst 3
    (3000, "tokens", b"a", 2.0),   # 1 token of debt carried over
    (3100, "tokens", b"a", 3.0),   # paid off in 100 ms at 10/s
]


def test_rate_changes_keep_the_debt_in_tokens(svc):
    t = table(svc, rate=10, burst=3)
    for t_ms, action, key, want in RATE_STEPS:
        if action == "take":
            got = 0
            while decide(t, key, t_ms)[0] == 0:
                got += 1
            assert got == want, (t_ms, key)
        elif action == "rate":
            assert set_rate(t, t_ms, *key) == 0
        else:
            assert tokens(t, key, t_ms) == pytest.approx(want, abs=1e-6), (t_ms, key)
    v = t.refresh()
    assert (v.rate_changes, v.emission_ns, v.burst, v.lease) == (3, 100 * MS, 3, 0)


def test_reserve_delays_are_clock_time_after_a_change(svc):
    t = table(svc, rate=10, burst=1)
    assert set_rate(t, 0, 2, 1) == 0                          # 500 ms per token
    assert decide(t, b"k", 0)[0] == 0
    rc, d = decide(t, b"k", 0, max_wait_ns=10**9)
    assert rc == 0 and d.delay_ns == 500 * MS and d.act_ns == T0 + 500 * MS
    rc, d = decide(t, b"k", 0, max_wait_ns=900 * MS)
    assert rc == lib.SG_R_RATE_LIMITED and d.delay_ns == 1000 * MS


def test_the_rate_writer_lease(svc):
    t = table(svc)
    hdr = ffi.cast("uint64_t *", t.kh.table)
    hdr[2 * 8 + 1] = 123 << 32                               # a writer holds the lease
    assert set_rate(t, 0, 5, 3) == lib.SG_E_BUSY
    assert lib.sg_kl_takeover(t.kh, 999) == lib.SG_E_BUSY     # not the lease it holds
    assert lib.sg_kl_takeover(t.kh, 123 << 32) == lib.SG_OK   # (its holder proven dead)
    assert set_rate(t, 0, 5, 3) == lib.SG_OK
    assert set_rate(t, 0, 5, 3, lease=0) == lib.SG_E_ARG
