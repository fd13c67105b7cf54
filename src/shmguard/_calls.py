"""The service's doors for calls: execute, try_execute, admit/record, protect, guard.

``execute`` with no timeout runs in ONE C call (``shmguard._hot``: admit,
call, record); every unusual case there is handed back to the endpoint's
Python methods, and the path below is the equivalent in Python.
"""
from __future__ import annotations

import functools
from time import monotonic_ns as _monotonic_ns
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Coroutine, Sequence, TypeVar

from shmguard import _admission, _capi, _keyed_calls, aio, retry
from shmguard.deadline import check as _check_deadline
from shmguard.deadline import deadline_ns as _deadline_ns
from shmguard.deadline import on_first_use
from shmguard.errors import EndpointRemovedError
from shmguard._endpoint import LEASE_BITS
from shmguard._registry import Registry
from shmguard.limiter import pack
from shmguard.policy import Outcome, Priority
from shmguard.result import Err, Ok

if TYPE_CHECKING:
    from shmguard.fallback import FallbackChain

T = TypeVar("T")
__all__ = ["Calls"]

_CP = tuple(pack(1, p) for p in Priority)
_NORMAL = Priority.NORMAL

_NO_DEADLINES = True  # until this process first sets a deadline (then read the context)


def _deadlines_in_use() -> None:
    global _NO_DEADLINES
    _NO_DEADLINES = False
    if _capi.hot is not None:
        _capi.hot.deadlines_in_use()  # svc.execute bound in C hands calls to Python now


on_first_use(_deadlines_in_use)

# the one-crossing doors (csrc/hot.c); the Python paths below are equivalent
_hot_execute = _capi.hot.execute if _capi.hot is not None else None
_HotGuard: Any = _capi.hot.Guard if _capi.hot is not None else None


async def _ready(value: Any) -> Any:
    return value


if _capi.hot is not None:
    _capi.hot.set_ready(_ready)  # the C guard's `async with` awaits this


class Calls(Registry):
    """Execution doors of :class:`~shmguard.service.ResilienceService`."""

    def execute(self, endpoint: str, fn: Callable[..., T], /, *args: Any,
                priority: Priority = Priority.NORMAL, timeout: float | None = None,
                key: str | bytes | None = None, **kwargs: Any) -> T:
        """Runs ``fn(*args, **kwargs)`` if the endpoint admits it, and records the outcome.

        Admission order: breaker, throttle, limiter, then the bulkhead (if the
        policy has one: a ticket, waited for up to the policy's ``max_wait``,
        given back as soon as ``fn`` returns or raises).

        Keywords ``retries=0, backoff=0.05, max_backoff=2.0, retry_on=None,
        fallback=None`` are execute's own (taken out of ``kwargs``: a named
        parameter costs every call ~7 ns; see :class:`shmguard.retry.Plan`).

        :param timeout: how long to wait for the rate limit (None: do not wait);
            a deadline in force (:func:`shmguard.deadline`) bounds it.
        :param key: apply the keyed limiter the endpoint's policy names
            (``PolicyBuilder.with_keyed_limit``) to this key first.
        :param retries: attempts after the first, for failures (by the policy,
            or ``retry_on``, an exception class or tuple) while the breaker is
            closed; each sleeps ``uniform(0, min(max_backoff, backoff x 2^n))``
            first, ends before the deadline and needs the endpoint's retry
            budget (see :mod:`shmguard.retry`).
        :param fallback: called with the exception when the call is rejected,
            misses the deadline or fails; its result is returned.
        :raises DeadlineExceededError: the deadline passed before an attempt (never calls ``fn``).
        :raises CircuitOpenError: the breaker is open.
        :raises RateLimitedError: no token within ``timeout`` (of the endpoint or of ``key``).
        :raises BulkheadFullError: no ticket within ``max_wait``.
        :returns: what ``fn`` returns; its exceptions are re-raised (the last
            one, after retries).
        """
        ep = self._eps.get(endpoint) or self._endpoint(endpoint)
        if priority is _NORMAL:
            cp = 5
        else:  # a Priority indexes the table; anything else is validated (clear error)
            cp = _CP[priority] if type(priority) is Priority else pack(1, priority)
        if not _NO_DEADLINES and (dl := _deadline_ns()) is not None:  # one is in force
            if timeout is not None or _monotonic_ns() >= dl:
                timeout = _check_deadline(timeout, endpoint)  # bounds the wait, or raises
        if key is not None:
            _keyed_calls.keyed_admit(self, ep, key, priority, timeout)
        if kwargs and not retry.KEYS.isdisjoint(kwargs):
            plan = retry.Plan.take(kwargs)
            return retry.execute(ep, priority, timeout, fn, args, kwargs, plan)
        if timeout is None and _hot_execute is not None and self._events.on_metrics_update is None:
            # admit, call and record in one C call (shmguard._hot)
            try:
                return _hot_execute(ep, ep.hp, cp, fn, args, kwargs or None)  # type: ignore[no-any-return]
            except EndpointRemovedError as exc:  # at admission (fn did not run): look it up again
                if getattr(exc, "stale", None) is not ep:
                    raise
                self._endpoint(endpoint)  # drops the stale entry: found again, or raises
                return self.execute(endpoint, fn, *args, priority=priority, **kwargs)  # key: admitted
        try:
            if timeout is None:
                tok = ep.admit(ep.h, cp)
                if tok < 0:
                    tok = _admission.admit_slow(ep, tok, priority, None)
                elif tok & LEASE_BITS:
                    ep.admitted(tok)
            else:
                tok = _admission.admit_slow(ep, None, priority, timeout)
        except EndpointRemovedError as exc:  # as on the one-crossing path above
            if getattr(exc, "stale", None) is not ep:
                raise
            self._endpoint(endpoint)
            return self.execute(endpoint, fn, *args, priority=priority, timeout=timeout, **kwargs)
        if tok & LEASE_BITS and ep.probe is not None:
            tok = _admission.probe_instead(ep, tok, priority, timeout)
        bt = _admission.enter_bulkhead(ep, tok, priority)
        try:
            result = fn(*args, **kwargs) if kwargs else fn(*args)
        except BaseException as exc:
            _release(ep.h, bt)
            ep.record_exception(exc, tok)
            raise
        _release(ep.h, bt)
        ep.record_success(tok)
        return result

    def execute_async(self, endpoint: str, coro_fn: Callable[..., Awaitable[T]], /,
                      *args: Any, priority: Priority = Priority.NORMAL,
                      timeout: float | None = None, key: str | bytes | None = None,
                      **kwargs: Any) -> Coroutine[Any, Any, T]:
        """Awaits ``coro_fn(*args, **kwargs)`` if admitted, like :meth:`execute` (retries too).

        Waiting for the rate limit sleeps with ``asyncio.sleep`` (never blocks
        the loop); cancelling gives back the reservation and any probe permit,
        and a cancelled call counts as neither success nor failure.
        """
        if key is not None:
            return _keyed_calls.execute_async(self, endpoint, key, coro_fn, args, priority,
                                              timeout, kwargs)
        if not kwargs and timeout is None and _HotGuard is not None and _NO_DEADLINES:
            ep = self._eps.get(endpoint)
            if ep is not None and ep.probe is None and self._events.on_metrics_update is None:
                # the C guard: admission, bulkhead and record in two crossings
                return _guarded(_HotGuard(ep, 5 if priority is _NORMAL else pack(1, priority)),
                                coro_fn, args)
        return aio.execute_async(self, endpoint, coro_fn, *args, priority=priority,
                                 timeout=timeout, **kwargs)

    def try_execute(self, endpoint: str, fn: Callable[..., T], /, *args: Any,
                    priority: Priority = Priority.NORMAL, timeout: float | None = None,
                    key: str | bytes | None = None, **kwargs: Any) -> Ok[T] | Err:
        """Like :meth:`execute`, but returns ``Ok(value)`` or ``Err(exception)``."""
        try:
            return Ok(self.execute(endpoint, fn, *args, priority=priority, timeout=timeout,
                                   key=key, **kwargs))
        except Exception as exc:
            return Err(exc)

    def admit(self, endpoint: str, priority: Priority = Priority.NORMAL,
              timeout: float | None = None, key: str | bytes | None = None) -> int:
        """Returns an admission token (breaker + limiter) or raises a rejection.

        The low-level half of :meth:`execute`; finish with :meth:`record`.
        It takes no bulkhead ticket: use :meth:`bulkhead` (or :meth:`guard`).
        """
        ep = self._eps.get(endpoint) or self._endpoint(endpoint)
        if not _NO_DEADLINES:
            timeout = _check_deadline(timeout, endpoint)
        if key is not None:
            _keyed_calls.keyed_admit(self, ep, key, priority, timeout)
        return _admission.admit_slow(ep, None, priority, timeout)

    def record(self, endpoint: str, token: int, outcome: Outcome, *,
               overload: bool | None = None) -> None:
        """Records the outcome of a call admitted by :meth:`admit`.

        :param overload: for adaptive throttling, whether the dependency
            refused the call for overload (an HTTP 429 or 503). None: the
            policy decides (every failure, or those of ``throttle_on``).
            ``True`` with ``Outcome.IGNORE`` counts a refusal that is no
            breaker failure; ``False`` with a failure counts an accept when
            the policy sets ``throttle_on``.
        """
        self._eps[endpoint].record_outcome(token, int(outcome), overload)

    def protect(self, endpoint: str, *, priority: Priority = Priority.NORMAL,
                timeout: float | None = None) -> Callable[[Callable[..., T]], Callable[..., T]]:
        """Decorator: every call of the function goes through :meth:`execute`."""
        def deco(fn: Callable[..., T]) -> Callable[..., T]:
            import inspect
            if inspect.iscoroutinefunction(fn):
                return aio.protect_async(self, endpoint, fn, priority, timeout)  # type: ignore[return-value]

            @functools.wraps(fn)
            def wrapper(*args: Any, **kwargs: Any) -> T:
                return self.execute(endpoint, fn, *args, priority=priority, timeout=timeout,
                                    **kwargs)
            return wrapper
        return deco

    def fallback_chain(self, steps: Sequence[tuple[str, Callable[..., Any]]], *,
                       last: Callable[[Exception], Any] | None = None,
                       name: str | None = None) -> FallbackChain:
        """Returns a callable that tries ``steps`` (``(endpoint, fn)``) in order until one serves.

        A step is skipped when rejected (open, rate limited, deadline) or when
        it fails; ``last(exc)`` serves when all were (see :mod:`shmguard.fallback`).
        Steps that are all ``async def`` give an async chain.
        """
        from shmguard.fallback import make_chain
        return make_chain(self, steps, last, name)

    def guard(self, endpoint: str, *, priority: Priority = Priority.NORMAL,
              timeout: float | None = None, key: str | bytes | None = None) -> Any:
        """Context manager: admits on entry, records the block's outcome on exit.

        ``async with`` works too (it awaits the rate limit when ``timeout`` is set).
        A deadline in force is checked when the guard is made (``with
        svc.guard(ep):`` raises before the block) and bounds the wait.
        """
        ep = self._eps.get(endpoint) or self._endpoint(endpoint)
        if not _NO_DEADLINES:
            timeout = _check_deadline(timeout, endpoint)
        if (_HotGuard is not None and timeout is None and ep.probe is None
                and self._events.on_metrics_update is None and key is None):
            return _HotGuard(ep, 5 if priority is _NORMAL else pack(1, priority))
        return _Guard(self, endpoint, priority, timeout, key)


async def _guarded(guard: Any, coro_fn: Callable[..., Awaitable[T]], args: tuple[Any, ...]) -> T:
    async with guard:
        return await coro_fn(*args)


def _release(h: Any, bt: int) -> None:
    if bt:
        _capi.lib.sg_bulkhead_release(h, bt)


class _Guard:
    __slots__ = ("svc", "endpoint", "priority", "timeout", "key", "tok", "bt")

    def __init__(self, svc: Calls, endpoint: str, priority: Priority,
                 timeout: float | None, key: str | bytes | None = None) -> None:
        self.svc, self.endpoint, self.priority, self.timeout = svc, endpoint, priority, timeout
        self.key = key
        self.tok = -1
        self.bt = 0

    def __enter__(self) -> _Guard:
        self.tok = self.svc.admit(self.endpoint, self.priority, self.timeout, self.key)
        self.bt = _admission.enter_bulkhead(self.svc._eps[self.endpoint], self.tok, self.priority)
        return self

    def __exit__(self, et: Any, exc: Any, tb: Any) -> None:
        ep = self.svc._eps[self.endpoint]
        bt, self.bt = self.bt, 0
        _release(ep.h, bt)
        if exc is None:
            ep.record_outcome(self.tok, Outcome.SUCCESS)
        else:  # classified as execute does (failure, ignored; overload-class or not)
            ep.record_exception(exc, self.tok)

    async def __aenter__(self) -> _Guard:
        if self.key is not None:
            svc = self.svc
            ep = svc._eps.get(self.endpoint) or svc._endpoint(self.endpoint)
            await _keyed_calls.keyed_admit_async(svc, ep, self.key, self.priority, self.timeout)
        self.tok = await aio.admit_async(self.svc, self.endpoint, self.priority, self.timeout)
        self.bt = await aio.enter_bulkhead_async(self.svc._eps[self.endpoint], self.tok,
                                                 self.priority)
        return self

    async def __aexit__(self, et: Any, exc: Any, tb: Any) -> None:
        self.__exit__(et, exc, tb)


if _capi.hot is not None:
    # the common calls (execute(endpoint, fn, *args), guard(endpoint)) run without
    # a Python frame (csrc/hot_service.c); every other goes to the method above, unchanged
    Calls.execute = _capi.hot.bind_execute(Calls.execute)  # type: ignore[method-assign]
    Calls.guard = _capi.hot.bind_guard(Calls.guard)  # type: ignore[method-assign]
