"""Admission off the fast path: waiting for the limiter, rejections, dead probe holders, health probes.

The fast path (one C call, or ``shmguard._hot``) admits most calls; what it
cannot finish comes here: a wait for the rate limit, a rejection to turn into
the right exception, a probe permit held by a dead process to reclaim, or a
health probe that stands in for the caller's call.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING

from shmguard import overload
from shmguard._capi import ffi, lib
from shmguard.errors import RateLimitedError
from shmguard.limiter import delay_of, pack, wait_ns
from shmguard.policy import Outcome, Priority
from shmguard.stats import BreakerState

if TYPE_CHECKING:
    from shmguard._endpoint import Endpoint

__all__ = ["admit_slow", "admit_once", "probe_instead", "run_probe", "rate_limited",
           "enter_bulkhead"]

NS = 1_000_000_000


def admit_slow(ep: Endpoint, tok: int | None, priority: Priority, timeout: float | None) -> int:
    """Admits (waiting up to ``timeout``) or raises the matching rejection.

    :param tok: the fast path's token, or None to decide here.
    """
    cp = pack(1, priority)
    if tok is None:
        tok = admit_once(ep, cp, timeout)
    if tok == lib.SG_R_PROBES_FULL and ep.reclaim_probes():
        tok = admit_once(ep, cp, timeout)  # a dead holder's permit came back
    if tok >= 0:
        return tok
    rc = tok
    if rc in (lib.SG_R_OPEN, lib.SG_R_PROBES_FULL):
        raise ep.open_error()
    if rc == lib.SG_R_RATE_LIMITED:
        raise rate_limited(ep, priority)
    if rc == lib.SG_R_THROTTLED:
        raise overload.throttled_error(ep)
    err = ep.rc_error(rc)
    if rc == lib.SG_E_GONE:
        err.stale = ep  # type: ignore[attr-defined]  # execute looks the name up again
    raise err


def rate_limited(ep: Endpoint, priority: Priority) -> RateLimitedError:
    """Returns the error for a rate-limited call, with the time until a token is free."""
    m = ep.limiter_metrics(priority)
    wait = delay_of(ep, pack(1, priority))  # exact: counts queued reservations and holds
    return RateLimitedError(ep.name, wait, f"endpoint {ep.name!r} is rate limited "
                                           f"({m.effective_rate:g}/s); retry after {wait:.3f}s")


def admit_once(ep: Endpoint, cp: int, timeout: float | None) -> int:
    """One admission (breaker + limiter); with a timeout, sleeps the reserved delay."""
    if timeout is None:
        return ep.admitted(int(ep.admit(ep.h, cp)))
    ep.seg.base  # raises ServiceClosedError once closed
    d = ffi.new("struct sg_decision *")
    tok = int(lib.sg_admit_wait(ep.h, cp, wait_ns(timeout), d))
    if tok >= 0:
        ep.admitted(tok)
    if tok >= 0 and d.delay_ns > 0:
        try:
            time.sleep(d.delay_ns / NS)
        except BaseException:
            lib.sg_release_probe(ep.h, tok)
            lib.sg_limiter_cancel(ep.h, cp, d)
            raise
    return tok


def run_probe(ep: Endpoint, tok: int) -> bool:
    """Runs the endpoint's health probe on the permit ``tok`` and records its outcome."""
    assert ep.probe is not None
    try:
        ok = bool(ep.probe())
    except Exception:
        ok = False
    except BaseException:
        ep.record_outcome(tok, Outcome.IGNORE)
        raise
    ep.record_outcome(tok, Outcome.SUCCESS if ok else Outcome.FAILURE)
    return ok


def probe_instead(ep: Endpoint, tok: int, priority: Priority, timeout: float | None) -> int:
    """The admitted call got a probe permit and a health probe exists: it probes instead.

    If the probe closes the breaker the call is admitted anew; otherwise it
    is rejected with :class:`CircuitOpenError`.
    """
    if run_probe(ep, tok) and ep.breaker_snapshot().state == BreakerState.CLOSED:
        return admit_slow(ep, None, priority, timeout)
    raise ep.open_error()


def enter_bulkhead(ep: Endpoint, tok: int, priority: Priority) -> int:
    """Returns a bulkhead ticket for the admitted call ``tok`` (0: the policy has none).

    Waits up to the policy's ``max_wait``; on refusal gives back the probe
    permit ``tok`` may hold and raises :class:`BulkheadFullError` (the rate
    limit's token stays spent, as with any call refused after it).
    """
    from shmguard import _tickets
    try:
        return _tickets.take(ep, int(priority) | _tickets.QUIET, None)
    except BaseException:
        lib.sg_release_probe(ep.h, tok)
        raise
