"""Fleet breakers: an open or close on one host reaches the others; one host probes.

Three "hosts" (segments with their own host_id) in this process, each with
its agent thread, against a real redis-server. States are polled and
asserted; times appear only as generous deadlines.
"""
from __future__ import annotations

import time

import pytest

import shmguard as sg

POL = sg.Policy(failure_threshold=0.5, min_requests=3, open_timeout=1.0,
                half_open_max_calls=1, probe_lease=2.0).with_fleet(rate=False)
OPEN, CLOSED, HALF = sg.BreakerState.OPEN, sg.BreakerState.CLOSED, sg.BreakerState.HALF_OPEN


@pytest.fixture
def hosts(redis_server, segnames):
    cfg = sg.RedisFleet(redis_server.url, refresh=0.05, lease=1.0, timeout=0.2)
    svcs = [sg.ResilienceService(n, capacity=8, fleet=cfg, host_id=f"h{i}")
            for i, n in enumerate(segnames)]
    for s in svcs:
        s.register_endpoint("db", POL)
    yield svcs
    for s in svcs:
        s.close()


def _fail(svc) -> None:
    def boom() -> None:
        raise ConnectionError("down")
    for _ in range(3):
        with pytest.raises(ConnectionError):
            svc.execute("db", boom)


def _wait(pred, what: str, limit: float, svcs=()):
    deadline = time.monotonic() + limit
    while not pred():
        assert time.monotonic() < deadline, (what, [(str(s.breaker_state("db")),
                                                    s._fleet.last_error) for s in svcs])
        time.sleep(0.005)


def test_an_open_on_one_host_is_seen_open_on_the_others(hosts) -> None:
    _fail(hosts[0])
    assert hosts[0].breaker_state("db") == OPEN
    _wait(lambda: all(s.breaker_state("db") == OPEN for s in hosts), "fleet open", 2.0, hosts)
    left = [s.breaker("db").snapshot().open_remaining for s in hosts]
    # for the remaining time (plus the publish's latency), not a fresh break of 1 s
    assert max(left[1:]) <= left[0] + 0.3, left


def test_one_host_probes_and_its_close_reaches_the_others(hosts) -> None:
    _fail(hosts[1])
    _wait(lambda: all(s.breaker_state("db") == OPEN for s in hosts), "fleet open", 2.0, hosts)
    probes: list[int] = []
    deadline = time.monotonic() + 10
    while not all(s.breaker_state("db") == CLOSED for s in hosts):
        assert time.monotonic() < deadline, [str(s.breaker_state("db")) for s in hosts]
        for i, s in enumerate(hosts):
            try:
                before = s.breaker_state("db")
                s.execute("db", lambda i=i: probes.append(i) if before != CLOSED else None)
            except sg.CircuitOpenError:
                pass
        time.sleep(0.005)
    assert len(probes) == 1, probes  # one probe fleet-wide; the close did the rest


def test_manual_control_stays_host_local(hosts) -> None:
    hosts[2].breaker("db").force_open()
    time.sleep(0.3)  # several refreshes: nothing may propagate
    assert [s.breaker_state("db") for s in hosts[:2]] == [CLOSED, CLOSED]
    hosts[2].breaker("db").reset()


def test_malformed_breaker_record_starts_afresh(hosts, redis_server) -> None:
    r = redis_server.client()
    r.delete("shmguard:breaker:db")
    r.hset("shmguard:breaker:db", mapping={"born": "x", "seq": "-1", "state": "7"})
    _fail(hosts[0])
    _wait(lambda: all(s.breaker_state("db") == OPEN for s in hosts), "fleet open", 2.0, hosts)


def test_without_redis_a_breaker_still_opens_on_its_own_evidence(hosts, redis_server) -> None:
    redis_server.kill()
    _fail(hosts[0])
    assert hosts[0].breaker_state("db") == OPEN  # decided in the segment, no Redis involved
    time.sleep(0.3)  # several refreshes against a dead Redis: errors, no crash, no propagation
    assert [s.breaker_state("db") for s in hosts[1:]] == [CLOSED, CLOSED]
    assert all(s._fleet.last_error.startswith("fleet: Redis") for s in hosts)
