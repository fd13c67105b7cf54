"""Redis unreachable: a host keeps its grant to the lease's end, then the safe share.

In-process services (their agent threads are real; Redis is a real server
that is killed). Times appear only as generous deadlines and as "not before
the grant's end", which the agent cannot violate however slow the machine.
"""
from __future__ import annotations

import time
import warnings

import pytest

import shmguard as sg
from shmguard.fleet.sync import FleetWarning

POL = sg.Policy(rate=300, burst=30).with_fleet()


def _wait(pred, what: str, limit: float = 10.0):
    deadline = time.monotonic() + limit
    while not (v := pred()):
        assert time.monotonic() < deadline, what
        time.sleep(0.01)
    return v


def _hosts(segnames, url, **kw):
    cfg = sg.RedisFleet(url, refresh=0.05, lease=1.0, timeout=0.1, **kw)
    svcs = [sg.ResilienceService(n, capacity=8, fleet=cfg, host_id=f"h{i}")
            for i, n in enumerate(segnames[:2])]
    for s in svcs:
        s.register_endpoint("api", POL)
    _wait(lambda: all(s.stats("api").fleet.mode == "granted" and s.stats("api").fleet.hosts == 2
                      for s in svcs), "both hosts granted")
    return svcs


def _safe_after_the_grant(svc, redis_server) -> sg.FleetStats:
    st = svc.stats("api").fleet
    ends = time.monotonic() + st.lease_left  # the grant in force when Redis went away
    redis_server.kill()
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        st = _wait(lambda: (f := svc.stats("api").fleet).mode == "safe" and f, "safe share")
        assert time.monotonic() >= ends  # never before the grant ran out
        time.sleep(0.1)
    assert any(issubclass(w.category, FleetWarning) and "safe share" in str(w.message)
               for w in seen)
    return st


def test_unreachable_keeps_the_grant_then_fleet_rate_over_hosts_last_seen(
        redis_server, segnames) -> None:
    svcs = _hosts(segnames, redis_server.url)
    try:
        st = _safe_after_the_grant(svcs[0], redis_server)
        assert st.rate == pytest.approx(150, rel=1e-5) and st.hosts == 2
        assert st.errors > 0 and st.lease_left == 0
        assert svcs[0].stats("api").limiter_metrics.effective_rate == pytest.approx(150, rel=1e-3)
        # back: the next sync grants again (the first host to ask only gets unleased capacity)
        redis_server.start()
        _wait(lambda: svcs[0].stats("api").fleet.mode == "granted", "granted again")
    finally:
        for s in svcs:
            s.close()


def test_unreachable_uses_the_configured_offline_rate(redis_server, segnames) -> None:
    svcs = _hosts(segnames, redis_server.url, offline_rate=40)
    try:
        st = _safe_after_the_grant(svcs[1], redis_server)
        assert st.rate == pytest.approx(40, rel=1e-5)
    finally:
        for s in svcs:
            s.close()


def test_a_host_never_granted_falls_to_the_fleet_rate_over_one_host(segnames) -> None:
    # no Redis listening at all: never granted, so the safe share is rate / 1 host
    cfg = sg.RedisFleet("redis://127.0.0.1:1/0", refresh=0.05, lease=1.0, timeout=0.1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FleetWarning)
        svc = sg.ResilienceService(segnames[0], capacity=8, lazy=True, fleet=cfg, host_id="h0")
        try:
            svc.register_endpoint("api", POL)
            st = _wait(lambda: (f := svc.stats("api").fleet).mode == "safe" and f, "safe share")
            assert st.rate == pytest.approx(300, rel=1e-5) and st.errors > 0
        finally:
            svc.close()


def test_the_core_never_imports_redis_without_fleet() -> None:
    import subprocess
    import sys
    code = ("import sys, shmguard as sg; sg.Policy(rate=1).with_fleet(); "
            "print('redis' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_closing_while_redis_hangs_never_touches_the_unmapped_segment(segnames) -> None:
    import socket
    import threading
    # a "Redis" that accepts and never answers: the agent is inside a call at close()
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        srv.settimeout(0.05)
        while not stop.is_set():
            try:
                conns.append(srv.accept()[0])
            except OSError:
                pass
    t = threading.Thread(target=accept, daemon=True)
    t.start()
    url = f"redis://127.0.0.1:{srv.getsockname()[1]}/0"
    try:
        for _ in range(5):
            cfg = sg.RedisFleet(url, refresh=0.05, lease=1.0, timeout=0.3)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", FleetWarning)
                svc = sg.ResilienceService(segnames[0], capacity=8, fleet=cfg, host_id="h0")
                svc.register_endpoint("api", POL)
                time.sleep(0.1)   # the agent waits on the silent server
                svc.close()       # unmaps while the call is out: the agent must stay out
                agent = svc._fleet
                agent._thread.join(timeout=5)
                assert not agent._thread.is_alive()
            sg.unlink(segnames[0])
    finally:
        stop.set()
        t.join()
        for c in conns:
            c.close()
        srv.close()


def test_an_endpoint_registered_again_in_its_slot_is_synced_again(redis_server, segnames) -> None:
    """The agent's handle of a removed endpoint is not reused for the slot's next endpoint."""
    cfg = sg.RedisFleet(redis_server.url, refresh=0.05, lease=1.0, timeout=0.1)
    with sg.ResilienceService(segnames[0], capacity=8, fleet=cfg, host_id="h0") as svc:
        svc.register_endpoint("api", POL)
        _wait(lambda: svc.stats("api").fleet.mode == "granted", "first grant")
        svc.unregister_endpoint("api")
        svc.register_endpoint("api", POL)  # the same name: the same slot, a new incarnation
        assert svc.stats("api").fleet.mode == "none"
        _wait(lambda: svc.stats("api").fleet.mode == "granted", "grant of the new endpoint")
        assert svc.stats("api").fleet.rate == pytest.approx(300, rel=1e-5)


def test_a_slow_but_live_agent_keeps_its_lease_through_a_long_sync(redis_server, segnames) -> None:
    """Each Redis call takes 0.3 s of the (manual) clock, more than the agent lease (0.5 s) over
    two calls: the holder renews its lease between endpoints, so the last endpoint is reached too
    (before, the lease ran out mid-sync and the endpoints after it were never synced, keeping
    whatever share they had however long Redis stayed slow)."""
    from shmguard.fleet.agent import Agent
    cfg = sg.RedisFleet(redis_server.url, refresh=0.25, lease=1.0)
    with sg.ResilienceService(segnames[0], capacity=8, manual_clock=True) as svc:
        svc.set_clock(10 * 10**9)
        for n in ("a", "b", "c"):
            svc.register_endpoint(n, POL.with_fleet(breaker=False))
        agent = Agent(lambda: svc.segment, cfg, "h0")
        share = agent.coordinator().share

        def slow_share(*args):
            svc.advance(0.3)
            return share(*args)

        agent.coordinator().share = slow_share  # type: ignore[method-assign]
        try:
            with agent._mapped:
                assert agent._lease()
                agent.tick()
            assert [svc.stats(n).fleet.mode for n in ("a", "b", "c")] == ["granted"] * 3
            assert agent.syncs == 1 and agent.holds()
        finally:
            agent.stop()
