"""shmguard: host-wide circuit breakers and rate limiters in one shared-memory segment."""
from __future__ import annotations

from shmguard.breaker import Breaker, Permit
from shmguard.bulkhead import Bulkhead, Ticket
from shmguard.deadline import deadline, remaining
from shmguard.errors import (BulkheadFullError, CapacityError, CircuitOpenError,
                             DeadlineExceededError, InvalidNameError, PolicyConflictError,
                             PolicyError, RateLimitedError, RejectedError, SegmentCorruptError,
                             SegmentError, SegmentIncompatibleError, SegmentNotFoundError,
                             SegmentPermissionError, ServiceClosedError, ShmguardError,
                             ThrottledError, UnknownEndpointError, EndpointRemovedError)
from shmguard.executor import ResilientExecutor
from shmguard.fallback import AsyncFallbackChain, FallbackChain
from shmguard.fleet.config import RedisFleet
from shmguard.keyed import KeyedLimiter, KeyedReservation, KeyedStats
from shmguard.limiter import Limiter, Reservation
from shmguard.policychange import PolicyChangedWarning
from shmguard.policy import Outcome, Policy, PolicyBuilder, PolicyPresets, Priority
from shmguard.result import Err, Ok
from shmguard.segment import list_segments, unlink
from shmguard.service import ResilienceService
from shmguard.stats import (BreakerMode, BreakerState, BulkheadStats, EndpointStats,
                            LimiterMetrics, PredictionStats, ThrottleStats)

__version__ = "0.1.0"
__all__ = [
    "AsyncFallbackChain", "DeadlineExceededError", "FallbackChain", "deadline", "remaining",
    "Breaker", "BreakerMode", "BreakerState", "Bulkhead", "BulkheadFullError", "BulkheadStats",
    "CapacityError", "CircuitOpenError", "EndpointStats",
    "Err", "InvalidNameError", "Limiter", "LimiterMetrics", "Ok", "Outcome", "Permit", "Policy",
    "KeyedLimiter", "KeyedReservation", "KeyedStats",
    "PolicyBuilder", "PolicyChangedWarning", "PolicyConflictError", "PolicyError", "PolicyPresets",
    "Priority",
    "RateLimitedError", "RejectedError", "Reservation", "ResilienceService", "ResilientExecutor", "SegmentCorruptError",
    "SegmentError", "SegmentIncompatibleError", "SegmentNotFoundError", "SegmentPermissionError",
    "ServiceClosedError", "ShmguardError", "Ticket", "list_segments", "unlink",
    "PredictionStats", "ThrottleStats", "ThrottledError", "RedisFleet", "UnknownEndpointError",
    "EndpointRemovedError",
]
