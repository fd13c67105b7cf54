"""The keyed limit of execute(..., key=): the endpoint's policy names a keyed limiter.

The key's token is taken before the endpoint's own admission (breaker and
limiter); a call the endpoint then refuses has used it, as a request
refused further down the line does.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable, TypeVar

from shmguard.errors import PolicyError, RateLimitedError, SegmentNotFoundError, ShmguardError
from shmguard.keyed import Key, KeyedLimiter
from shmguard._capi import hot
from shmguard.policy import Priority

_NORMAL = Priority.NORMAL

if TYPE_CHECKING:
    from shmguard._endpoint import Endpoint

T = TypeVar("T")

__all__ = ["limiter_of", "keyed_admit", "keyed_admit_async", "execute_async"]


def limiter_of(svc: Any, ep: Endpoint) -> KeyedLimiter:
    """Returns the keyed limiter the endpoint's policy names (attaching it by name)."""
    name = ep.policy.keyed_limit
    if name is None:
        raise PolicyError(f"execute(key=...): endpoint {ep.name!r} has no keyed limit "
                          "(PolicyBuilder.with_keyed_limit(name))")
    kl: KeyedLimiter | None = svc._keyed.get(name)
    if kl is None or kl.closed:
        from shmguard._keyed_shm import KeyedTable
        try:
            kl = KeyedLimiter(KeyedTable(svc.segment, name, None))
        except SegmentNotFoundError:
            raise ShmguardError(
                f"keyed limiter {name!r} (named by endpoint {ep.name!r}) does not exist in "
                f"segment {svc.name!r}: create it with svc.keyed_limiter({name!r}, rate, burst)"
            ) from None
        with svc._lock:
            svc._keyed[name] = kl
    return kl


def gate(svc: Any, ep: Endpoint, key: Key) -> None:
    """execute(..., key=) from the C method (csrc/hot_service.c): the key's token, or raises.

    Caches the keyed limiter's C ``allow`` on the endpoint (``ep.key_allow``,
    cleared whenever ``ep.policy`` is replaced): the C method then calls it
    directly, and comes back here only for what it cannot decide.
    """
    policy = ep.policy
    kl = svc._keyed.get(policy.keyed_limit)
    if kl is None or kl.closed:  # not attached yet, or no keyed limit: the full path
        keyed_admit(svc, ep, key, _NORMAL, None)
        kl = svc._keyed.get(policy.keyed_limit)
    elif not kl.allow(key):
        raise _refused(kl, ep, key, _NORMAL)
    if kl is not None and not kl.closed and ep.policy is policy:
        ep.key_allow = kl.allow


def refuse(svc: Any, ep: Endpoint, key: Key) -> None:
    """The C method's cached ``allow`` said no: raises the key's RateLimitedError."""
    raise _refused(limiter_of(svc, ep), ep, key, _NORMAL)


if hot is not None:
    hot.set_key_gate(gate, refuse)


def _refused(kl: KeyedLimiter, ep: Endpoint, key: Key, priority: Priority) -> RateLimitedError:
    wait = kl.retry_after(key, 1, priority)
    if wait == 0:  # the key has a full bucket: it found no free entry
        hint = kl._t.refresh().emission_ns / 1e9   # entries free up as buckets refill
        return RateLimitedError(ep.name, hint, f"keyed limiter {kl.name!r} is full: no free "
                                               f"entry for key {key!r:.40} of endpoint "
                                               f"{ep.name!r}")
    return RateLimitedError(ep.name, wait, f"key {key!r:.40} of endpoint {ep.name!r} is rate "
                                           f"limited by keyed limiter {kl.name!r}; retry after "
                                           f"{wait:.3f}s")


def keyed_admit(svc: Any, ep: Endpoint, key: Key, priority: Priority,
                timeout: float | None) -> None:
    """Takes one token of ``key`` (waiting up to ``timeout``) or raises RateLimitedError."""
    kl = limiter_of(svc, ep)
    ok = kl.allow(key, 1, priority) if timeout is None else kl.wait(key, 1, timeout, priority)
    if not ok:
        raise _refused(kl, ep, key, priority)


async def keyed_admit_async(svc: Any, ep: Endpoint, key: Key, priority: Priority,
                            timeout: float | None) -> None:
    """Like :func:`keyed_admit`, waiting with ``asyncio.sleep``."""
    kl = limiter_of(svc, ep)
    if timeout is None:
        ok = kl.allow(key, 1, priority)
    else:
        ok = await kl.wait_async(key, 1, timeout, priority)
    if not ok:
        raise _refused(kl, ep, key, priority)


async def execute_async(svc: Any, endpoint: str, key: Key, coro_fn: Callable[..., Awaitable[T]],
                        args: tuple[Any, ...], priority: Priority, timeout: float | None,
                        kwargs: dict[str, Any]) -> T:
    """``execute_async(..., key=)``: the key's token first, then the endpoint's admission."""
    from shmguard import aio
    ep = svc._eps.get(endpoint) or svc._endpoint(endpoint)
    await keyed_admit_async(svc, ep, key, priority, timeout)
    return await aio.execute_async(svc, endpoint, coro_fn, *args, priority=priority,
                                   timeout=timeout, **kwargs)
