"""Keyed limiter at the C level: SipHash, GCRA per key, reuse, on_full, settling (explicit now_ns)."""
from __future__ import annotations

import random
import struct

import pytest

import shmguard as sg
from shmguard._capi import ffi, lib

MS = 1_000_000
T0 = 10**12
LOW, NORMAL, HIGH, CRIT = 0, 1, 2, 3
M64 = 2**64 - 1
LIVE, PENDING, RETIRED = 1, 2, 3


# -- SipHash-2-4: the paper's vector and a Python transcription of the algorithm ----------

def _rotl(x: int, b: int) -> int:
    return ((x << b) | (x >> (64 - b))) & M64


def siphash24(k0: int, k1: int, data: bytes) -> int:
    v = [0x736F6D6570736575 ^ k0, 0x646F72616E646F6D ^ k1, 0x6C7967656E657261 ^ k0,
         0x7465646279746573 ^ k1]

    def rnd() -> None:
        v[0] = (v[0] + v[1]) & M64; v[1] = _rotl(v[1], 13) ^ v[0]; v[0] = _rotl(v[0], 32)  # noqa: E702
        v[2] = (v[2] + v[3]) & M64; v[3] = _rotl(v[3], 16) ^ v[2]                          # noqa: E702
        v[0] = (v[0] + v[3]) & M64; v[3] = _rotl(v[3], 21) ^ v[0]                          # noqa: E702
        v[2] = (v[2] + v[1]) & M64; v[1] = _rotl(v[1], 17) ^ v[2]; v[2] = _rotl(v[2], 32)  # noqa: E702
    n = len(data) - len(data) % 8
    for i in range(0, n, 8):
        m = struct.unpack_from("<Q", data, i)[0]
        v[3] ^= m
        rnd(); rnd()  # noqa: E702
        v[0] ^= m
    b = (len(data) & 0xFF) << 56 | int.from_bytes(data[n:], "little")
    v[3] ^= b
    rnd(); rnd()  # noqa: E702
    v[0] ^= b
    v[2] ^= 0xFF
    for _ in range(4):
        rnd()
    return v[0] ^ v[1] ^ v[2] ^ v[3]


def test_siphash_matches_the_paper_and_the_reference_algorithm():
    k0 = int.from_bytes(bytes(range(8)), "little")
    k1 = int.from_bytes(bytes(range(8, 16)), "little")
    assert lib.sg_siphash24(k0, k1, bytes(range(15)), 15) == 0xA129CA6149BE45E5  # paper, App. A
    assert siphash24(k0, k1, bytes(range(15))) == 0xA129CA6149BE45E5
    rng = random.Random(14)
    for _ in range(300):
        k0, k1 = rng.getrandbits(64), rng.getrandbits(64)
        data = rng.randbytes(rng.randrange(0, 70))
        assert lib.sg_siphash24(k0, k1, data, len(data)) == siphash24(k0, k1, data)


# -- helpers -----------------------------------------------------------------------------------

def table(svc, name="k", rate=10, burst=3, capacity=1000, on_full="reject"):
    return svc.keyed_limiter(name, rate, burst, capacity=capacity, on_full=on_full)._t


def decide(t, key: bytes, t_ms: float, cost=1, prio=HIGH, max_wait_ns=-1):
    d = ffi.new("struct sg_decision *")
    rc = lib.sg_kl_decide_at(t.kh, T0 + int(t_ms * MS), key, len(key), (cost << 2) | prio,
                             max_wait_ns, d)
    return rc, d


def tokens(t, key: bytes, t_ms: float, prio=HIGH) -> float:
    tok, delay = ffi.new("double *"), ffi.new("int64_t *")
    assert lib.sg_kl_peek_at(t.kh, T0 + int(t_ms * MS), key, len(key), (1 << 2) | prio, tok,
                             delay) == 0
    return tok[0]


def counters(t) -> dict:
    v = t.refresh()
    return {f: int(getattr(v, f)) for f in ("accepted", "rejected", "waited", "full_rejected",
                                            "full_allowed", "inserted", "evicted", "folded")}


def where(t, key: bytes) -> tuple[int, int]:
    """Returns (home index, tag fingerprint) of ``key`` in table ``t`` (as keyed_gcra.c)."""
    h = siphash24(t.kh.k0, t.kh.k1, key)
    return ((h & 0xFFFFFFFF) * t.kh.slots) >> 32, h & ~3 & M64


def entry(t, index: int):
    """Returns the two words of entry ``index`` as a writable cffi array."""
    return ffi.cast("uint64_t *", ffi.cast("char *", t.kh.table) + lib.SG_KL_HEADER_SIZE) + 2 * (
        index % t.kh.slots)


# -- GCRA per key ------------------------------------------------------------------------------

# rate 10/s (T = 100 ms), burst 3, HIGH: the endpoint limiter's table (test_gcra_steps), per key
STEPS = [
    # (t_ms, key, cost, ok, tokens_after of that key)
    (0, b"a", 1, True, 2.0),
    (0, b"a", 1, True, 1.0),
    (0, b"b", 3, True, 0.0),     # another key: its own full bucket
    (0, b"a", 1, True, 0.0),
    (0, b"a", 1, False, 0.0),    # a's burst used up; b's does not help
    (50, b"a", 1, False, 0.5),
    (100, b"a", 1, True, 0.0),   # one emission interval later: exactly one
    (400, b"a", 2, True, 1.0),   # 3 back (capped at burst), take 2
    (400, b"a", 2, False, 1.0),  # cost 2 does not conform: nothing taken
    (400, b"b", 3, True, 0.0),   # b refilled meanwhile
    (10_000, b"a", 1, True, 2.0),
]


def test_gcra_per_key_step_table(svc):
    t = table(svc)
    for t_ms, key, cost, ok, after in STEPS:
        rc, _ = decide(t, key, t_ms, cost)
        assert (rc == 0) == ok, (t_ms, key, cost, rc)
        assert tokens(t, key, t_ms) == pytest.approx(after, abs=1e-6), (t_ms, key)
    c = counters(t)
    assert (c["accepted"], c["rejected"], c["inserted"]) == (8, 3, 2)  # a's own expired entry is found


def test_priorities_are_shares_of_each_keys_burst(svc):
    t = table(svc, rate=1, burst=10)
    got = {}
    for p in (LOW, NORMAL, HIGH, CRIT):
        got[p] = 0
        while decide(t, b"k", 0, 1, p)[0] == 0:
            got[p] += 1
    assert got == {LOW: 5, NORMAL: 3, HIGH: 2, CRIT: 1}
    assert decide(t, b"k", 0, 12, CRIT)[0] == lib.SG_E_COST   # beyond CRITICAL's 11: never
    assert decide(t, b"k", 0, 0, HIGH)[0] == lib.SG_E_ARG


def test_reserve_delay_and_cancel_per_key(svc):
    t = table(svc, rate=10, burst=1)
    assert decide(t, b"k", 0)[0] == 0
    rc, d = decide(t, b"k", 0, max_wait_ns=50 * MS)
    assert rc == lib.SG_R_RATE_LIMITED and d.delay_ns == 100 * MS
    rc, d = decide(t, b"k", 0, max_wait_ns=100 * MS)
    assert rc == 0 and d.delay_ns == 100 * MS and d.act_ns == T0 + 100 * MS
    cp = (1 << 2) | HIGH
    assert lib.sg_kl_cancel_at(t.kh, T0 + 10 * MS, b"k", 1, cp, d) == 0
    rc, d = decide(t, b"k", 10, max_wait_ns=10**9)
    assert rc == 0 and d.delay_ns == 90 * MS      # the cancelled place was given back
    assert lib.sg_kl_cancel_at(t.kh, T0, b"absent", 6, cp, d) == 0   # no entry: nothing to do


# -- reuse without loss, and a full window ---------------------------------------------------

def test_expired_entries_are_reused_by_new_keys(svc):
    t = table(svc, rate=10, burst=1, capacity=8)          # 16 entries: every window is the table
    assert t.kh.slots == lib.SG_KL_PROBES
    for i in range(16):
        assert decide(t, b"k%d" % i, 0)[0] == 0
    assert decide(t, b"late", 0)[0] == lib.SG_R_KL_FULL    # 16 keys not at a full bucket
    assert decide(t, b"k3", 0)[0] == lib.SG_R_RATE_LIMITED  # known keys are unaffected
    c = counters(t)
    assert (c["inserted"], c["full_rejected"], c["rejected"]) == (16, 1, 1)
    # 100 ms later every bucket is full again: the entries are free for any key
    for i in range(16):
        assert decide(t, b"n%d" % i, 100)[0] == 0
    assert decide(t, b"k3", 100)[0] == lib.SG_R_KL_FULL     # k3 lost its entry: a new key now
    c = counters(t)
    assert (c["inserted"], c["evicted"], c["full_rejected"]) == (32, 16, 2)


def test_on_full_allow_admits_and_counts(svc):
    t = table(svc, rate=10, burst=1, capacity=8, on_full="allow")
    for i in range(16):
        assert decide(t, b"k%d" % i, 0)[0] == 0
    assert [decide(t, b"x", 0)[0] for _ in range(3)] == [0, 0, 0]   # unlimited while full
    c = counters(t)
    assert (c["full_allowed"], c["full_rejected"], c["accepted"]) == (3, 0, 16)


def test_a_pending_entry_is_taken_only_after_its_grace(svc):
    """An insert whose process died leaves PENDING: reusable once 1 ms older than now."""
    t = table(svc, rate=10, burst=1, capacity=8)
    for i in range(16):
        e = entry(t, i)
        e[0], e[1] = (0xABC0 << 8) + 4 * i | PENDING, T0       # 16 stranded inserts at T0
    assert decide(t, b"new", 0.5)[0] == lib.SG_R_KL_FULL
    assert decide(t, b"new", 1)[0] == 0
    assert counters(t)["evicted"] == 1


# -- settling: two entries of one key are folded into the lower one ----------------------------

def test_duplicate_entries_fold_into_the_lowest_without_losing_debt(svc):
    t = table(svc, rate=10, burst=3)
    home, fp = where(t, b"dup")
    lo, hi = entry(t, home + 1), entry(t, home + 4)
    for i in range(5):                                       # other keys before and between
        e = entry(t, home + i)
        e[0], e[1] = 0x5550 + 4 * i | LIVE, T0 + 10**12
    hi[0], hi[1] = fp | LIVE, T0 + 150 * MS                   # decided on: 1.5 tokens of debt
    lo[0], lo[1] = fp | PENDING, T0                           # a concurrent insert, not settled
    assert decide(t, b"dup", 0)[0] == 0                       # settles, then decides on lo
    assert (lo[0], lo[1]) == (fp | LIVE, T0 + 250 * MS)       # max(TATs) + one token
    assert (hi[0], hi[1]) == (RETIRED, 0)
    assert decide(t, b"dup", 0)[0] == lib.SG_R_RATE_LIMITED   # 2.5 of 3 used: the debt stayed
    assert counters(t)["folded"] == 1


def test_a_pending_entry_is_settled_before_anyone_decides(svc):
    t = table(svc, rate=10, burst=2)
    home, fp = where(t, b"p")
    e = entry(t, home)
    e[0], e[1] = fp | PENDING, T0
    assert tokens(t, b"p", 0) == 2.0
    assert decide(t, b"p", 0)[0] == 0
    assert (e[0], e[1]) == (fp | LIVE, T0 + 100 * MS)
    assert counters(t)["inserted"] == 0                       # found, not inserted


def test_corrupt_state_bits_are_a_free_entry(svc):
    t = table(svc, rate=10, burst=1, capacity=8)
    for i in range(16):
        e = entry(t, i)
        e[0], e[1] = 0xDEAD0000 + 4 * i, M64                  # state 0 with a tag: not EMPTY
    assert decide(t, b"z", 0)[0] == 0                         # taken as free
    assert decide(t, b"z", 0)[0] == lib.SG_R_RATE_LIMITED


# -- the scan --------------------------------------------------------------------------------

def test_scan_counts_live_keys_and_ranks_the_hottest(svc):
    t = table(svc, rate=10, burst=5)
    for i, cost in enumerate([1, 5, 3, 2]):
        assert decide(t, b"s%d" % i, 0, cost)[0] == 0
    top = ffi.new("struct sg_kl_entry_view[]", 3)
    out = ffi.new("struct sg_kl_scan *")
    assert lib.sg_kl_scan_at(t.kh, T0, 3, top, out) == 0
    assert (out.live, out.used, out.pending, out.top_n) == (4, 4, 0, 3)
    assert [top[i].ahead_ns // MS for i in range(3)] == [500, 300, 200]
    assert top[0].fingerprint == where(t, b"s1")[1]
    assert lib.sg_kl_scan_at(t.kh, T0 + 500 * MS, 0, ffi.NULL, out) == 0
    assert (out.live, out.used) == (0, 4)                     # all full again: none live
    assert lib.sg_kl_scan_at(t.kh, T0, lib.SG_KL_TOP_MAX + 1, top, out) == lib.SG_E_ARG


def test_sizes(svc):
    assert lib.sg_kl_size(1_000_000) <= 32 * 2**20
    assert lib.sg_kl_size(1_000_000) == lib.SG_KL_HEADER_SIZE + 2_000_000 * lib.SG_KL_ENTRY_SIZE
    assert lib.sg_kl_size(1) == lib.SG_KL_HEADER_SIZE + lib.SG_KL_PROBES * lib.SG_KL_ENTRY_SIZE
    t = table(svc, capacity=8)
    assert t.kh.slots == 16 and t.kh.k0 | t.kh.k1 != 0
    with pytest.raises(sg.PolicyError, match="capacity"):
        svc.keyed_limiter("x", 1, 1, capacity=0)
