"""Retries with backoff, under the deadline and the host-wide retry budget; one-step fallback.

``execute(ep, fn, retries=3)`` comes here (so does any call made while a
deadline is in force). A failed attempt is retried when

- its exception is a failure by the endpoint's policy (or one of
  ``retry_on``); cancellations and other ``BaseException`` never are;
- the breaker is closed (a retry never knocks on an open breaker);
- the backoff ends before the deadline in force;
- the endpoint's retry budget grants it (one CAS in the slot, csrc/budget.c);
  a refused retry raises the last error at once and counts as denied.

The backoff is exponential with full jitter (AWS's "Exponential Backoff And
Jitter"): attempt ``n`` sleeps ``uniform(0, min(max_backoff, backoff x 2^n))``,
drawn from a per-process RNG seeded with the pid (reproducible, and not in
lockstep across the pool's workers).
"""
from __future__ import annotations

import asyncio
import os
import random
import time
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar

from shmguard import _admission
from shmguard.deadline import check as _check_deadline
from shmguard.deadline import remaining
from shmguard._capi import lib
from shmguard._endpoint import LEASE_BITS
from shmguard.errors import DeadlineExceededError, PolicyError, RejectedError
from shmguard.limiter import pack
from shmguard.policy import Outcome, Priority
from shmguard.stats import BreakerState

if TYPE_CHECKING:
    from shmguard._endpoint import Endpoint

T = TypeVar("T")
__all__ = ["Plan", "KEYS", "execute", "execute_async", "seed", "moves_on"]

_RNG = random.Random(os.getpid())
_NUMBER = (int, float)
_NORMAL = Priority.NORMAL
#: execute()'s own keywords (the rest go to the function)
KEYS = frozenset(("retries", "backoff", "max_backoff", "retry_on", "fallback"))


def seed(value: int) -> None:
    """Seeds this process's backoff jitter (tests and benchmarks)."""
    _RNG.seed(value)


os.register_at_fork(after_in_child=lambda: _RNG.seed(os.getpid()))


class Plan:
    """The retry arguments of one call, validated (each names the bad value)."""

    __slots__ = ("retries", "backoff", "max_backoff", "retry_on", "fallback")

    def __init__(self, retries: int, backoff: float, max_backoff: float,
                 retry_on: type[BaseException] | tuple[type[BaseException], ...] | None,
                 fallback: Callable[[Exception], Any] | None) -> None:
        # type() rather than isinstance(): bool is refused; NaN fails the range test
        if type(retries) is not int or not 0 <= retries <= 1000:
            raise PolicyError(f"retries must be a whole number in [0, 1000], got {retries!r}")
        for name, v in (("backoff", backoff), ("max_backoff", max_backoff)):
            if type(v) not in _NUMBER or not 0 <= v <= 86400:
                raise PolicyError(f"{name} must be a number of seconds in [0, 86400], got {v!r}")
        if retry_on is not None:
            if isinstance(retry_on, type):
                retry_on = (retry_on,)
            if not (isinstance(retry_on, tuple) and all(
                    isinstance(c, type) and issubclass(c, BaseException) for c in retry_on)):
                raise PolicyError(f"retry_on must be an exception class or a tuple of them, "
                                  f"got {retry_on!r}")
        if fallback is not None and not callable(fallback):
            raise PolicyError(f"fallback must be callable, got {fallback!r}")
        self.retries, self.backoff, self.max_backoff = retries, backoff, max_backoff
        self.retry_on, self.fallback = retry_on, fallback

    @classmethod
    def take(cls, kwargs: dict[str, Any]) -> Plan:
        """Returns the plan named by execute's own keywords, removing them from ``kwargs``."""
        return cls(kwargs.pop("retries", 0), kwargs.pop("backoff", 0.05),
                   kwargs.pop("max_backoff", 2.0), kwargs.pop("retry_on", None),
                   kwargs.pop("fallback", None))

    def delay(self, attempt: int) -> float:
        """Returns the jittered sleep before retry number ``attempt + 1``."""
        cap = min(self.max_backoff, self.backoff * 2.0 ** min(attempt, 60))
        return _RNG.uniform(0.0, cap) if cap > 0 else 0.0

    def retryable(self, ep: Endpoint, exc: BaseException) -> bool:
        if not isinstance(exc, Exception) or isinstance(exc, DeadlineExceededError):
            return False
        if self.retry_on is not None:
            return isinstance(exc, self.retry_on)
        return ep.policy.classify(exc) == Outcome.FAILURE


def moves_on(ep: Endpoint, exc: BaseException) -> bool:
    """Reports whether a fallback takes over after ``exc``: a rejection, the deadline, or a failure."""
    if isinstance(exc, (RejectedError, DeadlineExceededError)):
        return True
    return isinstance(exc, Exception) and ep.policy.classify(exc) == Outcome.FAILURE


def _granted(ep: Endpoint, plan: Plan, attempt: int, exc: BaseException) -> float | None:
    """Returns the sleep before the next attempt, or None when no retry is allowed."""
    if attempt >= plan.retries or not plan.retryable(ep, exc):
        return None
    if ep.breaker_snapshot().state != BreakerState.CLOSED:
        return None  # never retry into an open (or probing) breaker
    pause = plan.delay(attempt)
    left = remaining()
    if left is not None and pause >= left:
        return None  # the retry could not start before the deadline
    if lib.sg_budget_withdraw(ep.h) < 0:
        return None  # the host-wide budget refused (counted as denied in C)
    return pause


def _admit(ep: Endpoint, priority: Priority, timeout: float | None) -> int:
    timeout = _check_deadline(timeout, ep.name)
    if timeout is None:  # one C call, as execute's own path
        tok = int(ep.admit(ep.h, 5 if priority is _NORMAL else pack(1, priority)))
        if tok < 0:
            tok = _admission.admit_slow(ep, tok, priority, None)
        elif tok & LEASE_BITS:  # a probe permit: OPEN -> HALF_OPEN is reported now
            ep.admitted(tok)
    else:
        tok = _admission.admit_slow(ep, None, priority, timeout)
    if tok & LEASE_BITS and ep.probe is not None:
        tok = _admission.probe_instead(ep, tok, priority, timeout)
    return tok


def _attempts(ep: Endpoint, priority: Priority, timeout: float | None, fn: Callable[..., T],
              args: tuple[Any, ...], kwargs: dict[str, Any], plan: Plan) -> T:
    attempt, last = 0, None
    while True:
        try:
            tok = _admit(ep, priority, timeout)
            bt = _admission.enter_bulkhead(ep, tok, priority)  # a ticket for this attempt
        except (RejectedError, DeadlineExceededError):
            if last is None:
                raise
            raise last  # the retry was not let in: the caller sees the dependency's error
        try:
            result = fn(*args, **kwargs)
        except BaseException as exc:
            _give_back(ep, bt)
            ep.record_exception(exc, tok)
            pause = _granted(ep, plan, attempt, exc)
            if pause is None:
                raise
            last = exc
            time.sleep(pause)
            attempt += 1
            continue
        _give_back(ep, bt)
        ep.record_success(tok)
        return result


def _give_back(ep: Endpoint, bt: int) -> None:
    """Gives an attempt's bulkhead ticket back (0: the policy has no bulkhead)."""
    if bt:
        lib.sg_bulkhead_release(ep.h, bt)


def execute(ep: Endpoint, priority: Priority, timeout: float | None, fn: Callable[..., T],
            args: tuple[Any, ...], kwargs: dict[str, Any], plan: Plan) -> T:
    """Runs ``fn`` through ``ep`` with the plan's retries and fallback, under the deadline."""
    if plan.fallback is None:
        return _attempts(ep, priority, timeout, fn, args, kwargs, plan)
    try:
        return _attempts(ep, priority, timeout, fn, args, kwargs, plan)
    except Exception as exc:
        if not moves_on(ep, exc):
            raise
        return plan.fallback(exc)  # type: ignore[no-any-return]


async def _attempts_async(ep: Endpoint,
                          admit: Callable[[float | None], Awaitable[tuple[int, int]]],
                          timeout: float | None, fn: Callable[..., Awaitable[T]],
                          args: tuple[Any, ...], kwargs: dict[str, Any], plan: Plan) -> T:
    attempt, last = 0, None
    while True:
        try:
            tok, bt = await admit(_check_deadline(timeout, ep.name))  # and a bulkhead ticket
        except (RejectedError, DeadlineExceededError):
            if last is None:
                raise
            raise last
        try:
            result = await fn(*args, **kwargs)
        except BaseException as exc:  # CancelledError is not an Exception: ignored, not retried
            _give_back(ep, bt)
            ep.record_exception(exc, tok)
            pause = _granted(ep, plan, attempt, exc)
            if pause is None:
                raise
            last = exc
            await asyncio.sleep(pause)
            attempt += 1
            continue
        _give_back(ep, bt)
        ep.record_success(tok)
        return result


async def execute_async(ep: Endpoint, admit: Callable[[float | None], Awaitable[tuple[int, int]]],
                        timeout: float | None, fn: Callable[..., Awaitable[T]],
                        args: tuple[Any, ...], kwargs: dict[str, Any], plan: Plan) -> T:
    """The asyncio twin of :func:`execute`; ``admit(timeout)`` admits one attempt
    and returns its token and its bulkhead ticket (0: none).

    The fallback may be a plain function or return an awaitable.
    """
    try:
        return await _attempts_async(ep, admit, timeout, fn, args, kwargs, plan)
    except Exception as exc:
        if plan.fallback is None or not moves_on(ep, exc):
            raise
        res = plan.fallback(exc)
        return await res if asyncio.iscoroutine(res) or isinstance(res, asyncio.Future) else res  # type: ignore[no-any-return]
