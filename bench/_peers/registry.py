"""Registry of benchmark contenders.

Three kinds of contender, each registered by name:

``InprocContender``
    ``make()`` returns a zero-argument decision callable (or a coroutine
    function when ``is_async``), optionally as ``(callable, closer)``.  The
    harness calls it in batches on one thread.

``SharedContender``
    A limiter or breaker whose state lives in a backend shared by processes.
    ``child_setup(cfg)`` runs inside each worker process and returns a
    zero-argument decision callable returning truthy on admit.
    ``parent_setup(cfg)`` (optional) runs once in the parent before the
    workers start; its picklable result reaches the workers as
    ``cfg["shared"]`` and is handed back to ``parent_teardown(cfg, shared)``.
    ``cfg["mode"]`` is ``"throughput"`` (configure a huge rate: every decision
    admits) or ``"correctness"`` (configure ``cfg["rate"]``/``cfg["burst"]``,
    and describe the algorithm's own promise through ``promise(cfg)``).

``BreakerCheck``
    Breaker correctness: ``child_setup(cfg)`` returns ``guarded(dep)`` which
    calls ``dep`` through the breaker (raising whatever the breaker raises).
    ``threshold`` is the number of failures the breaker promises to let through
    before it opens (``None`` when the policy is not count-based).

Functions given here must be module-level (they are pickled by reference
into worker processes started by the forkserver).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

HUGE = 10**9  # rate / burst used when every decision must admit


@dataclass
class InprocContender:
    name: str
    group: str  # "floor" | "limiter" | "breaker"
    make: Callable[[], Any]
    peer: str = ""  # distribution name, for the version column
    is_async: bool = False
    note: str = ""


@dataclass
class SharedContender:
    name: str
    kind: str  # "limiter" | "breaker"
    backend: str  # "redis" | "sqlite" | "manager" | "shm" | "memory"
    child_setup: Callable[[Dict[str, Any]], Callable[[], Any]]
    peer: str = ""
    needs_redis: bool = False
    parent_setup: Optional[Callable[[Dict[str, Any]], Any]] = None
    parent_teardown: Optional[Callable[[Dict[str, Any], Any], None]] = None
    promise: Optional[Callable[[Dict[str, Any]], Dict[str, Any]]] = None
    throughput: bool = True  # part 2
    correctness: bool = True  # part 3 (limiters only)
    shared_state: bool = True  # False: per-process baseline (not shared)
    note: str = ""


@dataclass
class BreakerCheck:
    name: str
    child_setup: Callable[[Dict[str, Any]], Callable[[Callable[[], Any]], Any]]
    peer: str = ""
    needs_redis: bool = False
    parent_setup: Optional[Callable[[Dict[str, Any]], Any]] = None
    parent_teardown: Optional[Callable[[Dict[str, Any], Any], None]] = None
    threshold: Optional[int] = None
    reset_s: float = 0.0  # configured open duration (s)
    shared_state: bool = True
    note: str = ""


@dataclass
class Registry:
    inproc: List[InprocContender] = field(default_factory=list)
    shared: List[SharedContender] = field(default_factory=list)
    breaker_checks: List[BreakerCheck] = field(default_factory=list)
    messages: List[str] = field(default_factory=list)

    def add_inproc(self, c: InprocContender) -> None:
        self.inproc.append(c)

    def add_shared(self, c: SharedContender) -> None:
        self.shared.append(c)

    def add_breaker_check(self, c: BreakerCheck) -> None:
        self.breaker_checks.append(c)


REGISTRY = Registry()


# --- promise helpers -------------------------------------------------------
# A promise describes what the algorithm itself guarantees for the
# correctness configuration; report.py/runner.py check observed admits
# against it.


def promise_token(rate: float, burst: int, desc: str) -> Dict[str, Any]:
    """Any interval of length t admits at most burst + rate * t."""
    return {"kind": "token", "rate": float(rate), "burst": int(burst), "desc": desc}


def promise_sliding(limit: int, window_s: float, desc: str) -> Dict[str, Any]:
    """Any rolling window of window_s admits at most limit."""
    return {"kind": "sliding", "limit": int(limit), "window_s": float(window_s), "desc": desc}


def promise_fixed(limit: int, window_s: float, desc: str) -> Dict[str, Any]:
    """Each fixed window admits at most limit; a rolling window may see 2*limit."""
    return {"kind": "fixed", "limit": int(limit), "window_s": float(window_s), "desc": desc}
