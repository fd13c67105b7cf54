"""The network preset recognises the errors real HTTP clients raise, without importing them."""
from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from typing import Any, Callable, Iterator

import pytest

import shmguard as sg
from shmguard.neterrors import NetworkFailure

requests = pytest.importorskip("requests")
httpx = pytest.importorskip("httpx")
aiohttp = pytest.importorskip("aiohttp")
NET = sg.PolicyPresets.network()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 nobody listens on (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def silent_port() -> Iterator[int]:
    """A port that accepts connections and never answers (read timeout)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(8)
        yield int(s.getsockname()[1])


def _raised(fn: Callable[[], Any]) -> BaseException:
    try:
        fn()
    except BaseException as exc:  # noqa: BLE001 - the error is what we test
        return exc
    raise AssertionError("no exception")


def test_connection_refused_of_every_client_is_a_failure(closed_port: int) -> None:
    url = f"http://127.0.0.1:{closed_port}/"

    async def aio() -> None:
        async with aiohttp.ClientSession() as s:
            await s.get(url)

    errors = [
        _raised(lambda: requests.get(url, timeout=2)),
        _raised(lambda: httpx.get(url, timeout=2)),
        _raised(lambda: urllib.request.urlopen(url, timeout=2)),
        _raised(lambda: asyncio.run(aio())),
    ]
    assert [type(e).__name__ for e in errors] == [
        "ConnectionError", "ConnectError", "URLError", "ClientConnectorError"]
    assert [NET.classify(e) for e in errors] == [sg.Outcome.FAILURE] * 4


def test_read_timeouts_are_failures(silent_port: int) -> None:
    url = f"http://127.0.0.1:{silent_port}/"
    errors = [_raised(lambda: requests.get(url, timeout=0.05)),
              _raised(lambda: httpx.get(url, timeout=0.05))]
    assert [type(e).__name__ for e in errors] == ["ReadTimeout", "ReadTimeout"]
    assert [NET.classify(e) for e in errors] == [sg.Outcome.FAILURE] * 2


def _http_error(code: int) -> urllib.error.HTTPError:
    return urllib.error.HTTPError("http://x/", code, "status", None, None)  # type: ignore[arg-type]


def _requests_error(code: int) -> Exception:
    resp = requests.Response()
    resp.status_code = code
    return requests.HTTPError(response=resp)


def _httpx_error(code: int) -> Exception:
    req = httpx.Request("GET", "http://x/")
    return httpx.HTTPStatusError("status", request=req, response=httpx.Response(code, request=req))


@pytest.mark.parametrize("make", [_http_error, _requests_error, _httpx_error])
def test_status_errors_count_only_for_5xx(make: Callable[[int], Exception]) -> None:
    assert NET.classify(make(503)) == sg.Outcome.FAILURE
    assert NET.classify(make(404)) == sg.Outcome.SUCCESS  # the dependency answered


def test_other_errors_are_successes_and_the_marker_works_in_except() -> None:
    assert NET.classify(ValueError("bad")) == sg.Outcome.SUCCESS
    assert NET.classify(httpx.UnsupportedProtocol("ftp")) == sg.Outcome.SUCCESS
    assert NET.classify(requests.exceptions.InvalidURL("x")) == sg.Outcome.SUCCESS
    with pytest.raises(NetworkFailure):
        try:
            raise requests.ConnectionError("down")
        except NetworkFailure:
            raise
    assert issubclass(httpx.ConnectError, NetworkFailure)
    assert not issubclass(KeyError, NetworkFailure)


def test_classifying_imports_no_client_library() -> None:
    code = ("import sys, shmguard as sg\n"
            "p = sg.PolicyPresets.network()\n"
            "assert p.classify(ConnectionRefusedError()) == sg.Outcome.FAILURE\n"
            "assert p.classify(KeyError()) == sg.Outcome.SUCCESS\n"
            "print(sorted(m for m in ('requests', 'httpx', 'aiohttp', 'urllib3') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
