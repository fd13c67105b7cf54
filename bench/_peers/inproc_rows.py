"""In-process contenders: floors, peer limiters and peer breakers.

Every limiter is configured with a huge rate and burst and every breaker
with a huge failure threshold, and the guarded function never fails: each
decision admits, so the numbers are the cost of the decision itself.
Imports are done inside make() so that a missing peer only skips its row.
"""

from __future__ import annotations

import threading
from functools import partial

from .registry import HUGE, REGISTRY, InprocContender


def _noop():
    return None


async def _anoop():
    return None


# --- floors -----------------------------------------------------------------


def _make_bare_call():
    return _noop


def _make_lock_pair():
    lock = threading.Lock()
    acquire, release = lock.acquire, lock.release

    def pair():
        acquire()
        release()

    return pair


def _make_await_noop():
    return _anoop


# --- limiters ---------------------------------------------------------------


def _make_pyrate_inmemory():
    from pyrate_limiter import Duration, InMemoryBucket, Limiter, Rate

    lim = Limiter(InMemoryBucket([Rate(HUGE, Duration.SECOND)]))
    return partial(lim.try_acquire, "k", 1, False), lim.close


def _make_pyrate_token():
    from pyrate_limiter import Duration, Limiter, Rate, StateBucket, TokenBucket

    lim = Limiter(StateBucket([Rate(HUGE, Duration.SECOND, burst=HUGE)], algorithm=TokenBucket()))
    return partial(lim.try_acquire, "k", 1, False), lim.close


def _limits_mem(strategy_name):
    import limits
    from limits.storage import MemoryStorage

    strategy = getattr(limits.strategies, strategy_name)(MemoryStorage())
    item = limits.RateLimitItemPerSecond(HUGE)
    return partial(strategy.hit, item, "k")


def _make_limits_fixed():
    return _limits_mem("FixedWindowRateLimiter")


def _make_limits_sliding():
    return _limits_mem("SlidingWindowCounterRateLimiter")


def _make_limits_moving():
    return _limits_mem("MovingWindowRateLimiter")


def _make_aiolimiter():
    from aiolimiter import AsyncLimiter

    lim = AsyncLimiter(HUGE, 1.0)
    return lim.acquire


def _make_token_bucket():
    import token_bucket

    lim = token_bucket.Limiter(float(HUGE), HUGE, token_bucket.MemoryStorage())
    return partial(lim.consume, b"k")


# --- breakers ---------------------------------------------------------------


def _make_pybreaker():
    import pybreaker

    br = pybreaker.CircuitBreaker(fail_max=HUGE, reset_timeout=60)
    return partial(br.call, _noop)


def _make_circuitbreaker():
    from circuitbreaker import circuit

    @circuit(failure_threshold=HUGE, recovery_timeout=60)
    def guarded():
        return None

    return guarded


def _make_purgatory_sync():
    from purgatory import SyncCircuitBreakerFactory

    factory = SyncCircuitBreakerFactory(default_threshold=HUGE, default_ttl=60)

    @factory("bench-ep")
    def guarded():
        return None

    return guarded


def _make_purgatory_ctx():
    from purgatory import SyncCircuitBreakerFactory

    factory = SyncCircuitBreakerFactory(default_threshold=HUGE, default_ttl=60)
    brk = factory.get_breaker("bench-ep")

    def guarded():
        with brk:
            return None

    return guarded


def _make_aiobreaker():
    import aiobreaker

    br = aiobreaker.CircuitBreaker(fail_max=HUGE)
    return partial(br.call_async, _anoop)


def register() -> None:
    add = REGISTRY.add_inproc
    add(InprocContender("floor: bare Python call", "floor", _make_bare_call))
    add(InprocContender("floor: threading.Lock acquire+release", "floor", _make_lock_pair))
    add(InprocContender("floor: await trivial coroutine", "floor", _make_await_noop, is_async=True))

    add(InprocContender("pyrate-limiter try_acquire (InMemoryBucket, sliding log)", "limiter",
                        _make_pyrate_inmemory, peer="pyrate-limiter"))
    add(InprocContender("pyrate-limiter try_acquire (StateBucket, TokenBucket)", "limiter",
                        _make_pyrate_token, peer="pyrate-limiter"))
    add(InprocContender("limits hit (MemoryStorage, FixedWindow)", "limiter",
                        _make_limits_fixed, peer="limits"))
    add(InprocContender("limits hit (MemoryStorage, SlidingWindowCounter)", "limiter",
                        _make_limits_sliding, peer="limits"))
    add(InprocContender("limits hit (MemoryStorage, MovingWindow)", "limiter",
                        _make_limits_moving, peer="limits",
                        note="cost grows with entries in the window (list insert at head)"))
    add(InprocContender("aiolimiter await acquire()", "limiter", _make_aiolimiter,
                        peer="aiolimiter", is_async=True))
    add(InprocContender("token-bucket consume (MemoryStorage)", "limiter",
                        _make_token_bucket, peer="token-bucket"))

    add(InprocContender("pybreaker call(fn)", "breaker", _make_pybreaker, peer="pybreaker"))
    add(InprocContender("circuitbreaker @circuit call", "breaker", _make_circuitbreaker,
                        peer="circuitbreaker"))
    add(InprocContender("purgatory sync @factory call", "breaker", _make_purgatory_sync,
                        peer="purgatory", note="decorator looks the breaker up on every call"))
    add(InprocContender("purgatory sync `with breaker:`", "breaker", _make_purgatory_ctx,
                        peer="purgatory"))
    add(InprocContender("aiobreaker await call_async(fn)", "breaker", _make_aiobreaker,
                        peer="aiobreaker", is_async=True))
