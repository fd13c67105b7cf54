"""ResilientExecutor: guard every call of a ``concurrent.futures`` pool with one endpoint.

The guarded call runs in the worker: the worker attaches to the segment on
first use (cached per process, see :func:`attach`), admits the call, runs it
and records its outcome and timing there. A breaker opened by one worker is
open for all; a rate limit holds for the pool as a whole::

    from concurrent.futures import ProcessPoolExecutor
    with ProcessPoolExecutor(8) as pool:
        ex = ResilientExecutor(pool, segment="buildpool")
        fut = ex.submit("cache", fetch, key, priority=Priority.HIGH, timeout=5.0)
        for value in ex.map("cache", fetch, keys, timeout=5.0):
            ...

Works with any executor (thread pools; process pools started by fork, spawn
or forkserver), including one built before; no initializer is needed.
"""
from __future__ import annotations

import os
import threading
import time
from concurrent.futures import Executor, Future
from typing import Any, Callable, Iterable, Iterator, NamedTuple, TypeVar

from shmguard.deadline import deadline_ns as _deadline_ns
from shmguard.deadline import until
from shmguard.errors import (DeadlineExceededError, RejectedError, SegmentError,
                             ThrottledError)
from shmguard.limiter import pack, wait_ns
from shmguard.policy import Policy, PolicyPresets, Priority
from shmguard._endpoint import validate_endpoint
from shmguard.service import ResilienceService

T = TypeVar("T")
__all__ = ["ResilientExecutor", "attach", "detach"]

_ATTACHED: dict[tuple[str, int], tuple[ResilienceService, tuple[int, int]]] = {}
_LOCK = threading.Lock()


def _reset_after_fork() -> None:
    # A thread of the parent may have held the lock at fork; the child's copy
    # would stay locked forever. The inherited entries keep their parent's pid
    # in the key, so the child never uses them: it attaches anew.
    global _LOCK
    _LOCK = threading.Lock()


os.register_at_fork(after_in_child=_reset_after_fork)


def _identity(svc: ResilienceService) -> tuple[int, int]:
    """Tells one incarnation of a segment name from another (creation time, creator pid)."""
    h = svc.segment.header
    return int(h.created_unix_ns), int(h.creator_pid)


def attach(segment: str, identity: tuple[int, int] | None = None) -> ResilienceService:
    """Returns this process's attachment to ``segment``, attaching on first use.

    Cached per (segment, pid): after a fork the child's pid differs, so the
    child attaches anew instead of sharing its parent's handles. Thread safe.

    :param identity: the incarnation expected (see :class:`ResilientExecutor`);
        a cached attachment to an older one is replaced.
    :raises SegmentNotFoundError: the segment does not exist.
    :raises SegmentError: the segment under that name is not ``identity``.
    """
    key = (segment, os.getpid())
    entry = _ATTACHED.get(key)
    if entry is not None and not entry[0].closed and identity in (None, entry[1]):
        return entry[0]
    with _LOCK:
        entry = _ATTACHED.get(key)
        if entry is None or entry[0].closed or identity not in (None, entry[1]):
            svc = ResilienceService(segment, create=False)
            entry = (svc, _identity(svc))
            if identity not in (None, entry[1]):
                svc.close()
                raise SegmentError(f"segment {segment!r} was removed and made anew since this "
                                   "executor attached to it; wrap the pool again")
            _ATTACHED[key] = entry  # an older attachment is left to the GC (calls may run)
        return entry[0]


def detach(segment: str | None = None) -> int:
    """Closes this process's cached attachments (of ``segment``, or all); returns how many.

    Call it only when no guarded call of this process is running.
    """
    pid, n = os.getpid(), 0
    with _LOCK:
        for key in [k for k in _ATTACHED if k[1] == pid and segment in (None, k[0])]:
            _ATTACHED.pop(key)[0].close()
            n += 1
    return n


class _Ticket(NamedTuple):
    """What a worker needs to find the endpoint: the segment and the local policy."""

    segment: str
    identity: tuple[int, int]
    policy: Policy | None


def _run(ticket: _Ticket, endpoint: str, fn: Callable[..., T], args: tuple[Any, ...],
         kwargs: dict[str, Any], priority: Priority, timeout: float | None,
         deadline_ns: int | None = None) -> T:
    """Runs in the worker: admits, calls ``fn``, records the outcome there.

    ``deadline_ns`` is the caller's deadline, an absolute CLOCK_MONOTONIC
    instant (one clock per host): a task that waited past it in the queue is
    not run, and ``remaining()`` in the worker is what the caller had left
    minus the time queued.
    """
    if deadline_ns is not None and time.monotonic_ns() >= deadline_ns:
        raise DeadlineExceededError(f"deadline passed while the call to {endpoint!r} was queued "
                                    f"({(time.monotonic_ns() - deadline_ns) / 1e9:.3f}s ago)")
    svc = attach(ticket.segment, ticket.identity)
    if ticket.policy is not None:
        ep = svc._eps.get(endpoint)
        if ep is None or ep.policy.fingerprint != ticket.policy.fingerprint:
            svc.register_endpoint(endpoint, ticket.policy)
    try:
        if deadline_ns is None:
            return svc.execute(endpoint, fn, *args, priority=priority, timeout=timeout, **kwargs)
        with until(deadline_ns):
            return svc.execute(endpoint, fn, *args, priority=priority, timeout=timeout, **kwargs)
    except (RejectedError, ThrottledError) as exc:
        exc.worker_pid = os.getpid()
        raise


class ResilientExecutor:
    """Wraps a ``concurrent.futures.Executor`` so each call goes through an endpoint.

    Creates the segment (or attaches to it) in this process and registers
    endpoints on first use with ``policy`` (default: the service's standard
    policy); the workers attach by name. Rejections arrive as the future's
    :class:`CircuitOpenError`, :class:`RateLimitedError`, :class:`ThrottledError`
    or :class:`BulkheadFullError`, with ``worker_pid`` set to the process that
    decided. Arguments that cannot be pickled fail with the executor's own
    error. Thread safe; ``shutdown()`` and the context manager pass through to
    the wrapped executor, then close the service this wrapper opened.

    :param executor: the pool to wrap (kept; see :attr:`executor`).
    :param segment: the segment name (default: env ``SHMGUARD_SEGMENT``, else
        "default").
    :param policy: the policy of endpoints this wrapper registers; workers
        classify exceptions with it.
    """

    def __init__(self, executor: Executor, segment: str | None = None, *,
                 policy: Policy | None = None) -> None:
        if not isinstance(executor, Executor):
            raise TypeError(f"executor must be a concurrent.futures.Executor, got {executor!r}")
        self.executor = executor
        self.service = ResilienceService(segment, policy=policy,  # registers on first use
                                         default_policy=policy or PolicyPresets.standard())
        self.segment = self.service.name
        self._ticket = _Ticket(self.segment, _identity(self.service), policy)
        self._known: set[str] = set()

    def _prepare(self, endpoint: str, priority: Priority, timeout: float | None) -> None:
        if endpoint in self._known:
            pack(1, priority)
            wait_ns(timeout)
            return
        validate_endpoint(endpoint)
        pack(1, priority)
        wait_ns(timeout)
        if self._ticket.policy is not None:
            self.service.register_endpoint(endpoint, self._ticket.policy)
        else:
            self.service.breaker(endpoint)  # registers with the default policy if new
        self._known.add(endpoint)

    def submit(self, endpoint: str, fn: Callable[..., T], /, *args: Any,
               priority: Priority = Priority.NORMAL, timeout: float | None = None,
               **kwargs: Any) -> Future[T]:
        """Returns a future for ``fn(*args, **kwargs)`` run in a worker through ``endpoint``.

        :param timeout: how long the worker may wait for the rate limit
            (None: do not wait).
        :raises PolicyError: for a bad priority or timeout (at once).

        The caller's deadline (:func:`shmguard.deadline`) goes with the call:
        the future fails with :class:`DeadlineExceededError` if the task is
        still queued when it passes.
        """
        self._prepare(endpoint, priority, timeout)
        return self.executor.submit(_run, self._ticket, endpoint, fn, args, kwargs, priority,
                                    timeout, _deadline_ns())

    def map(self, endpoint: str, fn: Callable[..., T], *iterables: Iterable[Any],
            priority: Priority = Priority.NORMAL, timeout: float | None = None) -> Iterator[T]:
        """Returns the results of ``fn`` over ``zip(*iterables)``, in order.

        Submits every call at once; the first exception (a rejection
        included) is raised when its turn comes, and the calls not yet
        started are cancelled when the iterator is closed.
        """
        self._prepare(endpoint, priority, timeout)
        dl = _deadline_ns()
        futures = [self.executor.submit(_run, self._ticket, endpoint, fn, args, {}, priority,
                                        timeout, dl) for args in zip(*iterables)]
        return _results(futures)

    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None:
        """Shuts the wrapped executor down and closes the service this wrapper opened.

        The segment stays for the other processes; calls submitted later
        raise :class:`~shmguard.ServiceClosedError`.
        """
        self.executor.shutdown(wait=wait, cancel_futures=cancel_futures)
        self.service.close()

    def __enter__(self) -> ResilientExecutor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown(wait=True)

    def __repr__(self) -> str:
        return f"<ResilientExecutor {type(self.executor).__name__} segment={self.segment!r}>"


def _results(futures: list[Future[T]]) -> Iterator[T]:
    futures.reverse()
    try:
        while futures:
            yield futures.pop().result()
    finally:
        for f in futures:
            f.cancel()
