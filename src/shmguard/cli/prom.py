"""Prometheus text exposition (format 0.0.4) of an inspector snapshot.

Every metric is named ``shmguard_*`` and labelled with ``segment`` and
``endpoint``; counters end in ``_total``. Enum-like values (breaker state,
mode) are one gauge per value, 1 for the current one and 0 for the others.
"""
from __future__ import annotations

from typing import Any, Callable

__all__ = ["exposition"]

_STATES = ("closed", "open", "half-open")
_MODES = ("normal", "forced-open", "forced-closed", "metrics-only")

Getter = Callable[[dict[str, Any]], Any]


def _bh(e: dict[str, Any], key: str) -> Any:
    """A bulkhead figure of endpoint ``e``, None when it has no bulkhead (no sample)."""
    bh = e.get("bulkhead")
    return None if bh is None else bh[key]

# (name, type, help, value getter): one sample per endpoint
_SIMPLE: list[tuple[str, str, str, Getter]] = [
    ("breaker_state_seconds", "gauge", "Time the breaker has been in its current state.",
     lambda e: e["state_seconds"]),
    ("breaker_generation", "gauge", "Breaker generation (bumped by every transition).",
     lambda e: e["generation"]),
    ("breaker_window_calls", "gauge", "Calls (successes + failures) in the rolling window.",
     lambda e: e["window"]["calls"]),
    ("breaker_window_failures", "gauge", "Failures in the rolling window.",
     lambda e: e["window"]["failures"]),
    ("breaker_failure_ratio", "gauge", "Failure ratio over the rolling window.",
     lambda e: e["window"]["failure_rate"]),
    ("breaker_threshold_ratio", "gauge", "Effective failure-ratio threshold (after adaptation).",
     lambda e: e["threshold"]),
    ("breaker_probes_in_flight", "gauge", "Half-open probe permits currently leased.",
     lambda e: e["probes_in_flight"]),
    ("breaker_opens_total", "counter", "Transitions to open since the endpoint was created.",
     lambda e: e["opens"]),
    ("breaker_rejected_total", "counter", "Calls rejected by the breaker (open, probes out).",
     lambda e: e["totals"]["rejected"]),
    ("attempts_total", "counter", "Calls admitted (first attempts and retries).",
     lambda e: e["retries"]["attempts"]),
    ("retries_total", "counter", "Retries granted (execute with retries=N).",
     lambda e: e["retries"]["retries"]),
    ("retries_denied_total", "counter", "Retries the host-wide retry budget refused.",
     lambda e: e["retries"]["denied"]),
    ("retry_budget_allowed", "gauge", "Retries the retry budget's window allows now.",
     lambda e: e["retries"]["budget"]["allowed"] if e["retries"]["budget"] else None),
    ("retry_budget_used", "gauge", "Retries granted in the retry budget's window.",
     lambda e: e["retries"]["budget"]["retries"] if e["retries"]["budget"] else None),
    ("limiter_rate", "gauge", "Configured rate limit (requests per second).",
     lambda e: e["limiter"]["rate"]),
    ("limiter_burst", "gauge", "Configured burst (tokens).",
     lambda e: e["limiter"]["burst"] if e["limiter"]["limited"] else None),
    ("limiter_effective_rate", "gauge", "Rate limit after adaptive scaling (per second).",
     lambda e: e["limiter"]["effective_rate"]),
    ("limiter_tokens", "gauge", "Tokens free now at full-burst priority.",
     lambda e: e["limiter"]["tokens"]),
    ("limiter_acceptance_ratio", "gauge", "Admitted / decided over the statistics window.",
     lambda e: e["limiter"]["acceptance_rate"]),
    ("policy_overridden", "gauge", "1 while shmguard set-rate overrides the registered policy.",
     lambda e: int(e["policy"].get("overridden", False))),
    ("throttle_probability", "gauge", "Chance that adaptive throttling refuses the next call.",
     lambda e: _on(e["throttle"], "throttle_probability")),
    ("throttle_window_requests", "gauge", "Requests (reached + throttled) in the throttle window.",
     lambda e: _on(e["throttle"], "requests")),
    ("throttle_window_accepts", "gauge", "Accepts (answered, not overloaded) in the throttle window.",
     lambda e: _on(e["throttle"], "accepts")),
    ("throttle_requests_total", "counter", "Requests counted by adaptive throttling.",
     lambda e: _on(e["throttle"], "requests_total")),
    ("throttle_accepts_total", "counter", "Accepts counted by adaptive throttling.",
     lambda e: _on(e["throttle"], "accepts_total")),
    ("throttled_total", "counter", "Calls refused locally by adaptive throttling.",
     lambda e: _on(e["throttle"], "throttled")),
    ("predict_failure_forecast_ratio", "gauge", "Forecast failure ratio at now + horizon.",
     lambda e: _on(e["prediction"], "failure_forecast")),
    ("predict_slow_forecast_ratio", "gauge", "Forecast slow-call ratio at now + horizon.",
     lambda e: _on(e["prediction"], "slow_forecast")),
    ("predict_opens_total", "counter", "Breaker opens decided by the forecast.",
     lambda e: _on(e["prediction"], "opens")),
    # bulkhead (endpoints whose policy has one)
    ("bulkhead_max_concurrent", "gauge",
     "Bulkhead tickets now (max_concurrent, or the quota's share).",
     lambda e: _bh(e, "max_concurrent")),
    ("bulkhead_in_flight", "gauge", "Bulkhead tickets held now, host-wide.",
     lambda e: _bh(e, "in_flight")),
    ("bulkhead_peak", "gauge", "Most bulkhead tickets held at once, seen at a grant.",
     lambda e: _bh(e, "peak")),
    ("bulkhead_waiters", "gauge", "Callers asleep waiting for a ticket now.",
     lambda e: _bh(e, "waiters")),
    ("bulkhead_acquired_total", "counter", "Bulkhead tickets granted.",
     lambda e: _bh(e, "acquired")),
    ("bulkhead_rejected_total", "counter", "Calls refused by the bulkhead (no ticket in time).",
     lambda e: _bh(e, "rejected")),
    ("bulkhead_waited_total", "counter", "Tickets granted after waiting.",
     lambda e: _bh(e, "waited")),
    ("bulkhead_reclaimed_total", "counter",
     "Tickets taken back from dead (or lease-expired) holders.",
     lambda e: _bh(e, "reclaimed")),
]


def _on(area: dict[str, Any], key: str) -> Any:
    """The value when the feature is enabled (no sample otherwise)."""
    return area[key] if area["enabled"] else None


_PER_PRIORITY = [
    ("limiter_admitted_total", "Calls the rate limiter admitted, by priority.", "admitted"),
    ("limiter_rejected_total", "Calls the rate limiter rejected, by priority.", "rejected"),
    ("limiter_waited_total", "Admitted calls that had to wait, by priority.", "waited"),
]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(**kv: str) -> str:
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in kv.items()) + "}"


def _num(v: float | int | bool) -> str:
    if isinstance(v, bool):
        return "1" if v else "0"
    if isinstance(v, int):
        return str(v)
    return repr(float(v))


def exposition(snap: dict[str, Any]) -> str:
    """Returns the snapshot as Prometheus text, ending with a newline."""
    seg = snap["segment"]["name"]
    eps = snap["endpoints"]
    out: list[str] = []

    def family(name: str, kind: str, help_: str) -> None:
        out.append(f"# HELP shmguard_{name} {help_}")
        out.append(f"# TYPE shmguard_{name} {kind}")

    def sample(name: str, value: Any, **labels: str) -> None:
        out.append(f"shmguard_{name}{_labels(segment=seg, **labels)} {_num(value)}")

    family("segment_endpoints", "gauge", "Endpoints registered in the segment.")
    sample("segment_endpoints", snap["segment"]["used"])
    family("segment_capacity", "gauge", "Endpoint slots in the segment.")
    sample("segment_capacity", snap["segment"]["capacity"])
    family("breaker_state", "gauge", "Breaker state: 1 for the current state, 0 otherwise.")
    for e in eps:
        for s in _STATES:
            sample("breaker_state", int(e["breaker_state"] == s), endpoint=e["name"], state=s)
    family("breaker_mode", "gauge", "Manual control mode: 1 for the current mode, 0 otherwise.")
    for e in eps:
        for m in _MODES:
            sample("breaker_mode", int(e["mode"] == m), endpoint=e["name"], mode=m)
    family("breaker_calls_total", "counter", "Outcomes recorded by the breaker.")
    for e in eps:
        for outcome, key in (("success", "successes"), ("failure", "failures"),
                             ("ignored", "ignored")):
            sample("breaker_calls_total", e["totals"][key], endpoint=e["name"], outcome=outcome)
    for name, kind, help_, get in _SIMPLE:
        family(name, kind, help_)
        for e in eps:
            v = get(e)
            if v is not None:
                sample(name, v, endpoint=e["name"])
    for name, help_, key in _PER_PRIORITY:
        family(name, "counter", help_)
        for e in eps:
            for prio, counts in e["limiter"]["by_priority"].items():
                sample(name, counts[key], endpoint=e["name"], priority=prio)
    _keyed(snap.get("keyed") or [], family, sample)
    _chains(snap.get("chains") or [], family, sample)
    return "\n".join(out) + "\n"


# keyed limiters: one sample per table (label ``keyed``), never one per key
_KEYED: list[tuple[str, str, str, str]] = [
    ("keyed_capacity", "gauge", "Keys not at a full bucket the table is sized for.", "capacity"),
    ("keyed_live_keys", "gauge", "Keys not at a full bucket now (entries in use).", "live_keys"),
    ("keyed_rate", "gauge", "Rate of each key (per second).", "rate"),
    ("keyed_burst", "gauge", "Burst of each key (tokens).", "burst"),
    ("keyed_admitted_total", "counter", "Requests the keyed limiter admitted.", "accepted"),
    ("keyed_rejected_total", "counter", "Requests of keys over their rate.", "rejected"),
    ("keyed_full_rejections_total", "counter", "New keys refused: no free entry.",
     "full_rejections"),
    ("keyed_full_allowed_total", "counter", "New keys admitted unlimited: no free entry.",
     "full_allowed"),
    ("keyed_evicted_total", "counter", "Entries another key left (bucket full) taken over.",
     "evicted"),
]


def _keyed(tables: list[dict[str, Any]], family: Callable[[str, str, str], None],
           sample: Callable[..., None]) -> None:
    tables = [t for t in tables if "error" not in t]
    if not tables:
        return
    for name, kind, help_, key in _KEYED:
        family(name, kind, help_)
        for t in tables:
            sample(name, t[key], keyed=t["name"])


def _chains(chains: list[dict[str, Any]], family: Callable[[str, str, str], None],
            sample: Callable[..., None]) -> None:
    chains = [c for c in chains if "error" not in c]
    if not chains:
        return
    family("chain_served_total", "counter",
           "Calls of a named fallback chain, by the step that served (last: the fallback "
           "function; failed: none did).")
    for c in chains:
        for st in c["steps"]:
            sample("chain_served_total", st["served"], chain=c["name"], step=st["endpoint"])
        sample("chain_served_total", c["last"], chain=c["name"], step="last")
        sample("chain_served_total", c["failed"], chain=c["name"], step="failed")
