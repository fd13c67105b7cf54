"""Worker bodies for the overload tests (module level, so spawn can import them)."""
from __future__ import annotations

import shmguard as sg


def overloaded_calls(segname: str, endpoint: str, n: int, out) -> None:
    """Makes ``n`` calls to a dependency that always fails; reports (reached, throttled, p)."""
    svc = sg.ResilienceService(segname, create=False)
    reached = throttled = 0
    p = svc.stats(endpoint).throttle_probability  # before this process made any call

    def busy() -> None:
        nonlocal reached
        reached += 1
        raise ConnectionError("overloaded")
    for _ in range(n):
        try:
            svc.execute(endpoint, busy)
        except ConnectionError:
            pass
        except sg.ThrottledError:
            throttled += 1
    out.put((reached, throttled, p))
    svc.close()


def mixed_calls(segname: str, endpoint: str, n: int, go, out) -> None:
    """Makes ``n`` calls, 9 in 10 refused by the dependency; reports exact counts."""
    svc = sg.ResilienceService(segname, create=False)
    reached = accepted = throttled = 0

    def dep() -> str:
        nonlocal reached, accepted
        reached += 1
        if reached % 10:
            raise ConnectionError("overloaded")
        accepted += 1
        return "ok"
    go.wait()
    for _ in range(n):
        try:
            svc.execute(endpoint, dep)
        except ConnectionError:
            pass
        except sg.ThrottledError:
            throttled += 1
    out.put((reached, accepted, throttled))
    svc.close()
