"""Bulkhead handle: at most N calls in flight for one endpoint, across every process of the host.

After Shopify's semian (a resource with ``tickets`` or a ``quota`` of the
workers), without SysV semaphores: each ticket is one 64-bit word of the
slot, taken and given back by one CAS, so the limit is exact at every
instant. A ticket belongs to (pid, grant time): when its holder dies
(SIGKILL) any process waiting or refused takes it back at once (psutil:
pid plus start time); a stalled but live holder keeps it.

Verbs, told by what happens when no ticket is free: :meth:`Bulkhead.try_acquire`
says no at once (None); :meth:`Bulkhead.acquire` waits up to ``timeout``,
asleep on the segment's futex word until a release wakes it (one waiter per
release), then raises :class:`~shmguard.errors.BulkheadFullError`.
A :class:`Ticket` is a context manager; releasing twice is harmless.

Thread safe and process safe.

>>> with svc.bulkhead("db").acquire(timeout=1.0):      # doctest: +SKIP
...     query()
"""
from __future__ import annotations

import asyncio
import functools
import time
from typing import TYPE_CHECKING, Any

from shmguard import probes
from shmguard._capi import ffi, hot, lib
from shmguard.errors import BulkheadFullError, PolicyError
from shmguard.policy import Priority
from shmguard.stats import BulkheadStats, TicketHolder

if TYPE_CHECKING:
    from shmguard._endpoint import Endpoint

__all__ = ["Bulkhead", "Ticket", "PyTicket", "take", "take_async", "full_error", "reclaim", "max_wait",
           "refresh_quota", "attached_processes", "SLICE"]

NS = 1_000_000_000
SLICE = 0.05               # longest futex sleep: a dead holder is looked for this often
ASYNC_TICKS = (0.001, 0.02)  # asyncio polls from 1 ms, doubling up to 20 ms
RECLAIM_EVERY = 0.05
FULL = lib.SG_R_BULKHEAD_FULL
QUIET, WAITED, REFRESH = int(lib.SG_BH_QUIET), int(lib.SG_BH_WAITED), int(lib.SG_BH_REFRESH)
_MODES = tuple(int(p) | QUIET for p in Priority)  # indexed by a Priority


class PyTicket:
    """One ticket of a bulkhead, held until :meth:`release` (or the end of a ``with``).

    (The pure-Python twin of the C ``Ticket`` of ``shmguard._hot``.)
    """

    __slots__ = ("_ep", "_tok")

    def __init__(self, ep: Endpoint, tok: int) -> None:
        self._ep, self._tok = ep, tok

    @property
    def held(self) -> bool:
        return self._tok > 0

    @property
    def index(self) -> int:
        """The ticket word this ticket holds (0..63)."""
        return (self._tok >> 42) & 0x3F

    def release(self) -> None:
        """Gives the ticket back and wakes one waiter; a second call does nothing.

        Only the process that took it can give it back (C compares the pid):
        in a fork child this does nothing, and the parent still holds it.
        """
        tok, self._tok = self._tok, 0
        if tok > 0 and self._ep.hp:  # hp is 0 once the service is closed
            lib.sg_bulkhead_release(self._ep.h, tok)

    def __enter__(self) -> PyTicket:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def __del__(self) -> None:  # a Ticket dropped unreleased (e.g. lost to an interrupt)
        if self._tok:
            try:
                self.release()
            except Exception:
                pass

    def __repr__(self) -> str:
        return f"<Ticket {self._ep.name!r} #{self.index} {'held' if self.held else 'released'}>"


#: The ticket type: C (shmguard._hot) when built, else :class:`PyTicket`.
Ticket: Any = hot.Ticket if hot is not None else PyTicket


class Bulkhead:
    """The bulkhead of one endpoint (its policy's ``max_concurrent`` or ``quota``).

    ``try_acquire(priority=Priority.NORMAL) -> Ticket | None`` returns a
    ticket if one is free now (a dead holder's counts as free), else None;
    when one is free it is one C call.

    :raises PolicyError: (from the calls) the endpoint's policy has no bulkhead.
    """

    __slots__ = ("_ep", "try_acquire")

    def __init__(self, ep: Endpoint) -> None:
        self._ep = ep
        self.try_acquire: Any = (hot.bind_bulkhead(ep, _try) if hot is not None
                                 else functools.partial(_try, ep))

    def acquire(self, timeout: float | None = None,
                priority: Priority = Priority.NORMAL) -> Any:
        """Returns a ticket, waiting up to ``timeout`` seconds (None: the policy's ``max_wait``).

        :raises BulkheadFullError: none was free in time.
        """
        ep = self._ep
        return Ticket(ep, take(ep, _prio(priority), self._wait(timeout)) or _no_bulkhead(ep))

    async def acquire_async(self, timeout: float | None = None,
                            priority: Priority = Priority.NORMAL) -> Any:
        """Like :meth:`acquire`, awaiting with ``asyncio.sleep`` (never blocks the loop)."""
        ep = self._ep
        return Ticket(ep, await take_async(ep, _prio(priority), self._wait(timeout))
                      or _no_bulkhead(ep))

    def _wait(self, timeout: float | None) -> float | None:
        if timeout is None:
            return None
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not (
                0 <= timeout < 1e9):
            raise PolicyError(f"timeout must be None or a number of seconds >= 0, got {timeout!r}")
        return float(timeout)

    def refresh(self) -> int:
        """Counts the processes attached to the segment now (quota mode); returns the new limit."""
        return refresh_quota(self._ep)

    @property
    def max_concurrent(self) -> int:
        return self.stats().max_concurrent

    @property
    def in_flight(self) -> int:
        return self.stats().in_flight

    @property
    def available(self) -> int:
        return self.stats().available

    def stats(self) -> BulkheadStats:
        """Returns the bulkhead's counters and holders, read from the segment."""
        s = self._ep.bulkhead_stats()
        if s is None:
            raise PolicyError(f"endpoint {self._ep.name!r} has no bulkhead")
        return s


_BUFS: list[Any] = []  # int64_t[2] out-buffers for try_acquire, reused (list ops are atomic)


def _no_bulkhead(ep: Endpoint) -> int:
    raise PolicyError(f"endpoint {ep.name!r} has no bulkhead (max_concurrent or quota)")



def _try(ep: Endpoint, priority: Priority = Priority.NORMAL) -> Any:
    """try_acquire's every case: arguments, a full bulkhead (dead holders first), a recount."""
    mode = _MODES[priority] if type(priority) is Priority else _prio(priority)
    ep.seg.base  # raises once the service is closed
    buf = _BUFS.pop() if _BUFS else ffi.new("int64_t[2]")
    try:
        t = lib.sg_bulkhead_wait(ep.h, mode, 0, buf)
        if t <= 0 or t & REFRESH:  # full, no bulkhead, an error or a recount: slow path
            if t == FULL and reclaim(ep):
                t = lib.sg_bulkhead_wait(ep.h, mode, 0, buf)
            if t == FULL:
                lib.sg_bulkhead_give_up(ep.h.slot)
                return None
            t = _done(ep, t) or _no_bulkhead(ep)
        ticket = Ticket(ep, t)
    except BaseException:
        if buf[0] > 0:
            lib.sg_bulkhead_release(ep.h, buf[0])
        raise
    _BUFS.append(buf)
    return ticket

def _prio(priority: Priority) -> int:
    if priority not in (0, 1, 2, 3):
        raise PolicyError(f"priority must be a shmguard.Priority, got {priority!r}")
    return int(priority) | QUIET


# -- the admission path (shared with execute and the asyncio doors) --------------------------

def take(ep: Endpoint, mode: int, wait_s: float | None) -> int:
    """Returns a ticket token (0: no bulkhead), waiting up to ``wait_s``; raises when full.

    ``wait_s`` None: the policy's ``max_wait`` (read only if no ticket is free).

    Whatever interrupts it (KeyboardInterrupt included), no ticket stays taken:
    C writes the token into ``buf`` before returning, and it is given back here.
    """
    ep.seg.base  # raises once the service is closed
    buf = ffi.new("int64_t[2]")
    try:
        return _take(ep, mode, wait_s, buf)
    except BaseException:
        if buf[0] > 0:
            lib.sg_bulkhead_release(ep.h, buf[0])
        raise


def _take(ep: Endpoint, mode: int, wait_s: float | None, buf: Any) -> int:
    wait = lib.sg_bulkhead_wait
    t = wait(ep.h, mode, 0, buf)
    if t == FULL and reclaim(ep):
        t = wait(ep.h, mode, 0, buf)
    if t == FULL and wait_s is None:
        wait_s = max_wait(ep)
    if t == FULL and wait_s:
        deadline = time.monotonic() + wait_s
        while t == FULL and (left := deadline - time.monotonic()) > 0:
            t = wait(ep.h, mode | WAITED, max(1, int(min(left, SLICE) * NS)), buf)
            if t == FULL and reclaim(ep):
                t = wait(ep.h, mode | WAITED, 0, buf)
    return _done(ep, t)


def _done(ep: Endpoint, t: int) -> int:
    if t == FULL:
        lib.sg_bulkhead_give_up(ep.h.slot)
        raise full_error(ep)
    if t < 0:
        raise ep.rc_error(t)
    if t & REFRESH:
        refresh_quota(ep)
    return t


async def take_async(ep: Endpoint, mode: int, wait_s: float | None) -> int:
    """:func:`take` for asyncio: polls with ``asyncio.sleep`` (1 ms doubling to 20 ms).

    The loop never blocks. Nothing is held between two polls, so a task
    cancelled while it waits leaves no ticket behind; a ticket won by the
    last poll is given back if the task is cancelled before it returns.
    """
    ep.seg.base  # raises once the service is closed
    buf = ffi.new("int64_t[2]")
    try:
        t = lib.sg_bulkhead_wait(ep.h, mode, 0, buf)
        if t == FULL and wait_s is None:
            wait_s = max_wait(ep)
        if t == FULL and wait_s:
            deadline, tick = time.monotonic() + wait_s, ASYNC_TICKS[0]
            while t == FULL and (left := deadline - time.monotonic()) > 0:
                await asyncio.sleep(min(tick, left))
                tick = min(tick * 2, ASYNC_TICKS[1])
                reclaim(ep)
                t = lib.sg_bulkhead_wait(ep.h, mode | WAITED, 0, buf)
        return _done(ep, t)
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
            alive = seen[(pid, v.word[i] & 0xFFFFFFFF)] = probes.holder_alive(pid, started)
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
