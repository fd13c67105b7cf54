"""Limiter handle: one endpoint's host-wide GCRA rate limiter.

Verbs after x/time/rate, told by what happens when no token is free:
:meth:`Limiter.allow` says no at once; :meth:`Limiter.reserve` hands back a
:class:`Reservation` with a delay (and :meth:`Reservation.cancel`);
:meth:`Limiter.wait` reserves only if it can be served within ``timeout``,
then sleeps exactly the computed delay (no polling).

Thread safe and process safe: the limiter is one atomic word in the segment.
"""
from __future__ import annotations

import functools
import time
from typing import TYPE_CHECKING, Any, Callable

from shmguard import _capi
from shmguard._capi import ffi, hot, lib
from shmguard.errors import PolicyError, ShmguardError
from shmguard.policy import Priority
from shmguard.stats import LimiterMetrics

if TYPE_CHECKING:
    from shmguard._endpoint import Endpoint

__all__ = ["Limiter", "Reservation", "pack", "change_rate", "delay_of"]

NS = 1_000_000_000
FOREVER_NS = 2**63 - 1
CHANGE_WAIT = 5.0        # seconds a rate change waits for another one under way
_NORMAL = Priority.NORMAL
_ONE = 1  # `cost is _ONE` holds for the int 1 only (not True, not 1.0): small ints are cached


def pack(cost: int, priority: int) -> int:
    """Returns the (cost, priority) word the C calls take."""
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 1 or cost >= 2**40:
        raise PolicyError(f"cost must be a whole number >= 1, got {cost!r}")
    if priority not in (0, 1, 2, 3) or isinstance(priority, bool):
        hint = f" (sg.Priority.{priority.upper()})" if isinstance(priority, str) and \
            priority.upper() in Priority.__members__ else ""
        raise PolicyError(f"priority must be a shmguard.Priority, got {priority!r}{hint}")
    return (cost << 2) | int(priority)


def change_rate(call: Callable[[], int], what: str, segment: str = "") -> None:
    """Runs a C rate change, retrying while another process's change is under way.

    Every rate change (``adjust_rate``, a new policy rate) starts a new rate
    regime that keeps the limiter's debt in tokens; changes of one endpoint
    run one at a time (a change takes microseconds; one left by a dead
    process is completed after 1 s).
    """
    deadline = time.monotonic() + CHANGE_WAIT
    while (rc := call()) == lib.SG_E_BUSY:
        if time.monotonic() > deadline:
            raise ShmguardError(f"{what}: another rate change stayed under way")
        time.sleep(0.0005)
    _capi.check(rc, what, segment)


def wait_ns(seconds: float | None) -> int:
    if seconds is None:
        return FOREVER_NS
    if not isinstance(seconds, (int, float)) or seconds != seconds or seconds < 0:
        raise PolicyError(f"timeout must be a number of seconds >= 0, got {seconds!r}")
    return min(FOREVER_NS, int(seconds * NS))


def delay_of(ep: Endpoint, cp: int) -> float:
    """Returns how long (seconds) until the packed ``cp`` conforms at ``ep``; takes nothing."""
    ep.live_slot()  # raises once closed or removed
    out = ffi.new("int64_t *")
    lib.sg_limiter_delay_at(ep.h.slot, ep.seg.now_ns(), cp, out)
    return max(0, int(out[0])) / NS


class Reservation:
    """A place in the limiter's schedule.

    ``ok`` says whether it was granted; ``delay`` is how long to wait before
    acting (seconds; when not ok, how long until it could be granted).
    """

    __slots__ = ("ok", "delay", "_ep", "_cp", "_d", "_cancelled")

    def __init__(self, ep: Endpoint, ok: bool, cp: int, d: Any) -> None:
        self.ok = ok
        self.delay = max(0, d.delay_ns) / NS
        self._ep = ep
        self._cp = cp
        self._d = d
        self._cancelled = not ok

    def cancel(self) -> None:
        """Gives back what this reservation took, less what was reserved after it.

        Accepted up to and including its time to act (x/time/rate's rule);
        after a rate change nothing is given back.
        """
        if self._cancelled or self._ep.seg.closed:
            return
        self._cancelled = True
        lib.sg_limiter_cancel(self._ep.h, self._cp, self._d)

    def __repr__(self) -> str:
        return f"<Reservation ok={self.ok} delay={self.delay:.6f}s>"


def allow(ep: Endpoint, cost: int = 1, priority: Priority = _NORMAL) -> bool:
    """Reports whether ``cost`` tokens were free now (and takes them).

    :meth:`Limiter.allow`; its common case (no arguments) runs in C
    (``shmguard._hot``) and comes here only for arguments or a closed service.
    """
    if cost is _ONE and priority is _NORMAL:
        rc = ep.allow1(ep.h)
    else:
        rc = ep.allow_cp(ep.h, pack(cost, priority))
    if rc == 0:
        return True
    if rc == lib.SG_R_RATE_LIMITED:
        return False
    if rc == lib.SG_E_GONE:  # removed, or the service closed
        raise ep.rc_error(rc)
    burst = ep.policy_view().burst
    raise PolicyError(f"allow(cost={cost}) exceeds burst {burst} of limiter "
                      f"{ep.name!r} at priority {Priority(priority)}")


class Limiter:
    """The host-wide rate limiter of one endpoint (see module docstring).

    ``allow(cost=1, priority=Priority.NORMAL) -> bool`` reports whether
    ``cost`` tokens were free now (and takes them); with no arguments it is
    one C call.
    """

    __slots__ = ("_ep", "allow")

    def __init__(self, ep: Endpoint) -> None:
        self._ep = ep
        self.allow: Any = (hot.bind_allow(0, ep, allow) if hot is not None
                           else functools.partial(allow, ep))

    @property
    def name(self) -> str:
        return self._ep.name

    def reserve(self, cost: int = 1, priority: Priority = _NORMAL,
                max_wait: float | None = None) -> Reservation:
        """Returns a reservation; it is granted if it comes due within ``max_wait``."""
        return self._reserve("reserve", cost, priority, max_wait)

    def _reserve(self, verb: str, cost: int, priority: Priority,
                 max_wait: float | None) -> Reservation:
        ep = self._ep
        cp = pack(cost, priority)
        d = ffi.new("struct sg_decision *")
        ep.live_slot()  # raises once closed or removed
        rc = lib.sg_reserve(ep.h, cp, wait_ns(max_wait), d)
        if rc not in (0, lib.SG_R_RATE_LIMITED):
            raise self._cost_error(verb, cost, priority)
        return Reservation(ep, rc == 0, cp, d)

    def wait(self, cost: int = 1, timeout: float | None = None,
             priority: Priority = _NORMAL) -> bool:
        """Reports whether ``cost`` tokens were obtained within ``timeout`` (None: no limit).

        Sleeps exactly the computed delay; if the sleep is interrupted the
        reservation is given back.
        """
        r = self._reserve("wait", cost, priority, timeout)
        if not r.ok:
            return False
        if r.delay > 0:
            try:
                time.sleep(r.delay)
            except BaseException:
                r.cancel()
                raise
        return True

    def delay(self, cost: int = 1, priority: Priority = _NORMAL) -> float:
        """Reports how long (seconds) until ``cost`` tokens conform; takes nothing."""
        return delay_of(self._ep, pack(cost, priority))

    def hold(self, seconds: float) -> None:
        """Admits no call of any priority for ``seconds`` (a server's ``Retry-After``), host-wide.

        Moves the limiter's schedule forward, never back: a hold shorter than
        the current backlog does nothing; after it, calls resume at the rate
        with an empty burst. An endpoint without a rate limit has nothing to hold.
        """
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or \
                not 0 <= seconds <= 86400 * 365:
            raise PolicyError(f"hold seconds must be in [0, 1 year], got {seconds!r}")
        ep = self._ep
        ep.live_slot()  # raises once closed or removed
        lib.sg_limiter_hold(ep.h, ep.seg.now_ns() + int(seconds * NS))

    def tokens(self, priority: Priority = Priority.HIGH) -> float:
        """Reports how many tokens ``priority`` could take now."""
        return self.metrics(priority).tokens

    def metrics(self, priority: Priority = Priority.HIGH) -> LimiterMetrics:
        return self._ep.limiter_metrics(priority)

    def _cost_error(self, verb: str, cost: int, priority: Priority) -> PolicyError:
        burst = self._ep.policy_view().burst
        return PolicyError(f"{verb}(cost={cost}) exceeds burst {burst} of limiter "
                           f"{self.name!r} at priority {Priority(priority)}")

    def __repr__(self) -> str:
        return f"<Limiter {self.name!r}>"
