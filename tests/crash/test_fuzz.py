"""Fuzzing the C entry points with hostile shared memory and hostile arguments.

Every C call is made on memory the test owns (a private, 64-byte-aligned
buffer of exactly the stated length, or a real segment) after hypothesis
has scribbled on it: random words in every header and slot field, torn
headers, lengths shorter than the header claims, out-of-range indices,
costs, priorities and names. Each call must return one of its documented
codes (or a valid decision) with sane outputs: no crash, no out-of-bounds
access. Run under AddressSanitizer/UBSan by .ci/sanitize.sh, where the
bytes around each buffer are poisoned so any stray read or write aborts.

SHMGUARD_FUZZ_EXAMPLES sets hypothesis' max_examples (suite default 200).
"""
from __future__ import annotations

import ctypes
import math
import os
import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import shmguard as sg
import shmguard.segment
from shmguard._capi import ffi, lib

EXAMPLES = int(os.environ.get("SHMGUARD_FUZZ_EXAMPLES", "200"))
FUZZ = settings(max_examples=EXAMPLES, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))

HDR, SLOT = lib.SG_HEADER_SIZE, lib.SG_SLOT_SIZE
WORDS = SLOT // 8
U64, U32 = 2**64 - 1, 2**32 - 1
NS = 1_000_000_000

# header fields: (offset, size) -- csrc/layout.h struct sg_header
H_FIELDS = {"magic": (0, 8), "layout_version": (8, 4), "header_size": (12, 4),
            "total_size": (16, 8), "capacity": (24, 4), "slot_size": (28, 4),
            "creator_uid": (32, 4), "creator_pid": (36, 4), "created": (40, 8),
            "flags": (48, 4), "init": (52, 4), "manual_now": (64, 8), "used": (128, 4)}

CHECK_RCS = {lib.SG_OK, lib.SG_E_NOT_READY, lib.SG_E_MAGIC, lib.SG_E_VERSION, lib.SG_E_SIZE,
             lib.SG_E_TRUNCATED}

EDGE = [0, 1, 2, 3, 7, 8, 9, 15, 16, 17, 63, 64, 65, 255, 256, 1023, 1024, 65535, 65536, 65537,
        2**20, 2**31 - 1, 2**31, U32 - 1, U32, 2**32, 2**41, 2**42, 2**61, 2**62, 2**63 - 1,
        2**63, U64 - 1, U64, 1 << 62 | 1, 2 << 62, 3 << 62, 1 << 61, 2 << 61, 5 << 61, 6 << 61,
        7 << 61, 0x4452415547484D53, 0x52454459]
words = st.one_of(st.sampled_from(EDGE), st.integers(0, U64), st.integers(0, 4096))
i64 = st.one_of(st.sampled_from([-1, 0, 1, -(2**63), 2**63 - 1, NS, -NS]),
                st.integers(-(2**63), 2**63 - 1))


# -- private memory -------------------------------------------------------------------

try:  # present only when libasan is preloaded (.ci/sanitize.sh)
    _POISON = ctypes.CDLL(None).__asan_poison_memory_region
    _UNPOISON = ctypes.CDLL(None).__asan_unpoison_memory_region
    _POISON.argtypes = _UNPOISON.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
except AttributeError:
    _POISON = _UNPOISON = None


class Buf:
    """``n`` bytes, 64-byte aligned; under ASan the bytes before and after are poisoned."""

    PAD = 128

    def __init__(self, n: int) -> None:
        self.raw = ffi.new("char[]", n + self.PAD)
        addr = int(ffi.cast("uintptr_t", self.raw))
        self.off = (-addr) % 64
        self.n = n
        self.ptr = ffi.cast("void *", self.raw + self.off)
        self.addr = addr + self.off
        if _POISON:
            _POISON(addr, self.off)
            _POISON(self.addr + n, self.PAD - self.off)

    def close(self) -> None:
        if _UNPOISON:
            _UNPOISON(int(ffi.cast("uintptr_t", self.raw)), self.n + self.PAD)

    def __enter__(self) -> "Buf":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def put(self, off: int, size: int, value: int) -> None:
        if 0 <= off and off + size <= self.n:
            ffi.memmove(self.raw + self.off + off, value.to_bytes(size, "little"), size)

    def word(self, off: int) -> int:
        return struct.unpack_from("<Q", ffi.buffer(self.raw + self.off + off, 8))[0]


def _policy(**kw):
    v = sg.Policy(**kw).fill_view(ffi.new("struct sg_policy_view *"))
    return v


POLICY = _policy(rate=100, burst=10, min_requests=2, open_timeout=0.01, half_open_max_calls=3)


def _segment(cap: int, manual: bool) -> Buf:
    b = Buf(lib.sg_segment_size(cap))
    assert lib.sg_segment_init(b.ptr, b.n, cap, 0, 1, 0, 1 if manual else 0) == lib.SG_OK
    return b


def _register(b: Buf, name: bytes) -> int:
    idx = ffi.new("uint32_t *")
    rc = lib.sg_table_register(b.ptr, b.n, name, len(name), POLICY, 1, idx, ffi.NULL)
    assert rc in (lib.SG_OK, lib.SG_CREATED)
    return idx[0]


# -- header ---------------------------------------------------------------------------------

@FUZZ
@given(cap=st.integers(1, 4), manual=st.booleans(),
       edits=st.lists(st.tuples(st.sampled_from(sorted(H_FIELDS)), words), max_size=6),
       raw=st.lists(st.tuples(st.integers(0, HDR - 1), st.integers(0, 255)), max_size=8),
       cut=st.one_of(st.just(0), st.integers(1, 3000)),
       index=st.one_of(st.integers(0, 8), st.sampled_from([U32, 2**31, 65536])),
       name=st.binary(max_size=80))
def test_fuzz_header_and_table(cap, manual, edits, raw, cut, index, name):
    full = lib.sg_segment_size(cap)
    with _segment(cap, manual) as good:
        _register(good, b"a")
        data = bytes(ffi.buffer(good.raw + good.off, good.n))
    n = max(0, full - cut)                    # a mapping shorter than the header claims
    with Buf(n) as b:
        ffi.memmove(b.raw + b.off, data[:n], n)
        for f, value in edits:                # torn or hostile header fields
            off, size = H_FIELDS[f]
            b.put(off, size, value & (2 ** (8 * size) - 1))
        for off, byte in raw:
            b.put(off, 1, byte)
        _table_calls(b, index, name)


def _table_calls(b: Buf, index: int, name: bytes) -> None:
    hv = ffi.new("struct sg_header_view *")
    rc = lib.sg_segment_check(b.ptr, b.n, hv)
    assert rc in CHECK_RCS
    if rc == lib.SG_OK:
        assert 1 <= hv.capacity <= lib.SG_MAX_CAPACITY
        assert hv.total_size == HDR + hv.capacity * SLOT <= b.n
    h = ffi.new("struct sg_handle *")
    rh = lib.sg_handle_init(h, b.ptr, b.n, index)
    assert rh in CHECK_RCS | {lib.SG_E_ARG}
    if rh == lib.SG_OK:
        assert rc == lib.SG_OK and index < hv.capacity
        _slot_ops(b, h, [("acquire", 5, 1, 0), ("record", 5, 0, 1), ("decide", 5, 1, 2),
                         ("snapshot", 5, 0, 0), ("lsnap", 5, 0, 0), ("policy", 0, 0, 0)])
    idx, claim = ffi.new("uint32_t *"), ffi.new("uint64_t *")
    rr = lib.sg_table_register(b.ptr, b.n, name, len(name), POLICY, 7, idx, claim)
    assert rr in CHECK_RCS | {lib.SG_CREATED, lib.SG_E_BUSY, lib.SG_E_FULL, lib.SG_E_ARG,
                              lib.SG_E_CORRUPT}
    if rr in (lib.SG_OK, lib.SG_CREATED):
        assert rc == lib.SG_OK and idx[0] < hv.capacity
        assert 1 <= len(name) <= 64 and b"\0" not in name
    rf = lib.sg_table_find(b.ptr, b.n, name, len(name), idx)
    assert rf in CHECK_RCS | {lib.SG_E_NOT_FOUND, lib.SG_E_BUSY, lib.SG_E_ARG, lib.SG_E_CORRUPT}
    if rr in (lib.SG_OK, lib.SG_CREATED):
        assert rf == lib.SG_OK
    v = ffi.new("struct sg_slot_view *")
    for i in (0, index, index + 1):
        rs = lib.sg_slot_snapshot(b.ptr, b.n, i & U32, v)
        assert rs in CHECK_RCS | {lib.SG_E_ARG, lib.SG_E_CORRUPT}
        if rs == lib.SG_OK:
            assert v.kind in (0, 1, 2, 3, 4) and v.name_len <= 64
    rt = lib.sg_table_takeover(b.ptr, b.n, index, claim[0])
    assert rt in CHECK_RCS | {lib.SG_E_ARG, lib.SG_E_BUSY}
    if b.n >= HDR:
        lib.sg_clock_now(b.ptr)
        assert lib.sg_clock_set(b.ptr, 5) in (lib.SG_OK, lib.SG_E_CLOCK)


@FUZZ
@given(n=st.integers(0, 1400), seed=st.binary(min_size=0, max_size=64))
def test_fuzz_random_bytes_as_segment(n, seed):
    """Memory that never was a segment: every call refuses it or works within it."""
    with Buf(n) as b:
        pattern = (seed or b"\0") * (n // max(1, len(seed)) + 1)
        ffi.memmove(b.raw + b.off, pattern[:n], n)
        _table_calls(b, 0, b"x")


# -- slots ----------------------------------------------------------------------------------

OPS = ["acquire", "record", "force", "reclaim", "snapshot", "decide", "cancel", "scale", "lsnap",
       "policy", "publish", "admit", "admit_wait", "release", "retry", "allow", "allow_cp",
       "reserve", "h_acquire", "h_record", "h_cancel"]
OVERLOAD_OPS = ["t_decide", "t_record", "t_report", "t_snap", "p_observe", "p_snap"]
OPS += OVERLOAD_OPS
ops = st.lists(st.tuples(st.sampled_from(OPS), words, words, i64), min_size=1, max_size=25)

ADMIT_NEG = {lib.SG_R_OPEN, lib.SG_R_PROBES_FULL, lib.SG_R_RATE_LIMITED, lib.SG_E_ARG,
             lib.SG_E_COST, lib.SG_E_CORRUPT, lib.SG_R_THROTTLED, lib.SG_E_GONE}
# SG_E_GONE: a handle whose slot word is not the READY word it was bound to (scribbled)
DECIDE_RCS = {lib.SG_OK, lib.SG_R_RATE_LIMITED, lib.SG_E_ARG, lib.SG_E_COST, lib.SG_E_GONE}


def _slot_ops(b: Buf, h, seq) -> None:
    slot = h.slot
    d = ffi.new("struct sg_decision *")
    bv = ffi.new("struct sg_breaker_view *")
    lv = ffi.new("struct sg_limiter_view *")
    pv = ffi.new("struct sg_policy_view *")
    for op, a, c, x in seq:
        now, u32 = a, c & U32
        if op == "acquire":
            t = lib.sg_breaker_acquire_at(slot, now, u32)
            assert t >= 0 or t in {lib.SG_R_OPEN, lib.SG_R_PROBES_FULL, lib.SG_E_CORRUPT, lib.SG_E_GONE}
        elif op == "record":
            t = lib.sg_breaker_record_at(slot, now, x)
            assert t in (0, 1, 2, 3, lib.SG_T_STALE, lib.SG_E_ARG)
        elif op == "force":
            t = lib.sg_breaker_force_at(slot, now, u32 % 8)
            assert t in (0, 1, 3, lib.SG_E_ARG)
        elif op == "reclaim":
            assert lib.sg_breaker_reclaim(slot, u32 % 16, a) in (lib.SG_OK, lib.SG_E_BUSY,
                                                                  lib.SG_E_ARG)
        elif op == "snapshot":
            rc = lib.sg_breaker_snapshot_at(slot, now, bv)
            assert rc in (lib.SG_OK, lib.SG_E_CORRUPT)
            if rc == lib.SG_OK:
                assert bv.state <= 5 and bv.generation < 2**25
                assert bv.probes_in_flight <= lib.SG_MAX_PROBES
                assert bv.threshold_ppm <= 10**6 and bv.baseline_ppm <= 10**6
                assert bv.half_open_successes < 2**20
        elif op == "decide":
            rc = lib.sg_limiter_decide_at(slot, now, c, u32 % 6 if c & 1 else u32, x, d)
            assert rc in DECIDE_RCS
            if rc == lib.SG_OK:
                assert d.delay_ns >= 0 and (d.delay_ns == 0 or d.delay_ns <= x)
        elif op == "cancel":
            d.act_ns, d.tat_ns, d.delay_ns = a, c, x
            assert lib.sg_limiter_cancel_at(slot, now ^ c, c, d) in (lib.SG_OK, lib.SG_E_ARG)
        elif op == "scale":
            # SG_E_BUSY: the scribbled rate-change word holds a claim not yet due
            assert lib.sg_limiter_scale_at(slot, now, u32 % 1_200_000 if c & 1 else u32) in (
                lib.SG_OK, lib.SG_E_ARG, lib.SG_E_BUSY)
        elif op == "lsnap":
            rc = lib.sg_limiter_snapshot_at(slot, now, u32 % 6, lv)
            assert rc in (lib.SG_OK, lib.SG_E_ARG)
            if rc == lib.SG_OK:
                assert math.isfinite(lv.tokens) and lv.tokens >= 0
                assert math.isfinite(lv.effective_rate) and lv.effective_rate >= 0
                assert 1 <= lv.scale_ppm <= 10**6
        elif op == "policy":
            if lib.sg_policy_read(h, pv) == lib.SG_E_GONE:
                continue
            assert 1 <= pv.buckets <= lib.SG_MAX_BUCKETS
            assert 1 <= pv.half_open_max <= lib.SG_MAX_PROBES
            assert pv.emission_ns >= 1 and pv.bucket_ns >= 1 and pv.burst >= 1
            assert pv.failure_ppm <= 10**6 and pv.jitter_ppm <= 10**6
        elif op == "publish":
            ffi.memmove(pv, POLICY, ffi.sizeof(pv[0]))
            fields = ["buckets", "half_open_max", "burst", "failure_ppm", "emission_ns"]
            setattr(pv, fields[u32 % 5], a & (U32 if u32 % 5 < 4 else U64))
            assert lib.sg_policy_publish(h, pv, u32, ffi.NULL) in (lib.SG_OK, lib.SG_E_ARG, lib.SG_E_BUSY,
                                                                   lib.SG_E_GONE)
        elif op in ("admit", "admit_wait"):
            t = (lib.sg_admit(h, c) if op == "admit" else lib.sg_admit_wait(h, c, x, d))
            assert t >= 0 or t in ADMIT_NEG
        elif op == "release":
            lib.sg_release_probe(h, x)
        elif op == "retry":
            lib.sg_breaker_retry_after(h)
        elif op == "allow":
            assert lib.sg_allow(h) in DECIDE_RCS
        elif op == "allow_cp":
            assert lib.sg_allow_cp(h, c) in DECIDE_RCS
        elif op == "reserve":
            assert lib.sg_reserve(h, c, x, d) in DECIDE_RCS
        elif op == "h_acquire":
            t = lib.sg_breaker_acquire(h)
            assert t >= 0 or t in {lib.SG_R_OPEN, lib.SG_R_PROBES_FULL, lib.SG_E_CORRUPT, lib.SG_E_GONE}
        elif op == "h_record":
            lib.sg_breaker_record(h, x)
        elif op == "h_cancel":
            assert lib.sg_limiter_cancel(h, c, d) in (lib.SG_OK, lib.SG_E_ARG, lib.SG_E_GONE)
        elif op in OVERLOAD_OPS:
            _overload_op(h, op, now, c, x)


def _overload_op(h, op: str, now: int, c: int, x: int) -> None:
    """Throttling and prediction calls (csrc/throttle.c, csrc/predict.c) on any slot."""
    if op == "t_decide":
        assert lib.sg_throttle_decide_at(h.slot, now) in (lib.SG_OK, lib.SG_R_THROTTLED)
    elif op == "t_record":
        assert lib.sg_throttle_record_at(h.slot, now, x % 5) in (lib.SG_OK, lib.SG_E_ARG)
    elif op == "t_report":
        assert lib.sg_throttle_report(h, c & 1) in (lib.SG_OK, lib.SG_E_GONE)
    elif op == "t_snap":
        v = ffi.new("struct sg_throttle_view *")
        assert lib.sg_throttle_snapshot_at(h.slot, now, v) == lib.SG_OK
        assert v.probability_ppm <= 10**6 and v.working <= lib.SG_THROTTLE_BUCKETS
    else:
        v = ffi.new("struct sg_predict_view *")
        rc = (lib.sg_predict_observe_at(h.slot, now, c, v) if op == "p_observe"
              else lib.sg_predict_snapshot_at(h.slot, now, v))
        assert rc in (0, 1) and v.valid <= 3
        assert v.forecast_ppm <= 10**6 and v.slow_forecast_ppm <= 10**6
        assert 0 <= v.level_ppm <= 10**6 and 0 <= v.slow_level_ppm <= 10**6
        assert -10**6 <= v.trend_ppm <= 10**6 and -10**6 <= v.slow_trend_ppm <= 10**6


@FUZZ
@given(manual=st.booleans(), scribble=st.lists(st.tuples(st.integers(0, WORDS - 1), words),
                                              max_size=40),
       noise=st.one_of(st.none(), st.binary(min_size=8, max_size=64)), seq=ops)
def test_fuzz_slot_contents(manual, scribble, noise, seq):
    """A READY slot whose every word may hold anything; then every slot call, at any time."""
    with _segment(2, manual) as b:
        i = _register(b, b"ep")
        base = HDR + i * SLOT
        if noise:                              # whole slot of garbage (but still READY)
            pat = (noise * (SLOT // len(noise) + 1))[:SLOT]
            ffi.memmove(b.raw + b.off + base, pat, SLOT)
            b.put(base, 8, 2 << 62)
        for w, value in scribble:              # selected words, including the state word
            b.put(base + 8 * w, 8, value)
        h = ffi.new("struct sg_handle *")
        assert lib.sg_handle_init(h, b.ptr, b.n, i) == lib.SG_OK
        _slot_ops(b, h, seq)
        _table_calls(b, i, b"ep")


@FUZZ
@given(seq=ops)
def test_fuzz_sane_slot_any_calls(seq):
    """A well-formed slot and arbitrary arguments, times and tokens."""
    with _segment(1, True) as b:
        h = ffi.new("struct sg_handle *")
        assert lib.sg_handle_init(h, b.ptr, b.n, _register(b, b"ep")) == lib.SG_OK
        _slot_ops(b, h, seq)


@FUZZ
@given(fields=st.lists(st.tuples(st.sampled_from(
    ["emission_ns", "bucket_ns", "open_ns", "open_max_ns", "probe_lease_ns", "slow_call_ns",
     "recovery_ns", "failure_ppm", "slow_ppm", "adaptive_max_ppm", "min_requests", "buckets",
     "half_open_max", "success_threshold", "flags", "rate_floor_ppm", "jitter_ppm",
     "backoff_milli", "burst", "share0", "share3", "throttle_window_ns", "throttle_k_milli",
     "throttle_min_requests", "predict_horizon_ns"]), words), max_size=8), seq=ops)
def test_fuzz_policy_views(fields, seq):
    """Any policy view either fails sg_policy_check or runs every call safely."""
    pv = ffi.new("struct sg_policy_view *")
    ffi.memmove(pv, POLICY, ffi.sizeof(pv[0]))
    for f, value in fields:
        if f.startswith("share"):
            pv.share_ppm[int(f[-1])] = value & U32
        else:
            setattr(pv, f, value & (U64 if f.endswith("_ns") else U32))
    with _segment(1, True) as b:
        idx = ffi.new("uint32_t *")
        rc = lib.sg_table_register(b.ptr, b.n, b"p", 1, pv, 1, idx, ffi.NULL)
        assert rc == (lib.SG_CREATED if lib.sg_policy_check(pv) == lib.SG_OK else lib.SG_E_ARG)
        if rc == lib.SG_CREATED:
            h = ffi.new("struct sg_handle *")
            assert lib.sg_handle_init(h, b.ptr, b.n, idx[0]) == lib.SG_OK
            _slot_ops(b, h, seq)


# -- the Python layer over a scribbled real segment ----------------------------------------------

@FUZZ
@given(scribble=st.lists(st.tuples(st.integers(0, (HDR + 2 * SLOT) // 8 - 1), words),
                         min_size=1, max_size=30))
def test_fuzz_service_over_scribbled_segment(segname, scribble):
    """Scribble on a live segment: every service call answers or raises a ShmguardError."""
    svc = sg.ResilienceService(segname, capacity=2, manual_clock=True)
    try:
        svc.register_endpoint("ep", sg.Policy(rate=100, burst=5, min_requests=1,
                                              half_open_max_calls=2))
        p = ffi.cast("uint64_t *", svc.segment.base)
        for w, value in scribble:
            p[w] = value
        calls = [lambda: svc.execute("ep", int), lambda: svc.limiter("ep").allow(),
                 lambda: svc.limiter("ep").reserve(2, max_wait=1.0).cancel(),
                 lambda: svc.breaker("ep").allow(), lambda: svc.stats("ep"),
                 lambda: svc.breaker("ep").snapshot(), lambda: svc.endpoints(),
                 lambda: svc.register_endpoint("ep2", sg.Policy()),
                 lambda: svc.breaker("ep").reset(), lambda: svc.adjust_rate("ep", 0.5),
                 lambda: svc.limiter("ep").tokens(), lambda: svc.now_ns()]
        for call in calls:
            try:
                call()
            except sg.ShmguardError:
                pass
    finally:
        svc.close()
        svc.unlink()


@FUZZ
@given(scribble=st.lists(st.tuples(st.integers(0, HDR // 8 - 1), words), min_size=1,
                         max_size=6),
       size=st.one_of(st.none(), st.integers(0, HDR + 3 * SLOT)))
def test_fuzz_attach_to_scribbled_segment(segname, scribble, size, monkeypatch):
    """Attaching to a segment with a hostile header (or size) works or raises SegmentError."""
    monkeypatch.setattr(shmguard.segment, "ATTACH_WAIT", 0.01)  # nobody is initialising it
    try:
        svc = sg.ResilienceService(segname, capacity=2)
        p = ffi.cast("uint64_t *", svc.segment.base)
        for w, value in scribble:
            p[w] = value
        svc.close()
        if size is not None:
            os.truncate(f"/dev/shm/shmguard.{os.geteuid()}.{segname}", size)
        try:
            other = sg.ResilienceService(segname, create=False)
        except sg.SegmentError:
            return                         # refused, with a clear error
        try:
            assert other.segment.size >= HDR + other.segment.capacity * SLOT
            other.register_endpoint("x", sg.Policy())
            other.limiter("x").allow()
        except sg.ShmguardError:
            pass
        finally:
            other.close()
    finally:
        sg.unlink(segname)


ONE = lib.SG_HEADER_SIZE + lib.SG_SLOT_SIZE


@pytest.mark.parametrize("n", [0, 1, 8, lib.SG_HEADER_SIZE - 1, lib.SG_HEADER_SIZE,
                               lib.SG_HEADER_SIZE + 1, ONE - 1, ONE, ONE + 1])
def test_short_mappings_are_refused_exactly(n):
    """The header claims one slot (header + one slot); any shorter mapping is TRUNCATED."""
    with _segment(1, False) as good:
        data = bytes(ffi.buffer(good.raw + good.off, good.n))
    with Buf(n) as b:
        ffi.memmove(b.raw + b.off, data[:n], n)
        hv = ffi.new("struct sg_header_view *")
        want = lib.SG_OK if n >= ONE else lib.SG_E_TRUNCATED
        assert lib.sg_segment_check(b.ptr, n, hv) == want
        h = ffi.new("struct sg_handle *")
        assert lib.sg_handle_init(h, b.ptr, n, 0) == want
        assert lib.sg_handle_init(h, b.ptr, n, 1) == (lib.SG_E_ARG if n >= ONE else want)
