"""The README's recipes, run with the real servers and workers: gunicorn, Celery, uvicorn.

The recipe files and command lines are read from README.md; the tests only
shrink the worker counts and pick free ports. (The multiprocessing.Pool
recipe is a plain script: tests/stacks/test_readme.py runs it.)
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator

import pytest

import shmguard as sg
from shmguard.adapters._common import origin

from _http import Server, serving  # noqa: E402
from _procs import Running, free_port, tool, wait_up  # noqa: E402
from _readme import commands, recipe_file  # noqa: E402

pytestmark = pytest.mark.slow


def _command(program: str, index: int, port: int, **shrink: str) -> list[str]:
    line = commands(program)[index].replace("127.0.0.1:8000", f"127.0.0.1:{port}")
    line = line.replace("--port 8000", f"--port {port}")
    for old, new in shrink.items():
        line = line.replace(old, new)
    argv = line.split()
    return [tool(program)] + argv[1:]


@pytest.fixture
def upstream() -> Iterator[Server]:
    with serving() as srv:
        yield srv


def _get(port: int, path: str) -> tuple[int, str, Any]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
            return r.status, r.read().decode(), r.headers
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(), exc.headers


def _attached(segname: str) -> set[int]:
    from shmguard.cli.procs import attached, segment_files
    files = attached(segment_files([segname]))
    return set(files[0].pids) if files else set()


def _every_worker_serves(port: int, segname: str, workers: int, endpoint: str) -> set[int]:
    """Concurrent slow requests until every worker has served (each attaches on its first).

    Then the endpoint's breaker is reset, so the window holds only what follows.
    """
    deadline = time.monotonic() + 60
    while len(pids := _attached(segname)) < workers:
        assert time.monotonic() < deadline, pids
        with ThreadPoolExecutor(workers * 2) as pool:
            assert {s for s, _, _ in pool.map(lambda _: _get(port, "/sleep"),
                                               range(workers * 2))} == {200}
    with sg.ResilienceService(segname, create=False) as svc:
        svc.breaker(endpoint).reset()
    return pids


def _breaker_opens_for_every_worker(port: int, upstream: Server, failing: int) -> None:
    """One success, then failures until the shared breaker opens; then nothing reaches upstream."""
    assert _get(port, "/ok")[:2] == (200, "/ok 200")
    codes = [_get(port, "/fail")[0] for _ in range(failing + 5)]
    assert codes[:failing] == [codes[0]] * failing and codes[0] in (500, 502)
    assert codes[failing:] == [503] * 5
    status, body, headers = _get(port, "/ok")
    assert status == 503 and "is open" in body and int(headers.get("Retry-After")) == 30
    assert upstream.hits["/fail"] == failing   # exact, over every worker


@pytest.mark.parametrize("index", [0, 1], ids=["no-preload", "preload"])
def test_gunicorn_recipe(index: int, segname: str, upstream: Server, tmp_path: object) -> None:
    cwd = str(tmp_path)
    with open(os.path.join(cwd, "app.py"), "w") as f:
        f.write(recipe_file("app.py"))
    port = free_port()
    argv = _command("gunicorn", index, port, **{"--workers 4": "--workers 2"})
    server = Running(argv, cwd, {"SHMGUARD_SEGMENT": segname, "UPSTREAM": upstream.url})
    try:
        wait_up(port, server)
        workers = _every_worker_serves(port, segname, 2, origin(upstream.url))
        # network preset: 40% of >= 10 calls; with one success first the 9th failure opens it
        _breaker_opens_for_every_worker(port, upstream, failing=9)
        assert _attached(segname) == workers   # the workers only: a --preload master never attached
    finally:
        out = server.stop()
    assert "Traceback" not in out, out


def test_uvicorn_recipe(segname: str, upstream: Server, tmp_path: object) -> None:
    cwd = str(tmp_path)
    with open(os.path.join(cwd, "asgi.py"), "w") as f:
        f.write(recipe_file("asgi.py"))
    port = free_port()
    argv = _command("uvicorn", 0, port, **{"--workers 3": "--workers 2"})
    server = Running(argv, cwd, {"SHMGUARD_SEGMENT": segname, "UPSTREAM": upstream.url})
    try:
        wait_up(port, server)
        workers = _every_worker_serves(port, segname, 2, "upstream")
        _breaker_opens_for_every_worker(port, upstream, failing=9)
        assert _attached(segname) == workers
    finally:
        out = server.stop()
    assert "Traceback" not in out, out


@pytest.fixture
def redis_url(tmp_path: object) -> Iterator[str]:
    exe = shutil.which("redis-server")
    if exe is None:
        pytest.skip("redis-server is not installed")
    port = free_port()
    proc = subprocess.Popen([exe, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and proc.poll() is None
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_celery_recipe_retries_when_the_service_says(segname: str, upstream: Server,
                                                     redis_url: str, tmp_path: object) -> None:
    pytest.importorskip("celery")
    pytest.importorskip("redis")
    cwd = str(tmp_path)
    with open(os.path.join(cwd, "tasks.py"), "w") as f:
        f.write(recipe_file("tasks.py"))
    env = {"SHMGUARD_SEGMENT": segname, "BROKER_URL": redis_url + "/0",
           "RESULT_BACKEND": redis_url + "/1"}
    argv = _command("celery", 0, 0, **{"--concurrency 4": "--concurrency 2"})
    worker = Running(argv, cwd, env)
    producer = ("import json, tasks\n"
                f"r = tasks.fetch.delay({upstream.url + '/slow-down-once/1'!r})\n"
                "print(json.dumps([r.get(timeout=60), tasks.svc.attached]))\n")
    try:
        p = subprocess.run([sys.executable, "-c", producer], cwd=cwd, capture_output=True,
                           text=True, timeout=90, env={**os.environ, **env})
    finally:
        out = worker.stop()
    assert p.returncode == 0, p.stderr + out
    # 429 (the adapter holds the endpoint), a retry refused by the hold (RateLimitedError:
    # countdown = its retry_after), then 200; the producer never attached to the segment
    assert json.loads(p.stdout) == [[200, 2], False]
    assert upstream.hits["/slow-down-once/1"] == 2
    with sg.ResilienceService(segname, create=False) as svc:
        m = svc.stats(f"http://127.0.0.1:{upstream.server_address[1]}").limiter_metrics
        assert (m.accepted, m.rejected) == (2, 1)
    assert "Traceback" not in out, out
