"""fleet.c and the fleet hooks of rate.c / breaker.c, at the C level (manual clock, no Redis).

Exact step tables: the agent lease (take, renew, expire, take over, release),
the stale-agent fence, the share applied to the limiter (rate and burst in
proportion, debt kept in tokens), hostile fleet-area words, and the
breaker moves the agent makes.
"""
from __future__ import annotations

import pytest

import shmguard as sg
from shmguard._capi import ffi, lib

NS = 1_000_000_000
T0 = 1_000_000_000_000
POL = sg.Policy(rate=100, burst=10).with_fleet(breaker=False)


def _lease(svc, pid: int, word: int, now: int, lease_ns: int = NS) -> tuple[int, int]:
    w = ffi.new("uint64_t *", word)
    rc = lib.sg_fleet_lease_at(svc.segment.base, svc.segment.size, now, pid, 0, lease_ns, w)
    return rc, w[0]


def _apply(svc, slot, word: int, now: int, ppm: int, force: int = 0) -> int:
    v = ffi.new("struct sg_fleet_view *")
    v.share_ppm, v.mode, v.expires_ns, v.synced_ns, v.hosts, v.force = ppm, 1, now + NS, now, 2, force
    return lib.sg_fleet_apply_at(svc.segment.base, svc.segment.size, slot, now, word, v)


def test_agent_lease_steps(svc) -> None:
    rc, a = _lease(svc, 100, 0, T0)
    assert rc == lib.SG_OK and (a >> 32) & 0x3FF == 1
    assert _lease(svc, 200, 0, T0 + NS // 2)[0] == lib.SG_E_BUSY       # live: B waits
    rc, a2 = _lease(svc, 100, a, T0 + NS // 2)                          # A renews, same epoch
    assert rc == lib.SG_OK and a2 >> 32 == a >> 32
    assert _lease(svc, 200, 0, T0 + NS)[0] == lib.SG_E_BUSY             # renewed: still live
    rc, b = _lease(svc, 200, 0, T0 + 2 * NS)                            # A stalled past it
    assert rc == lib.SG_OK and (b >> 32) & 0x3FF == 2
    assert _lease(svc, 100, a2, T0 + 2 * NS)[0] == lib.SG_E_BUSY        # A resumes: refused
    assert lib.sg_fleet_release(svc.segment.base, svc.segment.size, b) == lib.SG_OK
    rc, a3 = _lease(svc, 100, 0, T0 + 2 * NS)                           # free at once
    assert rc == lib.SG_OK and (a3 >> 32) & 0x3FF == 3
    v = ffi.new("struct sg_fleet_agent_view *")
    lib.sg_fleet_agent_at(svc.segment.base, svc.segment.size, T0 + 2 * NS, v)
    assert (v.pid, v.epoch, v.live) == (100, 3, 1)


def test_bad_lease_arguments(svc) -> None:
    w = ffi.new("uint64_t *", 0)
    base, size = svc.segment.base, svc.segment.size
    assert lib.sg_fleet_lease_at(base, size, T0, 0, 0, NS, w) == lib.SG_E_ARG          # pid 0
    assert lib.sg_fleet_lease_at(base, size, T0, 1 << 22, 0, NS, w) == lib.SG_E_ARG    # pid too big
    assert lib.sg_fleet_lease_at(base, size, T0, 1, 0, 0, w) == lib.SG_E_ARG           # no lease
    assert lib.sg_fleet_lease_at(base, 100, T0, 1, 0, NS, w) == lib.SG_E_ARG           # short map
    assert lib.sg_fleet_release(base, size, 0) == lib.SG_E_ARG


def test_share_scales_rate_and_burst_and_keeps_the_debt(svc) -> None:
    svc.register_endpoint("api", POL)
    lim, slot = svc.limiter("api"), svc._endpoint("api").h.slot
    allow = lambda: lim.allow(1, sg.Priority.HIGH)  # noqa: E731 (HIGH sees the whole burst)
    _, word = _lease(svc, 100, 0, T0)
    assert _apply(svc, slot, word, T0, 500_000) == lib.SG_OK             # half: 50/s, burst 5
    assert [allow() for _ in range(6)] == [True] * 5 + [False]
    svc.advance(0.02)                                                    # one token at 50/s
    assert [allow() for _ in range(2)] == [True, False]
    # the debt is kept in tokens (5 of them): the whole burst of 10 leaves 5 free
    assert _apply(svc, slot, word, svc.now_ns(), 1_000_000) == lib.SG_OK
    assert [allow() for _ in range(6)] == [True] * 5 + [False]
    # and back to half: 10 tokens of debt (200 ms) against a burst of 5 (100 ms): the next
    # token conforms after 6 tokens at 50/s (120 ms)
    assert _apply(svc, slot, word, svc.now_ns(), 500_000) == lib.SG_OK
    svc.advance(0.119)
    assert allow() is False
    svc.advance(0.002)
    assert [allow() for _ in range(2)] == [True, False]
    assert _apply(svc, slot, word, svc.now_ns(), 1_000_000) == lib.SG_OK
    st = svc.stats("api").fleet
    assert st.mode == "granted" and st.rate == pytest.approx(100) and st.burst == 10


def test_a_stale_agents_apply_is_refused(svc) -> None:
    svc.register_endpoint("api", POL)
    slot = svc._endpoint("api").h.slot
    _, a = _lease(svc, 100, 0, T0)
    _, b = _lease(svc, 200, 0, T0 + 2 * NS)                               # A's lease expired
    assert _apply(svc, slot, a, T0 + 2 * NS, 10) == lib.SG_E_BUSY         # not A's lease any more
    assert _apply(svc, slot, b, T0 + 2 * NS, 300_000) == lib.SG_OK
    v = ffi.new("struct sg_fleet_view *")
    lib.sg_fleet_snapshot(slot, v)
    assert (v.share_ppm, v.epoch) == (300_000, 2)


def test_hostile_fleet_area_and_arguments(svc) -> None:
    svc.register_endpoint("api", POL)
    slot = svc._endpoint("api").h.slot
    area = ffi.cast("uint64_t *", ffi.cast("char *", slot) + 31 * 64)
    for i in range(8):
        area[i] = 0xFFFF_FFFF_FFFF_FFFF
    v = ffi.new("struct sg_fleet_view *")
    assert lib.sg_fleet_snapshot(slot, v) == lib.SG_OK
    assert v.share_ppm <= 1_000_000 and v.mode <= 255
    st = svc.stats("api").fleet
    assert st is not None and 0 < st.rate <= 100
    _, w = _lease(svc, 100, 0, T0)
    for ppm in (0, 1_000_001):
        assert _apply(svc, slot, w, T0, ppm) == lib.SG_E_ARG
    # a newer epoch in the (hostile) area refuses our writes: never a crash
    assert _apply(svc, slot, w, T0, 500_000) in (lib.SG_OK, lib.SG_E_BUSY)
    assert lib.sg_limiter_share_at(slot, T0, 0, 0) == lib.SG_E_ARG


def test_breaker_moves_of_the_agent(svc) -> None:
    svc.register_endpoint("db", sg.Policy(open_timeout=10.0).with_fleet(rate=False))
    slot, br = svc._endpoint("db").h.slot, svc.breaker("db")
    gen = br.snapshot().generation
    assert lib.sg_breaker_fleet_at(slot, T0, gen + 1, lib.SG_OPEN, 4 * NS) == lib.SG_E_BUSY
    assert lib.sg_breaker_fleet_at(slot, T0, gen, lib.SG_HALF_OPEN, 0) == lib.SG_E_ARG
    assert lib.sg_breaker_fleet_at(slot, T0, gen, lib.SG_OPEN, 4 * NS) == lib.SG_OK
    snap = br.snapshot()
    assert snap.state == sg.BreakerState.OPEN and snap.generation == gen + 1
    assert snap.open_remaining == pytest.approx(4.0, abs=0.002)          # 2^20 ns units
    assert lib.sg_breaker_fleet_at(slot, T0, gen + 1, lib.SG_CLOSED, 0) == lib.SG_OK
    assert br.snapshot().state == sg.BreakerState.CLOSED
    br.force_open()                                                        # manual control wins
    g = br.snapshot().generation
    assert lib.sg_breaker_fleet_at(slot, T0, g, lib.SG_CLOSED, 0) == lib.SG_E_BUSY


def test_a_stale_agents_share_never_lands_over_its_successors(svc) -> None:
    """An agent stopped after its apply's checks (lease, epoch, its CAS of the fleet word)
    resumes into the rate change: the fleet word is its successor's now, so it is refused."""
    svc.register_endpoint("api", POL)
    lim, slot = svc.limiter("api"), svc._endpoint("api").h.slot
    _, a = _lease(svc, 100, 0, T0)
    assert _apply(svc, slot, a, T0, 200_000) == lib.SG_OK                  # A: 20/s, burst 2
    stale = ((a >> 32) & 0x3FF) << 32 | 900_000                            # A's next fleet word
    _, b = _lease(svc, 200, 0, T0 + 2 * NS)                                # A stopped: B takes over
    svc.set_clock(T0 + 2 * NS)
    assert _apply(svc, slot, b, svc.now_ns(), 300_000) == lib.SG_OK       # B: 30/s, burst 3
    # A resumes where its apply calls the rate change with its (older) word
    assert lib.sg_limiter_share_at(slot, svc.now_ns(), 900_000, stale) == lib.SG_E_GONE
    assert [lim.allow(1, sg.Priority.HIGH) for _ in range(4)] == [True] * 3 + [False]
    # the claim was given back: B's next share applies at once
    assert _apply(svc, slot, b, svc.now_ns(), 500_000, force=1) == lib.SG_OK


def test_adjust_rate_never_lifts_a_fleet_endpoint_above_its_share(svc) -> None:
    svc.register_endpoint("api", POL)
    lim, slot = svc.limiter("api"), svc._endpoint("api").h.slot
    allow = lambda: lim.allow(1, sg.Priority.HIGH)  # noqa: E731
    _, word = _lease(svc, 100, 0, T0)
    svc.set_clock(T0)
    assert _apply(svc, slot, word, svc.now_ns(), 500_000) == lib.SG_OK     # 50/s, burst 5
    svc.adjust_rate("api", 1.0)                                            # would be the fleet's 100/s
    assert [allow() for _ in range(6)] == [True] * 5 + [False]
    assert svc.stats("api").limiter_metrics.effective_rate <= 50.0 + 1e-6
    svc.adjust_rate("api", 0.2)                                            # below the share: applies
    svc.advance(10.0)
    assert [allow() for _ in range(3)] == [True] * 2 + [False]


def test_a_lease_word_left_a_month_ago_is_expired(svc) -> None:
    """The 32-bit deadline wraps after ~52 days: a word left by a holder long dead must not
    read as live again (26 to 52 days later) and keep every process from taking the lease."""
    rc, a = _lease(svc, 100, 0, T0)
    assert rc == lib.SG_OK
    later = T0 + 30 * 86400 * NS
    v = ffi.new("struct sg_fleet_agent_view *")
    lib.sg_fleet_agent_at(svc.segment.base, svc.segment.size, later, v)
    assert v.live == 0 and v.remaining_ns == 0
    rc, b = _lease(svc, 200, 0, later)
    assert rc == lib.SG_OK and (b >> 32) & 0x3FF == 2
    assert _lease(svc, 100, a, later)[0] == lib.SG_E_BUSY                # the old holder: refused
