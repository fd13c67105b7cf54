"""A private redis-server on 127.0.0.1 for the Redis-backed peer rows.

Started only if a ``redis-server`` binary is on PATH (this script never
installs anything), with persistence off (``--save '' --appendonly no``),
on a free loopback port, in a temporary directory.  Stopped by its pid.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from typing import Optional


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    def __init__(self) -> None:
        self.proc: Optional[subprocess.Popen] = None
        self.port: Optional[int] = None
        self.dir: Optional[str] = None
        self.version: str = ""
        self.skip_reason: str = ""

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> bool:
        exe = shutil.which("redis-server")
        if not exe:
            self.skip_reason = "no redis-server binary on PATH"
            return False
        try:
            import redis  # noqa: F401
        except ImportError:
            self.skip_reason = "the Python 'redis' client is not installed"
            return False
        try:
            out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=10)
            self.version = out.stdout.strip().split(" sha=")[0]
        except Exception:  # pragma: no cover - cosmetic
            self.version = "redis-server"
        self.dir = tempfile.mkdtemp(prefix="peers-redis-")
        for _attempt in range(3):
            self.port = _free_port()
            log = open(os.path.join(self.dir, "redis.log"), "w")
            self.proc = subprocess.Popen(
                [exe, "--bind", "127.0.0.1", "--port", str(self.port),
                 "--save", "", "--appendonly", "no", "--dir", self.dir,
                 "--daemonize", "no", "--protected-mode", "yes"],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                # own session: a Ctrl-C in the terminal reaches this script, which
                # then stops the server by pid (a dead server mid-run would make
                # redis-py retry with back-off instead of failing fast)
                start_new_session=True,
            )
            log.close()
            if self._wait_ready(timeout):
                return True
            self._kill()
        self.skip_reason = "redis-server did not answer PING"
        return False

    def _wait_ready(self, timeout: float) -> bool:
        import redis

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                return False
            try:
                if redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1,
                               socket_connect_timeout=1).ping():
                    return True
            except Exception:
                time.sleep(0.05)
        return False

    def client(self):
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5,
                           socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))

    def flushall(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.client().flushall()
            except Exception:
                pass

    def stop(self) -> None:
        self._kill()
        if self.dir and os.path.isdir(self.dir):
            shutil.rmtree(self.dir, ignore_errors=True)
        self.dir = None

    def _kill(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            try:
                os.kill(proc.pid, signal.SIGTERM)
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
            except ProcessLookupError:
                pass
