"""Plain-text lines for the keyed limiters and named fallback chains of an inspector snapshot."""
from __future__ import annotations

from typing import Any

from shmguard.cli.render import Style, clip, count, duration, rate, size

__all__ = ["keyed_lines", "chain_lines"]

HEAD = (f"{'KEYED LIMITER':<20} {'RATE':>7} {'BURST':>6} {'LIVE/CAP':>13} {'ADMITTED':>9}"
        f" {'REJECTED':>9} {'FULL':>7}")


def keyed_lines(snap: dict[str, Any], style: Style) -> list[str]:
    """Returns a table of the snapshot's keyed limiters (none: no lines) and their hot keys."""
    tables = snap.get("keyed") or []
    if not tables:
        return []
    out = [style(HEAD, "bold")]
    for k in tables:
        if "error" in k:
            out.append(clip(k["name"], 20))
            out.append(style(f"   ! {clip(k['error'], 75)}", "red"))
            continue
        full = k["full_rejections"] + k["full_allowed"]
        live = f"{count(k['live_keys'])}/{count(k['capacity'])}"
        out.append(f"{clip(k['name'], 20):<20} {rate(k['rate']):>7} {count(k['burst']):>6}"
                   f" {live:>13} {count(k['accepted']):>9} {count(k['rejected']):>9}"
                   f" {style(f'{count(full):>7}', 'red' if full else None)}")
        out.append(style(f"   on_full {k['on_full']}  {size(k['memory_bytes'])} in "
                         f"{count(k['entries'])} entries  reused {count(k['evicted'])}  "
                         f"folded {count(k['folded'])}", "dim"))
        for h in k["hot"]:
            out.append(f"   key {h['fingerprint']}  tokens {h['tokens']:.1f}  full in "
                       f"{duration(h['refill_seconds'])}")
    return out


def chain_lines(snap: dict[str, Any], style: Style) -> list[str]:
    """Returns one line per named fallback chain: which step served how often (host-wide)."""
    chains = snap.get("chains") or []
    if not chains:
        return []
    out = [style(f"{'FALLBACK CHAIN':<20} SERVED BY (host-wide, since creation)", "bold")]
    for c in chains:
        if "error" in c:
            out.append(clip(c["name"], 20))
            out.append(style(f"   ! {clip(c['error'], 75)}", "red"))
            continue
        steps = "  ".join(f"{s['endpoint']} {count(s['served'])}" for s in c["steps"])
        tail = f"  last {count(c['last'])}  failed {count(c['failed'])}"
        out.append(f"{clip(c['name'], 20):<20} {steps}" + style(tail, "red" if c["failed"] else None))
    return out
