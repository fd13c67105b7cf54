"""Read side of the inspector: a segment -> plain dicts, without writing to it.

Every number comes from a C snapshot function (``sg_segment_check``,
``sg_slot_snapshot``, ``sg_breaker_snapshot_at``, ``sg_limiter_snapshot_at``,
``sg_bulkhead_snapshot_at``, ``sg_policy_read``); nothing here parses shared words or registers an
endpoint. The dicts hold only JSON types, so the CLI, the demo and tests can
print, compare or serialise them as they are.

>>> with open_segment("payments") as seg:            # doctest: +SKIP
...     [e["breaker_state"] for e in snapshot(seg)["endpoints"]]
['closed', 'open']
"""
from __future__ import annotations

import os
import time
from contextlib import contextmanager
from typing import Any, Iterator

import dataclasses

from shmguard import _capi, overload
from shmguard._capi import ffi, lib
from shmguard.errors import SegmentCorruptError, ShmguardError, UnknownEndpointError
from shmguard.segment import SHM_DIR, Segment, object_name
from shmguard._endpoint import validate_endpoint
from shmguard.stats import BreakerMode, BreakerState

__all__ = ["open_segment", "segment_path", "segment_info", "slot_names", "find_endpoint",
           "slot_handle", "endpoint_handle", "endpoint_snapshot", "snapshot", "STATES",
           "PRIORITIES", "EndpointNotFoundError"]

NS = 1_000_000_000
PRIORITIES = ("low", "normal", "high", "critical")
#: C breaker state -> (state, mode) as the user sees them.
STATES: dict[int, tuple[BreakerState, BreakerMode]] = {
    0: (BreakerState.CLOSED, BreakerMode.NORMAL),
    1: (BreakerState.OPEN, BreakerMode.NORMAL),
    2: (BreakerState.HALF_OPEN, BreakerMode.NORMAL),
    3: (BreakerState.OPEN, BreakerMode.FORCED_OPEN),
    4: (BreakerState.CLOSED, BreakerMode.FORCED_CLOSED),
    5: (BreakerState.CLOSED, BreakerMode.METRICS_ONLY),
}
_READY = 2
_FULL_BURST = 2  # Priority.HIGH: the priority that sees the whole burst


class EndpointNotFoundError(UnknownEndpointError):
    """The segment has no endpoint of that name."""


def segment_path(name: str, uid: int | None = None) -> str:
    """Returns the file that backs segment ``name`` (``/dev/shm/shmguard.<uid>.<name>``)."""
    return os.path.join(SHM_DIR, object_name(name, uid).lstrip("/"))


@contextmanager
def open_segment(name: str) -> Iterator[Segment]:
    """Attaches to an existing segment (never creates it) and detaches on exit.

    :raises ShmguardError: missing, corrupt, foreign or incompatible segment.
    """
    seg = Segment(name, create=False)
    try:
        yield seg
    finally:
        seg.close()


def segment_info(seg: Segment) -> dict[str, Any]:
    """Returns the segment's header facts (validated again now)."""
    h = seg.refresh()
    created = int(h.created_unix_ns) / NS
    return {
        "name": seg.name,
        "path": segment_path(seg.name),
        "size": int(seg.size),
        "capacity": int(h.capacity),
        "used": int(h.used),
        "layout_version": int(h.layout_version),
        "creator_uid": int(h.creator_uid),
        "creator_pid": int(h.creator_pid),
        "created_unix": created,
        "age_seconds": max(0.0, time.time() - created),
        "manual_clock": bool(h.flags & lib.SG_HDR_MANUAL_CLOCK),
        "clock_ns": int(lib.sg_clock_now(seg.base)),
    }


def slot_names(seg: Segment) -> tuple[list[tuple[int, str]], list[int]]:
    """Scans the slot table; returns ``([(index, name)] of READY slots, corrupt indices)``."""
    v = ffi.new("struct sg_slot_view *")
    ready: list[tuple[int, str]] = []
    corrupt: list[int] = []
    for i in range(seg.refresh().capacity):
        rc = lib.sg_slot_snapshot(seg.base, seg.size, i, v)
        if rc == lib.SG_E_CORRUPT:
            corrupt.append(i)
        elif rc != lib.SG_OK:
            _capi.raise_segment(rc, seg.name)
        elif v.kind == _READY:
            ready.append((i, ffi.unpack(v.name, v.name_len).decode("ascii", "replace")))
    return sorted(ready, key=lambda p: p[1]), corrupt


def find_endpoint(seg: Segment, name: str) -> int:
    """Returns the slot index of endpoint ``name``.

    :raises EndpointNotFoundError: no such endpoint in the segment.
    """
    raw = validate_endpoint(name)
    idx = ffi.new("uint32_t *")
    rc = lib.sg_table_find(seg.base, seg.size, raw, len(raw), idx)
    if rc == lib.SG_E_NOT_FOUND:
        raise EndpointNotFoundError(f"endpoint {name!r} not found in segment {seg.name!r}")
    if rc == lib.SG_E_BUSY:
        raise ShmguardError(f"endpoint {name!r} of segment {seg.name!r} is being registered")
    _capi.check(rc, f"find {name!r}", seg.name)
    return int(idx[0])


def slot_handle(seg: Segment, index: int) -> Any:
    """Returns a ``struct sg_handle *`` for slot ``index`` (bounds-checked in C)."""
    h = ffi.new("struct sg_handle *")
    _capi.check(lib.sg_handle_init(h, seg.base, seg.size, index), "handle", seg.name)
    return h


def endpoint_handle(seg: Segment, name: str) -> Any:
    """Returns a ``struct sg_handle *`` bound to endpoint ``name`` (its incarnation):
    a slot removed and reused by another endpoint since the lookup is never it.

    :raises EndpointNotFoundError: no such endpoint in the segment (or removed meanwhile).
    """
    index, raw = find_endpoint(seg, name), validate_endpoint(name)
    h = ffi.new("struct sg_handle *")
    rc = lib.sg_handle_bind(h, seg.base, seg.size, index, raw, len(raw))
    if rc == lib.SG_E_NOT_FOUND:
        raise EndpointNotFoundError(f"endpoint {name!r} not found in segment {seg.name!r}")
    _capi.check(rc, "handle", seg.name)
    return h


def policy_view(h: Any) -> Any:
    """Returns the slot's live ``struct sg_policy_view *``."""
    v = ffi.new("struct sg_policy_view *")
    _capi.check(lib.sg_policy_read(h, v), "policy", "")
    return v


def _breaker(seg: Segment, h: Any, now: int, pol: Any) -> dict[str, Any]:
    v = ffi.new("struct sg_breaker_view *")
    rc = lib.sg_breaker_snapshot_at(h.slot, now, v)
    if rc != lib.SG_OK:
        raise SegmentCorruptError(f"segment {seg.name!r}: slot {h.index} has a corrupt breaker")
    state, mode = STATES[v.state]
    calls, failures = int(v.calls), int(v.failures)
    probes = [{"slot": i, "pid": int(v.probe_pid[i]),
               "lease_left_seconds": v.probe_lease_left_ns[i] / NS}
              for i in range(lib.SG_MAX_PROBES) if v.probe_pid[i]]
    return {
        "breaker_state": str(state),
        "mode": str(mode),
        "generation": int(v.generation),
        "state_seconds": v.state_age_ns / NS,
        "open_remaining_seconds": v.open_remaining_ns / NS if v.state == lib.SG_OPEN else None,
        "half_open_on_next_call": bool(v.state == lib.SG_OPEN and v.open_remaining_ns == 0),
        "window": {"calls": calls, "failures": failures, "successes": calls - failures,
                   "slow": int(v.slow), "failure_rate": failures / calls if calls else 0.0},
        "threshold": v.threshold_ppm / 1e6,
        "baseline": v.baseline_ppm / 1e6,
        "half_open": {"max": int(pol.half_open_max), "needed": int(pol.success_threshold),
                      "successes": int(v.half_open_successes), "probes": probes},
        "probes_in_flight": int(v.probes_in_flight),
        "opens": int(v.opens),
        "totals": {"successes": int(v.successes_total), "failures": int(v.failures_total),
                   "ignored": int(v.ignored_total), "rejected": int(v.rejected_total)},
    }


def _limiter(seg: Segment, h: Any, now: int, pol: Any) -> dict[str, Any]:
    v = ffi.new("struct sg_limiter_view *")
    _capi.check(lib.sg_limiter_snapshot_at(h.slot, now, _FULL_BURST, v), "limiter", seg.name)
    limited = not pol.flags & lib.SG_POL_NO_LIMIT
    by = {p: {"admitted": int(v.accepted[i]), "rejected": int(v.rejected[i]),
              "waited": int(v.waited[i])} for i, p in enumerate(PRIORITIES)}
    wa, wr = int(v.win_accepted), int(v.win_rejected)
    return {
        "limited": bool(limited),
        "rate": NS / pol.emission_ns if limited else None,
        "burst": int(pol.burst),
        "effective_rate": float(v.effective_rate) if limited else None,
        "scale": v.scale_ppm / 1e6,
        "scale_target": v.scale_target_ppm / 1e6,
        "tokens": float(v.tokens) if limited else None,
        "retry_after": v.wait_ns / NS if limited else None,
        "acceptance_rate": wa / (wa + wr) if wa + wr else 1.0,
        "window_accepted": wa,
        "window_rejected": wr,
        "window_seconds": v.win_ns / NS,
        "admitted": sum(b["admitted"] for b in by.values()),
        "rejected": sum(b["rejected"] for b in by.values()),
        "waited": sum(b["waited"] for b in by.values()),
        "by_priority": by,
    }


def _bulkhead(seg: Segment, h: Any, now: int) -> dict[str, Any] | None:
    v = ffi.new("struct sg_bulkhead_view *")
    _capi.check(lib.sg_bulkhead_snapshot_at(h.slot, now, v), "bulkhead", seg.name)
    if v.limit == 0 and v.in_flight == 0 and v.acquired == 0:
        return None  # the policy has no bulkhead
    return {
        "max_concurrent": int(v.limit),
        "in_flight": int(v.in_flight),
        "available": max(0, int(v.limit) - int(v.in_flight)),
        "peak": int(v.peak),
        "acquired": int(v.acquired),
        "rejected": int(v.rejected),
        "waited": int(v.waited),
        "reclaimed": int(v.reclaimed),
        "critical_reserve": int(v.reserve),
        "quota": v.quota_ppm / 1e6 if v.quota_ppm else None,
        "processes": int(v.procs) if v.quota_ppm else None,
        "ticket_lease_seconds": v.ticket_lease_ns / NS if v.ticket_lease_ns else None,
        "waiters": int(v.sleepers),
        "holders": [{"ticket": i, "pid": int(v.holder_pid[i]), "held_seconds": v.held_ns[i] / NS}
                    for i in range(lib.SG_MAX_TICKETS) if v.word[i]],
    }


def _retries(seg: Segment, h: Any, now: int, admitted: int) -> dict[str, Any]:
    v = ffi.new("struct sg_budget_view *")
    _capi.check(lib.sg_budget_snapshot_at(h.slot, now, v), "budget", seg.name)
    budget = None if not v.window_ns else {
        "window_seconds": v.window_ns / NS, "attempts": int(v.attempts),
        "retries": int(v.retries), "allowed": int(v.allowed)}
    return {"attempts": admitted, "retries": int(v.retries_total),
            "denied": int(v.denied_total), "budget": budget}


def _policy(pol: Any, seq: int) -> dict[str, Any]:
    return {
        "failure_threshold": pol.failure_ppm / 1e6,
        "min_requests": int(pol.min_requests),
        "window_seconds": pol.bucket_ns * pol.buckets / NS,
        "buckets": int(pol.buckets),
        "open_seconds": pol.open_ns / NS,
        "probe_lease_seconds": pol.probe_lease_ns / NS,
        "adaptive": bool(pol.flags & lib.SG_POL_ADAPTIVE),
        "overridden": bool(pol.flags & lib.SG_POL_OVERRIDDEN),  # by set-rate, until re-registered
        "retry_budget": None if not pol.retry_window_ns else {
            "ratio": pol.retry_ratio_ppm / 1e6, "min_per_second": pol.retry_min_milli / 1e3,
            "window_seconds": pol.retry_window_ns / NS},
        "throttle_k": pol.throttle_k_milli / 1000 if pol.throttle_k_milli else None,
        "predict_horizon_seconds": pol.predict_horizon_ns / NS if pol.predict_horizon_ns else None,
        "fingerprint": int(pol.fingerprint),
        "seq": seq,
    }


def endpoint_snapshot(seg: Segment, index: int, name: str, now: int | None = None,
                      policy_seq: int = 0) -> dict[str, Any]:
    """Returns one endpoint's breaker, limiter and policy, read at segment time ``now``."""
    h = slot_handle(seg, index)
    now = int(lib.sg_clock_now(seg.base)) if now is None else now
    pol = policy_view(h)
    out: dict[str, Any] = {"name": name, "index": index}
    out.update(_breaker(seg, h, now, pol))
    out["limiter"] = _limiter(seg, h, now, pol)
    out["bulkhead"] = _bulkhead(seg, h, now)
    out["retries"] = _retries(seg, h, now, out["limiter"]["admitted"])
    out["throttle"] = dataclasses.asdict(overload.throttle_stats(h.slot, now, seg.name))
    out["prediction"] = dataclasses.asdict(overload.prediction_stats(h.slot, now, seg.name))
    out["policy"] = _policy(pol, policy_seq)
    out["fleet"] = _fleet(seg, h, now, pol)
    return out


def _fleet(seg: Segment, h: Any, now: int, pol: Any) -> dict[str, Any] | None:
    """The fleet share of a fleet-rate endpoint (shmguard.fleet), else None."""
    from shmguard.fleet.view import fleet_stats  # no Redis: reads the slot and the header
    st = fleet_stats(seg.base, seg.size, h.slot, now, pol)
    return None if st is None else dataclasses.asdict(st)


def keyed_snapshot(seg: Segment, now: int, keys: int = 0) -> list[dict[str, Any]]:
    """Returns one dict per keyed limiter of the segment (``shmguard.keyed``), with its
    ``keys`` hottest keys; a table that cannot be read gets ``{"name", "error"}``."""
    from shmguard._keyed_shm import KeyedTable
    from shmguard._keyed_stats import table_dict
    from shmguard.segment import KEYED_SEP, keyed_files
    out = []
    for path in keyed_files(seg.name):
        name = os.path.basename(path).split(KEYED_SEP, 1)[1]
        try:
            t = KeyedTable(seg, name, None)
        except ShmguardError as exc:
            out.append({"name": name, "error": str(exc)})
            continue
        try:
            out.append(table_dict(t, now, keys))
        except ShmguardError as exc:
            out.append({"name": name, "error": str(exc)})
        finally:
            t.close()
    return out


def snapshot(seg: Segment, *, commands: bool = True, keys: int = 0) -> dict[str, Any]:
    """Returns ``{"segment": ..., "endpoints": [...], "keyed": [...], "chains": [...],
    "corrupt_slots": [...]}`` (chains: the named fallback chains' host-wide counts).

    Every endpoint is read at the same segment time. With ``commands``,
    half-open probe holders get their command line (psutil); ``keys`` hot
    keys are listed per keyed limiter.
    """
    info = segment_info(seg)
    ready, corrupt = slot_names(seg)
    now = info["clock_ns"]
    v = ffi.new("struct sg_slot_view *")
    endpoints = []
    for index, name in ready:
        seq = v.policy_seq if lib.sg_slot_snapshot(seg.base, seg.size, index, v) == 0 else 0
        try:
            ep = endpoint_snapshot(seg, index, name, now, int(seq))
        except SegmentCorruptError:
            corrupt.append(index)
            continue
        if commands:
            for p in ep["half_open"]["probes"] + (ep["bulkhead"] or {}).get("holders", []):
                p["command"] = process_command(p["pid"])
        endpoints.append(ep)
    from shmguard._chain_shm import chain_snapshot
    return {"segment": info, "endpoints": endpoints, "keyed": keyed_snapshot(seg, now, keys),
            "chains": chain_snapshot(seg), "corrupt_slots": sorted(corrupt)}


def process_command(pid: int) -> str | None:
    """Returns ``pid``'s command line (or name), None if it is gone."""
    import psutil

    try:
        p = psutil.Process(pid)
        cmd = p.cmdline()
        return " ".join(cmd) if cmd else p.name()
    except (psutil.Error, OSError, ValueError):
        return None
