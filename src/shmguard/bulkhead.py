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

import functools
from typing import TYPE_CHECKING, Any

from shmguard._capi import ffi, hot, lib
from shmguard._tickets import (FULL, QUIET, REFRESH, done, reclaim, refresh_quota, take,
                               take_async)
from shmguard.errors import PolicyError
from shmguard.policy import Priority
from shmguard.stats import BulkheadStats

if TYPE_CHECKING:
    from shmguard._endpoint import Endpoint

__all__ = ["Bulkhead", "Ticket", "PyTicket"]

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
        """Like :meth:`acquire`, awaiting a release (never blocks the loop; see shmguard._bulkwait)."""
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
    ep.live_slot()  # raises once closed or removed
    buf = _BUFS.pop() if _BUFS else ffi.new("int64_t[2]")
    try:
        t = lib.sg_bulkhead_wait(ep.h, mode, 0, buf)
        if t <= 0 or t & REFRESH:  # full, no bulkhead, an error or a recount: slow path
            if t == FULL and reclaim(ep):
                t = lib.sg_bulkhead_wait(ep.h, mode, 0, buf)
            if t == FULL:
                lib.sg_bulkhead_give_up(ep.h.slot)
                return None
            t = done(ep, t) or _no_bulkhead(ep)
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
