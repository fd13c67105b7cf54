"""Names and ownership: what may be attached to, and which names are refused, clearly."""
from __future__ import annotations

import os
import stat

import pytest

import shmguard as sg
from shmguard.segment import SHM_DIR


def path_of(name: str) -> str:
    return os.path.join(SHM_DIR, f"shmguard.{os.geteuid()}.{name}")


# -- 0600, owner and mode checks -----------------------------------------------------

def test_segments_are_created_0600_whatever_the_umask(segname):
    old = os.umask(0)
    try:
        with sg.ResilienceService(segname, capacity=2) as svc:
            st = os.stat(path_of(segname))
            assert stat.S_IMODE(st.st_mode) == 0o600
            assert st.st_uid == os.geteuid()
            svc.unlink()
    finally:
        os.umask(old)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
@pytest.mark.parametrize("create", [True, False])
def test_segment_of_another_uid_is_refused_unless_allowed(segname, create):
    with sg.ResilienceService(segname, capacity=2) as svc:
        svc.register_endpoint("e", sg.Policy(rate=10, burst=3))
    os.chown(path_of(segname), 65534, 65534)
    with pytest.raises(sg.SegmentPermissionError, match="belongs to uid 65534") as ei:
        sg.ResilienceService(segname, create=create)
    assert "allow_foreign=True" in str(ei.value)
    assert isinstance(ei.value, PermissionError)
    assert os.stat(path_of(segname)).st_uid == 65534          # refused, and left alone
    with sg.ResilienceService(segname, create=create, allow_foreign=True) as svc:
        assert svc.endpoints() == ["e"]                        # the same segment
        assert svc.stats("e").burst == 3


@pytest.mark.parametrize("mode", [0o666, 0o660, 0o606, 0o640, 0o604, 0o620, 0o602, 0o610])
def test_group_or_world_accessible_segment_is_refused_unless_allowed(segname, mode):
    sg.ResilienceService(segname, capacity=2).close()
    os.chmod(path_of(segname), mode)
    for create in (True, False):
        with pytest.raises(sg.SegmentPermissionError, match=f"mode {mode:o}"):
            sg.ResilienceService(segname, create=create)
    assert stat.S_IMODE(os.stat(path_of(segname)).st_mode) == mode   # left as it was
    sg.ResilienceService(segname, create=False, allow_foreign=True).close()


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_name_squatted_by_another_uid_is_not_used_nor_replaced(segname):
    """Another user made the object first (even an empty, 'never initialised' one)."""
    import posix_ipc
    from shmguard.segment import object_name
    posix_ipc.SharedMemory(object_name(segname), posix_ipc.O_CREX, mode=0o666).close_fd()
    os.chown(path_of(segname), 65534, 65534)
    os.chmod(path_of(segname), 0o666)
    ino = os.stat(path_of(segname)).st_ino
    with pytest.raises(sg.SegmentPermissionError):
        sg.ResilienceService(segname, capacity=2)
    st = os.stat(path_of(segname))
    assert (st.st_ino, st.st_uid, st.st_size) == (ino, 65534, 0)  # not replaced, not written


def test_symlink_in_place_of_a_segment_is_not_followed(segname, tmp_path):
    target = tmp_path / "victim"
    target.write_bytes(b"x" * 5000)
    os.symlink(target, path_of(segname))
    try:
        with pytest.raises(OSError):
            sg.ResilienceService(segname, capacity=2)
        with pytest.raises(OSError):
            sg.ResilienceService(segname, create=False, allow_foreign=True)
        assert target.read_bytes() == b"x" * 5000
        assert os.path.islink(path_of(segname))
    finally:
        os.unlink(path_of(segname))


# -- segment names ---------------------------------------------------------------------

BAD_SEGMENT_NAMES = ["", "a" * 201, "a/b", "/abs", "../x", "..", "x..y", "a\0b", "\0", "é",
                     "名前", " ", "a b", "-x", ".hidden", "tab\t", "new\nline", "a:b", "*"]


@pytest.mark.parametrize("bad", BAD_SEGMENT_NAMES, ids=repr)
def test_bad_segment_names_are_refused_before_any_syscall(bad):
    before = set(os.listdir(SHM_DIR))
    with pytest.raises(sg.InvalidNameError) as ei:
        sg.ResilienceService(bad)
    assert isinstance(ei.value, ValueError)
    assert "segment name" in str(ei.value)
    with pytest.raises(sg.InvalidNameError):
        sg.unlink(bad)                      # never a path outside our namespace
    # other tests run in parallel and may create valid segments meanwhile:
    # only an entry whose name is not a valid segment name would be ours
    prefix = f"shmguard.{os.geteuid()}."
    stray = []
    for e in set(os.listdir(SHM_DIR)) - before:
        try:
            sg.segment.validate_name(e[len(prefix):]) if e.startswith(prefix) else None
        except sg.InvalidNameError:
            stray.append(e)
    assert stray == []


@pytest.mark.parametrize("bad", [5, b"seg", 1.5, ["x"]], ids=repr)
def test_non_string_segment_names_are_refused(bad):
    with pytest.raises(sg.InvalidNameError, match="must be a str"):
        sg.ResilienceService(bad)


def test_segment_name_limits_are_exact(segname):
    longest = segname + "x" * (200 - len(segname))
    try:
        with sg.ResilienceService(longest, capacity=1) as svc:
            assert svc.name == longest
    finally:
        sg.unlink(longest)
    with pytest.raises(sg.InvalidNameError, match="201 characters; the limit is 200"):
        sg.ResilienceService(longest + "x")


def test_bad_name_from_the_environment_is_refused(monkeypatch):
    monkeypatch.setenv("SHMGUARD_SEGMENT", "../etc")
    with pytest.raises(sg.InvalidNameError, match="'../etc'"):
        sg.ResilienceService()


# -- endpoint names ----------------------------------------------------------------------

BAD_ENDPOINTS = ["", "x" * 65, "a\0b", "\0", "é", "名", "tab\there", "new\nline", "\x7f"]


@pytest.mark.parametrize("bad", BAD_ENDPOINTS, ids=repr)
def test_bad_endpoint_names_are_refused_and_touch_nothing(svc, bad):
    with pytest.raises(sg.InvalidNameError) as ei:
        svc.register_endpoint(bad)
    assert isinstance(ei.value, ValueError)
    assert "endpoint name" in str(ei.value)
    for call in (lambda: svc.limiter(bad), lambda: svc.breaker(bad),
                 lambda: svc.execute(bad, int)):
        with pytest.raises(sg.InvalidNameError):
            call()
    assert svc.endpoints() == []


@pytest.mark.parametrize("bad", [5, b"x", None, 1.0], ids=repr)
def test_non_string_endpoint_names_are_refused(svc, bad):
    with pytest.raises(sg.InvalidNameError, match="must be a str"):
        svc.register_endpoint(bad)


def test_endpoint_name_limit_is_64_bytes(svc):
    svc.register_endpoint("x" * 64)
    assert svc.endpoints() == ["x" * 64]
    with pytest.raises(sg.InvalidNameError, match="65 bytes; the limit is 64"):
        svc.register_endpoint("x" * 65)


def test_endpoint_names_are_data_not_paths(svc):
    """'/' and '..' are fine in endpoint names (URLs): they never reach a file system."""
    names = ["https://api.example.com/v1/..", "../../etc/passwd", "a/b/c"]
    for n in names:
        svc.register_endpoint(n)
    assert svc.endpoints() == sorted(names)
    assert os.listdir(SHM_DIR).count(f"shmguard.{os.geteuid()}.{svc.name}") == 1
