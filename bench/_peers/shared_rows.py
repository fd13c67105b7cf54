"""Shared-backend peer contenders (parts 2 and 3).

Each ``_child_*`` function runs inside a worker process and returns the
decision callable.  ``cfg["mode"] == "throughput"`` configures a huge rate so
every decision admits; ``"correctness"`` configures ``cfg["rate"]`` per second
with ``cfg["burst"]``, or the closest equivalent the library offers:

- window algorithms with millisecond windows (pyrate-limiter's sliding log):
  ``burst`` per ``burst / rate`` seconds, i.e. 50 per 250 ms -> at most 50 at
  once and 200/s sustained;
- limits (whole-second granularity, no burst notion): ``rate`` per 1 second,
  i.e. 200 per 1 s (its effective burst is 200, not 50);
- token buckets (pyrate-limiter TokenBucket, token-bucket): exact.
"""

from __future__ import annotations

import os
from functools import partial
from typing import Any, Dict

from .registry import (
    HUGE,
    REGISTRY,
    BreakerCheck,
    SharedContender,
    promise_fixed,
    promise_sliding,
    promise_token,
)


def _noop():
    return None


def _redis(cfg):
    import redis

    return redis.Redis.from_url(cfg["redis_url"])


def _window_cfg(cfg):
    """(limit, interval_ms) for a millisecond-window log algorithm."""
    if cfg["mode"] == "throughput":
        return HUGE, 1000
    burst, rate = int(cfg["burst"]), float(cfg["rate"])
    return burst, int(round(1000.0 * burst / rate))


def _window_promise(cfg):
    limit, interval_ms = _window_cfg(cfg)
    return promise_sliding(limit, interval_ms / 1000.0,
                           f"sliding log {limit} per {interval_ms} ms")


# --- limits + Redis ------------------------------------------------------------


def _limits_item(cfg):
    import limits

    amount = HUGE if cfg["mode"] == "throughput" else int(cfg["rate"])
    return limits.RateLimitItemPerSecond(amount)


def _child_limits_redis(cfg, strategy_name):
    import limits
    from limits.storage import RedisStorage

    storage = RedisStorage(cfg["redis_url"])
    strategy = getattr(limits.strategies, strategy_name)(storage)
    return partial(strategy.hit, _limits_item(cfg), cfg["key"])


def _child_limits_redis_moving(cfg):
    return _child_limits_redis(cfg, "MovingWindowRateLimiter")


def _child_limits_redis_fixed(cfg):
    return _child_limits_redis(cfg, "FixedWindowRateLimiter")


def _promise_limits_moving(cfg):
    return promise_sliding(int(cfg["rate"]), 1.0, f"moving window {int(cfg['rate'])} per 1 s")


def _promise_limits_fixed(cfg):
    return promise_fixed(int(cfg["rate"]), 1.0, f"fixed window {int(cfg['rate'])} per 1 s")


# --- pyrate-limiter ------------------------------------------------------------


LOCKED_TRY_TIMEOUT_S = 0.005


def _pyrate_decider(bucket, cfg):
    """try_acquire as each mode needs it.

    Throughput: blocking=True (the default): with a huge rate it never waits
    for tokens, only for the bucket's own cross-process lock, if it has one.
    Correctness: blocking=False, except for buckets that bring a limiter lock
    (MultiprocessBucket, SQLiteBucket with file lock).  There blocking=False
    makes try_acquire return False whenever another process holds the lock
    (a spurious denial), and with filelock >= 4 it raises TypeError
    (combined_lock passes False positionally as FileLock.acquire's timeout);
    so those use blocking=True with a 5 ms timeout.
    """
    from pyrate_limiter import Limiter

    lim = Limiter(bucket)
    if cfg["mode"] == "throughput":
        return partial(lim.try_acquire, "k", 1, True)
    if bucket.limiter_lock() is not None:
        return partial(lim.try_acquire, "k", 1, True, LOCKED_TRY_TIMEOUT_S)
    return partial(lim.try_acquire, "k", 1, False)


def _child_pyrate_redis_log(cfg):
    from pyrate_limiter import Rate, RedisBucket

    limit, interval = _window_cfg(cfg)
    bucket = RedisBucket.init([Rate(limit, interval)], _redis(cfg), cfg["key"])
    return _pyrate_decider(bucket, cfg)


def _token_rate(cfg):
    from pyrate_limiter import Duration, Rate

    if cfg["mode"] == "throughput":
        return Rate(HUGE, Duration.SECOND, burst=HUGE)
    return Rate(int(cfg["rate"]), Duration.SECOND, burst=int(cfg["burst"]))


def _promise_token(cfg):
    return promise_token(cfg["rate"], cfg["burst"],
                         f"token bucket {int(cfg['rate'])}/s, burst {int(cfg['burst'])}")


def _child_pyrate_redis_token(cfg):
    from pyrate_limiter import RedisStateStore, StateBucket, TokenBucket

    store = RedisStateStore(_redis(cfg), cfg["key"])
    bucket = StateBucket([_token_rate(cfg)], algorithm=TokenBucket(), store=store)
    return _pyrate_decider(bucket, cfg)


def _sqlite_path(cfg):
    return os.path.join(cfg["tmpdir"], f"{cfg['key']}.sqlite")


def _parent_pyrate_sqlite(cfg, file_lock=False):
    # Create the file and table once, so workers only open it.
    from pyrate_limiter import Rate, SQLiteBucket

    limit, interval = _window_cfg(cfg)
    b = SQLiteBucket.init_from_file([Rate(limit, interval)], table="bench",
                                    db_path=_sqlite_path(cfg), create_new_table=True,
                                    use_file_lock=file_lock)
    b.close()
    return None


def _parent_pyrate_sqlite_lock(cfg):
    return _parent_pyrate_sqlite(cfg, file_lock=True)


def _child_pyrate_sqlite(cfg, file_lock=False):
    from pyrate_limiter import Rate, SQLiteBucket

    limit, interval = _window_cfg(cfg)
    bucket = SQLiteBucket.init_from_file([Rate(limit, interval)], table="bench",
                                         db_path=_sqlite_path(cfg), create_new_table=True,
                                         use_file_lock=file_lock)
    return _pyrate_decider(bucket, cfg)


def _child_pyrate_sqlite_lock(cfg):
    return _child_pyrate_sqlite(cfg, file_lock=True)


_MANAGERS: Dict[str, Any] = {}


def _parent_mp(cfg):
    import multiprocessing

    ctx = multiprocessing.get_context(cfg["mp_start"])
    mgr = ctx.Manager()
    _MANAGERS[cfg["key"]] = mgr
    return {"items": mgr.list(), "lock": ctx.RLock()}


def _teardown_mp(cfg, shared):
    mgr = _MANAGERS.pop(cfg["key"], None)
    if mgr is not None:
        mgr.shutdown()


def _child_pyrate_mp_log(cfg):
    from pyrate_limiter import MultiprocessBucket, Rate

    limit, interval = _window_cfg(cfg)
    sh = cfg["shared"]
    bucket = MultiprocessBucket([Rate(limit, interval)], sh["items"], sh["lock"])
    return _pyrate_decider(bucket, cfg)


def _child_pyrate_mp_token(cfg):
    from pyrate_limiter import MultiprocessStateStore, StateBucket, TokenBucket

    sh = cfg["shared"]
    store = MultiprocessStateStore(sh["items"], sh["lock"])
    bucket = StateBucket([_token_rate(cfg)], algorithm=TokenBucket(), store=store)
    return _pyrate_decider(bucket, cfg)


# --- per-process baseline (nothing shared) -------------------------------------


def _child_token_bucket_local(cfg):
    import token_bucket

    if cfg["mode"] == "throughput":
        lim = token_bucket.Limiter(float(HUGE), HUGE, token_bucket.MemoryStorage())
    else:
        lim = token_bucket.Limiter(float(cfg["rate"]), int(cfg["burst"]), token_bucket.MemoryStorage())
    return partial(lim.consume, b"k")


# --- pybreaker + Redis -----------------------------------------------------------


def _child_pybreaker_redis(cfg):
    import pybreaker

    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, _redis(cfg), namespace=cfg["key"])
    br = pybreaker.CircuitBreaker(fail_max=HUGE, reset_timeout=60, state_storage=storage)
    return partial(br.call, _noop)


# --- breaker correctness ---------------------------------------------------------

BREAKER_FAIL_MAX = 5
BREAKER_RESET_S = 2


def _check_pybreaker_redis(cfg):
    import pybreaker

    storage = pybreaker.CircuitRedisStorage(pybreaker.STATE_CLOSED, _redis(cfg), namespace=cfg["key"])
    br = pybreaker.CircuitBreaker(fail_max=BREAKER_FAIL_MAX, reset_timeout=BREAKER_RESET_S,
                                  state_storage=storage)
    return br.call


def _check_circuitbreaker_local(cfg):
    from circuitbreaker import CircuitBreaker

    cb = CircuitBreaker(failure_threshold=BREAKER_FAIL_MAX, recovery_timeout=BREAKER_RESET_S,
                        expected_exception=Exception, name=f"local-{os.getpid()}")

    # CircuitBreaker.call() does not look at the state (only the decorator
    # does), so go through a decorated trampoline.
    @cb
    def guarded(dep):
        return dep()

    return guarded


def register() -> None:
    add = REGISTRY.add_shared
    add(SharedContender("limits + Redis, MovingWindow", "limiter", "redis",
                        _child_limits_redis_moving, peer="limits", needs_redis=True,
                        promise=_promise_limits_moving,
                        note="200 per 1 s (whole-second granularity, no burst notion)"))
    add(SharedContender("limits + Redis, FixedWindow", "limiter", "redis",
                        _child_limits_redis_fixed, peer="limits", needs_redis=True,
                        promise=_promise_limits_fixed,
                        note="200 per 1 s fixed window (no burst notion)"))
    add(SharedContender("pyrate-limiter RedisBucket (sliding log)", "limiter", "redis",
                        _child_pyrate_redis_log, peer="pyrate-limiter", needs_redis=True,
                        promise=_window_promise, note="50 per 250 ms"))
    add(SharedContender("pyrate-limiter RedisStateStore (TokenBucket)", "limiter", "redis",
                        _child_pyrate_redis_token, peer="pyrate-limiter", needs_redis=True,
                        promise=_promise_token, note="200/s, burst 50"))
    add(SharedContender("pyrate-limiter SQLiteBucket (no file lock)", "limiter", "sqlite",
                        _child_pyrate_sqlite, peer="pyrate-limiter",
                        parent_setup=_parent_pyrate_sqlite, promise=_window_promise,
                        note="50 per 250 ms"))
    add(SharedContender("pyrate-limiter SQLiteBucket (file lock)", "limiter", "sqlite",
                        _child_pyrate_sqlite_lock, peer="pyrate-limiter",
                        parent_setup=_parent_pyrate_sqlite_lock, promise=_window_promise,
                        note="50 per 250 ms"))
    add(SharedContender("pyrate-limiter MultiprocessBucket (sliding log)", "limiter", "manager",
                        _child_pyrate_mp_log, peer="pyrate-limiter",
                        parent_setup=_parent_mp, parent_teardown=_teardown_mp,
                        promise=_window_promise, note="50 per 250 ms"))
    add(SharedContender("pyrate-limiter MultiprocessStateStore (TokenBucket)", "limiter", "manager",
                        _child_pyrate_mp_token, peer="pyrate-limiter",
                        parent_setup=_parent_mp, parent_teardown=_teardown_mp,
                        promise=_promise_token, note="200/s, burst 50"))
    add(SharedContender("token-bucket, one MemoryStorage per process (baseline)", "limiter", "memory",
                        _child_token_bucket_local, peer="token-bucket", promise=_promise_token,
                        throughput=False, shared_state=False,
                        note="200/s, burst 50 in EACH process: nothing shared"))
    add(SharedContender("pybreaker + CircuitRedisStorage", "breaker", "redis",
                        _child_pybreaker_redis, peer="pybreaker", needs_redis=True,
                        correctness=False))

    REGISTRY.add_breaker_check(BreakerCheck(
        "pybreaker + CircuitRedisStorage", _check_pybreaker_redis, peer="pybreaker",
        needs_redis=True, threshold=BREAKER_FAIL_MAX, reset_s=BREAKER_RESET_S,
        note=f"fail_max={BREAKER_FAIL_MAX}, reset_timeout={BREAKER_RESET_S}s "
             "(opened_at is stored in whole seconds)"))
    REGISTRY.add_breaker_check(BreakerCheck(
        "circuitbreaker, one breaker per process (baseline)", _check_circuitbreaker_local,
        peer="circuitbreaker", threshold=BREAKER_FAIL_MAX, reset_s=BREAKER_RESET_S,
        shared_state=False,
        note=f"failure_threshold={BREAKER_FAIL_MAX}, recovery_timeout={BREAKER_RESET_S}s in EACH process"))
