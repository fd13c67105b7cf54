"""Breaker handle: one endpoint's host-wide circuit breaker, typed methods over C.

Two-step use (gobreaker's style)::

    permit = br.allow()          # None when open (or half-open probes are out)
    if permit:
        try:
            ...
        except Exception:
            permit.failure(); raise
        permit.success()

or ``br.call(fn, *args)``. Thread safe and process safe: the state lives in
the segment and changes only by CAS in C.
"""
from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any, Callable, TypeVar

from shmguard._capi import hot, lib
from shmguard.policy import Outcome
from shmguard.stats import BreakerMode, BreakerSnapshot, BreakerState

if TYPE_CHECKING:
    from shmguard._endpoint import Endpoint

T = TypeVar("T")
__all__ = ["Breaker", "Permit", "PyPermit"]


class PyPermit:
    """Leave to make one call; report its outcome exactly once.

    A half-open probe permit is also a lease: if this process dies, or the
    call overruns the policy's ``probe_lease``, the permit is reclaimed.
    (The pure-Python twin of the C ``Permit`` of ``shmguard._hot``.)
    """

    __slots__ = ("_ep", "_tok", "_done")

    def __init__(self, ep: Endpoint, token: int) -> None:
        self._ep = ep
        self._tok = token
        self._done = False

    @property
    def is_probe(self) -> bool:
        """Reports whether this permit is a half-open probe."""
        return bool((self._tok >> 34) & 0xF)

    @property
    def token(self) -> int:
        """The admission token (generation, lease, start)."""
        return self._tok

    def _finish(self, outcome: int) -> None:
        if self._done:
            raise RuntimeError("permit already used: report an outcome once")
        self._done = True
        t = self._ep.record(self._ep.h, self._tok | outcome)
        if t < 0 or t & 7 in (1, 2, 3):
            self._ep.permit_after(t, self._tok)

    def success(self) -> None:
        self._finish(Outcome.SUCCESS)

    def failure(self) -> None:
        self._finish(Outcome.FAILURE)

    def ignore(self) -> None:
        """Counts the call as neither success nor failure (and frees a probe)."""
        self._finish(Outcome.IGNORE)

    def done(self, ok: bool) -> None:
        self._finish(Outcome.SUCCESS if ok else Outcome.FAILURE)

    def release(self) -> None:
        """Gives the permit back unused (same as :meth:`ignore`)."""
        if not self._done:
            self._finish(Outcome.IGNORE)


#: The permit type: C (shmguard._hot) when built, else :class:`PyPermit`.
Permit: Any = hot.Permit if hot is not None else PyPermit


def after_acquire(ep: Endpoint, tok: int) -> Any:
    """Turns a breaker token into a permit, or None: reclaims dead probe holders,
    reports a half-open transition, raises on errors."""
    if tok == lib.SG_R_PROBES_FULL and ep.reclaim_probes():
        tok = int(ep.acquire(ep.h))  # a dead holder's permit came back
    if tok < 0:
        if tok in (lib.SG_R_OPEN, lib.SG_R_PROBES_FULL):
            return None
        raise ep.rc_error(tok)
    return Permit(ep, ep.admitted(tok))


def _allow(ep: Endpoint) -> Any:
    return after_acquire(ep, int(ep.acquire(ep.h)))


class Breaker:
    """The host-wide circuit breaker of one endpoint (see module docstring)."""

    __slots__ = ("_ep", "allow")

    def __init__(self, ep: Endpoint) -> None:
        self._ep = ep
        #: ``allow() -> Permit | None``: a permit if a call may go ahead now,
        #: else None (open, or every half-open probe out). One C call.
        self.allow: Any = (hot.bind_allow(1, ep, after_acquire) if hot is not None
                           else functools.partial(_allow, ep))

    @property
    def name(self) -> str:
        return self._ep.name

    def snapshot(self) -> BreakerSnapshot:
        """Reports the breaker's full state, read by one C snapshot."""
        return self._ep.breaker_snapshot()

    @property
    def state(self) -> BreakerState:
        return self.snapshot().state

    @property
    def mode(self) -> BreakerMode:
        return self.snapshot().mode

    @property
    def failure_rate(self) -> float:
        """Reports the failure ratio over the rolling window."""
        return self.snapshot().failure_rate

    def call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """Runs ``fn`` if allowed and records its outcome.

        :raises CircuitOpenError: when no permit is available.
        """
        permit = self.allow()
        if permit is None:
            raise self._ep.open_error()
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            outcome = self._ep.policy.classify(exc) if isinstance(exc, Exception) else Outcome.IGNORE
            if outcome == Outcome.FAILURE:
                permit.failure()
            elif outcome == Outcome.SUCCESS:
                permit.success()
            else:
                permit.ignore()
            raise
        permit.success()
        return result

    def force_open(self) -> None:
        """Opens the breaker for every process until :meth:`reset`."""
        self._ep.force(lib.SG_FORCED_OPEN)

    def force_closed(self) -> None:
        """Admits every call, records nothing, until :meth:`reset`."""
        self._ep.force(lib.SG_FORCED_CLOSED)

    def metrics_only(self) -> None:
        """Admits every call and keeps counting, without ever opening."""
        self._ep.force(lib.SG_METRICS_ONLY)

    disable = metrics_only

    def open(self) -> None:
        """Opens the breaker now as if the window had tripped (it will half-open)."""
        self._ep.force(lib.SG_OPEN)

    def reset(self) -> None:
        """Closes the breaker and forgets its window and the throttling window, for every process."""
        self._ep.force(lib.SG_CLOSED)

    def __repr__(self) -> str:
        return f"<Breaker {self.name!r} {self.state}>"
