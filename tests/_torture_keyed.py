"""The keyed limiter's part of the crash torture (tests/_torture.py).

Workers hammer one keyed limiter with a small table: HOT keys at HIGH
priority (each worker logs its admissions per hot key in its own words of
the shared log) and a stream of fresh keys, so entries are inserted,
settled and reused all the time while workers are SIGKILLed mid-insert.
Now and then a worker halves or restores the rate (replace=True): a writer
killed holding the rate lease must not block the others.

Afterwards it checks (violations):

- every hot key was admitted at most burst + rate x elapsed times, summed
  over all workers, with the highest rate used (an admission logged after
  allow() returned: a kill in between hides at most one per kill, so the
  check is exact up to kills);
- the rate can still be changed at the end (no writer lease stuck);
- no key has two entries that take decisions: after one more decision per
  hot key (which settles what a killed inserter left PENDING before its
  entry), each hot key's window holds exactly one LIVE entry with its
  fingerprint, and at most PENDING ones after it (never decided on);
- the table scan works and every counter is consistent.
"""
from __future__ import annotations

from typing import Any

import shmguard as sg
from shmguard._capi import ffi, lib

NS = 1_000_000_000
NAME, RATE, BURST, CAPACITY = "tenants", 200.0, 5, 32   # 64 entries: constant reuse
HOT = 16                  # hot keys, logged per worker
H_BASE = 8                # first log word of the hot-key counters in a worker's header
WORDS = HOT               # words of a worker's header this module uses (after H_BASE)


def limiter(svc: sg.ResilienceService) -> Any:
    return svc.keyed_limiter(NAME, RATE, BURST, capacity=CAPACITY, replace=True)


class WorkerPart:
    """A worker's keyed operations: a hot key (logged) or a fresh one."""

    def __init__(self, svc: sg.ResilienceService, rng: Any) -> None:
        self.svc = svc
        self.kl = limiter(svc)
        self.rng = rng
        self.fresh = 0

    def op(self, q: Any, b: int) -> int:
        rng = self.rng
        x = rng.random()
        if x < 0.002:
            self.kl = self.svc.keyed_limiter(NAME, rng.choice((RATE, RATE / 2)), BURST,
                                             capacity=CAPACITY, replace=True)
            return 1
        if x < 0.6:
            k = rng.randrange(HOT)
            if self.kl.allow(f"hot-{k}", 1, sg.Priority.HIGH):
                q[b + H_BASE + k] += 1
            return 1
        self.fresh += 1
        self.kl.allow(f"fresh-{id(self)}-{self.fresh}-{rng.random()}", 1, sg.Priority.HIGH)
        return 1


def _entries_of(kl: Any, key: bytes) -> list[int]:
    kh = kl._t.kh
    h = lib.sg_siphash24(kh.k0, kh.k1, key, len(key))
    home, fp = ((h & 0xFFFFFFFF) * kh.slots) >> 32, h & ~3 & (2**64 - 1)
    words = ffi.cast("uint64_t *", ffi.cast("char *", kh.table) + lib.SG_KL_HEADER_SIZE)
    states = []
    for i in range(lib.SG_KL_PROBES):
        tag = words[2 * ((home + i) % kh.slots)]
        if tag == 0:
            break
        if tag & ~3 & (2**64 - 1) == fp and tag & 3 in (1, 2):
            states.append(tag & 3)
    return states


def report(svc: sg.ResilienceService, q: Any, region: int, workers: int, glob: int,
           t0: int, t_end: int, violations: list[str]) -> dict[str, Any]:
    """Checks the keyed limiter after the run; appends to ``violations``; returns figures."""
    try:
        kl = limiter(svc)                # back to RATE: takes over a dead writer's lease
    except sg.ShmguardError as exc:
        violations.append(f"keyed {NAME}: the rate cannot be changed at the end: {exc}")
        kl = svc._keyed[NAME]
    T = kl._t.kh.t0_ns                   # RATE, the highest rate used: V never runs faster
    tol = T * BURST                      # HIGH sees the whole burst
    bound = (t_end - t0 + tol) // T
    worst = 0
    for k in range(HOT):
        n = sum(q[glob + s * region + H_BASE + k] for s in range(workers + 1))
        worst = max(worst, n)
        if n > bound:
            violations.append(f"keyed {NAME}: hot-{k} admitted {n} > bound {bound}")
    for k in range(HOT):
        key = f"hot-{k}".encode()
        kl.allow(key, 1, sg.Priority.HIGH)            # settles anything left PENDING
        states = _entries_of(kl, key)
        # one LIVE entry; an insert killed before settling may leave PENDING ones after it
        if not states or states[0] != 1 or not set(states[1:]) <= {2}:
            violations.append(f"keyed {NAME}: hot-{k} has entries in states {states}, "
                              "want one LIVE first")
    s = kl.stats(top=3)
    if s.live_keys > s.used_entries or s.used_entries > s.entries:
        violations.append(f"keyed {NAME}: scan gave {s.live_keys} live of {s.used_entries} used")
    return {"bound_per_key": bound, "most_admitted": worst, "accepted": s.accepted,
            "rejected": s.rejected, "inserted": s.inserted, "evicted": s.evicted,
            "folded": s.folded, "full_rejections": s.full_rejections,
            "rate_changes": s.rate_changes,
            "fill": round(worst / bound, 3) if bound else 0.0}
