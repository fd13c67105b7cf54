"""The demo's flaky "remote cache": a loopback HTTP server that strains, falls ill, then recovers.

Healthy, it answers ``GET /cache/<key>`` with 200 at once. Strained, it
serves at most ``capacity`` requests a second and answers 503 beyond that
(overload: the fewer it is sent, the more of them it serves). Unhealthy, it
answers 503, and every fourth request only after a delay longer than the
clients' timeout. ``GET /db/<key>`` is a second, slow dependency: always
200 after DB_QUERY s, counting how many requests it serves at once. For each
cache request it reads the endpoint's breaker state
from the segment as the request arrives, so the summary can tell which calls
reached it while the breaker was open or half-open (probes).
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

from shmguard.stats import BreakerState

__all__ = ["Schedule", "FlakyCache", "Hit"]

SLOW_RESPONSE = 0.4  # seconds; the clients give up after 0.25
SLOW_EVERY = 4
DB_QUERY = 0.03      # seconds: the slow dependency ("db") answers after this, always 200


@dataclass(frozen=True)
class Schedule:
    """When the cache is strained and ill, in seconds from the start of the run."""

    sick_from: float
    sick_until: float
    strained_from: float | None = None  # None: healthy until sick_from

    @classmethod
    def for_duration(cls, duration: float) -> Schedule:
        """Returns healthy for 15%, strained until the first quarter, then ill for 30%
        (1.5..6 s), then well."""
        start = 0.25 * duration
        return cls(start, start + min(6.0, max(1.5, 0.3 * duration)), 0.15 * duration)

    def phase(self, t: float) -> str:
        """Reports "healthy", "strained", "unhealthy" or "recovered" at ``t`` seconds."""
        if t < self.sick_from:
            strained = self.strained_from is not None and t >= self.strained_from
            return "strained" if strained else "healthy"
        return "unhealthy" if t < self.sick_until else "recovered"


@dataclass(frozen=True)
class Hit:
    """One request as the cache saw it."""

    t: float
    pid: int
    state: BreakerState
    status: int


@dataclass
class _Tally:
    hits: list[Hit] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    db_now: int = 0      # "db" requests being served now
    db_peak: int = 0     # the most at once, as the dependency itself saw them
    db_served: int = 0


class FlakyCache:
    """The server; thread safe. ``state_of()`` reads the breaker as a request arrives.

    :param schedule: when to be ill.
    :param state_of: returns the endpoint's breaker state (from the segment).
    """

    def __init__(self, schedule: Schedule, state_of: Callable[[], BreakerState],
                 capacity: float = 20.0) -> None:
        self.schedule = schedule
        self.state_of = state_of
        self.capacity = capacity  # requests served per second while strained
        self._served: deque[float] = deque()
        self.start = time.monotonic()
        self._tally = _Tally()
        self._sick_count = 0
        self._httpd = _Server(("127.0.0.1", 0), _handler_for(self))
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        name="shmguard-demo-cache", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def now(self) -> float:
        """Reports seconds since the start of the run."""
        return time.monotonic() - self.start

    def phase(self) -> str:
        return self.schedule.phase(self.now())

    def begin(self) -> None:
        """Starts serving; the schedule's clock starts now."""
        self.start = time.monotonic()
        self._thread.start()

    def stop(self) -> None:
        if self._thread.is_alive():
            self._httpd.shutdown()
            self._thread.join()
        self._httpd.server_close()

    def hits(self) -> list[Hit]:
        """Returns every request seen so far, in arrival order."""
        with self._tally.lock:
            return list(self._tally.hits)

    def answer(self, pid: int) -> tuple[int, float]:
        """Records a request; returns (status, delay before answering)."""
        t = self.now()
        state = self.state_of()
        phase = self.schedule.phase(t)
        sick = phase == "unhealthy"
        slow = False
        with self._tally.lock:
            status = 503 if sick or (phase == "strained" and self._over_capacity(t)) else 200
            self._tally.hits.append(Hit(t, pid, state, status))
            if sick:
                self._sick_count += 1
                slow = self._sick_count % SLOW_EVERY == 0
        return status, SLOW_RESPONSE if sick and slow else 0.0

    def _over_capacity(self, t: float) -> bool:
        """Strained: serves ``capacity`` requests in any second, refuses the rest (lock held)."""
        while self._served and self._served[0] <= t - 1.0:
            self._served.popleft()
        if len(self._served) >= self.capacity:
            return True
        self._served.append(t)
        return False

    def query(self) -> None:
        """Serves one request of the slow dependency: counts it in flight for DB_QUERY s."""
        t = self._tally
        with t.lock:
            t.db_now += 1
            t.db_peak = max(t.db_peak, t.db_now)
        time.sleep(DB_QUERY)
        with t.lock:
            t.db_now -= 1
            t.db_served += 1

    def db(self) -> tuple[int, int, int]:
        """Returns the slow dependency's (in flight now, peak in flight, served)."""
        with self._tally.lock:
            return self._tally.db_now, self._tally.db_peak, self._tally.db_served


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up mid-request is expected here


def _handler_for(cache: FlakyCache) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            if self.path.startswith("/db/"):
                cache.query()
                self._answer(200, b"row\n")
                return
            try:
                pid = int(self.headers.get("X-Worker", "0"))
            except ValueError:
                pid = 0
            status, delay = cache.answer(pid)
            if delay:
                time.sleep(delay)
            body = (f"artifact {self.path}\n" if status == 200 else "unavailable\n").encode()
            self._answer(status, body)

        def _answer(self, status: int, body: bytes) -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except OSError:
                pass  # the client gave up (timeout): that is the point

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass

    return Handler
