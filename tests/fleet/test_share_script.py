"""The share script and its client against a real redis-server, call by call.

Each "sync" is one Coordinator.share() call as an agent makes it; the
assertions are exact (shares, sums) or count syncs, not seconds.
"""
from __future__ import annotations

import time

import pytest

import shmguard as sg
from shmguard.fleet.coordinator import Coordinator, FleetError, parse_grant

CAP = 300.0


def _coord(url: str, lease: float = 5.0) -> Coordinator:
    return Coordinator(sg.RedisFleet(url, refresh=0.01, lease=lease))


def _sum_live(r, key: str) -> float:
    now_s, now_us = r.time()
    now = now_s * 1000 + now_us // 1000
    total = 0.0
    for f, v in r.hgetall(key).items():
        if f.startswith(b"h:"):
            g, e, _d, _ep = v.decode().split("|")
            if int(e) > now:
                total += float(g)
    return total


def test_max_min_fair_on_demand(redis_server) -> None:
    c = _coord(redis_server.url)
    for _ in range(3):  # shares settle once every host has reported and shrunk
        grants = {h: c.share("api", h, 1, d, CAP, 0, 3).rate
                  for h, d in (("a", 50.0), ("b", 500.0), ("c", 500.0))}
    assert grants == pytest.approx({"a": 50.0, "b": 125.0, "c": 125.0})


def test_sum_of_unexpired_grants_never_exceeds_the_rate(redis_server) -> None:
    import random
    rnd = random.Random(17)
    c, r = _coord(redis_server.url), redis_server.client()
    for _ in range(300):
        h = rnd.choice("abcde")
        c.share("api", h, 1, rnd.choice([0.0, 10.0, 100.0, 1e6]), CAP, 0, 5)
        assert _sum_live(r, "shmguard:rate:api") <= CAP * (1 + 1e-12)


def test_a_demand_shift_moves_the_shares_in_two_syncs(redis_server) -> None:
    c = _coord(redis_server.url)
    c.share("api", "a", 1, 1e6, CAP, 0, 2)
    assert c.share("api", "b", 1, 0.0, CAP, 0, 2).rate == pytest.approx(0.0)
    assert c.share("api", "a", 1, 1e6, CAP, 0, 2).rate == pytest.approx(CAP)
    # demand moves: b asks first, but a's capacity is leased: b waits for a's smaller grant
    assert c.share("api", "b", 1, 1e6, CAP, 0, 2).rate == pytest.approx(0.0)
    assert c.share("api", "a", 1, 0.0, CAP, 0, 2).rate == pytest.approx(0.0)  # sync 1
    assert c.share("api", "b", 1, 1e6, CAP, 0, 2).rate == pytest.approx(CAP)  # sync 2


def test_a_dead_hosts_grant_returns_after_its_lease(redis_server) -> None:
    c = _coord(redis_server.url, lease=0.3)
    c.share("api", "a", 1, 1e6, CAP, 0, 2)
    c.share("api", "a", 1, 1e6, CAP, 0, 2)
    assert c.share("api", "b", 1, 1e6, CAP, 0, 2).rate < CAP / 2 + 1e-9  # a holds its half
    deadline = time.monotonic() + 10
    while c.share("api", "b", 1, 1e6, CAP, 0, 2).rate < CAP - 1e-9:  # a stopped syncing
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_redis_restarted_empty_rebuilds_without_over_grant(redis_server) -> None:
    c = _coord(redis_server.url)
    for _ in range(2):
        held = {h: c.share("api", h, 1, 1e6, CAP, 0, 3).rate for h in "abc"}
    assert sum(held.values()) == pytest.approx(CAP)
    redis_server.kill()
    redis_server.start()
    c = _coord(redis_server.url)
    # grace: each host gets at most what it held, even asking for everything
    g = c.share("api", "a", 1, 1e6, CAP, held["a"], 3)
    assert g.grace and g.rate <= held["a"]
    g = c.share("api", "b", 1, 1e6, CAP, held["b"], 3)
    assert g.grace and g.rate <= held["b"]
    g = c.share("api", "c", 1, 1e6, CAP, held["c"], 3)  # every host seen before is back
    assert not g.grace
    assert _sum_live(redis_server.client(), "shmguard:rate:api") <= CAP * (1 + 1e-12)


def test_a_stale_agent_of_a_host_is_refused(redis_server) -> None:
    c = _coord(redis_server.url)
    c.share("api", "a", 5, 10.0, CAP, 0, 1)
    with pytest.raises(FleetError, match="superseded"):
        c.share("api", "a", 4, 10.0, CAP, 0, 1)


def test_hostile_records_are_dropped_and_hold_every_host(redis_server) -> None:
    c, r = _coord(redis_server.url), redis_server.client()
    c.share("api", "a", 1, 1e6, CAP, 0, 1)
    for bad in (b"1e999|9999999999999|1|1", b"nan|9999999999999|1|1", b"-5|1|1|1", b"x",
                b"400|9999999999999|1|1"):
        r.hset("shmguard:rate:api", "h:evil", bad)
        g = c.share("api", "b", 1, 1e6, CAP, 0, 1)
        assert g.grace and g.rate == 0.0  # b held nothing: it gets nothing for a lease
        assert r.hget("shmguard:rate:api", "h:evil") is None
    assert _sum_live(r, "shmguard:rate:api") <= CAP


def test_a_key_of_the_wrong_type_is_an_error(redis_server) -> None:
    c, r = _coord(redis_server.url), redis_server.client()
    r.set("shmguard:rate:api", "not a hash")
    with pytest.raises(FleetError, match="WRONGTYPE"):
        c.share("api", "a", 1, 1.0, CAP, 0, 1)


@pytest.mark.parametrize("reply, what", [
    (None, "list of 4"), ([b"1", 1, 1], "list of 4"), ([b"nan", 100, 1, 0], "outside"),
    ([b"inf", 100, 1, 0], "outside"), ([b"301", 100, 1, 0], "outside"),
    ([b"-1", 100, 1, 0], "outside"), ([b"x", 100, 1, 0], "number"),
    ([b"1", 10**9, 1, 0], "lease"), ([b"1", 0, 1, 0], "lease"), ([b"1", 100, 0, 0], "hosts"),
    ([b"1", 100, 1, 7], "grace"), ([b"1", b"1.5", 1, 0], "lease"), ([b"1", True, 1, 0], "lease"),
])
def test_malformed_replies_name_the_bad_value(reply, what) -> None:
    with pytest.raises(FleetError, match=what):
        parse_grant(reply, CAP, 5000)


def test_the_probe_lease_is_extended_by_its_holder_only(redis_server) -> None:
    """The holder's gate renews its key (a probe it grants outlives the key's first PX: else
    another host could take it while that probe still runs); another host never renews it."""
    c, r = _coord(redis_server.url), redis_server.client()
    key = "shmguard:probe:db"
    assert c.probe_gate("db", "a", 10.0) is True
    assert c.probe_gate("db", "b", 10.0) is False
    r.pexpire(key, 50)                                   # a's lease nearly over
    assert c.probe_gate("db", "b", 10.0) is False and 0 < r.pttl(key) <= 50
    assert c.probe_gate("db", "a", 10.0) is True and r.pttl(key) > 9000
    r.delete(key)
    assert c.probe_gate("db", "b", 10.0) is True and r.get(key) == b"b"
    r.set(key, "x", px=10_000)
    assert c.probe_gate("db", "a", 10.0) is False


@pytest.mark.parametrize("hostile", [{"h:evil": "300|99999999999999|1|1"},
                                     {"_grace": "99999999999999", "_want": "1e9"}])
def test_a_record_from_the_far_future_holds_for_one_lease_only(redis_server, hostile) -> None:
    """A host record (or grace) ending far past a lease from now (hostile, or Redis's clock
    stepped back) counts for one lease from now, then ends: it never starves the fleet."""
    c, r = _coord(redis_server.url, lease=0.05), redis_server.client()
    c.share("api", "a", 1, 1e6, CAP, 0, 1)
    r.hset("shmguard:rate:api", mapping=hostile)
    assert c.share("api", "b", 1, 1e6, CAP, 0, 1).rate == 0.0   # held for now
    time.sleep(0.2)                                              # > one lease (Redis's clock)
    for _ in range(2):  # a's grant has ended too; b's second sync sees the whole rate
        g = c.share("api", "b", 1, 1e6, CAP, 0, 1)
    assert g.rate == pytest.approx(CAP)
    assert _sum_live(r, "shmguard:rate:api") <= CAP
