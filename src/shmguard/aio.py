"""asyncio doors to a :class:`~shmguard.service.ResilienceService`.

:func:`execute_async` is :meth:`ResilienceService.execute` for coroutines;
``svc.protect(endpoint)`` on an ``async def`` and ``async with
svc.guard(endpoint)`` come here too. Waiting for the rate limit reserves a
place (one C call) and then awaits ``asyncio.sleep`` for exactly the computed
delay: the loop never blocks and nothing polls.

Cancellation: a task cancelled while it waits gives back its reservation and
its half-open probe; a task cancelled while its call runs records
:attr:`Outcome.IGNORE` (neither success nor failure), which frees a probe.

>>> async def main(svc):                                    # doctest: +SKIP
...     return await execute_async(svc, "cache", fetch, "key", timeout=1.0)
"""
from __future__ import annotations

import asyncio
import functools
import inspect
from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar

from shmguard import _tickets, retry
from shmguard.deadline import check as _check_deadline
from shmguard.deadline import on_first_use
from shmguard._admission import admit_slow
from shmguard._capi import ffi, lib
from shmguard._endpoint import LEASE_BITS as _LEASE
from shmguard.limiter import NS, pack, wait_ns
from shmguard.policy import Outcome, Priority
from shmguard.stats import BreakerState

_QUIET = _tickets.QUIET

if TYPE_CHECKING:
    from shmguard._endpoint import Endpoint
    from shmguard._registry import Registry as ResilienceService

T = TypeVar("T")
_NORMAL = Priority.NORMAL
_NO_DEADLINES = True  # until this process first sets a deadline (as in _calls)


def _deadlines_in_use() -> None:
    global _NO_DEADLINES
    _NO_DEADLINES = False


on_first_use(_deadlines_in_use)
__all__ = ["admit_async", "execute_async", "protect_async", "enter_bulkhead_async"]


async def _admit(svc: ResilienceService, endpoint: str, priority: Priority,
                 timeout: float | None) -> tuple[Endpoint, int]:
    ep = svc._eps.get(endpoint) or svc._endpoint(endpoint)
    cp = pack(1, priority)
    if timeout is None:
        tok = ep.admit(ep.h, cp)
        return ep, ep.admitted(tok) if tok >= 0 else admit_slow(ep, tok, priority, None)
    budget = wait_ns(timeout)
    ep.seg.base  # raises ServiceClosedError once closed
    for attempt in range(2):
        d = ffi.new("struct sg_decision *")
        tok = lib.sg_admit_wait(ep.h, cp, budget, d)
        if tok >= 0:
            ep.admitted(tok)
            if d.delay_ns > 0:
                try:
                    await asyncio.sleep(d.delay_ns / NS)
                except BaseException:  # cancelled: give the place and the probe back
                    lib.sg_release_probe(ep.h, tok)
                    lib.sg_limiter_cancel(ep.h, cp, d)
                    raise
            return ep, tok
        if tok != lib.SG_R_PROBES_FULL or attempt or not ep.reclaim_probes():
            break
    # a rejection: the sync path maps it to the right error (it does not wait)
    return ep, admit_slow(ep, tok, priority, None)


async def admit_async(svc: ResilienceService, endpoint: str,
                      priority: Priority = Priority.NORMAL, timeout: float | None = None) -> int:
    """Returns an admission token, awaiting the rate limit up to ``timeout`` seconds.

    The asyncio twin of :meth:`ResilienceService.admit`; finish with
    :meth:`ResilienceService.record`.

    :raises CircuitOpenError: the breaker is open (or its probes are out).
    :raises RateLimitedError: no token within ``timeout`` (None: do not wait).
    """
    return (await _admit(svc, endpoint, priority, _check_deadline(timeout, endpoint)))[1]


async def execute_async(svc: ResilienceService, endpoint: str,
                        coro_fn: Callable[..., Awaitable[T]], /, *args: Any,
                        priority: Priority = Priority.NORMAL, timeout: float | None = None,
                        **kwargs: Any) -> T:
    """Awaits ``coro_fn(*args, **kwargs)`` if the endpoint admits it, and records the outcome.

    ``retries``, ``backoff``, ``max_backoff``, ``retry_on`` and ``fallback``
    are taken out of ``kwargs`` as in :meth:`ResilienceService.execute`
    (backoff sleeps with ``asyncio.sleep``).

    :param timeout: how long to wait for the rate limit (None: do not wait);
        the deadline in force bounds it.
    :raises DeadlineExceededError: the deadline passed before an attempt.
    :raises CircuitOpenError: the breaker is open.
    :raises RateLimitedError: no token within ``timeout``.
    :returns: what the coroutine returns; its exceptions are re-raised, and
        ``asyncio.CancelledError`` counts as neither success nor failure.
    """
    if kwargs and not retry.KEYS.isdisjoint(kwargs):
        return await _with_plan(svc, endpoint, priority, _check_deadline(timeout, endpoint),
                                coro_fn, args, kwargs)
    if not _NO_DEADLINES:
        timeout = _check_deadline(timeout, endpoint)
    if timeout is None:  # admission never waits: no coroutine for it
        ep = svc._eps.get(endpoint) or svc._endpoint(endpoint)
        tok = ep.admit(ep.h, 5 if priority is _NORMAL else pack(1, priority))
        if tok < 0:
            tok = admit_slow(ep, tok, priority, None)
        elif tok & _LEASE:  # a probe permit: OPEN -> HALF_OPEN is reported now
            ep.admitted(tok)
    else:
        ep, tok = await _admit(svc, endpoint, priority, timeout)
    if tok & _LEASE and ep.probe is not None:
        tok = await _probe_instead(svc, ep, tok, priority, timeout)
    # one C call: 0 when the policy has no bulkhead (the common case), else a ticket
    bt = lib.sg_bulkhead_acquire(ep.h, int(priority) | _QUIET)
    if bt != 0:
        bt = await bulkhead_slow(ep, tok, priority, bt)
    try:
        result = await coro_fn(*args, **kwargs)
    except BaseException as exc:  # CancelledError is not an Exception: ignored
        if bt:
            lib.sg_bulkhead_release(ep.h, bt)
        ep.record_exception(exc, tok)
        raise
    if bt:
        lib.sg_bulkhead_release(ep.h, bt)
    ep.record_success(tok)
    return result


async def bulkhead_slow(ep: Endpoint, tok: int, priority: Priority, bt: int) -> int:
    """A first try ``bt`` that was not "no bulkhead": full (await a ticket), an error, or a
    ticket whose quota is due a recount (:meth:`Endpoint.slow_bulkhead`, which never waits
    for anything but a full bulkhead)."""
    if bt == _tickets.FULL:
        return await enter_bulkhead_async(ep, tok, priority)
    return ep.slow_bulkhead(bt, tok, int(priority))


async def enter_bulkhead_async(ep: Endpoint, tok: int, priority: Priority) -> int:
    """Returns a bulkhead ticket for the admitted call ``tok`` (0: none), awaiting up to ``max_wait``.

    On refusal or cancellation the probe permit ``tok`` may hold is given back.
    """
    try:
        return await _tickets.take_async(ep, int(priority) | _tickets.QUIET, None)
    except BaseException:
        lib.sg_release_probe(ep.h, tok)
        raise


async def _with_plan(svc: ResilienceService, endpoint: str, priority: Priority,
                     timeout: float | None, coro_fn: Callable[..., Awaitable[T]],
                     args: tuple[Any, ...], kwargs: dict[str, Any]) -> T:
    """execute_async with retries or a fallback (see :mod:`shmguard.retry`)."""
    plan = retry.Plan.take(kwargs)
    ep = svc._eps.get(endpoint) or svc._endpoint(endpoint)

    async def admit(t: float | None) -> tuple[int, int]:
        e, tok = await _admit(svc, endpoint, priority, t)
        if tok & _LEASE and e.probe is not None:
            tok = await _probe_instead(svc, e, tok, priority, t)
        return tok, await enter_bulkhead_async(e, tok, priority)
    return await retry.execute_async(ep, admit, timeout, coro_fn, args, kwargs, plan)


async def _probe_instead(svc: ResilienceService, ep: Endpoint, tok: int, priority: Priority,
                         timeout: float | None) -> int:
    """The call got a probe permit and a health probe exists: it probes instead.

    As in the sync path: if the probe closes the breaker the call is admitted
    anew, otherwise it is rejected. A probe may be ``async def``.
    """
    assert ep.probe is not None
    try:
        res = ep.probe()
        ok = bool(await res) if inspect.isawaitable(res) else bool(res)
    except Exception:
        ok = False
    except BaseException:
        ep.record_outcome(tok, Outcome.IGNORE)
        raise
    ep.record_outcome(tok, Outcome.SUCCESS if ok else Outcome.FAILURE)
    if ok and ep.breaker_snapshot().state == BreakerState.CLOSED:
        return (await _admit(svc, ep.name, priority, timeout))[1]
    raise ep.open_error()


def protect_async(svc: ResilienceService, endpoint: str, fn: Callable[..., Awaitable[T]],
                  priority: Priority = Priority.NORMAL,
                  timeout: float | None = None) -> Callable[..., Awaitable[T]]:
    """Returns an ``async def`` wrapper of ``fn`` whose every call goes through :func:`execute_async`."""
    @functools.wraps(fn)
    async def wrapper(*args: Any, **kwargs: Any) -> T:
        return await execute_async(svc, endpoint, fn, *args, priority=priority, timeout=timeout,
                                   **kwargs)
    return wrapper
