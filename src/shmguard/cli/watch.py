"""``shmguard watch``: the inspector view, refreshed, with per-second history.

Admitted and rejected per second come from the deltas of the segment's
counters between two refreshes (over the wall time between them) and are
drawn as sparklines of unicode blocks. On a terminal with rich installed
the frame is redrawn in place by ``rich.live.Live``; otherwise frames are
printed one after another (or redrawn with ANSI clears on a bare TTY).
``q`` or Ctrl-C quits; ``--iterations`` / ``--once`` stop by themselves.
"""
from __future__ import annotations

import importlib.util
import math
import os
import select
import sys
import time
from collections import deque
from types import TracebackType
from typing import Any, Callable, TextIO

from shmguard.cli.render import (STATE_COLOUR, Style, bulkhead_text, clip, count, duration,
                                  name_rows, open_due, state_label)
from shmguard.cli.inspector import open_segment, snapshot

__all__ = ["History", "spark", "frame", "run"]

HISTORY = 8
BLOCKS = "▁▂▃▄▅▆▇█"
ASCII_BLOCKS = ".:-=+*#@"


def spark(values: list[float], width: int = HISTORY, blocks: str = BLOCKS) -> str:
    """Returns the last ``width`` values as a sparkline (space = zero), right-aligned."""
    vals = list(values)[-width:]
    top = max(vals, default=0.0)
    chars = []
    for v in vals:
        if v <= 0 or top <= 0:
            chars.append(" ")
        else:
            level = math.ceil(v / top * len(blocks)) - 1  # any v > 0 shows a block
            chars.append(blocks[max(0, min(len(blocks) - 1, level))])
    return "".join(chars).rjust(width)


class History:
    """Per-endpoint admitted/rejected per second, from counter deltas."""

    def __init__(self, length: int = HISTORY) -> None:
        self.length = length
        self.prev: dict[str, tuple[int, int]] = {}
        self.t_prev: float | None = None
        self.series: dict[str, tuple[deque[float], deque[float]]] = {}

    @staticmethod
    def totals(ep: dict[str, Any]) -> tuple[int, int]:
        """Returns (admitted, rejected): limiter, breaker, throttle and bulkhead refusals."""
        lim, bh = ep["limiter"], ep.get("bulkhead") or {}
        throttled = ep.get("throttle", {}).get("throttled", 0)
        return lim["admitted"], (lim["rejected"] + ep["totals"]["rejected"] + throttled
                                 + bh.get("rejected", 0))

    def update(self, snap: dict[str, Any], now: float) -> None:
        dt = None if self.t_prev is None else now - self.t_prev
        for ep in snap["endpoints"]:
            adm, rej = self.totals(ep)
            a, r = self.series.setdefault(ep["name"], (deque(maxlen=self.length),
                                                       deque(maxlen=self.length)))
            old = self.prev.get(ep["name"])
            if old is not None and dt and dt > 0:
                a.append(max(0, adm - old[0]) / dt)
                r.append(max(0, rej - old[1]) / dt)
            elif old is None and "window_seconds" in ep["limiter"]:
                # first sight: the limiter's own sliding window gives the rates
                lim = ep["limiter"]
                span = max(lim["window_seconds"], 1e-9)
                a.append(lim["window_accepted"] / span)
                r.append(lim["window_rejected"] / span)
            self.prev[ep["name"]] = (adm, rej)
        for k in snap.get("keyed") or []:  # keyed limiters: "keyed:<name>"
            if "error" not in k:
                self._add(f"keyed:{k['name']}", k["accepted"],
                          k["rejected"] + k["full_rejections"], dt)
        self.t_prev = now

    def _add(self, name: str, adm: int, rej: int, dt: float | None) -> None:
        a, r = self.series.setdefault(name, (deque(maxlen=self.length), deque(maxlen=self.length)))
        old = self.prev.get(name)
        if old is not None and dt and dt > 0:
            a.append(max(0, adm - old[0]) / dt)
            r.append(max(0, rej - old[1]) / dt)
        self.prev[name] = (adm, rej)

    def last(self, name: str) -> tuple[list[float], list[float]]:
        a, r = self.series.get(name, ((), ()))
        return list(a), list(r)


HEAD = (f"{'STATE':<12} {'FOR':>6} {'FAIL':>4} {'TOKENS':>6} "
        f"{'ADMITTED/s':>14} {'REJECTED/s':>14}")


def frame(snap: dict[str, Any], hist: History, style: Style, blocks: str = BLOCKS,
          footer: str = "", wide: bool = False) -> str:
    """Renders one watch frame: whole endpoint names (see ``render.name_rows``)."""
    seg = snap["segment"]
    keyed = ["~" + k["name"] for k in snap.get("keyed") or [] if "error" not in k]
    col, names = name_rows([e["name"] for e in snap["endpoints"]] + keyed, len(HEAD) + 1, wide)
    out = [style(f"shmguard watch {seg['name']}", "bold") + f"  {seg['used']}/"
           f"{seg['capacity']} endpoints  {time.strftime('%H:%M:%S')}" + footer,
           style(f"{'ENDPOINT':<{col}} {HEAD}", "bold")]
    due = False
    for ep in snap["endpoints"]:
        adm, rej = hist.last(ep["name"])
        label = state_label(ep)
        if open_due(ep):
            label, due = "open*", True
        own_line, cell = names[ep["name"]]
        if own_line:
            out.append(own_line)
        colour = "magenta" if ep["mode"] != "normal" else STATE_COLOUR[ep["breaker_state"]]
        p = ep["throttle"]["throttle_probability"]
        if p > 0 and ep["breaker_state"] == "closed":  # the soft brake is on
            label, colour = f"throttle {min(99, round(p * 100)):>2}%", "yellow"
        tokens = ep["limiter"]["tokens"]
        tok = "-" if tokens is None else clip(f"{tokens:.1f}", 6)
        a_now = count(round(adm[-1])) if adm else "-"
        r_now = count(round(rej[-1])) if rej else "-"
        out.append(f"{cell} {style(f'{label:<12}', colour)} "
                   f"{duration(ep['state_seconds']):>6} "
                   f"{ep['window']['failure_rate'] * 100:>3.0f}% {tok:>6} "
                   f"{style(spark(adm, blocks=blocks), 'green')} {clip(a_now, 5):>5} "
                   f"{style(spark(rej, blocks=blocks), 'red')} {clip(r_now, 5):>5}")
        if ep.get("bulkhead"):
            out.append(style(clip("   " + bulkhead_text(ep["bulkhead"]), 78), "cyan"))
        rt = ep.get("retries")
        if rt and (rt["retries"] or rt["denied"]):  # retries: budget use under the row
            b = rt["budget"]
            out.append(style(f"   retries {count(rt['retries'])} denied {count(rt['denied'])}"
                             + (f" budget {count(b['retries'])}/{count(b['allowed'])}" if b
                                else ""), "dim"))
    if not snap["endpoints"]:
        out.append("(no endpoints yet)")
    for k in snap.get("keyed") or []:
        if "error" in k:
            continue
        adm, rej = hist.last(f"keyed:{k['name']}")
        a_now = count(round(adm[-1])) if adm else "-"
        r_now = count(round(rej[-1])) if rej else "-"
        live = clip(f"{count(k['live_keys'])}/{count(k['capacity'])} keys", 31)
        own_line, cell = names["~" + k["name"]]
        if own_line:
            out.append(own_line)
        out.append(f"{cell} {live:<31} "
                   f"{style(spark(adm, blocks=blocks), 'green')} {clip(a_now, 5):>5} "
                   f"{style(spark(rej, blocks=blocks), 'red')} {clip(r_now, 5):>5}")
    if due:
        out.append(style("* open, half-open on next call", "dim"))
    return "\n".join(out)


class _Keys:
    """Puts a terminal stdin in cbreak mode; :meth:`wait` reports a ``q``."""

    def __init__(self, stream: TextIO) -> None:
        self.fd = -1
        self.saved: Any = None
        try:
            if stream.isatty():
                self.fd = stream.fileno()
        except (AttributeError, ValueError, OSError):
            self.fd = -1

    def __enter__(self) -> _Keys:
        if self.fd >= 0:
            import termios
            import tty
            self.saved = termios.tcgetattr(self.fd)
            tty.setcbreak(self.fd)  # keys arrive at once; Ctrl-C still signals
        return self

    def __exit__(self, et: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if self.saved is not None:
            import termios
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)

    def wait(self, seconds: float) -> bool:
        """Sleeps up to ``seconds``; reports whether ``q`` was pressed."""
        if self.fd < 0:
            time.sleep(seconds)
            return False
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                data = os.read(self.fd, 64)
                if not data or b"q" in data.lower():
                    return True
        return False


def _can_encode(stream: TextIO, text: str) -> bool:
    try:
        text.encode(getattr(stream, "encoding", None) or "ascii")
        return True
    except (UnicodeEncodeError, LookupError):
        return False


def run(name: str, interval: float, iterations: int | None, colour: bool,
        out: TextIO | None = None, wide: bool = False) -> int:
    """Watches segment ``name``; returns the exit status (0 on q, Ctrl-C or the last iteration)."""
    out = out or sys.stdout
    blocks = BLOCKS if _can_encode(out, BLOCKS) else ASCII_BLOCKS
    hist = History()
    live_ok = out.isatty() and iterations is None
    has_rich = importlib.util.find_spec("rich") is not None
    with open_segment(name) as seg, _Keys(sys.stdin) as keys:
        def tick() -> str:
            snap = snapshot(seg, commands=False)
            hist.update(snap, time.monotonic())
            foot = f"  every {interval:g}s, q quits" if keys.fd >= 0 else ""
            return frame(snap, hist, Style(colour), blocks, foot, wide)
        try:
            if live_ok and has_rich:
                return _run_rich(tick, keys, interval)
            return _run_plain(tick, keys, interval, iterations, out, clear=live_ok)
        except KeyboardInterrupt:
            return 0


def _run_rich(tick: Callable[[], str], keys: _Keys, interval: float) -> int:
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    with Live(Text.from_ansi(tick()), console=Console(), auto_refresh=False,
              transient=False) as live:
        while not keys.wait(interval):
            live.update(Text.from_ansi(tick()), refresh=True)
    return 0


def _run_plain(tick: Callable[[], str], keys: _Keys, interval: float, iterations: int | None,
               out: TextIO, clear: bool) -> int:
    n = 0
    while True:
        text = tick()
        if clear:
            out.write("\x1b[H\x1b[2J")
        elif n:
            out.write("\n")
        out.write(text + "\n")
        out.flush()
        n += 1
        if iterations is not None and n >= iterations:
            return 0
        if keys.wait(interval):
            return 0
