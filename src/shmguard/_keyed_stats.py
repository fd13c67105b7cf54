"""Reading a keyed limiter's statistics: counters from its header, occupancy from a C scan."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

from shmguard._capi import ffi, lib
from shmguard._keyed_shm import KeyedTable
from shmguard.errors import PolicyError, ShmguardError

if TYPE_CHECKING:
    from shmguard.keyed import KeyedStats

__all__ = ["read_stats", "table_dict"]

NS = 1_000_000_000


def _scan(t: KeyedTable, now: int, top: int) -> tuple[Any, list[Any]]:
    if isinstance(top, bool) or not isinstance(top, int) or not 0 <= top <= lib.SG_KL_TOP_MAX:
        raise PolicyError(f"top must be 0..{lib.SG_KL_TOP_MAX}, got {top!r}")
    if t.closed:
        raise ShmguardError(f"{t.what} is closed in this process")
    arr = ffi.new("struct sg_kl_entry_view[]", max(1, top))
    out = ffi.new("struct sg_kl_scan *")
    rc = lib.sg_kl_scan_at(t.kh, now, top, arr, out)
    if rc != lib.SG_OK:
        raise ShmguardError(f"{t.what}: scan failed with code {rc}")
    return out, [arr[i] for i in range(out.top_n)]


def _hot(rows: list[Any]) -> list[dict[str, Any]]:
    return [{"fingerprint": f"{r.fingerprint >> 2:016x}", "tokens": float(r.tokens),
             "refill_seconds": r.ahead_ns / NS, "index": int(r.index)} for r in rows]


def table_dict(t: KeyedTable, now: int, top: int = 0) -> dict[str, Any]:
    """Returns the limiter's numbers as plain JSON types (inspector, stats)."""
    v = t.refresh()
    scan, rows = _scan(t, now, top)
    return {
        "name": t.name, "rate": NS / v.emission_ns, "burst": int(v.burst),
        "capacity": int(v.capacity), "entries": int(v.slots), "memory_bytes": int(v.total_size),
        "on_full": "allow" if v.flags & lib.SG_KL_ON_FULL_ALLOW else "reject",
        "live_keys": int(scan.live), "used_entries": int(scan.used),
        "accepted": int(v.accepted), "rejected": int(v.rejected), "waited": int(v.waited),
        "inserted": int(v.inserted), "evicted": int(v.evicted),
        "full_rejections": int(v.full_rejected), "full_allowed": int(v.full_allowed),
        "folded": int(v.folded), "rate_changes": int(v.rate_changes), "hot": _hot(rows),
    }


def read_stats(t: KeyedTable, now: int, top: int) -> KeyedStats:
    """Returns a :class:`~shmguard.keyed.KeyedStats` read at segment time ``now``."""
    from shmguard.keyed import HotKey, KeyedStats
    d = table_dict(t, now, top)
    hot = tuple(HotKey(h["fingerprint"], h["tokens"], h["refill_seconds"], h["index"])
                for h in d.pop("hot"))
    return KeyedStats(**d, hot=hot)
