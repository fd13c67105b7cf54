"""Fuzzing keyed limiter tables: hostile headers, hostile entries, hostile arguments.

As tests/crash/test_fuzz.py (whose private, ASan-poisoned buffers it uses):
every call on a scribbled table returns one of its documented codes, or a
valid decision with sane outputs; never a crash or an out-of-bounds access.
Entries may hold anything at all: a corrupt entry is a key's state like any
other (a TAT and a fingerprint), so it gives a valid decision.
"""
from __future__ import annotations

import math

from hypothesis import given
from hypothesis import strategies as st

import shmguard as sg
from shmguard._capi import ffi, lib
from test_fuzz import FUZZ, Buf, _segment, i64, words

KH = lib.SG_KL_HEADER_SIZE
CHECK_RCS = {lib.SG_OK, lib.SG_E_NOT_READY, lib.SG_E_MAGIC, lib.SG_E_VERSION, lib.SG_E_SIZE,
             lib.SG_E_TRUNCATED}
DECIDE_RCS = {lib.SG_OK, lib.SG_R_RATE_LIMITED, lib.SG_R_KL_FULL, lib.SG_E_ARG, lib.SG_E_COST,
              lib.SG_E_BUSY}
keys = st.one_of(st.binary(max_size=40), st.sampled_from([b"", b"a", b"k" * 300]))


def _table(cap: int, burst: int = 3, flags: int = 0) -> Buf:
    c = ffi.new("struct sg_kl_config *")
    c.emission_ns, c.burst, c.capacity, c.flags = 10**8, burst, cap, flags
    c.seed0, c.seed1 = 0x1234, 0x5678
    for i in range(4):
        c.share_ppm[i] = (500_000, 800_000, 1_000_000, 1_100_000)[i]
    b = Buf(lib.sg_kl_size(cap))
    assert lib.sg_kl_init(b.ptr, b.n, c, 1, 0) == lib.SG_OK
    return b


def _calls(kh, seq) -> None:
    d = ffi.new("struct sg_decision *")
    tok, delay = ffi.new("double *"), ffi.new("int64_t *")
    top = ffi.new("struct sg_kl_entry_view[]", 5)  # top_max below is up to 5
    scan = ffi.new("struct sg_kl_scan *")
    for op, key, now, c, x in seq:
        if op == "decide":
            rc = lib.sg_kl_decide_at(kh, now, key, len(key), c, x, d)
            assert rc in DECIDE_RCS
            if rc == lib.SG_OK:
                assert d.delay_ns >= 0 and (d.delay_ns == 0 or d.delay_ns <= x)
        elif op == "allow":
            assert lib.sg_kl_allow(kh, key, len(key), c) in DECIDE_RCS
        elif op == "reserve":
            assert lib.sg_kl_reserve(kh, key, len(key), c, x, d) in DECIDE_RCS
        elif op == "cancel":
            d.act_ns, d.tat_ns, d.delay_ns = now ^ c, c, x
            assert lib.sg_kl_cancel_at(kh, now, key, len(key), c, d) in (
                lib.SG_OK, lib.SG_E_ARG, lib.SG_E_BUSY)
        elif op == "peek":
            rc = lib.sg_kl_peek_at(kh, now, key, len(key), c, tok, delay)
            assert rc in (lib.SG_OK, lib.SG_E_ARG)
            if rc == lib.SG_OK:
                assert math.isfinite(tok[0]) and tok[0] >= 0 and delay[0] >= 0
        else:
            rc = lib.sg_kl_scan_at(kh, now, c % 6, top, scan)
            assert rc in (lib.SG_OK, lib.SG_E_ARG)
            if rc == lib.SG_OK:
                assert scan.live <= scan.used <= kh.slots and scan.top_n <= c % 6


ops = st.lists(st.tuples(st.sampled_from(["decide", "allow", "reserve", "cancel", "peek", "scan"]),
                         keys, words, words, i64), min_size=1, max_size=20)


@FUZZ
@given(cap=st.integers(1, 12), allow=st.booleans(), manual=st.booleans(),
       entries=st.lists(st.tuples(st.integers(0, 64), words), max_size=40), seq=ops)
def test_fuzz_entries(cap, allow, manual, entries, seq):
    """Any words in any entries: every call answers with a documented code."""
    with _table(cap, flags=int(allow)) as b, _segment(1, manual) as seg:
        kh = ffi.new("struct sg_kl_handle *")
        assert lib.sg_kl_handle_init(kh, b.ptr, b.n, seg.ptr, seg.n) == lib.SG_OK
        for w, value in entries:
            b.put(KH + 8 * (w % (2 * kh.slots)), 8, value)
        _calls(kh, seq)
        assert lib.sg_kl_check(b.ptr, b.n, ffi.new("struct sg_kl_view *")) == lib.SG_OK


@FUZZ
@given(cap=st.integers(1, 6), edits=st.lists(st.tuples(st.integers(0, KH // 8 - 1), words),
                                              max_size=6),
       cut=st.one_of(st.just(0), st.integers(1, 600)), seq=ops)
def test_fuzz_header(cap, edits, cut, seq):
    """A scribbled header or a short mapping is refused, or every call works within it."""
    with _table(cap) as good:
        data = bytes(ffi.buffer(good.raw + good.off, good.n))
    n = max(0, len(data) - cut)
    with Buf(n) as b, _segment(1, True) as seg:
        ffi.memmove(b.raw + b.off, data[:n], n)
        for w, value in edits:
            b.put(8 * w, 8, value)
        v = ffi.new("struct sg_kl_view *")
        rc = lib.sg_kl_check(b.ptr, b.n, v)
        assert rc in CHECK_RCS
        if rc == lib.SG_OK:
            assert v.total_size <= b.n and 1 <= v.capacity <= lib.SG_KL_MAX_CAPACITY
            assert v.total_size == KH + v.slots * lib.SG_KL_ENTRY_SIZE
        kh = ffi.new("struct sg_kl_handle *")
        rh = lib.sg_kl_handle_init(kh, b.ptr, b.n, seg.ptr, seg.n)
        assert rh == rc or (rc != lib.SG_OK and rh in CHECK_RCS)
        if rh == lib.SG_OK:
            _calls(kh, seq)


@FUZZ
@given(n=st.integers(0, 700), seed=st.binary(max_size=64))
def test_fuzz_random_bytes_as_table(n, seed):
    with Buf(n) as b, _segment(1, False) as seg:
        pat = (seed or b"\0") * (n // max(1, len(seed)) + 1)
        ffi.memmove(b.raw + b.off, pat[:n], n)
        kh = ffi.new("struct sg_kl_handle *")
        rc = lib.sg_kl_handle_init(kh, b.ptr, b.n, seg.ptr, seg.n)
        assert rc in CHECK_RCS
        if rc == lib.SG_OK:
            _calls(kh, [("decide", b"k", 1, 5, -1), ("scan", b"", 1, 3, 0)])


def test_handle_refuses_a_bad_segment_or_arguments():
    with _table(1) as b, Buf(8) as seg:
        kh = ffi.new("struct sg_kl_handle *")
        assert lib.sg_kl_handle_init(kh, b.ptr, b.n, seg.ptr, seg.n) == lib.SG_E_TRUNCATED
        assert lib.sg_kl_handle_init(ffi.NULL, b.ptr, b.n, seg.ptr, seg.n) == lib.SG_E_ARG
        c = ffi.new("struct sg_kl_config *")
        assert lib.sg_kl_init(b.ptr, b.n, c, 1, 0) == lib.SG_E_ARG     # capacity 0, rate 0


@FUZZ
@given(scribble=st.lists(st.tuples(st.integers(0, 2 * 16 + KH // 8), words), min_size=1,
                         max_size=30))
def test_fuzz_keyed_limiter_over_a_scribbled_table(segname, scribble):
    """Scribble on a live table: every KeyedLimiter call answers or raises a ShmguardError."""
    svc = sg.ResilienceService(segname, manual_clock=True)
    try:
        kl = svc.keyed_limiter("k", 10, 3, capacity=8)
        p = ffi.cast("uint64_t *", kl._t.kh.table)
        for w, value in scribble:
            p[w] = value
        for call in (lambda: kl.allow("a"), lambda: kl.allow(b"b", 2, sg.Priority.HIGH),
                     lambda: kl.reserve("a", max_wait=1.0).cancel(), lambda: kl.tokens("a"),
                     lambda: kl.retry_after("a"), lambda: kl.stats(top=3)):
            try:
                call()
            except sg.ShmguardError:
                pass
        try:
            svc.keyed_limiter("k", 10, 3, capacity=8)        # attach again: validated
        except sg.ShmguardError:
            pass
    finally:
        svc.close()
        svc.unlink()


def test_a_misaligned_table_is_refused():
    with _table(1) as b:
        p = ffi.cast("char *", b.ptr) + 8
        v = ffi.new("struct sg_kl_view *")
        assert lib.sg_kl_check(p, b.n - 8, v) == lib.SG_E_ARG
