"""Deadlines: an absolute CLOCK_MONOTONIC instant, carried by ``contextvars``.

``with sg.deadline(2.0):`` sets the instant ``now + 2 s`` for the block (and
``async with`` for a coroutine). Deadlines nest and the inner one can only
shorten: the instant in force is the minimum. Threads started with a copied
context (``contextvars.copy_context().run``, ``asyncio.to_thread``) and
asyncio tasks inherit it. The instant is ``time.monotonic_ns()``, which is
CLOCK_MONOTONIC on Linux: one clock for every process of the host, so a
deadline crosses process boundaries unchanged (``ResilientExecutor`` carries
it into its workers). A segment's manual clock (tests) does not move
deadlines: they always follow the real monotonic clock.

A deadline is cooperative: it raises nothing by itself. ``execute``,
``execute_async``, ``guard``, ``protect`` and fallback chains check it before
admission (an expired one raises :class:`DeadlineExceededError` and never
calls the function) and bound their waits by it; the function reads
:func:`remaining` to set its own socket timeouts::

    with sg.deadline(0.5):
        svc.execute("users", fetch, uid)     # fetch may use sg.remaining()
"""
from __future__ import annotations

import math
import time
from contextvars import ContextVar, Token
from typing import Any, Callable

from shmguard.errors import DeadlineExceededError, PolicyError

__all__ = ["deadline", "remaining", "deadline_ns", "until", "check", "on_first_use"]

NS = 1_000_000_000
_DEADLINE: ContextVar[int | None] = ContextVar("shmguard_deadline", default=None)
#: the instant in force in this context (ns, CLOCK_MONOTONIC), or None
deadline_ns: Callable[[], int | None] = _DEADLINE.get
_LISTENERS: list[Callable[[], None]] = []
_USED = False


def on_first_use(fn: Callable[[], None]) -> None:
    """Calls ``fn`` once, when this process first sets a deadline.

    The call doors use it to skip reading the context variable until then:
    a process that never sets a deadline pays nothing for them.
    """
    if _USED:
        fn()
    else:
        _LISTENERS.append(fn)


def _mark_used() -> None:
    global _USED
    if not _USED:
        _USED = True
        for fn in _LISTENERS:
            fn()


def remaining() -> float | None:
    """Reports the seconds left before the deadline in force (<= 0 when passed), or None."""
    dl = _DEADLINE.get()
    return None if dl is None else (dl - time.monotonic_ns()) / NS


def check(timeout: float | None, endpoint: str) -> float | None:
    """Raises if the deadline in force has passed; returns ``timeout`` bounded by the time left.

    ``None`` (do not wait) stays ``None``: a deadline shortens waits, it never starts one.

    :raises DeadlineExceededError: the deadline has passed.
    """
    dl = _DEADLINE.get()
    if dl is None:
        return timeout
    left = dl - time.monotonic_ns()
    if left <= 0:
        raise DeadlineExceededError(f"deadline passed {-left / NS:.3f}s before the call to "
                                    f"{endpoint!r}")
    return timeout if timeout is None or timeout * NS <= left else left / NS


class until:
    """Sets the absolute instant ``at_ns`` (CLOCK_MONOTONIC) as the deadline, or keeps an earlier one."""

    __slots__ = ("at_ns", "_tokens")

    def __init__(self, at_ns: int) -> None:
        if isinstance(at_ns, bool) or not isinstance(at_ns, int):
            raise PolicyError(f"deadline instant must be an int (ns), got {at_ns!r}")
        self.at_ns = at_ns
        self._tokens: list[Token[int | None]] = []

    def remaining(self) -> float:
        """Reports the seconds left before this deadline (<= 0 when passed)."""
        return (self.at_ns - time.monotonic_ns()) / NS

    def __enter__(self) -> until:
        _mark_used()
        cur = _DEADLINE.get()
        self._tokens.append(_DEADLINE.set(self.at_ns if cur is None else min(cur, self.at_ns)))
        return self

    def __exit__(self, *exc: Any) -> None:
        _DEADLINE.reset(self._tokens.pop())

    async def __aenter__(self) -> until:
        return self.__enter__()

    async def __aexit__(self, *exc: Any) -> None:
        self.__exit__()


class deadline(until):
    """Context manager: the block must finish within ``seconds`` (nestable; sync and async).

    The instant is ``now + seconds`` taken on entry (as ``asyncio.timeout``).

    :raises PolicyError: ``seconds`` is not a finite number >= 0.

    >>> with deadline(5.0):
    ...     0 < remaining() <= 5.0
    True
    """

    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) \
                or not math.isfinite(seconds) or seconds < 0 or seconds > 10**9:
            raise PolicyError(f"deadline seconds must be a finite number in [0, 1e9], "
                              f"got {seconds!r}")
        self.seconds = seconds
        super().__init__(time.monotonic_ns() + int(seconds * NS))

    def __enter__(self) -> deadline:
        self.at_ns = time.monotonic_ns() + int(self.seconds * NS)
        super().__enter__()
        return self
