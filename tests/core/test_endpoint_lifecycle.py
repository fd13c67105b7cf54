"""Unknown endpoints are never created by reads; removed endpoints free their slot for good.

A handle (breaker, limiter, bulkhead ticket, a cached endpoint) of a removed
endpoint gets EndpointRemovedError and never reads or writes the state of
the endpoint that reuses its slot (each slot publish is a new incarnation).
"""
from __future__ import annotations

import pytest

import shmguard as sg
from _cli_helpers import cli, one_line_error

T0 = 1_000_000_000_000


@pytest.fixture
def one(segname: str):
    """A one-slot segment: a removed endpoint's slot is the only one to reuse."""
    s = sg.ResilienceService(segname, capacity=1, manual_clock=True)
    s.set_clock(T0)
    yield s
    s.close()
    s.unlink()


def test_reads_of_an_unknown_endpoint_raise_and_create_nothing(one, svc):
    for s in (one, svc):  # svc has a default_policy: reads still never register
        for read in (s.breaker_state, s.stats):
            with pytest.raises(sg.UnknownEndpointError, match="'typo'") as ei:
                read("typo")
            assert isinstance(ei.value, KeyError) and isinstance(ei.value, sg.ShmguardError)
    with pytest.raises(sg.UnknownEndpointError):
        one.limiter("typo").tokens()
    assert one.endpoints() == svc.endpoints() == []
    assert one.segment.refresh().used == 0


def test_execute_on_an_unknown_endpoint_needs_default_policy(one, segname):
    for call in (lambda: one.execute("nope", lambda: 1), lambda: one.breaker("nope")):
        with pytest.raises(sg.UnknownEndpointError):
            call()
    assert one.endpoints() == []
    auto = sg.ResilienceService(segname, create=False, default_policy=sg.Policy(rate=5, burst=10))
    try:
        assert auto.execute("new", lambda: 7) == 7          # registered on first use
        assert one.execute("new", lambda: 8) == 8           # known to the segment: works here
        assert one.stats("new").rate == 5
    finally:
        auto.close()


def test_removed_endpoint_handles_never_touch_the_slots_next_owner(one):
    one.register_endpoint("a", sg.Policy(rate=10, burst=2, max_concurrent=2))
    lim, br, bh = one.limiter("a"), one.breaker("a"), one.bulkhead("a")
    ticket = bh.try_acquire()
    assert ticket is not None and lim.allow()
    one.unregister_endpoint("a")
    assert one.endpoints() == []
    one.register_endpoint("c", sg.Policy(rate=1, burst=1, max_concurrent=3))  # the same slot
    for call in (lim.allow, br.allow, bh.try_acquire, lim.tokens, br.force_open):
        with pytest.raises(sg.EndpointRemovedError, match="'a' was removed"):
            call()
    ticket.release()  # gives nothing back to "c"
    st = one.stats("c")
    assert st.limiter_metrics.accepted == 0 and st.bulkhead.in_flight == 0
    assert st.breaker_state == sg.BreakerState.CLOSED and st.rate == 1
    assert one.limiter("c").allow() and not one.limiter("c").allow()


def test_another_service_holding_the_endpoint_follows_the_name(one, segname):
    other = sg.ResilienceService(segname, create=False)  # its own handles, as another process
    try:
        one.register_endpoint("a", sg.Policy(rate=100, burst=5))
        assert other.execute("a", lambda: 1) == 1
        one.unregister_endpoint("a")
        with pytest.raises(sg.UnknownEndpointError):
            other.execute("a", lambda: 2)                 # gone, and no default policy
        one.register_endpoint("a", sg.Policy(rate=100, burst=3))  # a new incarnation
        assert other.execute("a", lambda: 3) == 3         # looked up again by name
        assert one.stats("a").limiter_metrics.accepted == 1
    finally:
        other.close()


def test_unregister_of_an_unknown_endpoint_raises(svc):
    with pytest.raises(sg.UnknownEndpointError):
        svc.unregister_endpoint("nope")


def test_removed_slots_keep_other_names_findable(segname):
    s = sg.ResilienceService(segname, capacity=4, manual_clock=True)
    try:
        names = [f"e{i}" for i in range(4)]
        for n in names:
            s.register_endpoint(n)
        for n in names[:2]:
            s.unregister_endpoint(n)
        assert s.endpoints() == names[2:]
        for n in names[2:]:
            assert s.stats(n).endpoint == n  # lookups pass removed slots
        for n in ("x", "y"):
            s.register_endpoint(n)
        with pytest.raises(sg.CapacityError):
            s.register_endpoint("z")
        assert s.endpoints() == sorted(names[2:] + ["x", "y"])
    finally:
        s.close()
        s.unlink()


def test_cli_rm_endpoint(svc, segname):
    svc.register_endpoint("a")
    assert "removed" in cli("rm-endpoint", segname, "a").stdout
    assert svc.endpoints() == []
    one_line_error(cli("rm-endpoint", segname, "a", ok=False), "'a'", "not found")
    one_line_error(cli("reset", segname, "typo", ok=False), "'typo'")
    assert svc.endpoints() == []


@pytest.mark.parametrize("command", ["set-rate", "force-open"])
def test_cli_writes_never_land_in_the_slots_next_owner(one, segname, monkeypatch, command):
    """`set-rate a` / `force-open a` racing a removal of "a" and a reuse of its slot by "b"
    (between the name lookup and the handle) fail; b is untouched."""
    from shmguard.cli import control, inspector
    one.register_endpoint("a", sg.Policy(rate=10, burst=3))
    index = inspector.find_endpoint(one._segment, "a")
    one.unregister_endpoint("a")
    one.register_endpoint("b", sg.Policy(rate=20, burst=5))
    for mod in (inspector, control):  # the stale lookup, wherever it is called from
        monkeypatch.setattr(mod, "find_endpoint", lambda seg, name: index, raising=False)
    with pytest.raises(sg.UnknownEndpointError, match="'a'"):
        if command == "set-rate":
            control.set_rate(one._segment, "a", 1.0, None)
        else:
            control.force(one._segment, "a", command)
    st = one.stats("b")
    assert (st.rate, st.burst, one.breaker_state("b")) == (pytest.approx(20), 5,
                                                           sg.BreakerState.CLOSED)
