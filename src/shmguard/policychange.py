"""Policy changes across deploys: what changed between two policy views, in the policy's words.

A deploy that edits a policy registers the new one while the segment still
holds the old one. :func:`changes` names the fields that differ (``rate``,
``burst``, ``open_timeout``, ...) with their old and new values, read from
the two ``struct sg_policy_view`` s (the numbers every process applies); a
difference only in process-local fields (the exception classification,
``jitter_seed``) shows as ``"process-local fields"``.
"""
from __future__ import annotations

from typing import Any, Callable

from shmguard._capi import ffi, lib

__all__ = ["PolicyChangedWarning", "changes", "describe", "OnPolicyChange"]

NS = 1_000_000_000
PPM = 1_000_000

#: on_policy_change(endpoint, {field: (old, new)})
OnPolicyChange = Callable[[str, "dict[str, tuple[Any, Any]]"], Any]


class PolicyChangedWarning(UserWarning):
    """A registration replaced an endpoint's policy for every process (a deploy changed it)."""


def _rate(v: Any) -> float | None:
    return None if v.flags & lib.SG_POL_NO_LIMIT else round(NS / v.emission_ns, 6)


#: view field -> (policy field, value in the policy's units)
_FRIENDLY: dict[str, tuple[str, Callable[[Any], Any]]] = {
    "emission_ns": ("rate", _rate),
    "burst": ("burst", lambda v: int(v.burst)),
    "failure_ppm": ("failure_threshold", lambda v: v.failure_ppm / PPM),
    "min_requests": ("min_requests", lambda v: int(v.min_requests)),
    "bucket_ns": ("window", lambda v: v.bucket_ns * v.buckets / NS),
    "buckets": ("window_buckets", lambda v: int(v.buckets)),
    "open_ns": ("open_timeout", lambda v: v.open_ns / NS),
    "open_max_ns": ("open_timeout_max", lambda v: v.open_max_ns / NS),
    "probe_lease_ns": ("probe_lease", lambda v: v.probe_lease_ns / NS),
    "slow_call_ns": ("slow_call_duration", lambda v: v.slow_call_ns / NS or None),
    "recovery_ns": ("recovery", lambda v: v.recovery_ns / NS),
    "share_ppm": ("priority_shares", lambda v: tuple(s / PPM for s in v.share_ppm)),
    "slow_ppm": ("slow_call_threshold", lambda v: v.slow_ppm / PPM),
    "adaptive_max_ppm": ("adaptive_max_threshold", lambda v: v.adaptive_max_ppm / PPM),
    "half_open_max": ("half_open_max_calls", lambda v: int(v.half_open_max)),
    "success_threshold": ("success_threshold", lambda v: int(v.success_threshold)),
    "rate_floor_ppm": ("rate_floor", lambda v: v.rate_floor_ppm / PPM),
    "jitter_ppm": ("jitter", lambda v: v.jitter_ppm / PPM),
    "backoff_milli": ("backoff", lambda v: v.backoff_milli / 1000),
    "flags": ("adaptive", lambda v: bool(v.flags & lib.SG_POL_ADAPTIVE)),
}


def _value(v: Any, field: str) -> Any:
    raw = getattr(v, field)
    return tuple(raw) if field == "share_ppm" else raw


def _derived(field: str, old: Any, new: Any) -> bool:
    """True for a field both views derived from another one (a default that followed it)."""
    if field == "open_max_ns":
        return all(v.open_max_ns in (v.open_ns, v.open_ns * 10) for v in (old, new))
    if field == "adaptive_max_ppm":
        return all(v.adaptive_max_ppm == round(min(PPM, v.failure_ppm * 1.5)) for v in (old, new))
    if field == "success_threshold":
        return all(v.success_threshold == v.half_open_max for v in (old, new))
    return False


def changes(old: Any, new: Any) -> dict[str, tuple[Any, Any]]:
    """Returns ``{policy field: (old, new)}`` for every field that differs between two views."""
    out: dict[str, tuple[Any, Any]] = {}
    for field, _ in ffi.typeof("struct sg_policy_view").fields:
        if field == "fingerprint":
            continue
        name, conv = _FRIENDLY.get(field, (field, lambda v, f=field: _value(v, f)))
        a, b = conv(old), conv(new)
        if a != b and name not in out and not _derived(field, old, new):
            out[name] = (a, b)
    if (old.flags ^ new.flags) & lib.SG_POL_OVERRIDDEN:
        out["overridden"] = (bool(old.flags & lib.SG_POL_OVERRIDDEN),
                             bool(new.flags & lib.SG_POL_OVERRIDDEN))
    if not out and old.fingerprint != new.fingerprint:
        out["process-local fields"] = ("exception classification or jitter_seed", "changed")
    return out


def describe(diff: dict[str, tuple[Any, Any]]) -> str:
    """Returns ``"rate 100 -> 200, burst 50 -> 80"``."""
    return ", ".join(f"{k} {a!r} -> {b!r}" if k != "process-local fields" else k
                     for k, (a, b) in diff.items())
