"""ResilientAdapter (requests) against a real HTTP server on 127.0.0.1."""
from __future__ import annotations

import socket
from typing import Iterator

import pytest

import shmguard as sg
from shmguard.adapters._common import origin, retry_after

requests = pytest.importorskip("requests")
from shmguard.adapters.requests import ResilientAdapter  # noqa: E402

from _http import Server, serving  # noqa: E402

# opens after 3 calls with >= 50% failures; a limit loose enough not to matter
POLICY = sg.Policy(failure_threshold=0.5, min_requests=3, rate=1000, burst=1000,
                   failure_exceptions=sg.PolicyPresets.network().failure_exceptions)


@pytest.fixture
def server() -> Iterator[Server]:
    with serving() as srv:
        yield srv


def _session(svc: sg.ResilienceService, policy: sg.Policy = POLICY, **kw: object) -> requests.Session:
    s = requests.Session()
    adapter = ResilientAdapter(svc, policy, **kw)  # type: ignore[arg-type]
    s.mount("http://", adapter)
    return s


def test_2xx_passes_untouched(svc: sg.ResilienceService, server: Server) -> None:
    with _session(svc) as s:
        r = s.get(server.url + "/ok", timeout=5)
    assert (r.status_code, r.text, r.headers["X-Served-By"]) == (200, "/ok 200", "test")
    name = f"http://127.0.0.1:{server.server_address[1]}"
    assert svc.endpoints() == [name]
    st = svc.stats(name)
    assert (st.breaker.successes, st.breaker.failures) == (1, 0)


def test_500s_open_the_breaker_and_then_the_server_sees_nothing(
        svc: sg.ResilienceService, server: Server) -> None:
    with _session(svc) as s:
        codes = [s.get(server.url + "/fail", timeout=5).status_code for _ in range(3)]
        assert codes == [500, 500, 500]   # failures, yet the answers are returned
        assert svc.breaker_state(origin(server.url)) == sg.BreakerState.OPEN
        with pytest.raises(sg.CircuitOpenError) as info:
            s.get(server.url + "/ok", timeout=5)
    assert info.value.retry_after == POLICY.open_timeout
    assert server.total == 3           # no byte of the 4th request was sent


def test_connection_errors_count_and_are_reraised(svc: sg.ResilienceService) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/"
    with _session(svc) as s:
        for _ in range(3):
            with pytest.raises(requests.ConnectionError):
                s.get(url, timeout=5)
        with pytest.raises(sg.CircuitOpenError):
            s.get(url, timeout=5)
    assert svc.stats(origin(url)).breaker.failures == 3


@pytest.mark.parametrize("path, outcome", [("/slow-down/7", "ignored"), ("/busy/7", "failure")])
def test_retry_after_holds_the_endpoint_for_every_process(
        svc: sg.ResilienceService, server: Server, path: str, outcome: str) -> None:
    with _session(svc) as s:
        assert s.get(server.url + path, timeout=5).status_code in (429, 503)
        with pytest.raises(sg.RateLimitedError) as info:
            s.get(server.url + "/ok")           # no timeout: no wait
        # what the server asked for (manual clock), then the limiter is empty: CRITICAL
        # could go at once, NORMAL waits until its share refills: (1.1 - 0.8) x 1000 / 1000/s
        assert info.value.retry_after == pytest.approx(7.3)
        assert server.total == 1
        svc.advance(7.3)
        assert s.get(server.url + "/ok", timeout=5).status_code == 200
    b = svc.stats(origin(server.url)).breaker
    counts = {"ignored": (1, 0, 1), "failure": (1, 1, 0)}[outcome]
    assert (b.successes, b.failures, b.ignored) == counts


def test_rate_limit_waits_within_the_timeout(svc: sg.ResilienceService, server: Server) -> None:
    policy = POLICY.replace(rate=20, burst=1)   # T = 50 ms
    with _session(svc, policy) as s:   # manual clock: the waits are exact
        assert s.get(server.url + "/ok", timeout=5).status_code == 200
        assert s.get(server.url + "/ok", timeout=5).status_code == 200   # waited ~50 ms
        with pytest.raises(sg.RateLimitedError):
            s.get(server.url + "/ok")          # no timeout: no wait
    m = svc.stats(origin(server.url)).limiter_metrics
    assert (m.accepted, m.waited, m.rejected) == (2, 1, 1)
    assert server.total == 2


def test_endpoint_key_is_pluggable(svc: sg.ResilienceService, server: Server) -> None:
    with _session(svc, endpoint=lambda url: "api-" + url.rsplit("/", 1)[1]) as s:
        s.get(server.url + "/ok", timeout=5)
        s.get(server.url + "/fail", timeout=5)
    assert svc.endpoints() == ["api-fail", "api-ok"]


def test_default_policy_is_the_network_preset(svc: sg.ResilienceService, server: Server) -> None:
    with requests.Session() as s:
        s.mount("http://", ResilientAdapter(svc))
        s.get(server.url + "/ok", timeout=5)
    view = svc._eps[origin(server.url)].policy_view()
    assert view.fingerprint == sg.PolicyPresets.network().fingerprint


def test_bad_arguments_are_named(svc: sg.ResilienceService) -> None:
    with pytest.raises(TypeError, match="ResilienceService"):
        ResilientAdapter("web")  # type: ignore[arg-type]
    with pytest.raises(sg.PolicyError, match="priority"):
        ResilientAdapter(svc, priority=5)  # type: ignore[arg-type]
    with pytest.raises(sg.PolicyError, match="max_retry_after must be 0..86400 seconds, got -1"):
        ResilientAdapter(svc, max_retry_after=-1)
    with pytest.raises(sg.PolicyError, match="failure_status must hold HTTP status codes"):
        ResilientAdapter(svc, failure_status=["500"])  # type: ignore[list-item]


def test_names_and_retry_after_parsing() -> None:
    assert origin("https://API.example.com/x?y") == "https://api.example.com:443"
    assert origin("http://h:8080/") == "http://h:8080"
    long = origin("https://" + "a" * 80 + ".example.com/")
    assert len(long) == 64 and long.startswith("https://aaa")
    assert retry_after({"Retry-After": "12"}) == 12.0
    assert retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:10 GMT"}, now=1445412480.0) == 10.0
    assert retry_after({"Retry-After": "soon"}) is None and retry_after({}) is None


def _child_fails(segname: str, url: str, n: int) -> None:
    svc = sg.ResilienceService(segname, create=False)
    with _session(svc) as s:
        for _ in range(n):
            s.get(url + "/fail", timeout=5)
    svc.close()


def test_a_breaker_opened_in_one_process_stops_every_process(
        segname: str, svc: sg.ResilienceService, server: Server) -> None:
    import multiprocessing as mp
    child = mp.get_context("spawn").Process(target=_child_fails, args=(segname, server.url, 3))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    with _session(svc) as s:          # this process never saw a failure
        with pytest.raises(sg.CircuitOpenError):
            s.get(server.url + "/ok", timeout=5)
    assert server.hits == {"/fail": 3}


class _Overloaded(Exception):
    """Only this narrows throttle_on: a 500 is then a failure but no overload."""


def _throttling(**kw: object) -> sg.Policy:
    return (sg.PolicyBuilder().with_breaker_threshold(0.5).with_min_requests(3)
            .with_rate_limit(1000, 1000)
            .with_exceptions(sg.PolicyPresets.network().failure_exceptions)
            .with_adaptive_throttling(k=2.0, window=60.0, min_requests=5, **kw)  # type: ignore[arg-type]
            .build())


def test_429_counts_as_a_throttling_refusal_but_no_breaker_failure(
        svc: sg.ResilienceService, server: Server) -> None:
    with _session(svc, _throttling()) as s:
        assert [s.get(server.url + "/slow-down/0", timeout=5).status_code
                for _ in range(5)] == [429] * 5
        name = origin(server.url)
        st = svc.stats(name)
        assert st.throttle is not None
        assert (st.throttle.requests, st.throttle.accepts) == (5, 0)
        assert (st.breaker.failures, svc.breaker_state(name)) == (0, sg.BreakerState.CLOSED)
        # p = (5 - 2*0) / 6 and rising: the client now refuses most calls itself
        refused = 0
        for _ in range(30):
            try:
                s.get(server.url + "/slow-down/0", timeout=5)
            except sg.ThrottledError:
                refused += 1
    assert refused > 0 and server.total == 35 - refused


def test_503_is_a_refusal_even_when_it_is_no_failure_status(
        svc: sg.ResilienceService, server: Server) -> None:
    with _session(svc, _throttling(), failure_status=()) as s:
        assert [s.get(server.url + "/busy/0", timeout=5).status_code
                for _ in range(3)] == [503] * 3
        assert s.get(server.url + "/ok", timeout=5).status_code == 200
    st = svc.stats(origin(server.url))
    assert st.throttle is not None
    assert (st.throttle.requests, st.throttle.accepts, st.breaker.failures) == (4, 1, 0)


def test_a_500_is_an_accept_when_throttle_on_names_other_overloads(
        svc: sg.ResilienceService, server: Server) -> None:
    with _session(svc, _throttling(throttle_on=(_Overloaded,))) as s:
        assert s.get(server.url + "/fail", timeout=5).status_code == 500
        assert s.get(server.url + "/busy/0", timeout=5).status_code == 503
    st = svc.stats(origin(server.url))
    assert st.throttle is not None
    # both are breaker failures; only the 503 is an overload refusal
    assert (st.throttle.requests, st.throttle.accepts, st.breaker.failures) == (2, 1, 2)


def test_the_deadline_in_force_cuts_the_request_timeout(svc: sg.ResilienceService,
                                                        server: Server) -> None:
    import time

    # cut: a timeout of the request (or, on a starved machine, the deadline passed
    # before admission); never the 200 the server sends after 0.2 s
    cut = (requests.exceptions.Timeout, sg.DeadlineExceededError)
    with _session(svc) as s:
        with sg.deadline(0.05):          # its own timeout is 5 s
            with pytest.raises(cut):
                s.get(server.url + "/sleep", timeout=5)
        assert s.get(server.url + "/sleep/free", timeout=5).status_code == 200
        with sg.deadline(0.001):
            time.sleep(0.01)
            with pytest.raises(sg.DeadlineExceededError):
                s.get(server.url + "/ok", timeout=5)
    assert (server.hits["/sleep/free"], server.hits["/ok"]) == (1, 0)  # no byte after the deadline
