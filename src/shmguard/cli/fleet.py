"""``shmguard fleet NAME``: this host's fleet endpoints and every host's share in Redis."""
from __future__ import annotations

import json
from typing import Any

from shmguard._capi import lib
from shmguard.segment import Segment

__all__ = ["run", "fleet_rows"]

NS = 1_000_000_000


def _fleet_endpoints(seg: Segment) -> list[tuple[str, Any, Any]]:
    from shmguard.fleet.view import fleet_endpoints
    rows = [(name, h, pv) for _, name, h, pv in fleet_endpoints(seg)
            if pv.flags & lib.SG_POL_FLEET_RATE and pv.emission_ns]
    return sorted(rows, key=lambda t: t[0])


def fleet_rows(seg: Segment, url: str, prefix: str) -> list[dict[str, Any]]:
    """Returns one record per fleet endpoint: the local share and the hosts Redis records."""
    from shmguard.fleet.config import RedisFleet
    from shmguard.fleet.coordinator import Coordinator
    from shmguard.fleet.view import fleet_stats
    coord = Coordinator(RedisFleet(url, prefix=prefix))
    try:
        rows = []
        for name, h, pv in _fleet_endpoints(seg):
            local = fleet_stats(seg.base, seg.size, h.slot, seg.now_ns(), pv)
            rows.append({"endpoint": name, "fleet_rate": NS / pv.emission_ns,
                         "fleet_burst": pv.burst, "local": local and vars(local),
                         "hosts": coord.hosts(name)})
        return rows
    finally:
        coord.close()


def run(name: str, url: str, prefix: str, as_json: bool) -> int:
    from shmguard.cli.inspector import open_segment
    with open_segment(name) as seg:
        rows = fleet_rows(seg, url, prefix)
    if as_json:
        print(json.dumps({"segment": name, "endpoints": rows}, indent=2))
        return 0
    if not rows:
        print(f"segment {name!r} has no fleet endpoints (Policy.with_fleet)")
    for r in rows:
        loc = r["local"]
        print(f"{r['endpoint']}: fleet rate {r['fleet_rate']:g}/s burst {r['fleet_burst']}; "
              f"this host {loc['mode']} {loc['rate']:.4g}/s burst {loc['burst']} "
              f"(agent pid {loc['agent_pid'] or '-'}, Redis errors {loc['errors']})")
        for host, v in sorted(r["hosts"].items()):
            if "malformed" in v:
                print(f"  {host:<24} (malformed record)")
                continue
            state = "live" if v["left"] > 0 else "expired"
            print(f"  {host:<24} grant {v['grant']:10.4g}/s  demand {v['demand']:10.4g}/s  "
                  f"{state} {abs(v['left']):.1f} s")
    return 0
