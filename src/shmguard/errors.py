"""Exceptions raised by shmguard: one base class, typed families below it."""
from __future__ import annotations


class ShmguardError(Exception):
    """Base class of every shmguard error."""


class PolicyError(ShmguardError, ValueError):
    """A policy field (or a call's cost) is invalid; the message names it."""


class PolicyConflictError(PolicyError):
    """The endpoint already exists with another policy (pass ``replace=True``)."""


class InvalidNameError(ShmguardError, ValueError):
    """A segment or endpoint name is not acceptable."""


class UnknownEndpointError(ShmguardError, KeyError):
    """The endpoint does not exist in the segment (never registered, or removed).

    A ``KeyError`` too: ``svc.stats(name)`` reads like a mapping lookup.
    Read-only calls never create an endpoint; ``execute`` and the handle
    getters create one only on a service made with ``default_policy=``.
    """

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class EndpointRemovedError(UnknownEndpointError):
    """A handle (or a ticket, or a call in flight) refers to an endpoint that was removed.

    Its slot may now hold another endpoint; nothing was read or written
    there. Get the endpoint again by name.
    """


class CapacityError(ShmguardError):
    """The segment's slot table is full."""


class SegmentError(ShmguardError, OSError):
    """A segment is missing, corrupt, foreign or incompatible."""


class ServiceClosedError(SegmentError):
    """The service (or its segment) was closed in this process; every later call raises it."""


class SegmentNotFoundError(SegmentError, FileNotFoundError):
    """No segment of that name exists."""


class SegmentCorruptError(SegmentError):
    """The segment's header or a slot fails validation."""


class SegmentIncompatibleError(SegmentError):
    """The segment was made by another layout version of shmguard."""


class SegmentPermissionError(SegmentError, PermissionError):
    """The segment belongs to another user or is group/world accessible."""


class DeadlineExceededError(ShmguardError, TimeoutError):
    """The deadline in force (``shmguard.deadline``) passed before the call could start."""


class RejectedError(ShmguardError):
    """A call was not admitted; ``retry_after`` says when to try again (seconds)."""

    #: the process that refused the call (set by ResilientExecutor workers)
    worker_pid: int | None = None

    def __init__(self, endpoint: str, retry_after: float, message: str) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.retry_after = retry_after

    def __reduce__(self) -> tuple[object, ...]:
        # args holds only the message: rebuild from all three (rejections
        # cross process pools; a result that fails to unpickle breaks a pool)
        return (type(self), (self.endpoint, self.retry_after, str(self)), self.__dict__)


class CircuitOpenError(RejectedError):
    """The endpoint's breaker is open (or all half-open probes are out)."""


class RateLimitedError(RejectedError):
    """The endpoint's rate limit did not admit the call in time."""


class BulkheadFullError(RejectedError):
    """Every ticket of the endpoint's bulkhead stayed out for as long as the call could wait."""


class ThrottledError(ShmguardError):
    """Adaptive throttling refused the call locally (the dependency is overloaded).

    ``retry_after`` is None: the refusal is a random draw, so an immediate
    retry may pass; ``probability`` is the chance of refusal when it was drawn.
    """

    #: the process that refused the call (set by ResilientExecutor workers)
    worker_pid: int | None = None
    retry_after: None = None

    def __init__(self, endpoint: str, probability: float, message: str) -> None:
        super().__init__(message)
        self.endpoint = endpoint
        self.probability = probability

    def __reduce__(self) -> tuple[object, ...]:
        return (type(self), (self.endpoint, self.probability, str(self)), self.__dict__)
