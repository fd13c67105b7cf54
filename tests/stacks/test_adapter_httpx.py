"""ResilientTransport and AsyncResilientTransport (httpx) against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import asyncio
import socket
from typing import Iterator

import pytest

import shmguard as sg
from shmguard.adapters._common import origin

httpx = pytest.importorskip("httpx")
from shmguard.adapters.httpx import AsyncResilientTransport, ResilientTransport  # noqa: E402

from _http import Server, serving  # noqa: E402

POLICY = sg.Policy(failure_threshold=0.5, min_requests=4, rate=1000, burst=1000,
                   failure_exceptions=sg.PolicyPresets.network().failure_exceptions)


@pytest.fixture
def server() -> Iterator[Server]:
    with serving() as srv:
        yield srv


def test_sync_transport_passes_2xx_and_opens_on_500s(svc: sg.ResilienceService,
                                                     server: Server) -> None:
    with httpx.Client(transport=ResilientTransport(svc, POLICY), base_url=server.url) as c:
        r = c.get("/ok")
        assert (r.status_code, r.text, r.headers["x-served-by"]) == (200, "/ok 200", "test")
        assert [c.get("/fail").status_code for _ in range(3)] == [500] * 3
        with pytest.raises(sg.CircuitOpenError):
            c.get("/ok")
    assert server.total == 4
    b = svc.stats(origin(server.url)).breaker
    assert (b.successes, b.failures, b.state) == (1, 3, sg.BreakerState.OPEN)


def test_sync_transport_honours_retry_after(svc: sg.ResilienceService, server: Server) -> None:
    # httpx waits up to its pool timeout: 0 here, so the hold is a rejection
    with httpx.Client(transport=ResilientTransport(svc, POLICY), base_url=server.url,
                      timeout=httpx.Timeout(5.0, pool=0.0)) as c:
        assert c.get("/slow-down/4").status_code == 429
        with pytest.raises(sg.RateLimitedError) as info:
            c.get("/ok")
        assert info.value.retry_after == pytest.approx(4.3)  # 4 s, then NORMAL's share refills
        svc.advance(4.3)
        assert c.get("/ok").status_code == 200
    assert server.total == 2


def test_connect_errors_are_failures(svc: sg.ResilienceService) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    with httpx.Client(transport=ResilientTransport(svc, POLICY)) as c:
        for _ in range(4):
            with pytest.raises(httpx.ConnectError):
                c.get(url)
        with pytest.raises(sg.CircuitOpenError):
            c.get(url)


def test_async_transport_same_rules(svc: sg.ResilienceService, server: Server) -> None:
    async def main() -> list[object]:
        seen: list[object] = []
        transport = AsyncResilientTransport(svc, POLICY)
        async with httpx.AsyncClient(transport=transport, base_url=server.url,
                                     timeout=httpx.Timeout(5.0, pool=0.0)) as c:
            seen.append((await c.get("/ok")).status_code)
            seen += [(await c.get("/fail")).status_code for _ in range(3)]
            try:
                await c.get("/ok")
            except sg.CircuitOpenError as exc:
                seen.append(type(exc).__name__)
            svc.breaker(origin(server.url)).reset()
            seen.append((await c.get("/busy/2")).status_code)
            try:
                await c.get("/ok")
            except sg.RateLimitedError as exc:
                seen.append(round(exc.retry_after, 6))
        return seen

    assert asyncio.run(main()) == [200, 500, 500, 500, "CircuitOpenError", 503, 2.3]
    assert server.total == 5


def test_async_rate_limit_waits_within_the_pool_timeout(svc: sg.ResilienceService,
                                                        server: Server) -> None:
    # manual clock: every request is decided at the same instant, so the waits are exact
    async def main() -> list[int]:
        transport = AsyncResilientTransport(svc, POLICY.replace(rate=20, burst=1))
        async with httpx.AsyncClient(transport=transport, base_url=server.url) as c:
            return [(await c.get("/ok")).status_code for _ in range(3)]

    assert asyncio.run(main()) == [200, 200, 200]
    m = svc.stats(origin(server.url)).limiter_metrics
    assert (m.accepted, m.waited, m.rejected) == (3, 2, 0)


def test_the_deadline_in_force_cuts_the_request_timeouts(svc: sg.ResilienceService,
                                                         server: Server) -> None:
    # cut: a timeout of the request (or, on a starved machine, the deadline passed
    # before admission); never the 200 the server sends after 0.2 s
    cut = (httpx.TimeoutException, sg.DeadlineExceededError)
    with httpx.Client(transport=ResilientTransport(svc, POLICY), base_url=server.url,
                      timeout=5.0) as c:
        with sg.deadline(0.05):          # /sleep answers after 0.2 s
            with pytest.raises(cut):
                c.get("/sleep")
        assert c.get("/sleep/free").status_code == 200

    async def main() -> int:
        async with httpx.AsyncClient(transport=AsyncResilientTransport(svc, POLICY),
                                     base_url=server.url, timeout=5.0) as c:
            async with sg.deadline(0.05):
                with pytest.raises(cut):
                    await c.get("/sleep")
            return (await c.get("/sleep/free")).status_code
    assert asyncio.run(main()) == 200
    assert server.hits["/sleep/free"] == 2
