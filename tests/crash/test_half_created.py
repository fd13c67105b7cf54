"""A segment whose creator was SIGKILLed before publishing its header: every attacher converges.

The creator runs with the test hook SHMGUARD_TEST_HOOK=stop-before-publish:
it reserves the memory, claims the header (pid + start time), writes it
and stops itself (SIGSTOP) right before publishing; the test SIGKILLs it
there. Eight real processes then attach at once: exactly one takes the
dead creator's claim over and initialises the header IN PLACE; all eight
end on the same object (inode) and header (creator pid, creation time) and
share one limiter exactly. Before the fix each attacher unlinked and
recreated the segment: up to eight segments, eight limiters.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import shmguard as sg
from shmguard.segment import SHM_DIR

WORKERS = 8
BURST = 5

_CREATOR = "import shmguard as sg, sys; sg.ResilienceService(sys.argv[1], capacity=8)"

_WORKER = textwrap.dedent("""
    import json, os, sys, time
    import shmguard as sg
    name, go = sys.argv[1], sys.argv[2]
    while not os.path.exists(go):
        time.sleep(0.0005)
    svc = sg.ResilienceService(name, capacity=8)
    h = svc.segment.header
    svc.register_endpoint("api", sg.Policy(rate=0.001, burst=%d))
    lim = svc.limiter("api")
    admitted = sum(lim.allow(priority=sg.Priority.HIGH) for _ in range(%d))
    path = os.path.join("%s", svc.segment.object_name.lstrip("/"))
    print(json.dumps({"ino": os.stat(path).st_ino, "creator": h.creator_pid,
                      "created": h.created_unix_ns, "initialised_here": svc.segment.created,
                      "admitted": admitted}))
    svc.close()
""") % (BURST, BURST, SHM_DIR)


def _path(name: str) -> str:
    return os.path.join(SHM_DIR, f"shmguard.{os.geteuid()}.{name}")


def _stopped_creator(name: str) -> subprocess.Popen[bytes]:
    env = dict(os.environ, SHMGUARD_TEST_HOOK="stop-before-publish")
    p = subprocess.Popen([sys.executable, "-c", _CREATOR, name], env=env)
    _, status = os.waitpid(p.pid, os.WUNTRACED)  # returns once it stopped itself at the hook
    assert os.WIFSTOPPED(status), f"creator did not stop at the hook (status {status})"
    return p


def test_eight_attachers_converge_on_a_half_created_segment(segname, tmp_path):
    creator = _stopped_creator(segname)
    ino = os.stat(_path(segname)).st_ino
    with pytest.raises(sg.SegmentCorruptError, match="never initialised"):  # not published
        sg.ResilienceService(segname, create=False)
    creator.send_signal(signal.SIGKILL)
    creator.wait()
    with pytest.raises(sg.SegmentCorruptError, match="has died: attach with create=True"):
        sg.ResilienceService(segname, create=False)        # create=False never takes over
    assert os.stat(_path(segname)).st_ino == ino
    go = tmp_path / "go"
    procs = [subprocess.Popen([sys.executable, "-c", _WORKER, segname, str(go)],
                              stdout=subprocess.PIPE) for _ in range(WORKERS)]
    time.sleep(0.3)                              # let them start; not a correctness wait
    go.touch()
    out = [json.loads(p.communicate(timeout=60)[0]) for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert {o["ino"] for o in out} == {ino}      # nobody unlinked the creator's object
    assert len({(o["creator"], o["created"]) for o in out}) == 1   # one header
    assert sum(o["initialised_here"] for o in out) == 1           # one takeover
    assert out[0]["creator"] != creator.pid
    assert sum(o["admitted"] for o in out) == BURST               # one limiter, exactly


def test_a_live_stalled_creator_is_never_taken_over(segname):
    """Claimed by a live (stopped) creator: attachers wait and fail clearly, never take over."""
    creator = _stopped_creator(segname)
    try:
        with pytest.raises(sg.SegmentCorruptError, match="never initialised.*is alive"):
            sg.ResilienceService(segname, capacity=8)          # create=True: may take over
        creator.send_signal(signal.SIGCONT)                    # it resumes and publishes
        assert creator.wait(timeout=30) == 0
        with sg.ResilienceService(segname, create=False) as svc:
            assert svc.segment.header.creator_pid == creator.pid
    finally:
        if creator.poll() is None:
            creator.kill()
            creator.wait()


def test_a_resumed_loser_never_publishes():
    """C steps: A claims and writes; B proves A dead and takes the claim over; A resumes."""
    import mmap
    from shmguard._capi import ffi, lib
    size = lib.sg_segment_size(2)
    mm = mmap.mmap(-1, size)
    buf = ffi.from_buffer(mm)
    base, seen = ffi.cast("void *", buf), ffi.new("uint64_t *")
    a, b = (7 << 41) | 1, (8 << 41) | 2
    host = ffi.new("struct sg_host_view *", {"claim": a})
    view = ffi.new("struct sg_header_view *")
    assert lib.sg_segment_claim(base, size, 0, a, seen) == lib.SG_OK
    assert lib.sg_segment_claim(base, size, 0, b, seen) == lib.SG_E_BUSY and seen[0] == a
    assert lib.sg_segment_write(base, size, 2, 0, 7, 0, 0, host) == lib.SG_OK
    assert lib.sg_segment_check(base, size, view) == lib.SG_E_NOT_READY and view.host.claim == a
    assert lib.sg_segment_claim(base, size, a, b, seen) == lib.SG_OK        # A judged dead
    assert lib.sg_segment_write(base, size, 2, 0, 7, 0, 0, host) == lib.SG_E_BUSY
    assert lib.sg_segment_publish(base, size, a) == lib.SG_E_BUSY            # A resumed: no
    assert lib.sg_segment_check(base, size, view) == lib.SG_E_NOT_READY
    host.claim = b
    assert lib.sg_segment_write(base, size, 2, 0, 8, 0, 0, host) == lib.SG_OK
    assert lib.sg_segment_publish(base, size, b) == lib.SG_OK
    assert lib.sg_segment_check(base, size, view) == lib.SG_OK and view.creator_pid == 8
    assert lib.sg_segment_claim(base, size, b, a, seen) == lib.SG_E_BUSY     # done: final
    ffi.release(buf)
    mm.close()


def test_a_creator_failing_after_a_takeover_never_unlinks_the_published_segment(segname):
    """A creator stalled before it claimed (before reserving) is replaced after ATTACH_WAIT;
    when it then fails (here: SIGINT on resuming), it must not unlink the segment an attacher
    has published meanwhile: that one is in use, not the creator's to remove."""
    env = dict(os.environ, SHMGUARD_TEST_HOOK="stop-before-reserve")
    creator = subprocess.Popen([sys.executable, "-c", _CREATOR, segname], env=env,
                               stderr=subprocess.DEVNULL)
    try:
        _, status = os.waitpid(creator.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), f"creator did not stop at the hook (status {status})"
        with sg.ResilienceService(segname, capacity=8) as svc:  # takes the unclaimed header over
            assert svc.segment.created
            ino = os.stat(_path(segname)).st_ino
            creator.send_signal(signal.SIGINT)                   # it fails as it resumes
            creator.send_signal(signal.SIGCONT)
            assert creator.wait(timeout=30) != 0
            assert os.stat(_path(segname)).st_ino == ino         # still named: ours, in use
            with sg.ResilienceService(segname, create=False) as other:
                assert other.segment.header.creator_pid == os.getpid()
            svc.unlink()
    finally:
        if creator.poll() is None:
            creator.kill()
            creator.wait()
