"""Worker bodies for cross-process tests (module level, so spawn can import them)."""
from __future__ import annotations

import os
import time

import shmguard as sg


def hammer(segname: str, endpoint: str, go, seconds: float, out) -> None:
    """Calls allow(HIGH) in a tight loop for ``seconds`` after ``go``; reports counts."""
    svc = sg.ResilienceService(segname, create=False)
    lim = svc.limiter(endpoint)
    allow, high = lim.allow, sg.Priority.HIGH
    go.wait()
    first = svc.now_ns()
    stop = time.monotonic() + seconds
    ok = tried = 0
    while time.monotonic() < stop:
        for _ in range(200):
            ok += allow(1, high)
        tried += 200
    last = svc.now_ns()
    out.put((os.getpid(), ok, tried, first, last))
    svc.close()


def fail_calls(segname: str, endpoint: str, n: int, out) -> None:
    """Makes ``n`` failing calls through execute; reports how many ran."""
    svc = sg.ResilienceService(segname, create=False)
    ran = 0

    def boom() -> None:
        nonlocal ran
        ran += 1
        raise ConnectionError("down")
    for _ in range(n):
        try:
            svc.execute(endpoint, boom)
        except ConnectionError:
            pass
        except sg.CircuitOpenError:
            break
    out.put(("failed", ran, str(svc.breaker_state(endpoint))))
    svc.close()


def observe(segname: str, endpoint: str, cmd, out) -> None:
    """Waits for commands: 'state' reports the breaker state; 'call' tries execute."""
    svc = sg.ResilienceService(segname, create=False)
    while True:
        c = cmd.get()
        if c == "state":
            out.put(str(svc.breaker_state(endpoint)))
        elif c == "call":
            try:
                out.put(svc.execute(endpoint, lambda: "ran"))
            except sg.CircuitOpenError as exc:
                out.put(f"rejected:{type(exc).__name__}")
        else:
            break
    svc.close()


def take_probe(segname: str, endpoint: str, out, release) -> None:
    """Tries to take a breaker permit, reports, then holds it until ``release``."""
    svc = sg.ResilienceService(segname, create=False)
    permit = svc.breaker(endpoint).allow()
    out.put((os.getpid(), permit is not None and permit.is_probe))
    release.wait()
    if permit is not None:
        permit.success()
    svc.close()


def register(segname: str, names: list[str], go, out) -> None:
    """Registers ``names`` right after ``go``; reports name -> slot index."""
    svc = sg.ResilienceService(segname, create=False)
    go.wait()
    got = {}
    for n in names:
        svc.register_endpoint(n, sg.Policy(rate=10, burst=10))
        got[n] = svc._eps[n].index
    out.put(got)
    svc.close()


def use_pickled_service(svc, out) -> None:
    """Receives a pickled ResilienceService (re-attached by name) and uses it."""
    out.put((svc.name, svc.execute("shared", lambda: "ok"), svc.stats("shared").limiter_metrics.accepted))
    svc.close()
