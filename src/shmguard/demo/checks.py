"""The demo's three claims, checked from the segment's own counters (and the cache's log)."""
from __future__ import annotations

from dataclasses import dataclass

from shmguard.demo.server import Hit
from shmguard.demo.view import Counts
from shmguard.stats import BreakerMode, BreakerState, EndpointStats

__all__ = ["Check", "Evidence", "check_all"]


@dataclass(frozen=True)
class Check:
    """A verdict: FAIL, PASS, or (nothing at stake in this run) NOT EXERCISED."""

    label: str
    ok: bool
    detail: str
    exercised: bool = True

    def line(self) -> str:
        verdict = "FAIL" if not self.ok else "PASS" if self.exercised else "NOT EXERCISED"
        return f"  [{verdict}] ({self.label}) {self.detail}"


@dataclass(frozen=True)
class Evidence:
    """What the run left behind."""

    stats: EndpointStats          # read from the segment at the end
    rate: float                   # the policy's rate (req/s)
    half_open_max: int            # the policy's probes per half-open period
    elapsed: float                # seconds on the segment clock, first call to last
    workers: list[tuple[str, int, Counts]]
    pool_size: int
    hits: list[Hit]               # every request the cache saw


def check_rate(ev: Evidence) -> Check:
    """(a) The pool as a whole stayed within the limit: accepted <= burst + rate x elapsed."""
    m = ev.stats.limiter_metrics
    bound = ev.stats.burst + ev.rate * ev.elapsed
    if m.rejected == 0 and m.waited == 0:  # the limit never bound: nothing was proved
        return Check("a", m.accepted <= bound,
                     f"rate limit not exercised: no call was rate-limited or waited at "
                     f"{ev.rate:g}/s (accepted {m.accepted} <= {bound:.1f})", exercised=False)
    return Check("a", m.accepted <= bound,
                 f"rate limit held for the whole pool: accepted {m.accepted} <= burst "
                 f"{ev.stats.burst} + {ev.rate:g}/s x {ev.elapsed:.2f} s = {bound:.1f} "
                 f"({m.rejected} rate-limited, {m.waited} waited for their slot)")


def check_open(ev: Evidence) -> Check:
    """(b) The breaker opened for every worker at once and the failing calls stopped."""
    b = ev.stats.breaker
    assert b is not None
    stopped = [(label, c.open) for label, _, c in ev.workers]
    # "every worker" means something only with two or more of them
    everyone = len(stopped) == ev.pool_size >= 2 and all(n > 0 for _, n in stopped)
    leaked = sum(1 for h in ev.hits if h.state != BreakerState.CLOSED)
    allowed = ev.pool_size + b.opens * ev.half_open_max
    ok = b.opens >= 1 and everyone and leaked <= allowed
    who = ", ".join(f"{label} {n}" for label, n in stopped)
    return Check("b", ok,
                 f"breaker opened {b.opens}x and stopped {b.rejected} calls, in every worker "
                 f"({who}); only {leaked} calls reached the cache while it was open or "
                 f"half-open (<= {ev.pool_size} in flight at the trip + {b.opens} x "
                 f"{ev.half_open_max} probes = {allowed})")


def check_recovery(ev: Evidence) -> Check:
    """(c) It recovered through half-open back to closed."""
    b = ev.stats.breaker
    assert b is not None
    probes = [h for h in ev.hits if h.state == BreakerState.HALF_OPEN]
    good = [h for h in probes if h.status == 200]
    after = [h for h in ev.hits if good and h.t > good[-1].t and h.state == BreakerState.CLOSED
             and h.status == 200]
    ok = (b.opens >= 1 and bool(good) and bool(after) and b.state == BreakerState.CLOSED
          and b.mode == BreakerMode.NORMAL)
    if not good:
        return Check("c", False, f"no half-open probe succeeded ({len(probes)} probes, "
                                 f"final state {b.state})")
    return Check("c", ok,
                 f"recovered: {len(probes) - len(good)} probe(s) failed while the cache was "
                 f"ill, the probe at {good[-1].t:.2f}s succeeded, half-open -> {b.state}, "
                 f"{len(after)} calls served since")


def check_all(ev: Evidence) -> list[Check]:
    return [check_rate(ev), check_open(ev), check_recovery(ev)]
