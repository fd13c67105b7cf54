"""What every HTTP adapter shares: endpoint names, admission, outcomes, Retry-After.

One endpoint per scheme + host + port (``https://api.example.com:443``),
registered on first use. The adapters stay thin: the service decides, this
module only maps a request and its answer onto admit / record / hold.
"""
from __future__ import annotations

import email.utils
import hashlib
import time
from typing import TYPE_CHECKING, Any, Callable, Collection, Mapping
from urllib.parse import urlsplit

from shmguard.deadline import remaining
from shmguard.errors import PolicyError
from shmguard.policy import Outcome, Policy, PolicyPresets, Priority

if TYPE_CHECKING:
    from shmguard.service import ResilienceService

__all__ = ["HttpGuard", "FAILURE_STATUS", "HOLD_STATUS", "origin", "retry_after", "bounded"]

#: answers that count as failures of the dependency (the response is still returned)
FAILURE_STATUS: frozenset[int] = frozenset(range(500, 600))
#: answers whose Retry-After holds the endpoint's limiter
HOLD_STATUS: frozenset[int] = frozenset({429, 503})
DEFAULT_PORTS = {"http": 80, "https": 443, "ws": 80, "wss": 443}
NAME_MAX = 64


def origin(url: str) -> str:
    """Returns the default endpoint name of ``url``: ``scheme://host:port``.

    A name longer than the endpoint limit (64 bytes) keeps its start and gets
    a short hash of the whole, so two long hosts never share an endpoint.
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if not host.isascii():
        try:
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            host = host.encode("ascii", "backslashreplace").decode("ascii")
    port = parts.port or DEFAULT_PORTS.get(scheme, 0)
    name = f"{scheme}://{host}:{port}"
    if len(name) > NAME_MAX:
        tag = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
        name = f"{name[:NAME_MAX - 9]}~{tag}"
    return name


def retry_after(headers: Mapping[str, str], now: float | None = None) -> float | None:
    """Returns the seconds a ``Retry-After`` header asks for (delta or HTTP date), or None."""
    value = headers.get("retry-after") or headers.get("Retry-After")
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class HttpGuard:
    """The shared half of :mod:`shmguard.adapters.requests` and :mod:`shmguard.adapters.httpx`.

    :param policy: the policy of every endpoint it registers (default:
        ``PolicyPresets.network()``).
    :param endpoint: ``f(url) -> name`` for other keys than scheme+host+port.
    :param failure_status: answers counted as failures (default: 5xx).
    :param max_retry_after: the longest ``Retry-After`` obeyed (seconds); a
        server cannot stop the endpoint for longer.
    """

    def __init__(self, svc: ResilienceService, policy: Policy | None = None, *,
                 endpoint: Callable[[str], str] | None = None,
                 failure_status: Collection[int] = FAILURE_STATUS,
                 priority: Priority = Priority.NORMAL, max_retry_after: float = 300.0) -> None:
        from shmguard.service import ResilienceService
        if not isinstance(svc, ResilienceService):
            raise TypeError(f"svc must be a shmguard.ResilienceService, got {svc!r}")
        if policy is not None and not isinstance(policy, Policy):
            raise PolicyError(f"policy must be a shmguard.Policy, got {policy!r}")
        if endpoint is not None and not callable(endpoint):
            raise TypeError(f"endpoint must be a callable url -> name, got {endpoint!r}")
        if priority not in (0, 1, 2, 3) or isinstance(priority, bool):
            raise PolicyError(f"priority must be a shmguard.Priority, got {priority!r}")
        if isinstance(max_retry_after, bool) or not isinstance(max_retry_after, (int, float)) \
                or not 0 <= max_retry_after <= 86400:
            raise PolicyError(f"max_retry_after must be 0..86400 seconds, got {max_retry_after!r}")
        if not all(isinstance(c, int) and 100 <= c <= 599 for c in failure_status):
            raise PolicyError(f"failure_status must hold HTTP status codes, got {failure_status!r}")
        self.svc = svc
        self.policy = policy or PolicyPresets.network()
        self.endpoint = endpoint or origin
        self.failure_status = frozenset(failure_status)
        self.priority = Priority(priority)
        self.max_retry_after = float(max_retry_after)
        self._known: set[str] = set()

    def name(self, url: str) -> str:
        """Returns the endpoint of ``url``, registering it with the policy on first use."""
        name = self.endpoint(url)
        if name not in self._known:
            self.svc.register_endpoint(name, self.policy)
            self._known.add(name)
        return name

    def admit(self, name: str, wait: float | None) -> int:
        """Admits a request (waiting up to ``wait``) or raises the rejection, before any byte is sent."""
        return self.svc.admit(name, self.priority, wait)

    def answered(self, name: str, token: int, status: int, headers: Mapping[str, str]) -> None:
        """Records an answer: a failure status, a Retry-After hold, or a success."""
        if status in HOLD_STATUS:
            seconds = retry_after(headers)
            if seconds is not None:
                self.svc.limiter(name).hold(min(seconds, self.max_retry_after))
        # 429 and 503 are refusals for overload: adaptive throttling counts
        # them as requests without an accept, whatever the breaker makes of them
        refused = status in HOLD_STATUS
        if status in self.failure_status:
            outcome = Outcome.FAILURE
        elif refused:
            outcome = Outcome.IGNORE  # "slow down" says nothing about the dependency's health
        else:
            outcome = Outcome.SUCCESS
        self.svc.record(name, token, outcome, overload=refused)

    def raised(self, name: str, token: int, exc: BaseException) -> None:
        """Records an exception of the transport (connection errors, timeouts: failures)."""
        outcome = self.policy.classify(exc) if isinstance(exc, Exception) else Outcome.IGNORE
        self.svc.record(name, token, outcome)


def bounded(timeout: Any) -> Any:
    """Returns a requests-style ``timeout`` (None, seconds, or (connect, read)) cut to the
    deadline in force (:func:`shmguard.remaining`); unchanged without one."""
    left = remaining()
    if left is None:
        return timeout
    left = max(left, 0.001)  # an expired deadline was refused at admission

    def cut(t: Any) -> Any:
        ok = isinstance(t, (int, float)) and not isinstance(t, bool)
        return min(float(t), left) if ok else left if t is None else t

    return tuple(cut(t) for t in timeout) if isinstance(timeout, tuple) else cut(timeout)


def wait_budget(timeout: Any) -> float | None:
    """The rate-limit wait a request may spend: its (connect) timeout; None when it has none."""
    if isinstance(timeout, tuple):
        timeout = timeout[0]
    if isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout >= 0:
        return float(timeout)
    return None
