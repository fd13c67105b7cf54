"""The demo's live view: rich when it can, else one plain line per second."""
from __future__ import annotations

import sys
import threading
from dataclasses import dataclass
from typing import Any, TextIO

from shmguard.stats import BreakerState

__all__ = ["Counts", "Sample", "Tally", "PlainView", "RichView", "make_view"]

KINDS = ("ok", "failed", "open", "limited", "throttled")


@dataclass
class Counts:
    """What one worker's calls came to."""

    ok: int = 0
    failed: int = 0
    open: int = 0
    limited: int = 0
    throttled: int = 0

    def cells(self) -> list[str]:
        return [str(getattr(self, k)) for k in KINDS]


class Tally:
    """Per-worker outcome counts, keyed by pid and numbered by first sight; thread safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_pid: dict[int, Counts] = {}

    def add(self, pid: int, kind: str) -> None:
        with self._lock:
            c = self._by_pid.setdefault(pid, Counts())
            setattr(c, kind, getattr(c, kind) + 1)

    def workers(self) -> list[tuple[str, int, Counts]]:
        """Returns (label, pid, counts copy) per worker, in order of first sight."""
        with self._lock:
            return [(f"w{i + 1}", pid, Counts(**vars(c)))
                    for i, (pid, c) in enumerate(self._by_pid.items())]

    def label(self, pid: int) -> str:
        with self._lock:
            for i, p in enumerate(self._by_pid):
                if p == pid:
                    return f"w{i + 1}"
        return f"pid {pid}"


@dataclass(frozen=True)
class Sample:
    """The endpoint at one instant, as the segment (and the cache) report it."""

    t: float
    phase: str
    state: BreakerState
    failure_rate: float
    accepted: int
    limited: int
    stopped: int
    hits: int
    db_in_flight: int = 0   # the slow dependency: requests it serves now
    db_refused: int = 0     # calls its bulkhead refused so far
    throttle_p: float = 0.0  # adaptive throttling's refusal chance now


def _per_second(new: Sample, old: Sample | None) -> tuple[float, float, float]:
    if old is None or new.t <= old.t:
        return 0.0, 0.0, 0.0
    dt = new.t - old.t
    return ((new.accepted - old.accepted) / dt,
            (new.limited - old.limited + new.stopped - old.stopped) / dt,
            (new.hits - old.hits) / dt)


class PlainView:
    """One line per second, and one per event (for pipes, logs and CI)."""

    interval = 1.0

    def __init__(self, out: TextIO = sys.stdout) -> None:
        self.out = out
        self._last: Sample | None = None

    def start(self, title: str) -> None:
        print(title, file=self.out)
        print("per worker: ok/failed/rejected-open/rate-limited/throttled", file=self.out,
              flush=True)

    def event(self, t: float, text: str) -> None:
        print(f"  -> {t:5.2f}s {text}", file=self.out, flush=True)

    def update(self, s: Sample, workers: list[tuple[str, int, Counts]]) -> None:
        adm, rej, hits = _per_second(s, self._last)
        self._last = s
        ws = " ".join(f"{label} {'/'.join(c.cells())}" for label, _, c in workers)
        print(f"[{s.t:5.1f}s] cache={s.phase:<9} breaker={str(s.state):<9} "
              f"fail={s.failure_rate:4.0%} admitted/s={adm:5.0f} rejected/s={rej:5.0f} "
              f"hits/s={hits:4.0f} throttle={s.throttle_p:4.0%} db={s.db_in_flight} "
              f"({s.db_refused} refused) | {ws}", file=self.out, flush=True)

    def stop(self) -> None:
        pass


_STATE_STYLE = {BreakerState.CLOSED: "bold green", BreakerState.OPEN: "bold red",
                BreakerState.HALF_OPEN: "bold yellow"}
_PHASE_STYLE = {"healthy": "green", "strained": "yellow", "unhealthy": "red",
                "recovered": "green"}


class RichView:
    """A live table redrawn four times a second (needs rich and a terminal)."""

    interval = 0.25

    def __init__(self, console: Any = None) -> None:
        from rich.console import Console
        from rich.live import Live
        self.console = console or Console()
        self._live = Live(console=self.console, refresh_per_second=8, transient=False)
        self._last: Sample | None = None
        self._events: list[str] = []

    def start(self, title: str) -> None:
        self.console.print(title)
        self._live.start()

    def event(self, t: float, text: str) -> None:
        self._events = (self._events + [f"{t:5.2f}s  {text}"])[-6:]

    def update(self, s: Sample, workers: list[tuple[str, int, Counts]]) -> None:
        from rich.console import Group
        from rich.panel import Panel
        from rich.table import Table
        from rich.text import Text
        adm, rej, hits = _per_second(s, self._last)
        self._last = s
        ep = Table(box=None, show_header=True, header_style="bold")
        for col in ("time", "cache", "breaker", "window fail", "throttle p", "admitted/s",
                    "rejected/s", "cache hits/s", "db in flight", "db refused"):
            ep.add_column(col, justify="right")
        ep.add_row(f"{s.t:.1f}s", Text(s.phase, _PHASE_STYLE.get(s.phase, "")),
                   Text(str(s.state), _STATE_STYLE[s.state]), f"{s.failure_rate:.0%}",
                   Text(f"{s.throttle_p:.0%}", "yellow" if s.throttle_p else ""),
                   f"{adm:.0f}", f"{rej:.0f}", f"{hits:.0f}", str(s.db_in_flight),
                   str(s.db_refused))
        wt = Table(box=None, header_style="bold")
        for col in ("worker", "pid", "ok", "failed", "rejected (open)", "rate-limited",
                    "throttled"):
            wt.add_column(col, justify="right")
        for label, pid, c in workers:
            wt.add_row(label, str(pid), *c.cells())
        ev = Text("\n".join(self._events) or "(no events yet)", style="dim")
        self._live.update(Panel(Group(ep, Text(""), wt, Text(""), ev), title="shmguard demo"))

    def stop(self) -> None:
        self._live.stop()


def make_view(plain: bool = False) -> Any:
    """Returns a :class:`RichView` if rich is importable and stdout is a terminal, else plain."""
    if not plain and sys.stdout.isatty():
        try:
            import rich  # noqa: F401
            return RichView()
        except ImportError:
            pass
    return PlainView()
