"""How a segment comes to be mapped: open, owner check, memory reservation, the init claim.

The part of :class:`shmguard.segment.Segment` that opens the object and
writes a header: reserving the memory (posix_fallocate: a full /dev/shm is
a SegmentError now, never a SIGBUS later), mapping what the object holds,
claiming the header (pid + start time) and writing and publishing it.
"""
from __future__ import annotations

import mmap
import os
import signal
import stat
import time
from typing import Any

import posix_ipc

from shmguard import _capi, _hostid
from shmguard._capi import ffi, lib
from shmguard.errors import SegmentError, SegmentNotFoundError, SegmentPermissionError

__all__ = ["SHM_DIR", "SegmentInit"]

SHM_DIR = "/dev/shm"


def _test_stop(point: str) -> None:
    """Test hook: SIGSTOP this process at ``point`` when env SHMGUARD_TEST_HOOK names it."""
    if os.environ.get("SHMGUARD_TEST_HOOK") == point:
        os.kill(os.getpid(), signal.SIGSTOP)



def check_owner(what: str, allow_foreign: bool, st: os.stat_result) -> None:
    """Refuses a shared-memory object (a segment, a keyed table, a chain's counters) that
    another uid owns or others may write, unless ``allow_foreign``."""
    if allow_foreign:
        return
    if st.st_uid != os.geteuid():
        raise SegmentPermissionError(f"{what} belongs to uid {st.st_uid}, not {os.geteuid()} "
                                     "(pass allow_foreign=True to attach anyway)")
    if st.st_mode & 0o077:
        raise SegmentPermissionError(f"{what} has mode {stat.S_IMODE(st.st_mode):o}; shmguard "
                                     "refuses group/world-accessible objects (pass "
                                     "allow_foreign=True)")


def reserve(fd: int, size: int, what: str) -> None:
    """Allocates ``size`` bytes of a shared-memory object now (segments, keyed tables,
    chains), so a full /dev/shm is a :class:`SegmentError` naming ``what``, never a
    SIGBUS at a later write."""
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as exc:
        raise SegmentError(f"{what}: cannot reserve {size} bytes in {SHM_DIR} "
                           f"({exc.strerror or exc}); free space there or use a smaller "
                           "capacity") from None

class SegmentInit:
    """Opening and initialising a segment (a base of :class:`~shmguard.segment.Segment`)."""

    name: str
    object_name: str
    allow_foreign: bool
    created: bool
    _claim: int
    size: int
    header: Any
    _mm: mmap.mmap | None
    _buf: Any
    _base: Any

    def close(self) -> None:
        raise NotImplementedError

    @property
    def base(self) -> Any:
        raise NotImplementedError

    def _open_existing(self) -> Any:
        name = self.name
        try:
            return posix_ipc.SharedMemory(self.object_name)
        except posix_ipc.ExistentialError:
            raise SegmentNotFoundError(f"segment {name!r} does not exist") from None
        except posix_ipc.PermissionsError as exc:
            raise SegmentPermissionError(f"segment {name!r}: {exc}") from None
        except OSError as exc:  # e.g. ELOOP: a symlink in its place is never followed
            raise SegmentPermissionError(f"segment {name!r} cannot be opened safely: "
                                         f"{exc.strerror or exc}") from None

    def _owner_check(self, st: os.stat_result) -> None:
        check_owner(f"segment {self.name!r}", self.allow_foreign, st)

    def _reserve(self, fd: int, size: int) -> None:
        """Allocates ``size`` bytes now, so a full /dev/shm fails here and never as a SIGBUS."""
        _test_stop("stop-before-reserve")  # tests: a creator stalled before it claimed
        reserve(fd, size, f"segment {self.name!r}")

    def _remap(self, fd: int) -> bool:
        """Maps the object's current size if it grew past our mapping; reports whether mapped."""
        size = os.fstat(fd).st_size
        if size >= lib.SG_HEADER_SIZE and size != self.size:
            self.close()
            # an anonymous range owned by Python (no fd kept), the segment mapped over it: a
            # close() under concurrent use can swap it for zero pages (_slots.close_segment)
            self._mm = mmap.mmap(-1, size)
            self._buf = ffi.from_buffer(self._mm)
            self._base = ffi.cast("void *", self._buf)
            if lib.sg_segment_map(self._base, size, fd) != lib.SG_OK:
                self.close()
                raise SegmentError(f"segment {self.name!r} could not be mapped")
            self.size = size
        return self._mm is not None

    def _claim_word(self) -> int:
        """The init claim of an unpublished header (0: none; also unmapped); -1 once published."""
        if self._mm is None:
            return 0
        if lib.sg_segment_check(self._base, self.size, self.header) != lib.SG_E_NOT_READY:
            return -1
        return int(self.header.host.claim)

    def _initialise(self, expected: int, me: _hostid.HostId, manual_clock: bool) -> None:
        """Claims the header from ``expected`` and writes and publishes it; quiet if we lose."""
        claim, seen = _hostid.claim_word(me), ffi.new("uint64_t *")
        if lib.sg_segment_claim(self.base, self.size, expected, claim, seen) != lib.SG_OK:
            return
        self._claim = claim
        host = _hostid.fill_view(ffi.new("struct sg_host_view *"), me, claim)
        capacity = min(lib.SG_MAX_CAPACITY, (self.size - lib.SG_HEADER_SIZE) // lib.SG_SLOT_SIZE)
        flags = lib.SG_HDR_MANUAL_CLOCK if manual_clock else 0
        _capi.check(lib.sg_segment_write(self.base, self.size, capacity, os.geteuid(), os.getpid(),
                                         time.time_ns(), flags, host), "init", self.name)
        _test_stop("stop-before-publish")  # tests: a creator stopped (then killed) here
        self.created = lib.sg_segment_publish(self.base, self.size, claim) == lib.SG_OK

    def _unclaimed_or_ours(self, fd: int) -> bool:
        """Reports whether the object we created was never published and is claimed by nobody
        else: only then may our failure unlink it. Mapped first: not yet mapped by us is no proof
        (an attacher takes an unclaimed header over after ATTACH_WAIT while we stall)."""
        try:
            self._remap(fd)
        except Exception:  # noqa: BLE001 - cannot look: leave the object alone
            return False
        return self._claim_word() in (0, self._claim)

    def _still_named(self, fd: int) -> bool:
        try:
            return os.stat(os.path.join(SHM_DIR, self.object_name.lstrip("/"))).st_ino == \
                os.fstat(fd).st_ino
        except OSError:
            return False
