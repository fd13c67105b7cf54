"""Worker bodies for the fleet's cross-process tests (forked children)."""
from __future__ import annotations

import os
import time
from typing import Any

import shmguard as sg

POLICY = sg.Policy(rate=300, burst=30).with_fleet()
ENDPOINT = "store"


def fleet(url: str) -> sg.RedisFleet:
    return sg.RedisFleet(url, refresh=0.1, lease=1.0, timeout=0.2)


def worker(seg: str, host: str, url: str, start: float, stop: float, out: Any,
           active: tuple[float, float] = (0.0, 1e9), pace: float = 0.001) -> None:
    """Calls allow() every ``pace`` s while active; counts admissions in [start, stop).

    ``active`` is relative to ``start``: outside it the worker offers nothing.
    """
    svc = sg.ResilienceService(seg, fleet=fleet(url), host_id=host)
    try:
        svc.register_endpoint(ENDPOINT, POLICY)
        allow = svc.limiter(ENDPOINT).allow
        n = 0
        while (now := time.monotonic()) < stop:
            rel = now - start
            if active[0] <= rel < active[1]:
                ok = allow()
                if ok and rel >= 0:
                    n += 1
            time.sleep(pace)
        out.put((host, os.getpid(), n))
    finally:
        svc.close()


def idle(seg: str, host: str, url: str, ready: Any) -> None:
    """A second process of a host: attaches with the fleet (an agent candidate) and waits."""
    svc = sg.ResilienceService(seg, fleet=fleet(url), host_id=host)
    svc.register_endpoint(ENDPOINT, POLICY)
    ready.put(os.getpid())
    while True:
        time.sleep(1)
