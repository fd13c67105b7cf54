"""Adaptive throttling and predictive breaking in inspect (text, JSON, Prometheus) and watch."""
from __future__ import annotations

import json

import shmguard as sg
from shmguard._capi import lib

from _cli_helpers import cli

T0 = 10**12


def overloaded(svc: sg.ResilienceService) -> None:
    svc.register_endpoint("dep", sg.Policy(throttle_k=2.0, throttle_window=10.0,
                                           throttle_min_requests=4, predict_horizon=2.0))
    svc.register_endpoint("plain", sg.Policy())
    slot = svc._eps["dep"].h.slot
    for _ in range(99):
        lib.sg_throttle_record_at(slot, T0, 2)
    lib.sg_throttle_decide_at(slot, T0)       # the bucket's forced pass
    for _ in range(3):
        try:
            svc.execute("dep", lambda: "ran")
        except sg.ThrottledError:
            pass


def test_inspect_json_text_and_prometheus(svc: sg.ResilienceService, segname: str) -> None:
    overloaded(svc)
    st = svc.stats("dep").throttle
    snap = json.loads(cli("inspect", segname, "--json").stdout)
    eps = {e["name"]: e for e in snap["endpoints"]}
    thr = eps["dep"]["throttle"]
    assert thr["enabled"] and thr["k"] == 2.0 and thr["window_seconds"] == 10.0
    assert (thr["requests"], thr["accepts"], thr["throttled"]) == (st.requests, 0, st.throttled)
    assert thr["throttle_probability"] == st.throttle_probability > 0.95
    assert eps["dep"]["prediction"]["enabled"] and eps["dep"]["prediction"]["horizon"] == 2.0
    assert eps["dep"]["policy"]["throttle_k"] == 2.0
    assert not eps["plain"]["throttle"]["enabled"] and eps["plain"]["policy"]["throttle_k"] is None
    text = cli("inspect", segname).stdout
    assert f"throttle p {st.throttle_probability * 100:.0f}% req {st.requests}" in text
    prom = cli("inspect", segname, "--prometheus").stdout
    assert f'shmguard_throttled_total{{segment="{segname}",endpoint="dep"}} {st.throttled}' in prom
    assert 'shmguard_throttle_probability{segment="%s",endpoint="dep"} ' % segname in prom
    assert 'endpoint="plain"} ' not in "\n".join(
        line for line in prom.splitlines() if line.startswith("shmguard_throttle"))
    assert "shmguard_predict_opens_total" in prom


def test_watch_shows_the_soft_brake(svc: sg.ResilienceService, segname: str) -> None:
    overloaded(svc)
    out = cli("watch", segname, "--once").stdout
    line = next(x for x in out.splitlines() if x.startswith("dep "))
    assert "throttle 9" in line
