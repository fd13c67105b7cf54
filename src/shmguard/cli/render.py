"""Plain-text views of inspector dicts: 80 columns, colour only when asked.

Colours are ANSI escapes added after padding, so columns line up with or
without them; rich is not needed here.
"""
from __future__ import annotations

import os
from typing import Any, TextIO

__all__ = ["Style", "use_colour", "duration", "count", "rate", "size", "state_label",
           "inspect_text", "list_text", "clip", "bulkhead_text"]

WIDTH = 80
_ANSI = {"green": "32", "red": "31", "yellow": "33", "magenta": "35", "cyan": "36",
         "bold": "1", "dim": "2"}
STATE_COLOUR = {"closed": "green", "open": "red", "half-open": "yellow"}


def use_colour(stream: TextIO, choice: str = "auto") -> bool:
    """Reports whether to colour ``stream``: ``always``, ``never`` or on a TTY (``auto``)."""
    if choice != "auto":
        return choice == "always"
    if os.environ.get("NO_COLOR"):
        return False
    return hasattr(stream, "isatty") and stream.isatty() and os.environ.get("TERM") != "dumb"


class Style:
    """Wraps text in ANSI colours when enabled, else returns it unchanged."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled

    def __call__(self, text: str, colour: str | None) -> str:
        if not self.enabled or not colour:
            return text
        return f"\x1b[{_ANSI[colour]}m{text}\x1b[0m"


def duration(seconds: float | None) -> str:
    """Formats a span in at most 6 characters: ``850ms``, ``12.3s``, ``4m05s``, ``2h03m``, ``3d04h``."""
    if seconds is None:
        return "-"
    s = max(0.0, seconds)
    if s < 1:
        return f"{s * 1000:.0f}ms"
    if s < 60:
        return f"{s:.1f}s"
    if s < 3600:
        return f"{int(s // 60)}m{int(s % 60):02d}s"
    if s < 86400:
        return f"{int(s // 3600)}h{int(s % 3600 // 60):02d}m"
    return f"{int(s // 86400)}d{int(s % 86400 // 3600):02d}h"


def count(n: float) -> str:
    """Formats a count compactly: ``950``, ``12.3k``, ``4.1M``."""
    for unit, div, start in (("G", 1e9, 1e9), ("M", 1e6, 1e6), ("k", 1e3, 1e4)):
        if abs(n) >= start:
            return f"{n / div:.3g}{unit}"
    return f"{n:g}" if isinstance(n, float) else str(n)


def rate(r: float | None) -> str:
    """Formats a per-second rate, ``-`` for none."""
    if r is None:
        return "-"
    return count(round(r, 1)) if r >= 10 else f"{r:.3g}"


def size(n: int) -> str:
    for unit, div in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= div:
            return f"{n / div:.1f}{unit}"
    return f"{n}B"


def clip(text: str, width: int) -> str:
    """Cuts ``text`` to ``width`` characters, marking the cut with ``~``."""
    return text if len(text) <= width else text[:width - 1] + "~"


def elide(text: str, width: int) -> str:
    """Cuts the middle out of ``text`` to fit ``width``, marking the cut with ``~``."""
    if len(text) <= width or width < 3:
        return text if len(text) <= width else text[:width]
    head = (width - 1 + 1) // 2
    return text[:head] + "~" + text[len(text) - (width - 1 - head):]


def terminal_width() -> int:
    """The terminal's width (``COLUMNS``, else the tty's, else 80)."""
    import shutil
    return max(40, shutil.get_terminal_size((WIDTH, 24)).columns)


def name_rows(names: list[str], fixed: int, wide: bool) -> tuple[int, dict[str, tuple[str, str]]]:
    """Lays out whole endpoint names beside ``fixed`` columns of other cells.

    Returns the name column's width and, per name, (a line of its own or "",
    the cell): a name that fits is the cell; a longer one gets its own line
    above the row, elided in the middle only beyond the terminal (never with ``wide``).
    """
    width = terminal_width()
    longest = max((len(n) for n in names), default=8)
    col = max(8, longest if wide else min(longest, width - fixed))
    out = {}
    for n in names:
        if len(n) <= col:
            out[n] = ("", n.ljust(col))
        else:
            out[n] = (n if wide else elide(n, width), "".ljust(col))
    return col, out


def open_due(ep: dict[str, Any]) -> bool:
    """Reports an idle OPEN breaker whose open time has passed: the next call half-opens it."""
    rem = ep.get("open_remaining_seconds")
    return ep["mode"] == "normal" and ep["breaker_state"] == "open" and rem is not None \
        and rem <= 0


def state_label(ep: dict[str, Any]) -> str:
    """Returns the state as shown: the mode when forced, else the state."""
    return str(ep["mode"] if ep["mode"] != "normal" else ep["breaker_state"])


def _probes(ep: dict[str, Any]) -> str:
    ps = ep["half_open"]["probes"]
    return ",".join(f"{p['pid']}({duration(p['lease_left_seconds'])})" for p in ps)


def _detail(ep: dict[str, Any]) -> list[str]:
    lim = ep["limiter"]
    bp = lim["by_priority"]
    parts = []
    if lim["limited"]:
        eff = "" if lim["scale"] >= 1 else f" eff {rate(lim['effective_rate'])}/s"
        parts.append(f"rate {rate(lim['rate'])}/s burst {count(lim['burst'])}{eff}")
    else:
        parts.append("no rate limit")
    if ep["policy"].get("overridden"):
        parts[-1] += " (set-rate override)"
    parts.append("adm " + "/".join(count(bp[p]["admitted"]) for p in bp))
    parts.append("rej " + "/".join(count(bp[p]["rejected"]) for p in bp))
    if ep["totals"]["rejected"]:
        parts.append(f"open-rej {count(ep['totals']['rejected'])}")
    rt = ep["retries"]
    if rt["retries"] or rt["denied"] or rt["budget"]:
        b = rt["budget"]
        parts.append(f"retries {count(rt['retries'])} denied {count(rt['denied'])}" +
                     (f" budget {count(b['retries'])}/{count(b['allowed'])}"
                      f" per {duration(b['window_seconds'])}" if b else ""))
    thr, pred = ep["throttle"], ep["prediction"]
    if thr["enabled"]:
        parts.append(f"throttle p {thr['throttle_probability'] * 100:.0f}% "
                     f"req {count(thr['requests'])} acc {count(thr['accepts'])} "
                     f"thr {count(thr['throttled'])}")
    if pred["enabled"] and pred["failure_forecast"] is not None:
        parts.append(f"forecast {pred['failure_forecast'] * 100:.0f}% in "
                     f"{duration(pred['horizon'])} early-opens {count(pred['opens'])}")
    if ep["breaker_state"] == "half-open":
        ho = ep["half_open"]
        parts.append(f"probes {ep['probes_in_flight']}/{ho['max']} ok {ho['successes']}/"
                     f"{ho['needed']}" + (f" [{_probes(ep)}]" if ho["probes"] else ""))
    if open_due(ep):
        parts.append("open, half-open on next call")
    elif ep["open_remaining_seconds"] is not None:
        parts.append(f"half-open in {duration(ep['open_remaining_seconds'])}")
    if ep.get("bulkhead"):
        parts.append(bulkhead_text(ep["bulkhead"]))
    lines, cur = [], "   "
    for p in parts:
        if len(cur) + len(p) + 2 > WIDTH and cur.strip():
            lines.append(cur.rstrip())
            cur = "   "
        cur += p + "  "
    lines.append(cur.rstrip())
    return lines


def bulkhead_text(bh: dict[str, Any]) -> str:
    """Returns ``bulkhead 2/4 peak 4 wait 3 rej 1 [pids]`` (quota and reserve when set)."""
    quota = f" (quota {bh['quota']:g} x {bh['processes']} procs)" if bh["quota"] else ""
    extra = "".join(f" {k} {count(bh[v])}" for k, v in (("wait", "waited"), ("rej", "rejected"),
                                                       ("reclaimed", "reclaimed")) if bh[v])
    crit = f" crit {bh['critical_reserve']}" if bh["critical_reserve"] else ""
    pids = ",".join(str(h["pid"]) for h in bh["holders"][:4])
    more = "+" if len(bh["holders"]) > 4 else ""
    return (f"bulkhead {bh['in_flight']}/{bh['max_concurrent']}{quota}{crit} peak {bh['peak']}"
            f"{extra}" + (f" [{pids}{more}]" if pids else ""))


HEAD = (f"{'STATE':<13} {'FOR':>6} {'GEN':>5} {'FAIL':>4} {'F/CALLS':>9}"
        f" {'TOKENS':>7} {'ACC%':>6}")


def inspect_text(snap: dict[str, Any], style: Style, wide: bool = False) -> str:
    """Renders ``inspector.snapshot()``: two or three lines per endpoint, whole names."""
    seg = snap["segment"]
    col, names = name_rows([e["name"] for e in snap["endpoints"]], len(HEAD) + 1, wide)
    out = [f"segment {seg['name']}  {seg['used']}/{seg['capacity']} endpoints  "
           f"age {duration(seg['age_seconds'])}" + ("  manual clock" if seg["manual_clock"]
                                                     else ""),
           style(f"{'ENDPOINT':<{col}} {HEAD}", "bold"),
           style("   adm/rej per priority: low/normal/high/critical", "dim")]
    for ep in snap["endpoints"]:
        own_line, cell = names[ep["name"]]
        if own_line:
            out.append(own_line)
        w = ep["window"]
        lim = ep["limiter"]
        label = state_label(ep)
        colour = "magenta" if ep["mode"] != "normal" else STATE_COLOUR[ep["breaker_state"]]
        tokens = "-" if lim["tokens"] is None else f"{lim['tokens']:.1f}"
        line = (f"{cell} {style(f'{label:<13}', colour)}"
                f" {duration(ep['state_seconds']):>6} {ep['generation'] % 100000:>5}"
                f" {w['failure_rate'] * 100:>3.0f}% {clip(count(w['failures']) + '/' + count(w['calls']), 9):>9}"
                f" {clip(tokens, 7):>7} {lim['acceptance_rate'] * 100:>5.1f}%")
        out.append(line)
        out.extend(_detail(ep))
    if not snap["endpoints"]:
        out.append("(no endpoints)")
    if snap["corrupt_slots"]:
        out.append(style(f"corrupt slots: {snap['corrupt_slots']}", "red"))
    from shmguard.cli.render_keyed import chain_lines, keyed_lines
    out.extend(keyed_lines(snap, style))
    out.extend(chain_lines(snap, style))
    return "\n".join(out)


def list_text(rows: list[dict[str, Any]], style: Style) -> str:
    """Renders ``shmguard list`` rows: one line per segment, then its processes."""
    if not rows:
        return "(no shmguard segments)"
    out = [style(f"{'SEGMENT':<28} {'SIZE':>9} {'ENDPOINTS':>11} {'PROCS':>5} {'AGE':>6}",
                 "bold")]
    for r in rows:
        eps = f"{r['used']}/{r['capacity']}" if "capacity" in r else "?"
        age = duration(r.get("age_seconds"))
        out.append(f"{clip(r['name'], 28):<28} {size(r['size']):>9} {eps:>11} "
                   f"{len(r['attached']):>5} {age:>6}")
        if r.get("error"):
            out.append(style(f"   ! {clip(r['error'], WIDTH - 5)}", "red"))
        for p in r["attached"]:
            out.append(f"   {p['pid']:>7} {clip(p['command'] or '?', WIDTH - 12)}")
        for k in r.get("keyed", ()):
            out.append(f"   keyed {clip(k['name'], 40):<40} {size(k['size']):>9}")
    return "\n".join(out)
