"""httpx transports guarded by shmguard: ``ResilientTransport`` and ``AsyncResilientTransport``.

::

    import httpx, shmguard as sg
    from shmguard.adapters.httpx import ResilientTransport, AsyncResilientTransport

    svc = sg.ResilienceService("web")
    client = httpx.Client(transport=ResilientTransport(svc))
    aclient = httpx.AsyncClient(transport=AsyncResilientTransport(svc))

The rules are those of :mod:`shmguard.adapters.requests`: one endpoint per
scheme + host + port, registered on first use with ``policy`` (default:
``PolicyPresets.network()``); an open breaker raises
:class:`~shmguard.CircuitOpenError` before any byte is sent; a rate limit
waits within the request's ``pool`` timeout (httpx's time allowed to get a
connection; default 5 s), else raises :class:`~shmguard.RateLimitedError`;
transport errors and timeouts and 5xx answers count as failures (the
response is still returned); a 429 or 503 with ``Retry-After`` holds the
endpoint's limiter host-wide. The async transport waits with ``asyncio.sleep``.

:param transport: the transport that sends (default: ``httpx.HTTPTransport(**kwargs)``,
    or ``httpx.AsyncHTTPTransport(**kwargs)``).
"""
from __future__ import annotations

from typing import Any, Callable, Collection

import httpx

from shmguard.adapters._common import FAILURE_STATUS, HttpGuard, bounded, wait_budget
from shmguard.policy import Policy, Priority
from shmguard.service import ResilienceService

__all__ = ["ResilientTransport", "AsyncResilientTransport"]


def _wait(request: httpx.Request) -> float | None:
    timeout = request.extensions.get("timeout") or {}
    return wait_budget(timeout.get("pool", timeout.get("connect")))


def _bound(request: httpx.Request) -> None:
    """Cuts the request's timeouts (connect, read, write, pool) to the deadline in force."""
    timeout = request.extensions.get("timeout") or {}
    keys = ("connect", "read", "write", "pool")
    cut = bounded(tuple(timeout.get(k) for k in keys))
    request.extensions["timeout"] = {**timeout, **dict(zip(keys, cut))}


class ResilientTransport(httpx.BaseTransport):
    """An httpx transport whose requests go through host-wide endpoints (see the module)."""

    def __init__(self, svc: ResilienceService, policy: Policy | None = None, *,
                 transport: httpx.BaseTransport | None = None,
                 endpoint: Callable[[str], str] | None = None,
                 failure_status: Collection[int] = FAILURE_STATUS,
                 priority: Priority = Priority.NORMAL, max_retry_after: float = 300.0,
                 **transport_kwargs: Any) -> None:
        self.guard = HttpGuard(svc, policy, endpoint=endpoint, failure_status=failure_status,
                               priority=priority, max_retry_after=max_retry_after)
        self.transport = transport or httpx.HTTPTransport(**transport_kwargs)

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        """Admits the request, sends it, and records how the endpoint answered."""
        guard = self.guard
        name = guard.name(str(request.url))
        token = guard.admit(name, _wait(request))
        _bound(request)
        try:
            response = self.transport.handle_request(request)
        except BaseException as exc:
            guard.raised(name, token, exc)
            raise
        guard.answered(name, token, response.status_code, response.headers)
        return response

    def close(self) -> None:
        self.transport.close()


class AsyncResilientTransport(httpx.AsyncBaseTransport):
    """The asyncio twin of :class:`ResilientTransport` (waits with ``asyncio.sleep``)."""

    def __init__(self, svc: ResilienceService, policy: Policy | None = None, *,
                 transport: httpx.AsyncBaseTransport | None = None,
                 endpoint: Callable[[str], str] | None = None,
                 failure_status: Collection[int] = FAILURE_STATUS,
                 priority: Priority = Priority.NORMAL, max_retry_after: float = 300.0,
                 **transport_kwargs: Any) -> None:
        self.guard = HttpGuard(svc, policy, endpoint=endpoint, failure_status=failure_status,
                               priority=priority, max_retry_after=max_retry_after)
        self.transport = transport or httpx.AsyncHTTPTransport(**transport_kwargs)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Admits the request (awaiting the limiter), sends it, and records the answer."""
        from shmguard import aio
        guard = self.guard
        name = guard.name(str(request.url))
        token = await aio.admit_async(guard.svc, name, guard.priority, _wait(request))
        _bound(request)
        try:
            response = await self.transport.handle_async_request(request)
        except BaseException as exc:
            guard.raised(name, token, exc)
            raise
        guard.answered(name, token, response.status_code, response.headers)
        return response

    async def aclose(self) -> None:
        await self.transport.aclose()
