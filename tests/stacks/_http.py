"""A real HTTP server on 127.0.0.1 for the adapter tests, answering as each path says.

``/ok`` 200, ``/fail`` 500, ``/busy/N`` 503 with ``Retry-After: N``,
``/sleep`` 200 after 0.2 s, ``/slow-down/N`` 429 with ``Retry-After: N``,
``/slow-down-once/N`` the same
for its first request only, then 200; ``hits`` counts every request the
server saw, by path.
"""
from __future__ import annotations

import collections
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Iterator

import contextlib


class _Handler(BaseHTTPRequestHandler):
    server: Server

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        self.server.hits[self.path] += 1
        parts = self.path.strip("/").split("/")
        status, headers = 200, {}
        if parts[0] == "slow-down-once" and self.server.hits[self.path] == 1:
            status, headers["Retry-After"] = 429, parts[1]
        elif parts[0] == "sleep":
            time.sleep(0.2)
        elif parts[0] == "fail":
            status = 500
        elif parts[0] in ("busy", "slow-down"):
            status = 503 if parts[0] == "busy" else 429
            headers["Retry-After"] = parts[1]
        body = f"{self.path} {status}".encode()
        self.send_response(status)
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("X-Served-By", "test")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


class Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.hits: collections.Counter[str] = collections.Counter()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    @property
    def total(self) -> int:
        return sum(self.hits.values())


@contextlib.contextmanager
def serving() -> Iterator[Server]:
    srv = Server()
    t = threading.Thread(target=srv.serve_forever, args=(0.02,), daemon=True)
    t.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
        t.join()
