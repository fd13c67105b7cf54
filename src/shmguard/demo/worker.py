"""What the demo's worker processes run: one fetch from the cache (importable by any start method)."""
from __future__ import annotations

import http.client
import os
import signal
import time
from urllib.parse import urlsplit

from shmguard.executor import attach

__all__ = ["CacheDown", "fetch", "ignore_sigint", "warm_up"]

CLIENT_TIMEOUT = 0.25  # seconds


class CacheDown(Exception):
    """The cache answered with an error or did not answer in time (``pid``: the worker)."""

    def __init__(self, reason: str, pid: int) -> None:
        super().__init__(reason, pid)
        self.reason = reason
        self.pid = pid

    def __str__(self) -> str:
        return f"{self.reason} (worker {self.pid})"


def fetch(url: str, key: str) -> tuple[int, int]:
    """Returns (worker pid, bytes) for ``GET <url>/cache/<key>``; raises :class:`CacheDown`."""
    pid = os.getpid()
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port,
                                      timeout=CLIENT_TIMEOUT)
    try:
        conn.request("GET", f"/cache/{key}", headers={"X-Worker": str(pid)})
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:
        raise CacheDown(type(exc).__name__, pid) from None
    finally:
        conn.close()
    if resp.status != 200:
        raise CacheDown(f"HTTP {resp.status}", pid)
    return pid, len(body)


def ignore_sigint() -> None:
    """Pool initializer: Ctrl-C is the parent's to handle (it shuts the pool down).

    A forked worker also inherits the parent's SIGTERM handler (which raises
    to end the run): here SIGTERM ends the worker quietly instead, with no
    traceback, whether it reaches the process group or this worker alone.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def warm_up(segment: str, hold: float) -> int:
    """Attaches this worker to ``segment`` and holds it busy ``hold`` s; returns its pid."""
    attach(segment)
    time.sleep(hold)
    return os.getpid()
