"""What the HTTP adapters add per request, against a local server (figures, no assertions).

    python bench/adapters.py [--requests N]

Sends N keep-alive GETs to a ThreadingHTTPServer on 127.0.0.1 through a
plain requests.Session / httpx.Client and through ResilientAdapter /
ResilientTransport, in alternating rounds, and prints the median time per
request and the difference (noisy: a loopback request costs ~1 ms), then the
adapter's own decision per request without the network. Needs requests and httpx (the test extras).
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable

import httpx
import requests

import shmguard as sg
from shmguard.adapters.httpx import ResilientTransport
from shmguard.adapters.requests import ResilientAdapter


class _Ok(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out as two writes

    def do_GET(self) -> None:  # noqa: N802
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args: object) -> None:
        pass


def _per_request(get: Callable[[], Any], n: int, rounds: int) -> list[float]:
    get()
    out = []
    for _ in range(rounds):
        t = time.perf_counter_ns()
        for _ in range(n):
            get()
        out.append((time.perf_counter_ns() - t) / n / 1000)
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=500)
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{srv.server_address[1]}/"
    svc = sg.ResilienceService(f"bench-adapters-{uuid.uuid4().hex[:6]}")
    policy = sg.Policy(rate=1e6, burst=10**6)
    plain, guarded = requests.Session(), requests.Session()
    guarded.mount("http://", ResilientAdapter(svc, policy))
    hplain = httpx.Client()
    hguarded = httpx.Client(transport=ResilientTransport(svc, policy))
    try:
        print(f"{'client':<28} {'median us/request':>18} {'p25':>8} {'p75':>8}")
        for label, a, b in (("requests", plain, guarded), ("httpx", hplain, hguarded)):
            xa = _per_request(lambda: a.get(url), args.requests, args.rounds)
            xb = _per_request(lambda: b.get(url), args.requests, args.rounds)
            for name, xs in ((label, xa), (label + " + shmguard", xb)):
                q = statistics.quantiles(xs, n=4)
                print(f"{name:<28} {statistics.median(xs):>18.1f} {q[0]:>8.1f} {q[2]:>8.1f}")
            print(f"{'  added by shmguard':<28} {statistics.median(xb) - statistics.median(xa):>18.1f}")
        guard = guarded.get_adapter(url).guard  # type: ignore[attr-defined]
        headers: dict[str, str] = {}

        def decide() -> None:  # what the adapter does per request, without the network
            name = guard.name(url)
            guard.answered(name, guard.admit(name, None), 200, headers)
        xs = _per_request(decide, args.requests * 20, args.rounds)
        print(f"{'adapter decision alone':<28} {statistics.median(xs):>18.2f} "
              f"{statistics.quantiles(xs, n=4)[0]:>8.2f} {statistics.quantiles(xs, n=4)[2]:>8.2f}")
    finally:
        svc.close()
        svc.unlink()
        srv.shutdown()


if __name__ == "__main__":
    main()
