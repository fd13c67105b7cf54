"""Statistics records read from the segment (host-wide: every process sees the same)."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = ["BreakerState", "BreakerMode", "BreakerSnapshot", "LimiterMetrics", "EndpointStats",
           "BulkheadStats", "TicketHolder", "RetryBudgetStats", "ThrottleStats", "PredictionStats",
           "FleetStats"]


class BreakerState(enum.IntEnum):
    """Breaker state; ``str()`` gives "closed", "open" or "half-open"."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2

    def __str__(self) -> str:
        return self.name.lower().replace("_", "-")


class BreakerMode(enum.IntEnum):
    """Manual control: NORMAL follows the window; the others are forced."""

    NORMAL = 0
    FORCED_OPEN = 3
    FORCED_CLOSED = 4
    METRICS_ONLY = 5

    def __str__(self) -> str:
        return self.name.lower().replace("_", "-")


@dataclass(frozen=True)
class Probe:
    pid: int
    lease_left: float  # seconds
    index: int
    word: int


@dataclass(frozen=True)
class BreakerSnapshot:
    state: BreakerState
    mode: BreakerMode
    generation: int
    state_age: float
    open_remaining: float
    window_calls: int
    window_failures: int
    window_slow: int
    threshold: float
    baseline: float
    half_open_successes: int
    probes: tuple[Probe, ...]
    opens: int
    successes: int
    failures: int
    ignored: int
    rejected: int

    @property
    def failure_rate(self) -> float:
        return self.window_failures / self.window_calls if self.window_calls else 0.0


@dataclass(frozen=True)
class LimiterMetrics:
    """Limiter counters: totals since creation and the sliding window."""

    accepted: int
    rejected: int
    waited: int
    by_priority: dict[str, dict[str, int]] = field(default_factory=dict)
    window_accepted: int = 0
    window_rejected: int = 0
    window_seconds: float = 0.0
    tokens: float = 0.0
    effective_rate: float = 0.0
    rate_scale: float = 1.0
    retry_after: float = 0.0     #: seconds until one token is free (after queued reservations)

    def acceptance_rate(self, *, window: bool = True) -> float:
        """Reports accepted / decided, over the sliding window (default) or all time."""
        a, r = (self.window_accepted, self.window_rejected) if window else (self.accepted, self.rejected)
        return a / (a + r) if a + r else 1.0


@dataclass(frozen=True)
class TicketHolder:
    """One ticket out: which process holds it, for how long (seconds)."""

    index: int
    pid: int
    held: float
    word: int


@dataclass(frozen=True)
class BulkheadStats:
    """Bulkhead counters and the tickets out now (host-wide)."""

    max_concurrent: int           # tickets now (the quota's share in quota mode)
    in_flight: int
    peak: int
    acquired: int
    rejected: int
    waited: int
    reclaimed: int
    critical_reserve: int = 0
    quota: float | None = None
    processes: int = 0            # quota mode: attached processes last counted
    holders: tuple[TicketHolder, ...] = ()

    @property
    def available(self) -> int:
        return max(0, self.max_concurrent - self.in_flight)


@dataclass(frozen=True)
class RetryBudgetStats:
    """The retry budget's window now (host-wide): what it counted and what it allows."""

    window_seconds: float
    attempts: int   # admitted calls in the window (first attempts + retries)
    retries: int    # retries granted in the window
    allowed: int    # retries the window allows now: ratio x first attempts + minimum


@dataclass(frozen=True)
class ThrottleStats:
    """Adaptive throttling: host-wide counts over the window and totals since creation.

    ``throttle_probability`` is the chance that the next call is refused
    locally: max(0, (requests - k * accepts) / (requests + 1)).
    """

    enabled: bool
    k: float
    window_seconds: float
    requests: int
    accepts: int
    throttle_probability: float
    requests_total: int
    accepts_total: int
    throttled: int


@dataclass(frozen=True)
class PredictionStats:
    """Predictive breaking: the Holt state of the bucket ratios and its forecasts (None: no state)."""

    enabled: bool
    horizon: float
    failure_level: float | None
    failure_trend: float | None  # change per bucket
    failure_forecast: float | None
    slow_level: float | None
    slow_trend: float | None
    slow_forecast: float | None
    opens: int  # opens decided by the forecast


@dataclass(frozen=True)
class EndpointStats:
    endpoint: str
    breaker_state: BreakerState
    failure_rate: float
    limiter_metrics: LimiterMetrics
    breaker: BreakerSnapshot | None = None
    rate: float | None = None
    burst: int = 0
    attempts: int = 0          # calls admitted, ever: first attempts and retries (limiter accepted)
    retries: int = 0           # retries granted, ever (execute(retries=N))
    retries_denied: int = 0    # retries the retry budget refused, ever
    retry_budget: RetryBudgetStats | None = None  # None: the policy sets no budget
    bulkhead: BulkheadStats | None = None
    throttle: ThrottleStats | None = None
    prediction: PredictionStats | None = None
    fleet: FleetStats | None = None  # None: not a fleet endpoint (Policy.with_fleet)

    @property
    def throttle_probability(self) -> float:
        """The chance that adaptive throttling refuses the next call (0 when off)."""
        return self.throttle.throttle_probability if self.throttle else 0.0


@dataclass(frozen=True)
class FleetStats:
    """This host's share of a fleet-wide rate (shmguard.fleet), read from the slot."""

    mode: str             # "none" (no share yet), "granted" (lease running), "safe" (no live grant)
    hosts: int            # live hosts at the last sync (this one included)
    rate: float           # this host's share, requests/s
    burst: int            # this host's share of the burst
    lease_left: float     # seconds the grant still runs (0: expired or safe share)
    sync_age: float | None  # seconds since the last successful sync (None: never)
    errors: int           # Redis errors, total
    agent_pid: int        # process holding the agent lease (0: none live)
