"""Worker bodies for the retry-budget and deadline tests (module level, so spawn can import them)."""
from __future__ import annotations

import time

import shmguard as sg


def fail_with_retries(segname: str, endpoint: str, calls: int, retries: int, go, out) -> None:
    """Makes ``calls`` calls to an always-failing dependency with ``retries``; reports fn runs."""
    svc = sg.ResilienceService(segname, create=False)
    ran = 0

    def down() -> None:
        nonlocal ran
        ran += 1
        raise ConnectionError("down")
    go.wait()
    for _ in range(calls):
        try:
            svc.execute(endpoint, down, retries=retries, backoff=0)
        except ConnectionError:
            pass
    out.put(ran)
    svc.close()


def remaining_now() -> float | None:
    """Runs in a pool worker: what the deadline leaves there."""
    return sg.remaining()


def remaining_after(seconds: float) -> float | None:
    """Sleeps, then reports what the deadline leaves (a task that holds its worker)."""
    time.sleep(seconds)
    return sg.remaining()


def mark(path: str) -> str:
    """Appends a line to ``path``: proof that the task ran."""
    with open(path, "a", encoding="utf-8") as f:
        f.write("ran\n")
    return "ran"
