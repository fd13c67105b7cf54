"""Control commands: host-wide, immediate changes to one endpoint's slot.

Each returns a one-line "before -> after" report. The breaker is moved by
``sg_breaker_force_at`` (one CAS, read at the segment's own clock); the
rate by publishing a new policy view with ``sg_policy_publish``.
"""
from __future__ import annotations

import math
from typing import Any

from shmguard import _capi
from shmguard._capi import ffi, lib
from shmguard.cli.render import count, rate
from shmguard.errors import PolicyError, ShmguardError
from shmguard.limiter import change_rate
from shmguard._endpoint import validate_endpoint
from shmguard.cli.inspector import STATES, EndpointNotFoundError, endpoint_handle, policy_view
from shmguard.policy import MAX_RATE
from shmguard.segment import Segment

__all__ = ["FORCE", "force", "set_rate", "parse_rate"]

NS = 1_000_000_000
#: command -> C breaker state it forces
FORCE = {"force-open": lib.SG_FORCED_OPEN, "force-closed": lib.SG_FORCED_CLOSED,
         "reset": lib.SG_CLOSED, "metrics-only": lib.SG_METRICS_ONLY}


def _state(h: Any, now: int) -> tuple[str, int]:
    v = ffi.new("struct sg_breaker_view *")
    _capi.check(lib.sg_breaker_snapshot_at(h.slot, now, v), "breaker snapshot")
    state, mode = STATES[v.state]
    return (str(mode) if mode else str(state)), int(v.generation)


def force(seg: Segment, endpoint: str, command: str) -> str:
    """Forces the breaker of ``endpoint`` as ``command`` says; reports the change."""
    h = endpoint_handle(seg, endpoint)  # bound: never another endpoint's slot
    now = int(lib.sg_clock_now(seg.base))
    before, gen0 = _state(h, now)
    rc = lib.sg_breaker_force_at(h.slot, now, FORCE[command])  # a transition code, or E_ARG
    if rc == lib.SG_E_ARG:
        _capi.check(rc, command, seg.name)
    after, gen1 = _state(h, now)
    return f"{endpoint}: {before} -> {after} (generation {gen0} -> {gen1})"


def remove_endpoint(seg: Segment, endpoint: str) -> str:
    """Removes ``endpoint`` from the segment for every process (its slot becomes reusable)."""
    raw = validate_endpoint(endpoint)
    rc = lib.sg_table_unregister(seg.base, seg.size, raw, len(raw))
    if rc == lib.SG_E_NOT_FOUND:
        raise EndpointNotFoundError(f"endpoint {endpoint!r} not found in segment {seg.name!r}")
    _capi.check(rc, f"rm-endpoint {endpoint!r}", seg.name)
    return f"{endpoint}: removed from segment {seg.name} (processes holding it get an error)"


def parse_rate(text: str) -> float | None:
    """Returns the rate in requests/s, or None for ``off`` (no limit).

    :raises PolicyError: not a positive finite number.
    """
    if text.lower() in ("off", "none", "unlimited"):
        return None
    try:
        r = float(text)
    except ValueError:
        raise PolicyError(f"rate must be a number of requests per second or 'off', "
                          f"got {text!r}") from None
    if not math.isfinite(r) or r <= 0 or r > MAX_RATE:
        raise PolicyError(f"rate must be > 0 and <= {MAX_RATE:g}, got {text!r}")
    return r


def _describe(pol: Any) -> str:
    if pol.flags & lib.SG_POL_NO_LIMIT:
        return "no limit"
    return f"rate {rate(NS / pol.emission_ns)}/s burst {count(pol.burst)}"


def set_rate(seg: Segment, endpoint: str, new_rate: float | None, burst: int | None) -> str:
    """Replaces the endpoint's rate (and burst, if given) for every process.

    The burst is kept unless ``burst`` is given; an endpoint that had no
    limit gets ``max(1, rate)`` as its burst, as a new policy would.
    """
    if burst is not None and not 1 <= burst <= 2**31:
        raise PolicyError(f"burst must be 1..{2**31}, got {burst}")
    h = endpoint_handle(seg, endpoint)  # bound: never another endpoint's slot
    old = policy_view(h)
    before = _describe(old)
    new = ffi.new("struct sg_policy_view *")
    ffi.memmove(new, old, ffi.sizeof("struct sg_policy_view"))
    new.flags |= lib.SG_POL_OVERRIDDEN  # shown by inspect; the next registration restores it
    if new_rate is None:
        new.flags |= lib.SG_POL_NO_LIMIT
        if burst is not None:
            new.burst = burst
    else:
        if old.flags & lib.SG_POL_NO_LIMIT and burst is None:
            burst = max(1, int(new_rate))
        new.flags &= ~lib.SG_POL_NO_LIMIT
        new.emission_ns = max(1, math.ceil(NS / new_rate))
        if burst is not None:
            new.burst = burst
        if new.burst * new.emission_ns > 2**62:
            raise PolicyError(f"burst {new.burst} at rate {new_rate:g}/s spans beyond the "
                              "limiter's horizon of 2**62 ns")
    from shmguard._slots import publish_policy
    rc = publish_policy(h, new, f"endpoint {endpoint!r}", seg)   # a stalled writer keeps its lease
    if rc == lib.SG_E_ARG:
        raise PolicyError(f"endpoint {endpoint!r}: the resulting policy is invalid")
    _capi.check(rc, f"publish policy of {endpoint!r}", seg.name)
    change_rate(lambda: lib.sg_limiter_retune_at(h.slot, lib.sg_clock_now(seg.base)),
                f"new rate of {endpoint!r}", seg.name)   # the debt is kept in tokens
    return f"{endpoint}: {before} -> {_describe(policy_view(h))}"


def set_keyed_rate(seg: Segment, name: str, new_rate: float | None, burst: int | None) -> str:
    """Changes keyed limiter ``name``'s rate (and burst) for every process, keeping each key's
    debt in tokens (see ``ResilienceService.keyed_limiter(..., replace=True)``)."""
    from shmguard import _keyed_shm
    if new_rate is None:
        raise PolicyError(f"keyed limiter {name!r}: a keyed limiter always has a rate ('off' "
                          "is for endpoints)")
    t = _keyed_shm.KeyedTable(seg, _keyed_shm.validate_keyed_name(name), None)
    try:
        v = t.refresh()
        before = _keyed_shm.describe(v)
        on_full = "allow" if v.flags & lib.SG_KL_ON_FULL_ALLOW else "reject"
        cfg = _keyed_shm.keyed_config(new_rate, int(v.burst) if burst is None else burst,
                                      int(v.capacity), on_full)
        t.set_rate(cfg, seg.now_ns())
        return f"keyed {name}: {before} -> {_keyed_shm.describe(t.refresh())}"
    finally:
        t.close()

