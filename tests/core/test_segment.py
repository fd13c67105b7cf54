"""Segments: create/attach, and every kind of bad segment refused cleanly."""
from __future__ import annotations

import os
import stat
import struct

import pytest

import shmguard as sg
from shmguard._capi import lib
from shmguard.segment import SHM_DIR


def path_of(name: str) -> str:
    return os.path.join(SHM_DIR, f"shmguard.{os.geteuid()}.{name}")


def test_created_0600_and_named_by_uid(segname):
    with sg.ResilienceService(segname, capacity=8) as svc:
        st = os.stat(path_of(segname))
        assert stat.S_IMODE(st.st_mode) == 0o600
        assert st.st_size == lib.SG_HEADER_SIZE + 8 * lib.SG_SLOT_SIZE
        assert svc.segment.capacity == 8
        svc.unlink()


def test_attach_sees_the_same_state(segname):
    a = sg.ResilienceService(segname, capacity=8)
    b = sg.ResilienceService(segname)
    try:
        a.register_endpoint("e", sg.Policy(rate=10, burst=2))
        assert b.endpoints() == ["e"]
        assert b.limiter("e").allow(priority=sg.Priority.HIGH)
        assert a.limiter("e").allow(priority=sg.Priority.HIGH)
        assert not b.limiter("e").allow(priority=sg.Priority.HIGH)   # burst 2, shared
    finally:
        b.close()
        a.close()
        a.unlink()


def test_missing_segment(segname):
    with pytest.raises(sg.SegmentNotFoundError, match=segname):
        sg.ResilienceService(segname, create=False)


def _corrupt(segname: str, offset: int, data: bytes) -> None:
    with open(path_of(segname), "r+b") as f:
        f.seek(offset)
        f.write(data)


@pytest.mark.parametrize("offset,data,err,msg", [
    (0, b"NOTSHMGD", sg.SegmentCorruptError, "bad magic"),
    (8, struct.pack("<I", 99), sg.SegmentIncompatibleError, "layout version"),
    (16, struct.pack("<Q", 10**12), sg.SegmentCorruptError, "sizes disagree"),
    (24, struct.pack("<I", 0), sg.SegmentCorruptError, "sizes disagree"),
    (28, struct.pack("<I", 4096), sg.SegmentCorruptError, "sizes disagree"),
    (52, struct.pack("<I", 0), sg.SegmentCorruptError, "never initialised|bad magic"),
], ids=["magic", "version", "total", "capacity", "slot_size", "init"])
def test_corrupt_headers_are_refused(segname, offset, data, err, msg):
    sg.ResilienceService(segname, capacity=4).close()
    _corrupt(segname, offset, data)
    with pytest.raises(err, match=msg):
        sg.ResilienceService(segname, create=False)


def test_truncated_segment(segname):
    sg.ResilienceService(segname, capacity=4).close()
    os.truncate(path_of(segname), lib.SG_HEADER_SIZE + lib.SG_SLOT_SIZE)       # header claims 4 slots
    with pytest.raises(sg.SegmentCorruptError, match="shorter than its header"):
        sg.ResilienceService(segname, create=False)
    os.truncate(path_of(segname), 100)               # not even a header
    with pytest.raises(sg.SegmentCorruptError):
        sg.ResilienceService(segname, create=False)


def test_foreign_segment_is_refused(segname):
    sg.ResilienceService(segname, capacity=4).close()
    if os.geteuid() == 0:
        os.chown(path_of(segname), 65534, 65534)
        with pytest.raises(sg.SegmentPermissionError, match="belongs to uid 65534"):
            sg.ResilienceService(segname, create=False)
        sg.ResilienceService(segname, create=False, allow_foreign=True).close()
        os.chown(path_of(segname), 0, 0)
    os.chmod(path_of(segname), 0o666)
    with pytest.raises(sg.SegmentPermissionError, match="mode 666"):
        sg.ResilienceService(segname, create=False)
    sg.ResilienceService(segname, create=False, allow_foreign=True).close()


def test_full_slot_table(segname):
    with sg.ResilienceService(segname, capacity=3) as svc:
        for i in range(3):
            svc.register_endpoint(f"e{i}")
        with pytest.raises(sg.CapacityError, match=r"full \(3 slots\)"):
            svc.register_endpoint("one-too-many")
        assert svc.endpoints() == ["e0", "e1", "e2"]       # nothing corrupted
        svc.unlink()


@pytest.mark.parametrize("bad", ["", "a/b", "a\0b", "..", "x..y", "é", "a" * 201, 5])
def test_bad_segment_names(bad):
    with pytest.raises(sg.InvalidNameError):
        sg.ResilienceService(bad)


@pytest.mark.parametrize("bad", ["", "a\0b", "é", "x" * 65, "tab\there", None])
def test_bad_endpoint_names(svc, bad):
    with pytest.raises(sg.InvalidNameError):
        svc.register_endpoint(bad)
    assert svc.endpoints() == []


def test_url_endpoint_names_are_fine(svc):
    svc.register_endpoint("https://cache.example.com/v1")
    assert svc.endpoints() == ["https://cache.example.com/v1"]


def test_closed_service_raises_not_crashes(segname):
    svc = sg.ResilienceService(segname, capacity=4)
    svc.register_endpoint("e")
    lim = svc.limiter("e")
    svc.close()
    with pytest.raises(sg.ShmguardError, match="closed"):
        lim.allow()
    with pytest.raises(sg.ShmguardError, match="closed"):
        svc.execute("e", lambda: 1)
    with pytest.raises(sg.ShmguardError, match="closed"):
        svc.execute("new-endpoint", lambda: 1)
    for fn in (lambda: svc.stats("e"), lambda: svc.endpoints(), lambda: lim.tokens(),
               lambda: svc.breaker("e").state, lambda: svc.adjust_rate("e", 0.5),
               lambda: svc.breaker("e").force_open()):
        with pytest.raises(sg.ShmguardError, match="closed"):
            fn()
    svc.unlink()


def test_env_default_name(segname, monkeypatch):
    monkeypatch.setenv("SHMGUARD_SEGMENT", segname)
    with sg.ResilienceService(capacity=4) as svc:
        assert svc.name == segname
        svc.unlink()


def test_creator_that_died_before_publishing_is_replaced(segname):
    import posix_ipc
    from shmguard.segment import object_name
    # a "creator" that died right after O_CREAT|O_EXCL: an object of size 0
    posix_ipc.SharedMemory(object_name(segname), posix_ipc.O_CREX, mode=0o600).close_fd()
    with pytest.raises(sg.SegmentCorruptError, match="never initialised"):
        sg.ResilienceService(segname, create=False)
    with sg.ResilienceService(segname, capacity=4) as svc:   # replaces it
        svc.register_endpoint("e")
        assert svc.segment.created and svc.execute("e", lambda: 3) == 3
        svc.unlink()
