"""A full /dev/shm is a clear SegmentError at creation, never a SIGBUS later.

For real: a child process gets its own mount namespace (``unshare -m``)
with a 256 KiB tmpfs mounted on /dev/shm, so the host's /dev/shm is never
filled. In it a segment of 1024 slots (2 MiB) is created and every slot is
registered. Without the reservation (posix_fallocate) the object is sparse:
creation succeeds and the first write past 256 KiB kills the child with
SIGBUS. With it, creation raises SegmentError naming the cause, and leaves
nothing behind. Keyed limiter tables (their own objects) likewise.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest

_CHILD = textwrap.dedent("""
    import os, sys
    import shmguard as sg
    what = sys.argv[1]
    try:
        if what == "segment":
            svc = sg.ResilienceService("full", capacity=1024)
            for i in range(1024):
                svc.register_endpoint(f"e{i}")
        else:
            svc = sg.ResilienceService("full", capacity=4)
            kl = svc.keyed_limiter("per-user", rate=10, burst=10, capacity=100_000)
            for i in range(100_000):
                kl.allow(f"user-{i}")
    except sg.SegmentError as exc:
        print("REFUSED", exc)
        print("LEFT", sorted(os.listdir("/dev/shm")))
        sys.exit(0)
    print("CREATED")
""")


def _small_shm(what: str) -> subprocess.CompletedProcess[str]:
    script = 'mount -t tmpfs -o size=256k,mode=1777 tmpfs /dev/shm && exec "$0" -c "$1" "$2"'
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                           sys.executable, _CHILD, what],
                          capture_output=True, text=True, timeout=120)


def _can_mount() -> str:
    if shutil.which("unshare") is None:
        return "no unshare(1)"
    r = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c",
                        "mount -t tmpfs -o size=64k tmpfs /dev/shm"], capture_output=True)
    return "" if r.returncode == 0 else f"cannot mount a tmpfs in a mount namespace: {r.stderr!r}"


WHY = _can_mount()


@pytest.mark.skipif(bool(WHY), reason=WHY or "-")
@pytest.mark.parametrize("what", ["segment", "keyed"])
def test_full_dev_shm_is_a_clear_error_at_creation(what):
    r = _small_shm(what)
    assert r.returncode == 0, f"child died with {r.returncode} (-7: SIGBUS): {r.stderr[-500:]}"
    assert "REFUSED" in r.stdout and "cannot reserve" in r.stdout, r.stdout
    assert "No space left on device" in r.stdout
    left = r.stdout.split("LEFT", 1)[1]
    assert "~kl~" not in left                 # a refused keyed table leaves no object
    if what == "segment":
        assert "shmguard" not in left         # nor does a refused segment
