"""PID and time namespaces, for real (unshare(1)): refused unless opted in; then deadline-only leases.

A process in another pid namespace sees other pids: judging a lease owner
by its pid there is wrong (the owner's pid is absent, or another process).
Attaching from another pid or time namespace is refused with a clear
SegmentError unless ``shared_namespaces=True``; with it the header records
"mixed namespaces" and no process judges an owner by its pid any more (a
live probe permit is never reclaimed from another namespace). Time
namespaces with different monotonic offsets are refused even then.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

import shmguard as sg
from shmguard import probes
from shmguard._capi import lib


def _works(*flags: str) -> bool:
    if shutil.which("unshare") is None:
        return False
    return subprocess.run(["unshare", *flags, "--fork", "true"], capture_output=True).returncode == 0


PID_NS = _works("--pid", "--mount-proc")
TIME_NS = _works("--time")

_ATTACH = textwrap.dedent("""
    import sys
    import shmguard as sg
    name, shared = sys.argv[1], sys.argv[2] == "1"
    try:
        svc = sg.ResilienceService(name, create=False, shared_namespaces=shared)
    except sg.SegmentError as exc:
        print("REFUSED", exc)
        sys.exit(0)
    permit = svc.breaker("ep").allow() if "ep" in svc.endpoints() else "-"
    print("ATTACHED", "probe" if permit not in (None, "-") else "no-probe")
""")


def _in_ns(flags: list[str], name: str, shared: bool) -> str:
    r = subprocess.run(["unshare", *flags, "--fork", sys.executable, "-c", _ATTACH, name,
                        "1" if shared else "0"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-800:]
    return r.stdout


@pytest.mark.skipif(not PID_NS, reason="unshare --pid --mount-proc is not permitted here")
def test_another_pid_namespace_is_refused_unless_opted_in(segname):
    with sg.ResilienceService(segname, capacity=4) as svc:
        out = _in_ns(["--pid", "--mount-proc"], segname, shared=False)
        assert out.startswith("REFUSED") and "pid namespace" in out and "shared_namespaces=True" in out
        assert svc.segment.refresh().host.mixed == 0 and probes.judges_pids(svc.segment)
        assert _in_ns(["--pid", "--mount-proc"], segname, shared=True).startswith("ATTACHED")
        assert svc.segment.refresh().host.mixed & lib.SG_MIX_PID_NS
        assert not probes.judges_pids(svc.segment)   # here too: pids no longer prove anything
        svc.unlink()


@pytest.mark.skipif(not PID_NS, reason="unshare --pid --mount-proc is not permitted here")
def test_a_live_probe_is_never_reclaimed_from_another_pid_namespace(segname):
    """Our live probe permit's pid does not exist in the child's namespace: not proof of death."""
    with sg.ResilienceService(segname, capacity=4, manual_clock=True) as svc:
        svc.set_clock(10**12)
        svc.register_endpoint("ep", sg.Policy(half_open_max_calls=1, probe_lease=600,
                                              open_timeout=30))
        br = svc.breaker("ep")
        br.open()
        svc.advance(60)
        permit = br.allow()
        assert permit is not None and permit.is_probe   # we hold the only probe, alive
        out = _in_ns(["--pid", "--mount-proc"], segname, shared=True)
        assert out.strip() == "ATTACHED no-probe", out  # no second probe
        permit.success()
        assert svc.breaker_state("ep") == sg.BreakerState.CLOSED
        svc.unlink()


@pytest.mark.skipif(not TIME_NS, reason="unshare --time is not permitted here")
def test_time_namespaces(segname):
    with sg.ResilienceService(segname, capacity=4) as svc:
        out = _in_ns(["--time"], segname, shared=False)
        assert out.startswith("REFUSED") and "time namespace" in out, out
        assert _in_ns(["--time"], segname, shared=True).startswith("ATTACHED")
        assert svc.segment.refresh().host.mixed & lib.SG_MIX_TIME_NS
        # a time namespace whose monotonic clock is a day ahead: one segment needs one clock
        out = _in_ns(["--time", "--monotonic", "86400"], segname, shared=True)
        assert out.startswith("REFUSED") and "clocks differ" in out, out
        svc.unlink()
