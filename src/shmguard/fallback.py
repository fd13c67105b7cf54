"""Fallback chains: try endpoints in order until one serves.

``svc.fallback_chain([("primary", fetch_primary), ("replica", fetch_replica)],
last=lambda exc: cached)`` returns a callable. Each step runs through its own
endpoint (breaker, limiter, the deadline in force); the chain moves on when a
step is rejected (open, rate limited, deadline) or fails with an exception
its endpoint's policy counts as a failure, and calls ``last(exc)`` when every
step did. Any other exception (the dependency answered, the caller erred) is
raised at once. Each step's exception has the previous one as its
``__cause__``, so the traceback tells the whole story.

The async variant (every step an ``async def``) awaits the steps; ``last``
may be a plain function or a coroutine function.

Statistics (:meth:`FallbackChain.stats`): which step served how often, how
often ``last`` did, how often everything failed. A chain given a ``name=``
counts host-wide, beside the segment (:mod:`shmguard._chain_shm`): every
process that builds the chain under that name adds to the same counts, and
``shmguard inspect`` shows them. An unnamed chain counts in its process.
"""
from __future__ import annotations

import inspect
import threading
from typing import TYPE_CHECKING, Any, Callable, Sequence

from shmguard._chain_shm import FAILED as _FC_FAILED, LAST as _FC_LAST, ChainCounters
from shmguard._endpoint import validate_endpoint
from shmguard.errors import PolicyError
from shmguard.retry import moves_on

if TYPE_CHECKING:
    from shmguard._calls import Calls

__all__ = ["FallbackChain", "AsyncFallbackChain", "make_chain"]

Step = tuple[str, Callable[..., Any]]
LAST = "last"
FAILED = "failed"


def _chain(exc: BaseException, prev: BaseException | None) -> None:
    """Sets ``prev`` as the cause of ``exc`` unless that would make a loop."""
    seen: BaseException | None = prev
    while seen is not None:
        if seen is exc:
            return
        seen = seen.__cause__
    exc.__cause__ = prev


class FallbackChain:
    """A callable that tries its steps' endpoints in order (sync steps).

    Thread safe; the statistics are per process.

    :param steps: ``(endpoint, fn)`` pairs, tried in order with the call's arguments.
    :param last: called with the last exception when every step moved on.
    :param name: a label for the chain (its ``repr`` and statistics).
    """

    def __init__(self, svc: Calls, steps: Sequence[Step],
                 last: Callable[[Exception], Any] | None = None, name: str | None = None) -> None:
        if not steps:
            raise PolicyError("a fallback chain needs at least one (endpoint, fn) step")
        checked: list[Step] = []
        for i, step in enumerate(steps):
            if not (isinstance(step, tuple) and len(step) == 2 and callable(step[1])):
                raise PolicyError(f"fallback step {i} must be (endpoint, callable), got {step!r}")
            validate_endpoint(step[0])
            checked.append((step[0], step[1]))
        if last is not None and not callable(last):
            raise PolicyError(f"last must be callable, got {last!r}")
        if name is not None and not isinstance(name, str):
            raise PolicyError(f"chain name must be a str, got {name!r}")
        self.svc, self.steps, self.last, self.name = svc, tuple(checked), last, name
        self._lock = threading.Lock()
        self._counts = dict.fromkeys([ep for ep, _ in checked] + [LAST, FAILED], 0)
        self._shared: ChainCounters | None = None
        if name is not None:
            if len({ep for ep, _ in checked}) != len(checked):
                raise PolicyError(f"a named chain lists each endpoint once, got {checked!r}")
            self._shared = ChainCounters(svc.segment, name, [ep for ep, _ in checked])
        self._index = {ep: i for i, (ep, _) in enumerate(checked)}
        self._index.update({LAST: _FC_LAST, FAILED: _FC_FAILED})

    def _count(self, key: str) -> None:
        if self._shared is not None:
            self._shared.count(self._index[key])  # steps 0.., then LAST, FAILED
            return
        with self._lock:
            self._counts[key] += 1

    def stats(self) -> dict[str, int]:
        """Returns how often each step served, then ``last`` and ``failed``.

        Host-wide for a named chain (every process's calls), else this process's.
        """
        if self._shared is not None:
            snap = self._shared.snapshot()
            out = {st["endpoint"]: st["served"] for st in snap["steps"]}
            return {**out, LAST: snap["last"], FAILED: snap["failed"]}
        with self._lock:
            return dict(self._counts)

    def _moves_on(self, endpoint: str, exc: Exception) -> bool:
        return moves_on(self.svc._eps.get(endpoint) or self.svc._endpoint(endpoint), exc)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        prev: Exception | None = None
        for endpoint, fn in self.steps:
            try:
                result = self.svc.execute(endpoint, fn, *args, **kwargs)
            except Exception as exc:
                _chain(exc, prev)
                if not self._moves_on(endpoint, exc):
                    raise
                prev = exc
                continue
            self._count(endpoint)
            return result
        return self._finish(prev)

    def _finish(self, prev: Exception | None) -> Any:
        assert prev is not None
        if self.last is None:
            self._count(FAILED)
            raise prev
        self._count(LAST)
        return self.last(prev)

    def __repr__(self) -> str:
        label = f" {self.name!r}" if self.name else ""
        return f"<{type(self).__name__}{label}: {' -> '.join(ep for ep, _ in self.steps)}>"


class AsyncFallbackChain(FallbackChain):
    """A :class:`FallbackChain` of ``async def`` steps: calling it returns a coroutine."""

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        prev: Exception | None = None
        for endpoint, fn in self.steps:
            try:
                result = await self.svc.execute_async(endpoint, fn, *args, **kwargs)
            except Exception as exc:
                _chain(exc, prev)
                if not self._moves_on(endpoint, exc):
                    raise
                prev = exc
                continue
            self._count(endpoint)
            return result
        res = self._finish(prev)
        return await res if inspect.isawaitable(res) else res


def make_chain(svc: Calls, steps: Sequence[Step], last: Callable[[Exception], Any] | None,
               name: str | None) -> FallbackChain:
    """Returns the sync or the async chain, by what the steps are."""
    kinds = {inspect.iscoroutinefunction(step[1]) for step in steps
             if isinstance(step, tuple) and len(step) == 2}
    if len(kinds) > 1:
        raise PolicyError("fallback steps must be all plain functions or all async def")
    cls = AsyncFallbackChain if kinds == {True} else FallbackChain
    return cls(svc, steps, last, name)

