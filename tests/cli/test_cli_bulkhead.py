"""The bulkhead as the inspector shows it: text, JSON, Prometheus and watch."""
from __future__ import annotations

import json

import shmguard as sg
from _cli_helpers import cli


def _busy(svc: sg.ResilienceService) -> list[sg.Ticket]:
    svc.register_endpoint("db", sg.Policy(max_concurrent=4, critical_reserve=1))
    svc.register_endpoint("plain", sg.Policy(rate=10))
    bh = svc.bulkhead("db")
    held = [bh.acquire(), bh.acquire()]
    assert bh.try_acquire(sg.Priority.CRITICAL) is not None   # dropped: given back
    for _ in range(2):
        try:
            svc.execute("db", lambda: [bh.acquire() for _ in range(2)])   # third: refused
        except sg.BulkheadFullError:
            pass
    return held


def test_inspect_json_text_and_prometheus_show_the_bulkhead(realsvc, segname):
    held = _busy(realsvc)
    snap = json.loads(cli("inspect", segname, "--json").stdout)
    eps = {e["name"]: e for e in snap["endpoints"]}
    assert eps["plain"]["bulkhead"] is None
    bh = eps["db"]["bulkhead"]
    # 2 held + 1 CRITICAL (peak 3) + 2 calls: each took the 3rd ticket in execute; the
    # NORMAL acquire in its body found the 4th reserved for CRITICAL: refused (rejected 2)
    assert {k: bh[k] for k in ("max_concurrent", "in_flight", "available", "peak", "acquired",
                               "rejected", "critical_reserve", "quota")} == {
        "max_concurrent": 4, "in_flight": 2, "available": 2, "peak": 3, "acquired": 5,
        "rejected": 2, "critical_reserve": 1, "quota": None}
    assert sorted(h["ticket"] for h in bh["holders"]) == sorted(t.index for t in held)
    text = cli("inspect", segname).stdout
    assert "bulkhead 2/4 crit 1 peak 3 rej 2" in text
    prom = cli("inspect", segname, "--prometheus").stdout
    lab = f'{{segment="{segname}",endpoint="db"}}'
    for line in (f"shmguard_bulkhead_in_flight{lab} 2", f"shmguard_bulkhead_max_concurrent{lab} 4",
                 f"shmguard_bulkhead_rejected_total{lab} 2", f"shmguard_bulkhead_peak{lab} 3"):
        assert line in prom.splitlines(), line
    assert 'endpoint="plain"} ' not in "".join(l for l in prom.splitlines() if "bulkhead" in l)
    watch = cli("watch", segname, "--iterations", "1").stdout
    assert "bulkhead 2/4 crit 1 peak 3 rej 2" in watch
