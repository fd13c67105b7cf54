"""Both paths: the core specification again with the one-crossing extension switched off.

Every door has a C fast path (shmguard._hot) and an equivalent cffi path used
when the extension is missing or stale. SHMGUARD_NO_HOT=1 forces the cffi
path; the core tests must pass on it unchanged.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

CORE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(os.environ.get("SHMGUARD_NO_HOT") == "1", reason="already the cffi path")
def test_the_core_suite_passes_on_the_cffi_path() -> None:
    env = dict(os.environ, SHMGUARD_NO_HOT="1",
               SHMGUARD_TEST_TOKEN=uuid.uuid4().hex[:6])  # its own segments, checked by itself
    files = [os.path.join(CORE, f) for f in ("test_service.py", "test_breaker_steps.py",
                                             "test_aio.py", "test_executor.py",
                                             "test_hardening_limits.py", "test_gcra_steps.py", "test_doors.py",
                                             "test_deadlines.py", "test_fallback.py", "test_keyed.py",
                                             "test_bulkhead.py", "test_bulkhead_steps.py",
                                             "test_throttle.py", "test_endpoint_lifecycle.py")]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        "-p", "no:xdist", *files], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout.splitlines()[-1]


@pytest.mark.skipif(os.environ.get("SHMGUARD_NO_HOT") == "1", reason="the C method is off")
def test_execute_is_the_c_method_and_reads_as_the_python_one(segname: str) -> None:
    import inspect

    import shmguard as sg
    from shmguard._calls import Calls

    assert type(Calls.__dict__["execute"]).__name__ == "Execute"
    assert type(Calls.__dict__["guard"]).__name__ == "Execute"
    py = Calls.__dict__["execute"].__wrapped__
    assert sg.ResilienceService.execute.__doc__ == py.__doc__
    execute = sg.ResilienceService(segname).execute      # the method keeps its service
    assert str(inspect.signature(execute)).startswith("(endpoint: 'str', fn: ")
    execute.__self__.register_endpoint("e", sg.Policy(rate=1e6))
    calls: list[str] = []

    def fn(*args: object, **kw: object) -> tuple[object, ...]:
        calls.append("in")
        return args + tuple(sorted(kw.items()))

    assert execute("e", fn) == ()                          # the C path
    assert execute("e", fn, 1, 2) == (1, 2)
    assert execute("e", fn, 1, x=3) == (1, ("x", 3))       # keywords: the Python method
    with pytest.raises(TypeError):
        execute("e")                                       # no fn: the Python method says why
    seen: list[str] = []
    execute.__self__.on_metrics_update = lambda ep, state, st: seen.append(ep)
    execute.__self__.metrics_interval = 0.0
    execute("e", fn)                                       # a callback: the Python method
    assert seen == ["e"] and calls == ["in"] * 4
    assert execute.__self__.stats("e").breaker.successes == 4
    execute.__self__.on_metrics_update = None
    svc = execute.__self__
    assert type(svc.guard("e")).__name__ == "Guard"        # the C method's C guard
    with svc.guard("e"):
        pass
    with pytest.raises(ZeroDivisionError):
        with svc.guard("e"):
            1 / 0
    assert type(svc.guard("e", timeout=1.0)).__name__ == "_Guard"   # keywords: Python
    b = svc.stats("e").breaker
    assert (b.successes, b.failures + b.ignored) == (5, 1)
    execute.__self__.close()
    with pytest.raises(sg.ServiceClosedError):
        execute("e", fn)
