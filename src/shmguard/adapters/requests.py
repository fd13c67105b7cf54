"""``ResilientAdapter``: a requests transport adapter guarded by shmguard (after semian's net_http).

::

    import requests, shmguard as sg
    from shmguard.adapters.requests import ResilientAdapter

    session = requests.Session()
    adapter = ResilientAdapter(sg.ResilienceService("web"))
    session.mount("https://", adapter)
    session.mount("http://", adapter)

Every request goes through the endpoint of its scheme + host + port
(``https://api.example.com:443``), registered on first use with ``policy``
(default: ``PolicyPresets.network()``), host-wide:

- an open breaker raises :class:`~shmguard.CircuitOpenError` before any byte is sent;
- a rate limit waits within the request's (connect) timeout, else raises
  :class:`~shmguard.RateLimitedError` (a request without a timeout does not wait);
- connection errors and timeouts count as failures (and are re-raised), so
  do 5xx answers (``failure_status``), which are still returned;
- a 429 or 503 with ``Retry-After`` holds the endpoint's limiter, for every
  process, until the time the server asked for (at most ``max_retry_after``);
  a 429 counts as neither success nor failure of the breaker, but 429 and
  503 count as overload refusals for adaptive throttling. The hold leaves the limiter
  empty at that time: a CRITICAL request may go at once, lower priorities
  wait until their share of the burst refills, as after any burst
  (:meth:`shmguard.Limiter.hold`). An endpoint without a rate has no hold.

Thread safe and process safe (the state is in the segment).
"""
from __future__ import annotations

from typing import Any, Callable, Collection, Mapping

from requests.adapters import HTTPAdapter
from requests.models import PreparedRequest, Response

from shmguard.adapters._common import FAILURE_STATUS, HttpGuard, bounded, wait_budget
from shmguard.policy import Policy, Priority
from shmguard.service import ResilienceService

__all__ = ["ResilientAdapter"]


class ResilientAdapter(HTTPAdapter):
    """An ``HTTPAdapter`` whose requests go through host-wide endpoints (see the module).

    :param svc: the service (segment) holding the endpoints.
    :param policy: policy of the endpoints it registers (default: network preset).
    :param endpoint: ``f(url) -> endpoint name`` (default: scheme://host:port).
    :param failure_status: answers that count as failures (default: 500-599).
    :param priority: the priority of its requests.
    :param max_retry_after: the longest Retry-After obeyed, in seconds.
    :param adapter_kwargs: passed to ``HTTPAdapter`` (pool sizes, ``max_retries``).
    """

    def __init__(self, svc: ResilienceService, policy: Policy | None = None, *,
                 endpoint: Callable[[str], str] | None = None,
                 failure_status: Collection[int] = FAILURE_STATUS,
                 priority: Priority = Priority.NORMAL, max_retry_after: float = 300.0,
                 **adapter_kwargs: Any) -> None:
        self.guard = HttpGuard(svc, policy, endpoint=endpoint, failure_status=failure_status,
                               priority=priority, max_retry_after=max_retry_after)
        super().__init__(**adapter_kwargs)

    def send(self, request: PreparedRequest, stream: bool = False, timeout: Any = None,
             verify: bool | str = True, cert: Any = None,
             proxies: Mapping[str, str] | None = None) -> Response:
        """Admits the request, sends it, and records how the endpoint answered."""
        guard = self.guard
        name = guard.name(request.url or "")
        token = guard.admit(name, wait_budget(timeout))
        timeout = bounded(timeout)  # the deadline in force (sg.deadline) cuts the request's own
        try:
            response = super().send(request, stream=stream, timeout=timeout, verify=verify,
                                    cert=cert, proxies=None if proxies is None else dict(proxies))
        except BaseException as exc:
            guard.raised(name, token, exc)
            raise
        guard.answered(name, token, response.status_code, response.headers)
        return response
