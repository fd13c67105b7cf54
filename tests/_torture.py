"""Crash torture: K workers hammer one segment while a killer SIGKILLs them at random.

Each worker (a fork of this process) loops over a random mix of decisions:
limiter allow / reserve (+ cancel) at every priority, breaker permits with
half-open probes (held for a random while, some overrunning their lease),
probes of a dependency that always fails (one probe permit: the issue-10
interleaving), ``execute`` through breaker + limiter (with adaptive
throttling) and through a bulkhead (``bh``), and registration of new
endpoint names (several workers race for the same new name). The parent
is the killer: at random moments it SIGKILLs a random worker, reaps it and
forks a replacement; it SIGSTOPs workers for random whiles (then SIGCONTs
them); it changes the rate of ``lim`` (adjust_rate and a replaced policy)
while workers use it; it also plants claims of a dead process ("stale
claims") in empty slots that workers are about to register, and samples
the breakers.

Afterwards it checks, and reports as ``violations`` (must be empty):

- no deadlock: every surviving worker, then a freshly started process,
  completes 10,000 decisions within SPRINT_LIMIT seconds (time reported);
- the rate bound: the segment's own accepted counter of each limited
  endpoint never exceeds tolerance + (integral of the rate) + rate x max
  wait, where tolerance is the burst scaled by the highest priority share
  used and the rate's integral follows the logged rate changes (each taken
  at the worse end of the interval it happened in, recoveries as ramps);
- no permit of an ended generation: a probe permit of ``p1`` (one permit,
  only its holder's outcome can end its episode) must find the breaker
  still HALF_OPEN in its generation right after admission;
- the probe bound: replaying every probe permit's logged interval (start
  logged after the grant, end before the release, a killed holder's end at
  the moment of its kill, each clipped at its lease expiry), no generation
  of a half-open breaker ever had more than half_open_max permits at once;
  and no sampled permit ever showed more lease left than its lease;
- the bulkhead bound: replaying every call through the bulkhead endpoint
  ``bh`` (logged inside the call: start after the ticket, end before its
  release, a killed caller's end at its kill), never more than max_concurrent
  calls at once, while workers are also SIGSTOPped (a stalled holder keeps
  its ticket); at the end, with every worker gone, no ticket is lost: all
  max_concurrent tickets can be taken again;
- the slot table: every slot passes sg_slot_snapshot, READY names are
  unique and found by sg_table_find at their slot, no claim of a live
  process is older than the claim bound, and every name (including those
  behind planted dead claims) registers into exactly one slot.

Run it:  python tests/_torture.py --seconds 10 --workers 4 [--seed N] [--json]
(``bench/torture.py --seconds N`` is the long version; tests/crash/test_torture.py
runs a short one in the normal suite). Run as a program, so the killer is a
single-threaded process and fork() is safe.
"""
from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import json
import mmap
import os
import random
import shutil
import signal
import sys
import tempfile
import time
import traceback
import uuid
from typing import Any

import shmguard as sg
from shmguard import probes as sg_probes
from shmguard._capi import ffi, lib
from shmguard.service import CLAIM_STALE_NS

import _torture_keyed

NS = 1_000_000_000
SPRINT = 10_000          # decisions each survivor / fresh process must complete
SPRINT_LIMIT = 120.0     # generous bound (s) for one sprint on a loaded 2-core box
STALL_LIMIT = 20.0       # a live worker making no progress this long is a violation
CLAIM_BOUND_MS = CLAIM_STALE_NS // 1_000_000   # a live claim older than this is stuck
MAX_WAIT = 0.02          # reserve()'s max_wait in the workers (s)
LEASE_UNIT = 1 << 20     # lease deadlines are kept in 2**20 ns units

HDR_SLOT = lib.SG_HEADER_SIZE   # struct sg_header
SLOT = lib.SG_SLOT_SIZE         # struct sg_slot
BREAKER_EPS = ("brk", "lease", "mix", "p1")
EP_ID = {"brk": 0, "lease": 1, "mix": 2, "p1": 3, "bh": 4}

PRIOS = (sg.Priority.LOW, sg.Priority.NORMAL, sg.Priority.HIGH, sg.Priority.CRITICAL)
POLICIES = {
    # limiter only (its breaker never sees an outcome): the rate bound
    "lim": sg.Policy(rate=2000, burst=40),
    # breaker only: probes with a long lease (a live holder never overruns it)
    "brk": sg.Policy(failure_threshold=0.25, min_requests=4, window=1.0, open_timeout=0.004,
                     half_open_max_calls=3, probe_lease=5.0,
                     failure_exceptions=(ConnectionError,)),
    # breaker only: a short lease that holders sometimes overrun
    "lease": sg.Policy(failure_threshold=0.25, min_requests=4, window=1.0, open_timeout=0.004,
                       half_open_max_calls=2, probe_lease=0.03,
                       failure_exceptions=(ConnectionError,)),
    # both, through execute(): admission = breaker + limiter in one C call
    # (and adaptive throttling: k 1.2 refuses some calls at 35 % failures)
    "mix": sg.Policy(rate=500, burst=10, failure_threshold=0.25, min_requests=4, window=1.0,
                     open_timeout=0.004, half_open_max_calls=2, probe_lease=5.0,
                     failure_exceptions=(ConnectionError,), throttle_k=1.2,
                     throttle_window=0.5, throttle_min_requests=4),
    # a dependency that always fails, one probe permit: only its holder ends an episode
    "p1": sg.Policy(failure_threshold=0.5, min_requests=1, window=1.0, open_timeout=0.002,
                    half_open_max_calls=1, probe_lease=5.0, jitter=0.0),
    # bulkhead only: at most 2 calls in flight host-wide (intervals replayed)
    "bh": sg.Policy(max_concurrent=2, max_wait=0.005),
}
#: rates the killer switches ``lim`` between (burst kept), and health scores it applies
RATES = (1000.0, 2000.0, 4000.0)
HEALTH = (0.25, 0.5, 1.0, 1.0)
STOP_FOR = (0.001, 0.15)  # seconds a SIGSTOPped worker stays stopped
REG_POLICY = sg.Policy(rate=1000, burst=10)
MAX_WAIT_NS = {"lim": int(MAX_WAIT * NS), "mix": 0}
PRIOS_USED = {"lim": PRIOS, "mix": (sg.Priority.NORMAL,)}

# Shared log: an anonymous MAP_SHARED mapping made before any fork. Words.
G_PHASE, G_INJECTED, G_T0, G_NEW_PER_S = 0, 1, 2, 3
G_P1, G_ENDED, G_ENDED_GEN, G_ENDED_SEEN = 4, 5, 6, 7   # p1 probes checked; ended-generation admissions
GLOBAL = 16
H_DEC, H_NREC, H_PID, H_SPRINT_NS, H_SPRINT_N, H_DONE, H_REG = 0, 1, 2, 3, 4, 5, 6
HWORDS = _torture_keyed.H_BASE + _torture_keyed.WORDS   # words 8..: the keyed part's counters
REC = 4       # [ep << 40 | lease << 32 | gen, token start (ns >> 16, 31 bits), start ns, end ns]
MAX_REC = 40_000          # probe records per worker slot (at least; grows with --seconds)


def fnv1a(raw: bytes) -> int:
    h = 0xCBF29CE484222325
    for b in raw:
        h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def _load_cas() -> Any:
    path = ctypes.util.find_library("atomic") or "libatomic.so.1"
    try:
        f = ctypes.CDLL(path).__atomic_compare_exchange_8
    except (OSError, AttributeError):
        return None
    f.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint64), ctypes.c_uint64,
                  ctypes.c_int, ctypes.c_int]
    f.restype = ctypes.c_bool
    return f


_CAS = _load_cas()


def cas64(addr: int, expected: int, desired: int) -> bool:
    """Compare-and-swaps the 64-bit word at ``addr`` (libatomic; plain store if absent)."""
    if _CAS is None:
        p = ffi.cast("uint64_t *", addr)
        if p[0] != expected:
            return False
        p[0] = desired
        return True
    e = ctypes.c_uint64(expected)
    return bool(_CAS(addr, ctypes.byref(e), desired, 5, 5))


def slot_addr(svc: sg.ResilienceService, index: int) -> int:
    return int(ffi.cast("uintptr_t", svc.segment.base)) + HDR_SLOT + index * SLOT


def claim_word(pid: int, mono_ns: int | None = None) -> int:
    """Returns a CLAIMED(pid, time) slot state word (layout.h: kind 2 | pid 30 | time 32)."""
    t = (time.monotonic_ns() if mono_ns is None else mono_ns) >> 20
    return (1 << 62) | ((pid & 0x3FFFFFFF) << 32) | (t & 0xFFFFFFFF)


def plant_claim(svc: sg.ResilienceService, name: str, pid: int,
                mono_ns: int | None = None) -> int | None:
    """Plants CLAIMED(pid) in the first non-READY slot on ``name``'s probe path.

    That is exactly the slot sg_table_register would claim for ``name``.
    Returns its index, or None if that slot is not EMPTY (someone got there).
    """
    cap = svc.segment.capacity
    h = fnv1a(name.encode("ascii"))
    for i in range(cap):
        idx = (h + i) % cap
        addr = slot_addr(svc, idx)
        w = ffi.cast("uint64_t *", addr)[0]
        if w >> 62 == 2:
            continue
        if w != 0:
            return None
        return idx if cas64(addr, 0, claim_word(pid, mono_ns)) else None
    return None


def table_report(svc: sg.ResilienceService, expected: set[str] | None) -> tuple[dict, list[str]]:
    """Checks the slot table; returns (figures, violations)."""
    seg, bad = svc.segment, []
    v = ffi.new("struct sg_slot_view *")
    idx = ffi.new("uint32_t *")
    names: dict[str, int] = {}
    claims_dead = claims_live = 0
    for i in range(seg.capacity):
        rc = lib.sg_slot_snapshot(seg.base, seg.size, i, v)
        if rc != lib.SG_OK:
            bad.append(f"slot {i}: sg_slot_snapshot returned {rc}")
            continue
        if v.kind == 2:
            raw = ffi.unpack(v.name, v.name_len)
            try:
                name = raw.decode("ascii")
            except UnicodeDecodeError:
                bad.append(f"slot {i}: READY with a non-ASCII name {raw!r}")
                continue
            if name in names:
                bad.append(f"name {name!r} is in two slots ({names[name]} and {i})")
            names[name] = i
            rc = lib.sg_table_find(seg.base, seg.size, raw, len(raw), idx)
            if rc != lib.SG_OK or idx[0] != i:
                bad.append(f"sg_table_find({name!r}) gave rc {rc} index {idx[0]}, slot is {i}")
        elif v.kind == 1:
            if sg_probes.pid_alive(v.claim_pid):
                claims_live += 1
                if v.claim_age_ms > CLAIM_BOUND_MS:
                    bad.append(f"slot {i}: claim of live pid {v.claim_pid} is {v.claim_age_ms} ms "
                               f"old (bound {CLAIM_BOUND_MS} ms)")
            else:
                claims_dead += 1
    if expected is not None:
        missing, stray = expected - names.keys(), names.keys() - expected
        if missing:
            bad.append(f"{len(missing)} registered names have no slot, e.g. {sorted(missing)[:3]}")
        if stray:
            bad.append(f"{len(stray)} slots hold names nobody registered, e.g. {sorted(stray)[:3]}")
    return {"ready": len(names), "claims_live": claims_live, "claims_dead": claims_dead}, bad


# ---------------------------------------------------------------- workers ----

class _Worker:
    """One worker incarnation: runs until the phase flips, then sprints."""

    def __init__(self, cfg: dict, mm: mmap.mmap, slot: int) -> None:
        self.cfg = cfg
        self.q = memoryview(mm).cast("q")
        self.b = GLOBAL + slot * cfg["region"]
        self.rng = random.Random(f"{cfg['seed']}-{os.getpid()}-{time.monotonic_ns()}")
        self.svc = sg.ResilienceService(cfg["name"], create=False)
        for name, pol in POLICIES.items():
            if name != "lim":            # the killer replaces lim's policy: use what is there
                self.svc.register_endpoint(name, pol)
        self.lim = self.svc.limiter("lim")
        self.brk = self.svc.breaker("brk")
        self.lease = self.svc.breaker("lease")
        self.p1 = self.svc.breaker("p1")
        self.p1_slot = self.svc._eps["p1"].h.slot
        self.view = ffi.new("struct sg_breaker_view *")
        self.keyed = _torture_keyed.WorkerPart(self.svc, self.rng)
        self.ops = [(0.26, self.op_allow), (0.12, self.op_reserve), (0.16, self.op_permit_brk),
                    (0.08, self.op_permit_lease), (0.14, self.op_execute), (0.07, self.op_register),
                    (0.10, self.op_keyed), (0.07, self.op_probe1), (0.10, self.op_bulkhead)]

    # -- the probe log --------------------------------------------------------------
    def log_start(self, ep: str, tok: int) -> int:
        q, b = self.q, self.b
        n = q[b + H_NREC]
        if n >= self.cfg["max_rec"]:
            return -1
        r = b + HWORDS + n * REC
        q[r] = (EP_ID[ep] << 40) | (((tok >> 34) & 0xF) << 32) | ((tok >> 38) & 0x1FFFFFF)
        q[r + 1] = (tok >> 2) & 0x7FFFFFFF
        q[r + 3] = 0
        q[r + 2] = time.monotonic_ns()      # after the grant: never earlier than it
        q[b + H_NREC] = n + 1               # visible only once complete
        return r

    def log_end(self, r: int) -> None:
        if r >= 0:
            self.q[r + 3] = time.monotonic_ns()   # before the release: never later

    # -- operations (each returns how many decisions it made) -------------------------
    def op_allow(self) -> int:
        self.lim.allow(1, self.rng.choice(PRIOS))
        return 1

    def op_reserve(self) -> int:
        r = self.lim.reserve(1, self.rng.choice(PRIOS), max_wait=MAX_WAIT)
        if r.ok and self.rng.random() < 0.5:
            r.cancel()
            return 2
        return 1

    def _permit(self, br: sg.Breaker, ep: str, holds: tuple[float, ...]) -> int:
        permit = br.allow()
        if permit is None:
            return 1
        rec = -1
        if permit.is_probe:     # hold a probe a while: kills land while it is out
            rec = self.log_start(ep, permit.token)
            hold = self.rng.choice(holds)
            if hold:
                time.sleep(hold)
        x = self.rng.random()
        self.log_end(rec)
        if x < 0.35:
            permit.failure()
        elif x < 0.40:
            permit.ignore()
        else:
            permit.success()
        return 2

    def op_permit_brk(self) -> int:
        return self._permit(self.brk, "brk", (0, 0, 0, 0.0005, 0.002))

    def op_permit_lease(self) -> int:
        # 0.04 s overruns the 0.03 s lease: the permit must be reusable after it
        return self._permit(self.lease, "lease", (0, 0, 0.001, 0.001, 0.04))

    def op_probe1(self) -> int:
        """A probe of a dependency that always fails; its episode must still be current."""
        permit = self.p1.allow()
        if permit is None:
            return 1
        if permit.is_probe:
            gen = (permit.token >> 38) & 0x1FFFFFF
            lib.sg_breaker_snapshot_at(self.p1_slot, time.monotonic_ns(), self.view)
            q = self.q
            q[G_P1] += 1                  # a statistic (racy increments are fine)
            if self.view.state != lib.SG_HALF_OPEN or self.view.generation != gen:
                q[G_ENDED] += 1
                q[G_ENDED_GEN] = gen
                q[G_ENDED_SEEN] = (self.view.state << 32) | self.view.generation
        permit.failure()
        return 2

    def op_execute(self) -> int:
        ep = "mix" if self.rng.random() < 0.7 else "brk"
        fail = self.rng.random() < 0.35

        def call() -> int:
            if fail:
                raise ConnectionError("torture")
            return 1
        try:
            self.svc.execute(ep, call)
        except (sg.CircuitOpenError, sg.RateLimitedError, sg.ThrottledError, ConnectionError):
            pass
        return 1

    def op_bulkhead(self) -> int:
        hold = self.rng.choice((0, 0, 0.0002, 0.001, 0.003))

        def call() -> None:
            rec = self.log_start("bh", 0)        # after the ticket was granted
            if hold:
                time.sleep(hold)
            self.log_end(rec)                    # before it is released
        try:
            self.svc.execute("bh", call, priority=self.rng.choice(PRIOS))
        except sg.BulkheadFullError:
            pass
        return 1

    def op_keyed(self) -> int:
        return self.keyed.op(self.q, self.b)

    def op_register(self) -> int:
        q, cfg = self.q, self.cfg
        frontier = min(cfg["nreg"], 1 + (time.monotonic_ns() - q[G_T0]) * cfg["new_per_s"] // NS)
        inj = q[G_INJECTED]
        x = self.rng.random()
        if inj and x < 0.3:
            name = f"inj-{self.rng.randrange(max(0, inj - 3), inj)}"
        elif x < 0.7:
            name = f"reg-{self.rng.randrange(max(0, frontier - 4), frontier)}"  # the newest: races
        else:
            name = f"reg-{self.rng.randrange(frontier)}"
        self.svc.register_endpoint(name, REG_POLICY)
        self.svc.limiter(name).allow()
        q[self.b + H_REG] += 1
        return 2

    def run(self, fresh: bool) -> None:
        q, b, rng = self.q, self.b, self.rng
        q[b + H_PID] = os.getpid()
        if not fresh:
            cum, acc = [], 0.0
            for w, _ in self.ops:
                acc += w
                cum.append(acc)
            fns = [f for _, f in self.ops]
            n = q[b + H_DEC]
            while q[G_PHASE] == 0:
                x = rng.random() * acc
                i = 0
                while cum[i] < x:
                    i += 1
                n += fns[i]()
                q[b + H_DEC] = n
        self.sprint(fresh)

    def sprint(self, fresh: bool) -> None:
        """Completes SPRINT decisions (a fresh process first registers every name)."""
        q, b, svc = self.q, self.b, self.svc
        t = time.monotonic_ns()
        if fresh:
            for k in range(self.cfg["nreg"]):
                svc.register_endpoint(f"reg-{k}", REG_POLICY)
            for k in range(q[G_INJECTED]):
                svc.register_endpoint(f"inj-{k}", REG_POLICY)
        reg = svc.limiter("reg-0")
        lim_allow, high = self.lim.allow, sg.Priority.HIGH
        for i in range(SPRINT):
            k = i & 3
            if k == 0:
                lim_allow(1, high)
            elif k == 1:
                permit = self.brk.allow()
                if permit is not None:
                    permit.success()
            elif k == 2:
                try:
                    svc.execute("mix" if i & 4 else "bh", int)
                except (sg.CircuitOpenError, sg.RateLimitedError, sg.ThrottledError,
                        sg.BulkheadFullError):
                    pass
            else:
                reg.allow()
        q[b + H_SPRINT_NS] = time.monotonic_ns() - t
        q[b + H_SPRINT_N] = SPRINT
        q[b + H_DONE] = 1


def rate_integral(pol: sg.Policy, log: list[tuple[str, float, int, int]], t0: int,
                  t_end: int, step: int = NS // 1000) -> float:
    """Upper bound of the tokens the rate history lets through in [t0, t_end].

    Each logged change happened somewhere in [t_before, t_after]: a new
    policy rate counts as the larger of the two rates over that interval, a
    drop of the health score from t_after, a rise from t_before, ramping
    over ``recovery`` from the scale of that moment (rate.c: re-basing the
    ramp at a later change only slows it). Integrated in 1 ms steps, each
    at the larger end.
    """
    floor, rec = pol.rate_floor, pol.recovery * NS
    events = sorted([(ta if k == "health" else tb, k, v, tb, ta) for k, v, tb, ta in log])
    base, scale = [(t0, pol.rate)], (1.0, 1.0, t0)   # (from, to, start)

    def s_at(t: int, sc: tuple[float, float, int]) -> float:
        f, to, start = sc
        if to <= f or rec == 0 or t >= start + rec:
            return to
        return f + (to - f) * max(0, t - start) / rec

    total, t, i = 0.0, t0, 0
    while t < t_end:
        t2 = min(t + step, t_end)
        hi_base = base[-1][1]
        while i < len(events) and events[i][0] <= t2:
            at, k, v, tb, ta = events[i]
            if k == "rate":
                hi_base = max(hi_base, v)
                base.append((ta, v))
            else:
                target = max(v, floor)
                cur = s_at(tb, scale)
                scale = (target, target, ta) if target <= cur else (cur, target, tb)
            i += 1
        hi_base = max(hi_base, base[-1][1])
        total += hi_base * max(s_at(t, scale), s_at(t2, scale)) * (t2 - t) / NS
        t = t2
    return total


def _die_with_parent() -> None:
    """Linux: SIGKILL this worker when the killer dies, so none outlives a killed run."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)   # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _child(cfg: dict, mm: mmap.mmap, slot: int, fresh: bool) -> None:
    code = 0
    try:
        _die_with_parent()
        if os.getppid() != cfg["killer"]:
            os._exit(4)                     # the killer died before prctl took effect
        _Worker(cfg, mm, slot).run(fresh)
    except BaseException:
        code = 3
        try:
            with open(os.path.join(cfg["errdir"], f"{os.getpid()}.err"), "w") as f:
                f.write(traceback.format_exc())
        except BaseException:
            pass
    finally:
        os._exit(code)


# ------------------------------------------------------------------ killer ----

class Torture:
    def __init__(self, seconds: float, workers: int, seed: int, name: str | None,
                 kill_every: tuple[float, float]) -> None:
        self.seconds, self.k, self.seed = seconds, workers, seed
        self.kill_every = kill_every
        self.rng = random.Random(seed)
        self.name = name or f"torture-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        new_per_s = 30
        nreg = int(min(20_000, 40 + new_per_s * seconds))
        self.ninj_max = int(min(200, 10 + seconds * 3))
        cap = min(lib.SG_MAX_CAPACITY, int((nreg + self.ninj_max + 8) * 1.25))
        max_rec = int(max(MAX_REC, 300 * seconds))
        region = HWORDS + max_rec * REC
        self.cfg = {"name": self.name, "seed": seed, "nreg": nreg, "new_per_s": new_per_s,
                    "region": region, "max_rec": max_rec,
                    "errdir": tempfile.mkdtemp(prefix="shmguard-torture-")}
        self.cap = cap
        self.mm = mmap.mmap(-1, 8 * (GLOBAL + (workers + 1) * region))
        self.q = memoryview(self.mm).cast("q")
        self.procs: dict[int, int] = {}
        self.violations: list[str] = []
        self.kills = self.respawns = self.injected = self.samples = 0
        self.max_probes_seen = {ep: 0 for ep in BREAKER_EPS}
        self.corpse = 0
        self.stopped: dict[int, float] = {}     # worker slot -> when to SIGCONT it
        self.stops = 0
        self.rate_log: list[tuple[str, float, int, int]] = []  # (kind, value, t_before, t_after)

    # -- processes -------------------------------------------------------------------
    def spawn(self, slot: int, fresh: bool = False) -> None:
        pid = os.fork()
        if pid == 0:
            _child(self.cfg, self.mm, slot, fresh)
        self.procs[slot] = pid

    def _err_text(self, pid: int) -> str:
        path = os.path.join(self.cfg["errdir"], f"{pid}.err")
        try:
            with open(path) as f:
                return f.read().strip().splitlines()[-1]
        except OSError:
            return "no traceback"

    def _close_open_record(self, slot: int, t_kill: int) -> None:
        q, b = self.q, GLOBAL + slot * self.cfg["region"]
        n = q[b + H_NREC]
        if n:
            r = b + HWORDS + (n - 1) * REC
            if q[r + 3] == 0:
                q[r + 3] = t_kill   # its holder was alive until at least now

    def stop_some(self) -> None:
        """SIGCONTs workers whose stop is over; SIGSTOPs another one now and then."""
        now = time.monotonic()
        for slot, until in list(self.stopped.items()):
            if now >= until:
                os.kill(self.procs[slot], signal.SIGCONT)
                del self.stopped[slot]
        if self.rng.random() < 0.3:
            slot = self.rng.randrange(self.k)
            if slot not in self.stopped:
                os.kill(self.procs[slot], signal.SIGSTOP)
                self.stopped[slot] = now + self.rng.uniform(*STOP_FOR)
                self.stops += 1

    def resume_all(self) -> None:
        for slot in list(self.stopped):
            os.kill(self.procs[slot], signal.SIGCONT)
        self.stopped.clear()

    def change_rate(self, svc: sg.ResilienceService) -> None:
        """Changes lim's rate while workers use it: a new policy rate, or a health score."""
        if self.rng.random() < 0.5:
            kind, value = "rate", self.rng.choice(RATES)
            t = time.monotonic_ns()
            svc.register_endpoint("lim", POLICIES["lim"].replace(rate=value), replace=True)
        else:
            kind, value = "health", self.rng.choice(HEALTH)
            t = time.monotonic_ns()
            svc.adjust_rate("lim", value)
        self.rate_log.append((kind, value, t, time.monotonic_ns()))

    def kill(self, slot: int) -> None:
        self.stopped.pop(slot, None)      # SIGKILL ends a stopped process too
        pid = self.procs.pop(slot)
        t_kill = time.monotonic_ns()
        os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            self.kills += 1
        else:
            self._exited(slot, pid, status)
        self._close_open_record(slot, t_kill)

    def _exited(self, slot: int, pid: int, status: int) -> None:
        code = os.waitstatus_to_exitcode(status)
        self.violations.append(f"worker {pid} (slot {slot}) ended by itself with {code}: "
                               f"{self._err_text(pid)}")

    def reap_dead(self) -> None:
        for slot, pid in list(self.procs.items()):
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                del self.procs[slot]
                self._exited(slot, pid, status)
                self._close_open_record(slot, time.monotonic_ns())
                self.spawn(slot)
                self.respawns += 1

    # -- sampling ----------------------------------------------------------------------
    def sample(self, svc: sg.ResilienceService) -> None:
        """Snapshots each breaker: at most N live permits, none with more than its lease left.

        A permit granted while the snapshot ran may have started after the
        snapshot's ``now``: it may show up to (t_after - now) more than its lease.
        """
        self.samples += 1
        v = ffi.new("struct sg_breaker_view *")
        for ep in BREAKER_EPS:
            lease, n = int(POLICIES[ep].probe_lease * NS), POLICIES[ep].half_open_max_calls
            now = time.monotonic_ns()
            rc = lib.sg_breaker_snapshot_at(svc._eps[ep].h.slot, now, v)
            slack = time.monotonic_ns() - now
            if rc != lib.SG_OK:
                self.violations.append(f"{ep}: breaker snapshot returned {rc}")
                continue
            live = [(v.probe_pid[i], v.probe_lease_left_ns[i]) for i in range(lib.SG_MAX_PROBES)
                    if v.probe_pid[i]]
            self.max_probes_seen[ep] = max(self.max_probes_seen[ep], len(live))
            if len(live) > n or v.probes_in_flight > n:
                self.violations.append(f"{ep}: {len(live)} live probe permits, max {n}")
            for pid, left in live:
                if not 0 < left <= lease + slack:
                    self.violations.append(f"{ep}: probe of pid {pid} shows {left / NS:.6f} s "
                                           f"of lease left; the lease is {lease / NS} s")

    def inject(self, svc: sg.ResilienceService) -> None:
        """Plants a dead process's claim where the next inj-<k> name will be registered."""
        k = self.q[G_INJECTED]
        if k >= self.ninj_max:
            return
        if plant_claim(svc, f"inj-{k}", self.corpse) is not None:
            self.injected += 1
        self.q[G_INJECTED] = k + 1   # workers may now register inj-k

    # -- the run ---------------------------------------------------------------------------
    def run(self) -> dict:
        t_start = time.monotonic()
        self.cfg["killer"] = os.getpid()
        svc = sg.ResilienceService(self.name, capacity=self.cap)
        try:
            return self._run(svc, t_start)
        finally:
            for pid in list(self.procs.values()):
                try:
                    os.kill(pid, signal.SIGKILL)
                    os.waitpid(pid, 0)
                except OSError:
                    pass
            if self.corpse:
                os.waitpid(self.corpse, 0)
            svc.close()
            svc.unlink()
            shutil.rmtree(self.cfg["errdir"], ignore_errors=True)

    def _run(self, svc: sg.ResilienceService, t_start: float) -> dict:
        q, k = self.q, self.k
        for name, pol in POLICIES.items():
            svc.register_endpoint(name, pol)
        _torture_keyed.limiter(svc)
        self.corpse = os.fork()        # stays a zombie until the end: a pid that is dead
        if self.corpse == 0:           # (psutil) and cannot be reused meanwhile
            os._exit(0)
        t0 = svc.now_ns()
        q[G_T0] = time.monotonic_ns()
        for slot in range(k):
            self.spawn(slot)
        region = self.cfg["region"]
        last_dec = {s: (0, time.monotonic()) for s in range(k)}
        deadline = time.monotonic() + self.seconds
        next_inject = next_table = next_rate = time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(self.rng.uniform(*self.kill_every))
            self.reap_dead()
            self.sample(svc)
            self.stop_some()
            now = time.monotonic()
            if now >= next_rate:
                self.change_rate(svc)
                next_rate = now + self.rng.uniform(0.1, 0.5)
            if now >= next_inject:
                self.inject(svc)
                next_inject = now + 0.25
            if now >= next_table:
                _, bad = table_report(svc, None)
                self.violations += bad
                next_table = now + 1.0
            for s in range(k):
                d = q[GLOBAL + s * region + H_DEC]
                if d != last_dec[s][0]:
                    last_dec[s] = (d, now)
                elif now - last_dec[s][1] > STALL_LIMIT:
                    self.violations.append(f"worker slot {s} made no decision for {STALL_LIMIT} s")
                    last_dec[s] = (d, now)
            victim = self.rng.randrange(k)
            self.kill(victim)
            self.spawn(victim)
            self.respawns += 1
        decisions = sum(q[GLOBAL + s * region + H_DEC] for s in range(k))
        registrations = sum(q[GLOBAL + s * region + H_REG] for s in range(k))
        # -- end: survivors, then a fresh process, must each complete SPRINT decisions
        self.resume_all()
        q[G_PHASE] = 1
        sprints = [self._await_sprint(s, "survivor") for s in range(k)]
        self.spawn(k, fresh=True)
        sprints.append(self._await_sprint(k, "fresh"))
        decisions += sum(s["decisions"] for s in sprints)
        t_end = svc.now_ns()
        limiter = {ep: self._rate_bound(svc, ep, t0, t_end) for ep in MAX_WAIT_NS}
        throttle = self._throttle_sane(svc)
        keyed = _torture_keyed.report(svc, q, self.cfg["region"], k, GLOBAL, t0, t_end,
                                      self.violations)
        probes = self._probe_replay()
        if q[G_ENDED]:
            seen = q[G_ENDED_SEEN]
            self.violations.append(f"p1: {q[G_ENDED]} probe permits granted in an ended generation "
                                   f"(e.g. generation {q[G_ENDED_GEN]}; the breaker was in state "
                                   f"{seen >> 32}, generation {seen & 0xFFFFFFFF})")
        probes["p1_checked"] = q[G_P1]
        probes["p1_ended_generation"] = q[G_ENDED]
        expected = set(POLICIES) | {f"reg-{i}" for i in range(self.cfg["nreg"])} | {
            f"inj-{i}" for i in range(q[G_INJECTED])}
        table, bad = table_report(svc, expected)
        self.violations += bad
        self.sample(svc)
        bulkhead = self._tickets_back(svc)
        return {
            "seconds": round(time.monotonic() - t_start, 1), "workers": k, "seed": self.seed,
            "kills": self.kills, "respawns": self.respawns,
            "decisions": decisions, "bulkhead": bulkhead,
            "registrations": registrations, "stale_claims_planted": self.injected,
            "breaker_samples": self.samples, "max_live_probes_sampled": self.max_probes_seen,
            "sprints": sprints, "limiter": limiter, "throttle": throttle, "keyed": keyed,
            "probes": probes, "table": table, "stops": self.stops,
            "rate_changes": len(self.rate_log),
            "violations": self.violations,
        }

    def _await_sprint(self, slot: int, who: str) -> dict:
        pid = self.procs[slot]
        b = GLOBAL + slot * self.cfg["region"]
        limit = time.monotonic() + SPRINT_LIMIT + 10
        while True:
            got, status = os.waitpid(pid, os.WNOHANG)
            if got:
                del self.procs[slot]
                if os.waitstatus_to_exitcode(status) != 0:
                    self._exited(slot, pid, status)
                break
            if time.monotonic() > limit:
                self.violations.append(f"{who} {pid} did not finish {SPRINT} decisions in "
                                       f"{SPRINT_LIMIT} s: deadlock?")
                self.kill(slot)
                break
            time.sleep(0.01)
        took = self.q[b + H_SPRINT_NS] / NS
        done = self.q[b + H_DONE] == 1
        if done and took > SPRINT_LIMIT:
            self.violations.append(f"{who} {pid} took {took:.1f} s for {SPRINT} decisions")
        return {"who": who, "pid": pid, "decisions": self.q[b + H_SPRINT_N] if done else 0,
                "seconds": round(took, 3)}

    def _throttle_sane(self, svc: sg.ResilienceService) -> dict:
        """Throttling of "mix" after the kills: totals consistent, window within them."""
        t = svc.stats("mix").throttle
        assert t is not None
        if not (t.throttled <= t.requests_total and t.accepts_total <= t.requests_total
                and t.requests <= t.requests_total and 0.0 <= t.throttle_probability <= 1.0):
            self.violations.append(f"mix: inconsistent throttle counts {t}")
        return {"requests": t.requests_total, "accepts": t.accepts_total,
                "throttled": t.throttled}

    def _rate_bound(self, svc: sg.ResilienceService, ep: str, t0: int, t_end: int) -> dict:
        m = svc.stats(ep).limiter_metrics
        pol = POLICIES[ep]
        tol = pol.burst * max(pol.priority_shares[int(p)] for p in PRIOS_USED[ep])
        log = self.rate_log if ep == "lim" else []
        r_max = max([pol.rate] + [v for k, v, _, _ in log if k == "rate"])
        integral = rate_integral(pol, log, t0, t_end)
        bound = int(tol + integral + r_max * MAX_WAIT_NS[ep] / NS) + 1
        elapsed = t_end - t0
        if m.accepted > bound:
            self.violations.append(f"{ep}: accepted {m.accepted} > bound {bound} (tolerance "
                                   f"{tol:g} + {integral:.1f} by the rate history over "
                                   f"{elapsed / NS:.3f} s, {len(log)} rate changes)")
        return {"accepted": m.accepted, "rejected": m.rejected, "bound": bound,
                "rate": pol.rate, "burst": pol.burst, "elapsed_s": round(elapsed / NS, 3),
                "rate_changes": len(log), "fill": round(m.accepted / bound, 3) if bound else 0.0}

    def _tickets_back(self, svc: sg.ResilienceService) -> dict:
        """Every worker is gone: every ticket must come back (dead holders' reclaimed)."""
        bh = svc.bulkhead("bh")
        n = POLICIES["bh"].max_concurrent
        time.sleep(0.06)                          # past the reclaim throttle of this process
        got = [bh.try_acquire() for _ in range(n + 1)]
        s = bh.stats()
        if [t is not None for t in got] != [True] * n + [False]:
            self.violations.append(f"bh: after the run {sum(t is not None for t in got)} of {n} "
                                   f"tickets could be taken again: holders {s.holders}")
        for t in got:
            if t is not None:
                t.release()
        return {"acquired": s.acquired, "rejected": s.rejected, "waited": s.waited,
                "reclaimed": s.reclaimed, "peak": s.peak, "max_concurrent": n}

    def _probe_replay(self) -> dict:
        """Replays every logged probe interval: <= half_open_max per generation at once."""
        q, region = self.q, self.cfg["region"]
        groups: dict[tuple[int, int], list[tuple[int, int, int, int]]] = {}
        logged = truncated = 0
        lease_ns = {EP_ID[ep]: int(POLICIES[ep].probe_lease * NS) for ep in BREAKER_EPS}
        lease_ns[EP_ID["bh"]] = 1 << 62            # a ticket has no lease: never clipped
        for s in range(self.k + 1):
            b = GLOBAL + s * region
            n = q[b + H_NREC]
            truncated += n >= self.cfg["max_rec"]
            for i in range(n):
                r = b + HWORDS + i * REC
                key, tstart, start, end = q[r], q[r + 1], q[r + 2], q[r + 3]
                if end == 0:
                    self.violations.append(f"probe record {s}/{i} was never closed")
                    continue
                ep, lease = key >> 40, (key >> 32) & 0xFF
                u = start >> 16                          # grant time, 2**16 ns units
                g = (u & ~0x7FFFFFFF) | tstart
                if g > u:
                    g -= 1 << 31
                expiry = ((g << 16) + lease_ns[ep]) // LEASE_UNIT * LEASE_UNIT  # earliest
                end = min(end, expiry)
                if end > start:
                    groups.setdefault((ep, key & 0xFFFFFFFF), []).append((start, end, s, lease))
                logged += 1
        names = {v: k for k, v in EP_ID.items()}
        bound = {"brk": POLICIES["brk"].half_open_max_calls,   # the endpoints whose permits
                 "lease": POLICIES["lease"].half_open_max_calls,  # and tickets are logged
                 "bh": POLICIES["bh"].max_concurrent}
        worst = {ep: 0 for ep in bound}
        for (ep, gen), iv in groups.items():
            events = sorted([(v[0], 1) for v in iv] + [(v[1], -1) for v in iv])
            cur = peak = at = 0
            for t, d in events:
                cur += d
                if cur > peak:
                    peak, at = cur, t
            name = names[ep]
            worst[name] = max(worst[name], peak)
            if peak > bound[name]:
                who = ", ".join(f"worker slot {w} lease {ls} [{(a - at) / 1e6:+.3f}, "
                                f"{(e - at) / 1e6:+.3f}] ms" for a, e, w, ls in iv if a <= at < e)
                what = "calls in flight" if name == "bh" else f"generation {gen} probe permits"
                self.violations.append(f"{name}: {peak} {what} at once, max {bound[name]}: {who}")
        return {"permits_logged": logged, "generations": len(groups), "max_at_once": worst,
                "half_open_max": bound, "log_truncated": bool(truncated)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=10.0, help="how long the killer runs")
    ap.add_argument("--workers", type=int, default=4)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--name", default=None, help="segment name (default: a fresh one)")
    ap.add_argument("--kill-every", type=float, nargs=2, default=(0.005, 0.06),
                    metavar=("MIN", "MAX"), help="seconds between kills (uniform)")
    ap.add_argument("--json", action="store_true", help="print the report as JSON")
    a = ap.parse_args(argv)
    seed = a.seed if a.seed is not None else random.randrange(2**32)
    rep = Torture(a.seconds, a.workers, seed, a.name, tuple(a.kill_every)).run()
    rep["command"] = " ".join([os.path.basename(sys.argv[0]) or "torture"] + (
        sys.argv[1:] if argv is None else argv))
    if a.json:
        print(json.dumps(rep))
    else:
        print(summary(rep))
    return 1 if rep["violations"] else 0


def summary(rep: dict) -> str:
    lines = [f"torture: {rep['workers']} workers, {rep['seconds']} s, seed {rep['seed']}",
             f"  kills survived: {rep['kills']}   decisions: {rep['decisions']}   "
             f"registrations: {rep['registrations']}   stale claims planted: "
             f"{rep['stale_claims_planted']}"]
    for s in rep["sprints"]:
        lines.append(f"  {s['who']:8} {s['pid']}: {s['decisions']} decisions in {s['seconds']} s")
    for ep, m in rep["limiter"].items():
        lines.append(f"  {ep}: accepted {m['accepted']} <= bound {m['bound']} "
                     f"({m['rate']:g}/s, burst {m['burst']}, {m['elapsed_s']} s, fill {m['fill']})")
    kd = rep["keyed"]
    lines.append(f"  keyed: most admitted per hot key {kd['most_admitted']} <= bound "
                 f"{kd['bound_per_key']} (fill {kd['fill']}); inserted {kd['inserted']}, reused "
                 f"{kd['evicted']}, folded {kd['folded']}, full {kd['full_rejections']}, "
                 f"rate changes {kd['rate_changes']}")
    p = rep["probes"]
    lines.append(f"  probes: {p['permits_logged']} permits in {p['generations']} half-open "
                 f"generations; most at once {p['max_at_once']} (max {p['half_open_max']})")
    b = rep["bulkhead"]
    lines.append(f"  bulkhead bh: {b['acquired']} tickets ({b['waited']} after waiting, "
                 f"{b['rejected']} refused, {b['reclaimed']} reclaimed from killed holders); "
                 f"most calls at once {rep['probes']['max_at_once']['bh']} "
                 f"(max {b['max_concurrent']})")
    lines.append(f"  p1: {p['p1_checked']} probe permits checked at admission, "
                 f"{p['p1_ended_generation']} in an ended generation; SIGSTOPs: {rep['stops']}; "
                 f"rate changes of lim: {rep['rate_changes']}")
    lines.append(f"  table: {rep['table']}")
    lines.append(f"  violations: {len(rep['violations'])}")
    lines += [f"    - {v}" for v in rep["violations"][:20]]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
