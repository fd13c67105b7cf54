"""Life cycles in real stacks: no leaks without the cyclic GC, lazy attach, clear errors after close."""
from __future__ import annotations

import asyncio
import gc
import os
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator

import pytest

import shmguard as sg
from shmguard.segment import SHM_DIR

from _cli_helpers import cli, shm  # noqa: E402


def _mapped(segname: str) -> int:
    path = os.path.join(SHM_DIR, f"shmguard.{os.geteuid()}.{segname}")
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if line.rstrip().endswith(path))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_gc() -> Iterator[None]:
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def test_executor_batches_leave_no_mappings_or_fds_without_gc(segname: str, no_gc: None) -> None:
    with sg.ResilienceService(segname) as keep, ThreadPoolExecutor(2) as pool:
        keep.register_endpoint("e", sg.Policy())
        sg.ResilientExecutor(pool, segment=segname).submit("e", abs, -1).result()
        maps0, fds0 = _mapped(segname), _fds()   # the pool threads' cached attachment included
        for i in range(200):
            with sg.ResilientExecutor(ThreadPoolExecutor(1), segment=segname) as ex:
                assert list(ex.map("e", abs, [-i, i])) == [i, i]
            assert ex.service.closed
        assert (_mapped(segname), _fds()) == (maps0, fds0)
        with pytest.raises(sg.ServiceClosedError):
            ex.submit("new-endpoint", abs, 1)
    sg.executor.detach(segname)


def test_dropped_services_unmap_without_the_cyclic_gc(segname: str, no_gc: None) -> None:
    with sg.ResilienceService(segname):
        maps0, fds0 = _mapped(segname), _fds()
        for _ in range(200):
            svc = sg.ResilienceService(segname)
            svc.register_endpoint("e", sg.Policy(rate=1e6))
            svc.execute("e", abs, 1)
            svc.stats("e"), svc.breaker("e"), svc.limiter("e")
            del svc
        assert (_mapped(segname), _fds()) == (maps0, fds0)
        assert gc.collect() == 0   # nothing was waiting for the cyclic collector


def test_lazy_service_touches_nothing_until_first_use(segname: str) -> None:
    svc = sg.ResilienceService(segname, lazy=True)
    assert not os.path.exists(shm(segname)) and not svc.attached and _mapped(segname) == 0
    svc.register_endpoint("e", sg.Policy())
    assert os.path.exists(shm(segname)) and svc.attached and _mapped(segname) == 1
    svc.close()
    assert _mapped(segname) == 0


def test_lazy_attach_errors_come_with_the_first_use(segname: str) -> None:
    svc = sg.ResilienceService(segname, lazy=True, create=False)
    with pytest.raises(sg.SegmentNotFoundError, match=f"segment '{segname}' does not exist"):
        svc.execute("e", abs, 1)
    with pytest.raises(sg.InvalidNameError):
        sg.ResilienceService("bad name", lazy=True)   # names are still checked at once
    with pytest.raises(sg.SegmentError, match="capacity must be 1..65536, got 0"):
        sg.ResilienceService(segname, lazy=True, capacity=0)   # and so is the capacity


def test_rm_is_not_blocked_by_a_process_that_only_imported_the_module(segname: str,
                                                                      tmp_path: Any) -> None:
    sg.ResilienceService(segname).close()
    (tmp_path / "tasks.py").write_text(textwrap.dedent(f"""
        import shmguard as sg
        svc = sg.ResilienceService({segname!r}, lazy=True)   # import time: no attach
    """))
    code = "import sys, tasks; print('ready', flush=True); sys.stdin.read()"
    p = subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None and p.stdout.readline() == "ready\n"
        r = cli("rm", segname)
        assert not os.path.exists(shm(segname)), r.stdout
    finally:
        p.communicate("", timeout=30)


async def _coro() -> int:
    return 1


CALLS: list[tuple[str, Callable[[sg.ResilienceService], Any]]] = [
    ("execute", lambda s: s.execute("e", abs, 1)),
    ("execute timeout", lambda s: s.execute("e", abs, 1, timeout=1.0)),
    ("execute_async", lambda s: asyncio.run(s.execute_async("e", _coro, timeout=1.0))),
    ("admit", lambda s: s.admit("e")),
    ("stats", lambda s: s.stats("e")),
    ("breaker", lambda s: s.breaker("e").allow()),
    ("limiter", lambda s: s.limiter("e").allow()),
    ("reserve", lambda s: s.limiter("e").reserve(max_wait=1.0)),
    ("register", lambda s: s.register_endpoint("other", sg.Policy())),
    ("endpoints", lambda s: s.endpoints()),
    ("adjust_rate", lambda s: s.adjust_rate("e", 0.5)),
]


@pytest.mark.parametrize("lazy", [False, True])
def test_after_close_every_call_raises_service_closed(segname: str, lazy: bool) -> None:
    svc = sg.ResilienceService(segname, lazy=lazy)
    svc.register_endpoint("e", sg.Policy(rate=10, burst=5))
    svc.unlink()
    svc.close()
    svc.close()   # idempotent
    for what, call in CALLS:
        with pytest.raises(sg.ServiceClosedError, match="closed in this process"):
            call(svc)
            pytest.fail(f"{what} did not raise")


@pytest.mark.parametrize("priority, message", [
    (5, "priority must be a shmguard.Priority, got 5"),
    ("HIGH", "got 'HIGH' (sg.Priority.HIGH)"),
    (True, "got True"),
])
def test_wrong_priority_types_are_named(svc: sg.ResilienceService, priority: Any,
                                        message: str) -> None:
    svc.register_endpoint("e", sg.Policy())
    for call in (lambda: svc.execute("e", abs, 1, priority=priority),
                 lambda: svc.execute("e", abs, 1, priority=priority, timeout=1.0),
                 lambda: svc.admit("e", priority),
                 lambda: asyncio.run(svc.execute_async("e", _coro, priority=priority))):
        with pytest.raises(sg.PolicyError) as info:
            call()
        assert message in str(info.value)


def test_handles_made_before_close_raise_service_closed(segname: str) -> None:
    svc = sg.ResilienceService(segname)
    svc.register_endpoint("e", sg.Policy(rate=10, burst=5))
    br, lim = svc.breaker("e"), svc.limiter("e")
    permit = br.allow()

    @svc.protect("e")
    def protected() -> int:
        return 1

    def guarded() -> None:
        with svc.guard("e"):
            pass
    svc.unlink()
    svc.close()
    for call in (br.allow, lim.allow, lambda: lim.wait(timeout=1.0), permit.success, br.reset,
                 protected, guarded, lambda: lim.hold(1.0), lim.delay, svc.now_ns,
                 lambda: svc.record("e", 0, sg.Outcome.SUCCESS)):
        with pytest.raises(sg.ServiceClosedError):
            call()


def test_a_pickled_lazy_service_stays_lazy(segname: str) -> None:
    import pickle
    svc = sg.ResilienceService(segname, lazy=True)
    copy = pickle.loads(pickle.dumps(svc))
    assert not svc.attached and not copy.attached and not os.path.exists(shm(segname))
    copy.register_endpoint("e", sg.Policy())           # first use creates, as the original would
    assert os.path.exists(shm(segname)) and svc.endpoints() == ["e"]
    attached = pickle.loads(pickle.dumps(svc))          # attached: pickles as "attach by name"
    assert attached.attached and attached.endpoints() == ["e"]
    for s in (svc, copy, attached):
        s.close()
