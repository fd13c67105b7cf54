"""A private redis-server per test (127.0.0.1, a free port, no persistence).

Tests here skip only when redis-server is not installed (.ci/run installs it).
"""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator

import pytest

import shmguard as sg

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisProc:
    """One redis-server process: start, kill (SIGKILL), restart empty on the same port."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--protected-mode", "no", "--loglevel", "warning"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}")
            time.sleep(0.02)
        raise RuntimeError("redis-server did not answer PING within 10 s")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def client(self) -> object:
        import redis
        return redis.Redis(host="127.0.0.1", port=self.port)


@pytest.fixture
def redis_server() -> Iterator[RedisProc]:
    if not os.path.exists(REDIS_SERVER):
        pytest.skip("redis-server is not installed")
    r = RedisProc()
    r.start()
    yield r
    r.kill()


@pytest.fixture
def segnames() -> Iterator[list[str]]:
    """Three fresh segment names (three "hosts"), unlinked after the test."""
    token = os.environ.get("SHMGUARD_TEST_TOKEN", "x")
    names = [f"t-{token}-{uuid.uuid4().hex[:10]}" for _ in range(3)]
    yield names
    for n in names:
        sg.unlink(n)
