"""Policies: what an endpoint's breaker and limiter do, validated once when built.

A :class:`Policy` is a frozen dataclass. Its numeric part is copied into the
endpoint's slot, so every process of the host applies the same numbers; its
exception classification (which exceptions are failures, which are
ignored) is per process, because classes cannot live in shared memory.
"""
from __future__ import annotations

import dataclasses
import enum
import hashlib
import math
from dataclasses import dataclass, field
from typing import Any

from shmguard.errors import PolicyError
from shmguard.neterrors import NetworkFailure

__all__ = ["Priority", "Policy", "PolicyPresets", "PolicyBuilder", "Outcome"]

NS = 1_000_000_000
MAX_RATE = 1e9  # one token per nanosecond: the clock's resolution


class Priority(enum.IntEnum):
    """Request priority: a share of the burst (LOW 50%, NORMAL 80%, HIGH 100%, CRITICAL 110%)."""

    LOW = 0
    NORMAL = 1
    HIGH = 2
    CRITICAL = 3

    def __str__(self) -> str:
        return self.name.lower()


class Outcome(enum.IntEnum):
    SUCCESS = 1
    FAILURE = 2
    IGNORE = 3


#: what ``PolicyPresets.network()`` counts as failures: builtins and the
#: HTTP clients' connection errors, timeouts and 5xx errors (see shmguard.neterrors)
NETWORK_ERRORS: tuple[type[BaseException], ...] = (NetworkFailure,)


def _num(name: str, value: Any, *, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False, integer: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise PolicyError(f"{name} must be a number, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise PolicyError(f"{name} must be finite, got {value!r}")
    if integer and int(value) != value:
        raise PolicyError(f"{name} must be a whole number, got {value!r}")
    if lo is not None and (value < lo or (lo_open and value == lo)):
        bound = f"> {lo}" if lo_open else f">= {lo}"
        raise PolicyError(f"{name} must be {bound}, got {value!r}")
    if hi is not None and value > hi:
        raise PolicyError(f"{name} must be <= {hi}, got {value!r}")


@dataclass(frozen=True)
class Policy:
    """The breaker and limiter settings of an endpoint.

    Defaults: 50% failures over a 10 s window of 10 buckets (at least 10
    calls) open the breaker for 30 s; half-open lets 1 probe through (lease
    10 s) and 1 success closes it; the limiter is off (``rate=None``); no
    retry budget (``retry_budget=None``; 0.2 lets retries be 20 % of first
    attempts over ``retry_budget_window``, plus ``retry_budget_min_per_second``);
    adaptive throttling (``throttle_k=None``) and predictive breaking
    (``predict_horizon=None``) are off.

    :raises PolicyError: when any field is invalid; the message names it.

    >>> Policy(rate=100, burst=20).burst
    20
    """

    failure_threshold: float = 0.5
    min_requests: int = 10
    window: float = 10.0
    window_buckets: int = 10
    open_timeout: float = 30.0
    open_timeout_max: float | None = None
    backoff: float = 1.0
    jitter: float = 0.0
    jitter_seed: int = 0
    half_open_max_calls: int = 1
    success_threshold: int | None = None
    probe_lease: float = 10.0
    slow_call_duration: float | None = None
    slow_call_threshold: float = 1.0
    rate: float | None = None
    burst: int | None = None
    priority_shares: tuple[float, float, float, float] = (0.5, 0.8, 1.0, 1.1)
    adaptive: bool = False
    adaptive_max_threshold: float | None = None
    rate_floor: float = 0.1
    recovery: float = 10.0
    failure_exceptions: tuple[type[BaseException], ...] = (Exception,)
    ignored_exceptions: tuple[type[BaseException], ...] = ()
    # bulkhead (shmguard.bulkhead): at most max_concurrent calls in flight host-wide,
    # or ceil(quota x attached processes); max_wait: longest wait for a ticket
    max_concurrent: int | None = None
    max_wait: float = 0.0
    quota: float | None = None
    critical_reserve: int = 0
    ticket_lease: float | None = None
    retry_budget: float | None = None
    retry_budget_min_per_second: float = 10.0
    retry_budget_window: float = 10.0
    throttle_k: float | None = None
    throttle_window: float = 120.0
    throttle_min_requests: int = 10
    throttle_on: tuple[type[BaseException], ...] = ()
    predict_horizon: float | None = None
    keyed_limit: str | None = None  # name of a keyed limiter execute(..., key=) applies
    fleet_rate: bool = False  # shmguard.fleet: rate and burst are fleet-wide (see with_fleet)
    fleet_breaker: bool = False  # shmguard.fleet: breaker opens and closes shared across hosts
    _fingerprint: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        _num("failure_threshold", self.failure_threshold, lo=0, hi=1, lo_open=True)
        _num("min_requests", self.min_requests, lo=1, hi=2**31, integer=True)
        _num("window", self.window, lo=0, lo_open=True, hi=10**7)
        _num("window_buckets", self.window_buckets, lo=1, hi=16, integer=True)
        if self.window * NS / self.window_buckets < 1e6:
            raise PolicyError(f"window {self.window!r} s over {self.window_buckets} buckets "
                              "gives buckets under 1 ms")
        _num("open_timeout", self.open_timeout, lo=0.001, hi=10**7)
        if self.open_timeout_max is not None:
            _num("open_timeout_max", self.open_timeout_max, lo=self.open_timeout, hi=10**7)
        _num("backoff", self.backoff, lo=1, hi=1000)
        _num("jitter", self.jitter, lo=0, hi=1)
        _num("jitter_seed", self.jitter_seed, lo=0, hi=2**63, integer=True)
        _num("half_open_max_calls", self.half_open_max_calls, lo=1, hi=8, integer=True)
        if self.success_threshold is not None:
            _num("success_threshold", self.success_threshold, lo=1, hi=2**20 - 1, integer=True)
        _num("probe_lease", self.probe_lease, lo=0.002, hi=86400 * 20)
        if self.slow_call_duration is not None:
            _num("slow_call_duration", self.slow_call_duration, lo=0, lo_open=True, hi=86400)
        _num("slow_call_threshold", self.slow_call_threshold, lo=0, hi=1, lo_open=True)
        if self.rate is not None:
            _num("rate", self.rate, lo=0, lo_open=True, hi=MAX_RATE)
        if self.burst is not None:
            _num("burst", self.burst, lo=1, hi=2**31, integer=True)
        if self.rate is not None and self.effective_burst / self.rate * NS > 2**62:
            raise PolicyError(f"burst {self.effective_burst} at rate {self.rate!r}/s spans "
                              f"{self.effective_burst / self.rate:.3g} s, beyond the limiter's "
                              "146-year horizon of 2**62 ns")
        if len(self.priority_shares) != 4:
            raise PolicyError(f"priority_shares needs 4 values, got {self.priority_shares!r}")
        for p, share in zip(Priority, self.priority_shares):
            _num(f"priority_shares[{p.name}]", share, lo=0, hi=4, lo_open=True)
        if self.adaptive_max_threshold is not None:
            _num("adaptive_max_threshold", self.adaptive_max_threshold,
                 lo=self.failure_threshold, hi=1)
        _num("rate_floor", self.rate_floor, lo=0, hi=1)
        if self.fleet_rate is not False and (self.fleet_rate is not True or self.rate is None):
            raise PolicyError(f"fleet_rate needs a rate (with_rate_limit) and must be a bool, "
                              f"got fleet_rate={self.fleet_rate!r} with rate={self.rate!r}")
        if not isinstance(self.fleet_breaker, bool):
            raise PolicyError(f"fleet_breaker must be a bool, got {self.fleet_breaker!r}")
        _num("recovery", self.recovery, lo=0, hi=86400)
        self._check_bulkhead()
        self._check_retry_budget()
        self._check_overload()
        for fname in ("failure_exceptions", "ignored_exceptions", "throttle_on"):
            value = getattr(self, fname)
            if not isinstance(value, tuple) or not all(
                    isinstance(c, type) and issubclass(c, BaseException) for c in value):
                raise PolicyError(f"{fname} must be a tuple of exception classes, got {value!r}")
        if self.keyed_limit is not None:
            from shmguard._keyed_shm import validate_keyed_name
            validate_keyed_name(self.keyed_limit)
        object.__setattr__(self, "_fingerprint", self._compute_fingerprint())

    def _check_bulkhead(self) -> None:
        if self.max_concurrent is not None:
            _num("max_concurrent", self.max_concurrent, lo=1, hi=64, integer=True)
        if self.quota is not None:
            _num("quota", self.quota, lo=0, hi=1, lo_open=True)
            if self.max_concurrent is not None:
                raise PolicyError(f"give max_concurrent ({self.max_concurrent!r}) or quota "
                                  f"({self.quota!r}), not both")
        _num("max_wait", self.max_wait, lo=0, hi=86400)
        top = 63 if self.max_concurrent is None else self.max_concurrent - 1
        _num("critical_reserve", self.critical_reserve, lo=0, hi=top, integer=True)
        if self.ticket_lease is not None:
            _num("ticket_lease", self.ticket_lease, lo=0.002, hi=86400 * 20)
        if not self.has_bulkhead and (self.max_wait or self.critical_reserve or self.ticket_lease):
            raise PolicyError("max_wait, critical_reserve and ticket_lease need a bulkhead "
                              "(max_concurrent or quota)")

    @property
    def has_bulkhead(self) -> bool:
        """Reports whether the policy limits concurrent calls (max_concurrent or quota)."""
        return self.max_concurrent is not None or self.quota is not None

    def _check_retry_budget(self) -> None:
        if self.retry_budget is not None:
            _num("retry_budget", self.retry_budget, lo=0, hi=1000)
        _num("retry_budget_min_per_second", self.retry_budget_min_per_second, lo=0, hi=10**6)
        _num("retry_budget_window", self.retry_budget_window, lo=0.01, hi=3600)

    def _check_overload(self) -> None:
        if self.throttle_k is not None:
            _num("throttle_k", self.throttle_k, lo=1, hi=1000)
        _num("throttle_window", self.throttle_window, lo=0.012, hi=10**6)
        _num("throttle_min_requests", self.throttle_min_requests, lo=1, hi=2**31, integer=True)
        if self.predict_horizon is not None:
            _num("predict_horizon", self.predict_horizon, lo=0, lo_open=True, hi=86400)

    def is_overload(self, exc: BaseException) -> bool:
        """Reports whether failure ``exc`` tells the throttle the dependency is overloaded.

        Every failure does, unless ``throttle_on`` narrows it to those classes.
        """
        return not self.throttle_on or isinstance(exc, self.throttle_on)

    # -- derived values ---------------------------------------------------
    @property
    def effective_burst(self) -> int:
        """The burst in tokens: ``burst``, or ``max(1, rate)`` when unset."""
        if self.burst is not None:
            return int(self.burst)
        return max(1, int(self.rate or 1))

    @property
    def fingerprint(self) -> int:
        return self._fingerprint

    def _compute_fingerprint(self) -> int:
        parts = []
        for f in dataclasses.fields(self):
            if f.name.startswith("_"):
                continue
            v = getattr(self, f.name)
            if f.name.startswith("fleet_") and v is False:
                continue  # a host-local policy keeps the fingerprint it had before fleet/
            if f.name.endswith("_exceptions") or f.name == "throttle_on":
                v = tuple(f"{c.__module__}.{c.__qualname__}" for c in v)
            parts.append(f"{f.name}={v!r}")
        digest = hashlib.blake2b(";".join(parts).encode(), digest_size=8).digest()
        return int.from_bytes(digest, "little") & (2**63 - 1)

    def classify(self, exc: BaseException) -> Outcome:
        """Reports how ``exc`` counts: ignored, a failure, or (otherwise) a success."""
        if self.ignored_exceptions and isinstance(exc, self.ignored_exceptions):
            return Outcome.IGNORE
        if isinstance(exc, self.failure_exceptions):
            return Outcome.FAILURE
        return Outcome.SUCCESS

    def fill_view(self, v: Any) -> Any:
        """Fills a ``struct sg_policy_view`` (cffi) from this policy."""
        ppm = 1_000_000
        v.emission_ns = 0 if self.rate is None else max(1, math.ceil(NS / self.rate))
        v.bucket_ns = max(1, int(self.window * NS / self.window_buckets))
        v.open_ns = int(self.open_timeout * NS)
        omax = self.open_timeout_max
        if omax is None:
            omax = self.open_timeout * (10 if self.backoff > 1 else 1)
        v.open_max_ns = max(v.open_ns, int(omax * NS))
        v.probe_lease_ns = int(self.probe_lease * NS)
        v.slow_call_ns = 0 if self.slow_call_duration is None else max(1, int(self.slow_call_duration * NS))
        v.recovery_ns = int(self.recovery * NS)
        v.fingerprint = self._fingerprint
        for i, share in enumerate(self.priority_shares):
            v.share_ppm[i] = max(1, round(share * ppm))
        v.failure_ppm = max(1, round(self.failure_threshold * ppm))
        v.slow_ppm = 0 if self.slow_call_duration is None else max(1, round(self.slow_call_threshold * ppm))
        amax = self.adaptive_max_threshold
        if amax is None:
            amax = min(1.0, self.failure_threshold * 1.5)
        v.adaptive_max_ppm = round(amax * ppm)
        v.min_requests = int(self.min_requests)
        v.buckets = int(self.window_buckets)
        v.half_open_max = int(self.half_open_max_calls)
        v.success_threshold = int(self.success_threshold or self.half_open_max_calls)
        v.flags = (1 if self.adaptive else 0) | (2 if self.rate is None else 0)
        v.rate_floor_ppm = round(self.rate_floor * ppm)
        v.jitter_ppm = round(self.jitter * ppm)
        v.backoff_milli = round(self.backoff * 1000)
        v.burst = self.effective_burst
        v.max_concurrent = int(self.max_concurrent or 0) | int(self.critical_reserve) << 8
        v.quota_ppm = 0 if self.quota is None else max(1, round(self.quota * ppm))
        v.max_wait_ns = int(self.max_wait * NS)
        v.ticket_lease_ns = 0 if self.ticket_lease is None else int(self.ticket_lease * NS)
        if self.retry_budget is not None:  # budget.c; 0 = no budget
            v.retry_window_ns = int(self.retry_budget_window * NS)
            v.retry_ratio_ppm = round(self.retry_budget * ppm)
            v.retry_min_milli = round(self.retry_budget_min_per_second * 1000)
        if self.throttle_k is not None:
            v.throttle_k_milli = round(self.throttle_k * 1000)
            v.throttle_window_ns = int(self.throttle_window * NS)
            v.throttle_min_requests = int(self.throttle_min_requests)
            if self.throttle_on:
                v.flags |= 256  # SG_POL_THROTTLE_ON: failures are reported by the caller
        v.predict_horizon_ns = 0 if self.predict_horizon is None else int(self.predict_horizon * NS)
        if self.fleet_rate:
            v.flags |= 4  # SG_POL_FLEET_RATE: the burst scales with the host's share (rate.c)
        if self.fleet_breaker:
            v.flags |= 8  # SG_POL_FLEET_BREAKER: the fleet agent shares opens and closes
        return v

    def with_fleet(self, rate: bool = True, breaker: bool = True) -> Policy:
        """Returns a copy whose limits are shared by every host of the service's ``fleet=``.

        ``rate``: the policy's ``rate`` and ``burst`` are fleet-wide; each host
        enforces its share (max-min fair on demand) in its own segment (needs
        a rate). ``breaker``: an open or close on one host moves the other
        hosts' breakers within a refresh, and one host at a time probes.
        """
        return self.replace(fleet_rate=bool(rate) and self.rate is not None,
                            fleet_breaker=bool(breaker))

    def replace(self, **changes: Any) -> Policy:
        """Returns a copy with ``changes`` applied (validated again)."""
        return dataclasses.replace(self, **changes)


class PolicyPresets:
    """The seed design's presets (threshold / min requests / rate / burst)."""

    @staticmethod
    def critical() -> Policy:
        """30% / 5 / 50 rps / burst 75: authentication, configuration."""
        return Policy(failure_threshold=0.3, min_requests=5, rate=50, burst=75)

    @staticmethod
    def standard() -> Policy:
        """50% / 10 / 100 rps / burst 200: general services."""
        return Policy(failure_threshold=0.5, min_requests=10, rate=100, burst=200)

    @staticmethod
    def network() -> Policy:
        """40%, network errors only / 10 / 150 rps / burst 300: remote caches, artifact stores.

        Network errors: connection errors, timeouts and 5xx errors of the
        builtins, requests, httpx, urllib and aiohttp (:mod:`shmguard.neterrors`).
        """
        return Policy(failure_threshold=0.4, min_requests=10, rate=150, burst=300,
                      failure_exceptions=NETWORK_ERRORS)

    @staticmethod
    def high_throughput() -> Policy:
        """60% / 15 / 500 rps / burst 1000: worker coordination, internal services."""
        return Policy(failure_threshold=0.6, min_requests=15, rate=500, burst=1000)

    @staticmethod
    def relaxed() -> Policy:
        """70% / 20 / 200 rps / burst 500: monitoring, telemetry, best effort."""
        return Policy(failure_threshold=0.7, min_requests=20, rate=200, burst=500)


class PolicyBuilder:
    """Builds a :class:`Policy` step by step; :meth:`build` validates it.

    >>> p = PolicyBuilder.from_preset(PolicyPresets.network()).with_rate_limit(200).build()
    >>> p.rate
    200
    """

    def __init__(self, base: Policy | None = None) -> None:
        self._changes: dict[str, Any] = {}
        self._base = base or Policy()

    @classmethod
    def from_preset(cls, preset: Policy) -> PolicyBuilder:
        return cls(preset)

    def _set(self, **kw: Any) -> PolicyBuilder:
        self._changes.update(kw)
        return self

    def with_breaker_threshold(self, threshold: float) -> PolicyBuilder:
        return self._set(failure_threshold=threshold)

    def with_min_requests(self, n: int) -> PolicyBuilder:
        return self._set(min_requests=n)

    def with_rate_limit(self, rate: float | None, burst: int | None = None) -> PolicyBuilder:
        return self._set(rate=rate, burst=burst)

    def with_open_timeout(self, seconds: float, *, max_seconds: float | None = None,
                          backoff: float | None = None, jitter: float | None = None) -> PolicyBuilder:
        kw: dict[str, Any] = {"open_timeout": seconds}
        if max_seconds is not None:
            kw["open_timeout_max"] = max_seconds
        if backoff is not None:
            kw["backoff"] = backoff
        if jitter is not None:
            kw["jitter"] = jitter
        return self._set(**kw)

    def with_half_open_max_calls(self, n: int, success_threshold: int | None = None) -> PolicyBuilder:
        return self._set(half_open_max_calls=n, success_threshold=success_threshold)

    def with_probe_lease(self, seconds: float) -> PolicyBuilder:
        return self._set(probe_lease=seconds)

    def with_window(self, seconds: float, buckets: int | None = None) -> PolicyBuilder:
        return self._set(window=seconds, **({"window_buckets": buckets} if buckets else {}))

    def with_slow_calls(self, duration: float, threshold: float = 1.0) -> PolicyBuilder:
        return self._set(slow_call_duration=duration, slow_call_threshold=threshold)

    def with_exceptions(self, failures: tuple[type[BaseException], ...] | None = None,
                        ignored: tuple[type[BaseException], ...] | None = None) -> PolicyBuilder:
        kw: dict[str, Any] = {}
        if failures is not None:
            kw["failure_exceptions"] = tuple(failures)
        if ignored is not None:
            kw["ignored_exceptions"] = tuple(ignored)
        return self._set(**kw)

    def with_bulkhead(self, max_concurrent: int | None = None, max_wait: float = 0.0, *,
                      quota: float | None = None, critical_reserve: int = 0,
                      ticket_lease: float | None = None) -> PolicyBuilder:
        """At most ``max_concurrent`` calls in flight host-wide, or ``ceil(quota x processes)``.

        :param max_wait: how long a call may wait for a ticket (seconds).
        :param critical_reserve: tickets only CRITICAL calls may take.
        :param ticket_lease: a ticket held longer is free again (off by default).
        """
        if (max_concurrent is None) == (quota is None):
            raise PolicyError("with_bulkhead needs exactly one of max_concurrent and quota, "
                              f"got max_concurrent={max_concurrent!r}, quota={quota!r}")
        return self._set(max_concurrent=max_concurrent, max_wait=max_wait, quota=quota,
                         critical_reserve=critical_reserve, ticket_lease=ticket_lease)

    def with_retry_budget(self, ratio: float = 0.2, min_per_second: float = 10,
                          window: float = 10.0) -> PolicyBuilder:
        """Caps retries host-wide: over ``window`` seconds, ``ratio`` x first attempts
        plus ``min_per_second`` x ``window`` (Finagle's RetryBudget, for all processes)."""
        return self._set(retry_budget=ratio, retry_budget_min_per_second=min_per_second,
                         retry_budget_window=window)

    def with_adaptive_throttling(self, k: float = 2.0, window: float = 120.0,
                                 min_requests: int = 10,
                                 throttle_on: tuple[type[BaseException], ...] | None = None
                                 ) -> PolicyBuilder:
        """Refuses calls locally with probability max(0, (requests - k*accepts) / (requests + 1)).

        Counts are host-wide over ``window`` seconds; nothing is refused below
        ``min_requests``; ``throttle_on`` narrows which failures mean overload.
        """
        return self._set(throttle_k=k, throttle_window=window, throttle_min_requests=min_requests,
                         throttle_on=tuple(throttle_on or ()))

    def with_prediction(self, horizon: float = 2.0) -> PolicyBuilder:
        """Opens the breaker early when the trend forecasts the threshold within ``horizon`` s."""
        return self._set(predict_horizon=horizon)

    def with_keyed_limit(self, name: str | None) -> PolicyBuilder:
        """Names the keyed limiter ``execute(..., key=)`` applies (made by ``svc.keyed_limiter``)."""
        return self._set(keyed_limit=name)

    def adaptive(self, flag: bool = True) -> PolicyBuilder:
        return self._set(adaptive=flag)

    def build(self) -> Policy:
        """Returns the validated policy. :raises PolicyError: naming the bad field."""
        return dataclasses.replace(self._base, **self._changes)
