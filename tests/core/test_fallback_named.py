"""Named fallback chains count host-wide, beside the segment, and show in ``shmguard inspect``."""
from __future__ import annotations

import json
import multiprocessing
import os

import pytest

import shmguard as sg
from shmguard.segment import SHM_DIR

from _cli_helpers import cli


def replica(key: str) -> str:
    return f"replica:{key}"


def down(key: str) -> str:
    raise ConnectionError(f"down:{key}")


def _chain_file(segname: str, name: str) -> str:
    return os.path.join(SHM_DIR, f"shmguard.{os.geteuid()}.{segname}~fc~{name}")


def _register(svc: sg.ResilienceService) -> None:
    for name in ("primary", "replica"):
        svc.register_endpoint(name, sg.Policy(failure_exceptions=(ConnectionError,)))


def _worker(segname: str, calls: int) -> None:
    svc = sg.ResilienceService(segname)
    chain = svc.fallback_chain([("primary", down), ("replica", replica)], name="users")
    for i in range(calls):
        assert chain(str(i)) == f"replica:{i}"
    svc.close()


@pytest.fixture
def real(segname: str):
    svc = sg.ResilienceService(segname, capacity=16)
    _register(svc)
    svc.breaker("primary").force_open()
    yield svc
    svc.close()


def test_every_process_counts_into_one_chain(real: sg.ResilienceService, segname: str) -> None:
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_worker, args=(segname, 50)) for _ in range(3)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
    assert [p.exitcode for p in procs] == [0, 0, 0]
    chain = real.fallback_chain([("primary", down), ("replica", replica)], name="users")
    assert chain.stats() == {"primary": 0, "replica": 150, "last": 0, "failed": 0}


def test_last_and_failed_are_counted_host_wide(real: sg.ResilienceService) -> None:
    real.breaker("replica").force_open()
    with_last = real.fallback_chain([("primary", down), ("replica", replica)],
                                    last=lambda exc: "cached", name="with-last")
    without = real.fallback_chain([("primary", down), ("replica", replica)], name="bare")
    assert [with_last("a"), with_last("b")] == ["cached", "cached"]
    with pytest.raises(sg.CircuitOpenError):
        without("c")
    again = real.fallback_chain([("primary", down), ("replica", replica)], name="bare")
    assert again.stats() == {"primary": 0, "replica": 0, "last": 0, "failed": 1}
    assert with_last.stats()["last"] == 2


def test_a_name_is_one_list_of_steps(real: sg.ResilienceService) -> None:
    real.fallback_chain([("primary", down), ("replica", replica)], name="users")
    with pytest.raises(sg.PolicyError, match=r"'users'.*\['primary', 'replica'\].*\['replica'\]"):
        real.fallback_chain([("replica", replica)], name="users")
    with pytest.raises(sg.PolicyError, match="each endpoint once"):
        real.fallback_chain([("replica", replica), ("replica", replica)], name="twice")
    with pytest.raises(sg.InvalidNameError):
        real.fallback_chain([("replica", replica)], name="no/slash")


def test_inspect_shows_named_chains(real: sg.ResilienceService, segname: str) -> None:
    chain = real.fallback_chain([("primary", down), ("replica", replica)], name="users")
    for i in range(3):
        chain(str(i))
    snap = json.loads(cli("inspect", segname, "--json").stdout)
    assert snap["chains"] == [{"name": "users", "creator_pid": os.getpid(), "last": 0,
                               "failed": 0, "steps": [{"endpoint": "primary", "served": 0},
                                                      {"endpoint": "replica", "served": 3}]}]
    text = cli("inspect", segname).stdout
    assert "FALLBACK CHAIN" in text and "users" in text and "replica 3" in text
    prom = cli("inspect", segname, "--prometheus").stdout
    assert (f'shmguard_chain_served_total{{segment="{segname}",chain="users",step="replica"}} 3'
            in prom)


def test_a_scribbled_chain_is_reported_not_trusted(real: sg.ResilienceService,
                                                   segname: str) -> None:
    real.fallback_chain([("primary", down), ("replica", replica)], name="users")
    path = _chain_file(segname, "users")
    with open(path, "r+b") as f:
        f.seek(12)               # the step count: 200 steps cannot be
        f.write((200).to_bytes(4, "little"))
    with pytest.raises(sg.SegmentCorruptError, match="'users'.*corrupt"):
        real.fallback_chain([("primary", down), ("replica", replica)], name="users")
    snap = json.loads(cli("inspect", segname, "--json").stdout)
    assert snap["chains"][0]["name"] == "users" and "corrupt" in snap["chains"][0]["error"]


def test_unlinking_the_segment_removes_its_chains(segname: str) -> None:
    svc = sg.ResilienceService(segname, capacity=16)
    _register(svc)
    svc.fallback_chain([("primary", down), ("replica", replica)], name="users")
    assert os.path.exists(_chain_file(segname, "users"))
    assert sg.list_segments().count(segname) == 1   # the chain is no segment of its own
    svc.close()
    sg.unlink(segname)
    assert not os.path.exists(_chain_file(segname, "users"))


def test_a_chain_whose_creator_died_before_writing_it_is_replaced(real: sg.ResilienceService,
                                                                  segname: str) -> None:
    import posix_ipc
    from shmguard.segment import object_name
    # a creator killed right after O_CREAT|O_EXCL: a sized object that was never written
    posix_ipc.SharedMemory(object_name(segname) + "~fc~users", posix_ipc.O_CREX, mode=0o600,
                           size=1024).close_fd()
    snap = json.loads(cli("inspect", segname, "--json").stdout)
    assert "never initialised" in snap["chains"][0]["error"]   # reported, not trusted
    chain = real.fallback_chain([("primary", down), ("replica", replica)], name="users")
    assert chain("a") == "replica:a"
    assert chain.stats() == {"primary": 0, "replica": 1, "last": 0, "failed": 0}
