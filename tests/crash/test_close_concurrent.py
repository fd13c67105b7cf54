"""close() while other threads are inside calls: they finish or raise ShmguardError, no crash.

Runs in a subprocess (a crash there is a signal exit, not a dead test
worker), on both paths: shmguard._hot (GIL held in C) and cffi (GIL
released inside every C call).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

SCRIPT = r"""
import sys, threading, time
import shmguard as sg

seg = sys.argv[1]
for rnd in range(int(sys.argv[2])):
    svc = sg.ResilienceService(seg, capacity=8)
    svc.register_endpoint("a", sg.Policy(rate=1e9, burst=10**9, max_concurrent=8))
    lim, br, bh = svc.limiter("a"), svc.breaker("a"), svc.bulkhead("a")
    bad, go, stop = [], threading.Barrier(8), threading.Event()

    def permit():
        p = br.allow()
        if p is not None:
            p.success()

    def ticket():
        t = bh.try_acquire()
        if t is not None:
            t.release()

    doors = [lambda: svc.execute("a", time.sleep, 0), lim.allow, permit, ticket,
             lambda: lim.reserve(), lambda: svc.stats("a"),
             lambda: svc.execute("a", lambda: None, timeout=0.01)]

    def hammer(door):
        go.wait()
        while not stop.is_set():
            try:
                door()
            except sg.ShmguardError:
                pass   # ServiceClosedError, or a closed error of a door in flight
            except BaseException as exc:
                bad.append(repr(exc))
                return

    threads = [threading.Thread(target=hammer, args=(d,)) for d in doors]
    for t in threads:
        t.start()
    go.wait()
    time.sleep(0.02 + 0.01 * (rnd % 5))
    svc.close()
    time.sleep(0.02)
    stop.set()
    for t in threads:
        t.join()
    assert not bad, bad
    assert svc.closed
    with_closed = sg.ResilienceService(seg, create=False)   # the segment is intact for others
    assert with_closed.stats("a").endpoint == "a"
    with_closed.close()
print("ok")
"""


@pytest.mark.parametrize("hot", ["1", "0"])
def test_close_under_concurrent_calls_never_crashes(segname, hot):
    env = {**os.environ, "SHMGUARD_NO_HOT": "0" if hot == "1" else "1"}
    r = subprocess.run([sys.executable, "-c", SCRIPT, segname, "12"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r.stderr[-2000:]


RAW_THREAD = r"""
import _thread, sys, threading, time
import shmguard as sg

seg = sys.argv[1]
for rnd in range(int(sys.argv[2])):
    svc = sg.ResilienceService(seg, capacity=8)
    svc.register_endpoint("a", sg.Policy(rate=1e9, burst=10**9))
    lim, started, done, stop = svc.limiter("a"), threading.Event(), threading.Event(), [False]

    def hammer():   # a thread the threading module does not know (as a C extension's)
        started.set()
        while not stop[0]:
            try:
                lim.allow()
            except sg.ShmguardError:
                pass
        done.set()

    _thread.start_new_thread(hammer, ())
    started.wait()
    time.sleep(0.005)
    svc.close()
    stop[0] = True
    done.wait()
    time.sleep(0.005)   # let the thread end before the next round
print("ok")
"""


@pytest.mark.parametrize("hot", ["1", "0"])
def test_close_with_a_thread_threading_does_not_count(segname, hot):
    """A thread started outside ``threading`` (``_thread``, a C extension's) is inside
    a call too: close() must not unmap under it."""
    env = {**os.environ, "SHMGUARD_NO_HOT": "0" if hot == "1" else "1"}
    r = subprocess.run([sys.executable, "-c", RAW_THREAD, segname, "20"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r.stderr[-2000:]


KEYED = r"""
import sys, threading, time
import shmguard as sg

seg = sys.argv[1]
try:
    for rnd in range(int(sys.argv[2])):
        svc = sg.ResilienceService(seg, capacity=8)
        kl = svc.keyed_limiter("k", rate=1e9, burst=10**9)
        bad, go, stop = [], threading.Barrier(5), threading.Event()

        def hammer(door):
            go.wait()
            while not stop.is_set():
                try:
                    door()
                except sg.ShmguardError:
                    pass
                except BaseException as exc:
                    bad.append(repr(exc))
                    return

        doors = [lambda: kl.allow("x"), lambda: kl.reserve("y").cancel(),
                 lambda: kl.tokens("z"), lambda: kl.stats(top=3)]
        threads = [threading.Thread(target=hammer, args=(d,)) for d in doors]
        for t in threads:
            t.start()
        go.wait()
        time.sleep(0.005 + 0.002 * (rnd % 5))
        svc.close()
        stop.set()
        for t in threads:
            t.join()
        assert not bad, bad
finally:
    s = sg.ResilienceService(seg, create=False)
    s.keyed_limiter("k", rate=1e9, burst=10**9)
    s.unlink()
    s.close()
print("ok")
"""


@pytest.mark.parametrize("hot", ["1", "0"])
def test_close_under_concurrent_keyed_calls_never_crashes(segname, hot):
    """svc.close() also closes its keyed limiters: a keyed call in flight (the cffi path
    releases the GIL) finishes on the detached range, never on a cleared handle."""
    env = {**os.environ, "SHMGUARD_NO_HOT": "0" if hot == "1" else "1"}
    r = subprocess.run([sys.executable, "-c", KEYED, segname, "12"], capture_output=True,
                       text=True, timeout=120, env=env)
    assert (r.returncode, r.stdout.strip()) == (0, "ok"), r.stderr[-2000:]
