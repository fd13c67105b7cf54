"""Slot claims, the policy writer lease and closing a mapping: the cold paths that judge owners.

A claim or a lease is taken over only when its owner is proven dead (pid and
start time, psutil); age alone never proves death (DESIGN round 2): a live
owner that stalled keeps its lease, and its claim is set aside (abandoned),
never handed to another registrant.
"""
from __future__ import annotations

import os
import threading
import time
from typing import TYPE_CHECKING, Any

from shmguard import probes
from shmguard._capi import ffi, lib
from shmguard.errors import ShmguardError

if TYPE_CHECKING:
    from shmguard.segment import Segment

__all__ = ["REGISTER_WAIT", "CLAIM_STALE_NS", "judge_claim", "reclaim_abandoned",
           "publish_policy", "close_segment", "release_mapping"]

NS = 1_000_000_000
REGISTER_WAIT = 5.0
#: A claim older than this whose owner is alive (stalled) is set aside (abandoned), never taken
CLAIM_STALE_NS = 2 * NS
_LEASE_NS = NS // 2  # policy.c LEASE_NS: the writer lease's deadline is its grant + this


def _mono_age_ns(units_now: int, units_then: int, bits: int) -> int:
    """Age of a (ns >> 20) stamp of ``bits`` bits, serial."""
    return ((units_now - units_then) & ((1 << bits) - 1)) << 20


def judge_claim(seg: Segment, index: int, word: int) -> bool:
    """Frees (owner proven dead) or abandons (owner alive past CLAIM_STALE_NS) a slot claim.

    :returns: whether the claim is out of the way now (call register again).
    """
    age = _mono_age_ns(time.monotonic_ns() >> 20, word & 0xFFFFFFFF, 32)
    pid = (word >> 32) & 0x3FFFFFFF
    if not probes.holder_alive(pid, started_before=time.time() - age / NS, seg=seg):
        lib.sg_table_takeover(seg.base, seg.size, index, word)  # fails only if it moved on
        return True
    if age >= CLAIM_STALE_NS and word >> 62 == lib.SG_SLOT_CLAIMED:
        lib.sg_table_abandon(seg.base, seg.size, index, word)   # its publish will fail
        return True
    return False


def reclaim_abandoned(seg: Segment) -> int:
    """Frees abandoned claims whose owner is proven dead; returns how many."""
    v, freed = ffi.new("struct sg_slot_view *"), 0
    for i in range(seg.refresh().capacity):
        if lib.sg_slot_snapshot(seg.base, seg.size, i, v) == 0 and \
                v.kind == lib.SG_SLOT_ABANDONED and \
                not probes.holder_alive(v.claim_pid, time.time() - v.claim_age_ms / 1000, seg=seg):
            freed += lib.sg_table_takeover(seg.base, seg.size, i, v.word) == lib.SG_OK
    return freed


def publish_policy(h: Any, view: Any, what: str, seg: Segment | None = None) -> int:
    """Publishes ``view`` into the slot of handle ``h``; returns the C code.

    The writer lease is taken over only from a holder proven dead (pid +
    start time); a live holder (a stalled process) makes this wait up to
    REGISTER_WAIT, then raise: a resumed stale writer can never publish
    over a newer policy. A segment shared across pid namespaces
    (``shared_namespaces=True``) judges the lease by its deadline only.
    """
    lease = ffi.new("uint64_t *")
    deadline = time.monotonic() + REGISTER_WAIT
    while True:
        lease[0] = 0
        rc = lib.sg_policy_publish(h, view, os.getpid(), lease)
        if rc != lib.SG_E_BUSY:
            return int(rc)
        w = int(lease[0])
        if w:
            due = (w & ((1 << 42) - 1)) << 20
            age = time.monotonic_ns() - (due - _LEASE_NS)
            if (not probes.holder_alive(w >> 42, started_before=time.time() - age / NS, seg=seg)
                    if probes.judges_pids(seg) else time.monotonic_ns() > due):
                lib.sg_policy_takeover(h, w)
                continue
        if time.monotonic() > deadline:
            raise ShmguardError(f"{what}: the policy writer lease is held by live process "
                                f"{w >> 42} (stalled?); nothing was published")
        time.sleep(0.001)


_PARKED: list[Any] = []  # mmaps detached while other threads lived (see Registry.close)


def _other_threads() -> bool:
    """Whether this process runs another thread: every OS thread counts (one started by
    ``_thread`` or by a C extension is unknown to ``threading`` yet may be inside a call)."""
    try:
        return len(os.listdir("/proc/self/task")) > 1
    except OSError:  # no /proc: what threading knows
        return threading.active_count() > 1


def close_segment(seg: Segment) -> None:
    """Unmaps ``seg``, or, with other threads alive (one may be inside a C call on
    it), swaps its pages for private zero pages and parks it."""
    if seg.closed:
        return
    base, size = seg.base, seg.size
    release_mapping(base, size, seg.detach())


def release_mapping(base: Any, size: int, mm: Any) -> None:
    """Unmaps ``mm`` (mapped at ``base``, ``size`` bytes; its buffer exports released);
    with other threads alive, detaches the range (private zero pages) and parks it
    until a release with no other thread: a call still inside C never faults."""
    if _other_threads():
        lib.sg_segment_detach(base, size)
        _PARKED.append(mm)
        return
    mm.close()
    while _PARKED:  # no other thread now: nothing can be inside a parked range
        _PARKED.pop().close()
