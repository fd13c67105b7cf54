"""The bulkhead's admission paths and upkeep (see :mod:`shmguard.bulkhead` for the handles).

:func:`take` and :func:`take_async` give a call its ticket, waiting up to a
bound (asleep on the segment's futex word; asyncio tasks through one watcher
thread per endpoint, :mod:`shmguard._bulkwait`), and give back whatever an interruption would otherwise
leave held; :func:`reclaim` takes dead holders' tickets back; and
:func:`refresh_quota` recounts the processes attached to the segment.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from shmguard import _bulkwait, probes
from shmguard._capi import ffi, lib
from shmguard.deadline import remaining
from shmguard.errors import BulkheadFullError, DeadlineExceededError
from shmguard.stats import BulkheadStats, TicketHolder

if TYPE_CHECKING:
    from shmguard._endpoint import Endpoint

__all__ = ["take", "take_async", "full_error", "reclaim", "max_wait", "refresh_quota",
           "attached_processes", "snapshot", "done", "SLICE", "QUIET", "WAITED", "REFRESH",
           "FULL"]

NS = 1_000_000_000
SLICE = 0.05               # longest futex sleep: a dead holder is looked for this often
RECLAIM_EVERY = 0.05
FULL = lib.SG_R_BULKHEAD_FULL
QUIET, WAITED, REFRESH = int(lib.SG_BH_QUIET), int(lib.SG_BH_WAITED), int(lib.SG_BH_REFRESH)


def take(ep: Endpoint, mode: int, wait_s: float | None) -> int:
    """Returns a ticket token (0: no bulkhead), waiting up to ``wait_s``; raises when full.

    ``wait_s`` None: the policy's ``max_wait`` (read only if no ticket is free).

    Whatever interrupts it (KeyboardInterrupt included), no ticket stays taken:
    C writes the token into ``buf`` before returning, and it is given back here.
    """
    ep.live_slot()  # raises once closed or removed
    buf = ffi.new("int64_t[2]")
    try:
        return _take(ep, mode, wait_s, buf)
    except BaseException:
        if buf[0] > 0:
            lib.sg_bulkhead_release(ep.h, buf[0])
        raise


def _bound(ep: Endpoint, wait_s: float | None) -> tuple[float, bool]:
    """The wait allowed (``wait_s``, or the policy's ``max_wait``) cut to the deadline in
    force; and whether the deadline is what bounds it."""
    if wait_s is None:
        wait_s = max_wait(ep)
    left = remaining()
    if left is not None and left < wait_s:
        return max(0.0, left), True
    return wait_s, False


def _take(ep: Endpoint, mode: int, wait_s: float | None, buf: Any) -> int:
    wait = lib.sg_bulkhead_wait
    t = wait(ep.h, mode, 0, buf)
    if t == FULL and reclaim(ep):
        t = wait(ep.h, mode, 0, buf)
    cut = False
    if t == FULL:
        wait_s, cut = _bound(ep, wait_s)
    if t == FULL and wait_s:
        deadline = time.monotonic() + wait_s
        while t == FULL and (left := deadline - time.monotonic()) > 0:
            t = wait(ep.h, mode | WAITED, max(1, int(min(left, SLICE) * NS)), buf)
            if t == FULL and reclaim(ep):
                t = wait(ep.h, mode | WAITED, 0, buf)
    return done(ep, t, cut)


def done(ep: Endpoint, t: int, cut: bool = False) -> int:
    """Returns the ticket ``t``; raises the refusal (the deadline's, when it cut the wait)."""
    if t == FULL:
        lib.sg_bulkhead_give_up(ep.h.slot)
        if cut:
            raise DeadlineExceededError(f"deadline passed while waiting for a ticket of the "
                                        f"bulkhead of endpoint {ep.name!r}")
        raise full_error(ep)
    if t < 0:
        raise ep.rc_error(t)
    if t & REFRESH:
        refresh_quota(ep)
    return t


async def take_async(ep: Endpoint, mode: int, wait_s: float | None) -> int:
    """:func:`take` for asyncio: awaits a release (see :mod:`shmguard._bulkwait`).

    The loop never blocks and nothing polls: the endpoint's watcher thread
    sleeps on the futex word and lets the first waiting task try when a
    release moves it. The task takes the ticket itself, so a task cancelled
    while it waits leaves no ticket behind; a ticket won by its last try is
    given back if it is cancelled before it returns.
    """
    ep.live_slot()  # raises once closed or removed
    buf = ffi.new("int64_t[2]")
    try:
        t = lib.sg_bulkhead_wait(ep.h, mode, 0, buf)
        if t == FULL and reclaim(ep):
            t = lib.sg_bulkhead_wait(ep.h, mode, 0, buf)
        cut = False
        if t == FULL:
            wait_s, cut = _bound(ep, wait_s)
        if t == FULL and wait_s:
            deadline, first = time.monotonic() + wait_s, False
            while t == FULL and (left := deadline - time.monotonic()) > 0:
                await _bulkwait.wait_turn(ep, left, first)
                first = True
                ep.seg.base  # closed meanwhile: its error
                t = lib.sg_bulkhead_wait(ep.h, mode | WAITED, 0, buf)
        return done(ep, t, cut)
    except BaseException:
        if buf[0] > 0:
            lib.sg_bulkhead_release(ep.h, buf[0])
        raise


def max_wait(ep: Endpoint) -> float:
    """Returns the policy's ``max_wait`` (seconds), read from the slot."""
    return float(ep.policy_view().max_wait_ns / NS)


def full_error(ep: Endpoint) -> BulkheadFullError:
    """Returns the error for a call refused by the bulkhead (``retry_after``: unknown, 0)."""
    s = ep.bulkhead_stats()
    n = s.max_concurrent if s else 0
    return BulkheadFullError(ep.name, 0.0, f"bulkhead of endpoint {ep.name!r} is full "
                                           f"({n} calls in flight host-wide)")


def reclaim(ep: Endpoint) -> int:
    """Takes back tickets whose holder died; recounts a stale quota. Returns how many came back.

    At most once per RECLAIM_EVERY per endpoint and process (psutil is slow).
    """
    now = time.monotonic()
    if now < ep.next_bh:
        return 0
    ep.next_bh = now + RECLAIM_EVERY
    v = ffi.new("struct sg_bulkhead_view *")
    lib.sg_bulkhead_snapshot_at(ep.h.slot, ep.seg.now_ns(), v)
    freed, wall = 0, time.time()
    seen: dict[tuple[int, int], bool] = {}
    for i in range(lib.SG_MAX_TICKETS):
        if not v.word[i]:
            continue
        pid, started = v.holder_pid[i], wall - v.held_ns[i] / NS
        alive = seen.get((pid, v.word[i] & 0xFFFFFFFF))
        if alive is None:
            alive = seen[(pid, v.word[i] & 0xFFFFFFFF)] = probes.holder_alive(pid, started,
                                                                              seg=ep.seg)
        if not alive:
            freed += lib.sg_bulkhead_reclaim(ep.h.slot, i, v.word[i]) == lib.SG_OK
    if v.quota_ppm and v.quota_age_ns >= lib.SG_BH_REFRESH_NS:
        before = v.limit
        freed += refresh_quota(ep) > before
    return freed


def refresh_quota(ep: Endpoint) -> int:
    """Counts the processes attached to the segment and publishes the quota's limit."""
    return int(lib.sg_bulkhead_set_procs_at(ep.h.slot, ep.seg.now_ns(),
                                            attached_processes(ep.seg.name)))


def attached_processes(segment: str) -> int:
    """Counts the processes that map segment ``segment`` now (this one included).

    The kernel's own record (``/proc/<pid>/maps``, same inode): exact, and a
    dead process drops out by itself, as SEM_UNDO gives semian. It costs one
    read per process of the host, so the slot keeps the count and one caller
    per SG_BH_REFRESH_NS (1 s) recounts.
    """
    from shmguard.cli.procs import attached, segment_files

    files = segment_files([segment])
    attached(files, exclude_self=False)
    return max(1, sum(len(f.pids) for f in files if f.name == segment))


def snapshot(ep: Endpoint) -> BulkheadStats | None:
    """Returns the endpoint's bulkhead statistics, None when its policy has none."""
    v = ffi.new("struct sg_bulkhead_view *")
    lib.sg_bulkhead_snapshot_at(ep.h.slot, ep.seg.now_ns(), v)
    if v.limit == 0 and v.in_flight == 0 and v.acquired == 0:
        return None
    holders = tuple(TicketHolder(i, v.holder_pid[i], v.held_ns[i] / NS, v.word[i])
                    for i in range(lib.SG_MAX_TICKETS) if v.word[i])
    return BulkheadStats(v.limit, v.in_flight, v.peak, v.acquired, v.rejected, v.waited,
                         v.reclaimed, v.reserve, v.quota_ppm / 1e6 if v.quota_ppm else None,
                         v.procs, holders)
