"""``shmguard fleet NAME`` against a real redis-server and a live agent."""
from __future__ import annotations

import json
import time

import shmguard as sg
from shmguard.cli import main


def test_fleet_command_lists_hosts_and_shares(redis_server, segnames, capsys) -> None:
    cfg = sg.RedisFleet(redis_server.url, refresh=0.05, lease=1.0, timeout=0.2)
    svc = sg.ResilienceService(segnames[0], capacity=8, fleet=cfg, host_id="alpha")
    try:
        svc.register_endpoint("store", sg.Policy(rate=300, burst=30).with_fleet())
        svc.register_endpoint("local", sg.Policy(rate=10))
        deadline = time.monotonic() + 10
        while svc.stats("store").fleet.mode != "granted":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert svc.stats("local").fleet is None
        assert main(["fleet", segnames[0], "--redis", redis_server.url, "--json"]) == 0
        out = json.loads(capsys.readouterr().out)
        [row] = out["endpoints"]
        assert row["endpoint"] == "store" and abs(row["fleet_rate"] - 300) < 1e-3
        assert row["local"]["mode"] == "granted" and row["local"]["agent_pid"] > 0
        assert set(row["hosts"]) == {"alpha"} and abs(row["hosts"]["alpha"]["grant"] - 300) < 1e-3
        assert main(["fleet", segnames[0], "--redis", redis_server.url]) == 0
        assert "alpha" in capsys.readouterr().out
        assert main(["inspect", segnames[0], "--json"]) == 0
        eps = {e["name"]: e for e in json.loads(capsys.readouterr().out)["endpoints"]}
        assert eps["store"]["fleet"]["mode"] == "granted" and eps["local"]["fleet"] is None
        assert main(["inspect", segnames[0], "--color", "never"]) == 0
        assert "fleet granted 300/s burst 30 hosts 1" in capsys.readouterr().out
        assert main(["inspect", segnames[0], "--prometheus"]) == 0
        prom = capsys.readouterr().out
        assert 'shmguard_fleet_hosts{segment="' in prom and "shmguard_fleet_safe_share" in prom
    finally:
        svc.close()


def test_fleet_command_without_redis_is_an_error(segnames, capsys) -> None:
    svc = sg.ResilienceService(segnames[0], capacity=8)
    try:
        svc.register_endpoint("store", sg.Policy(rate=300, burst=30).with_fleet())
        assert main(["fleet", segnames[0], "--redis", "redis://127.0.0.1:1/0"]) == 1
        assert "Redis at 'redis://127.0.0.1:1/0'" in capsys.readouterr().err
    finally:
        svc.close()
