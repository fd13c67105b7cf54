"""One POSIX shared-memory segment: create, attach, validate, unlink.

The POSIX object is named ``/shmguard.<uid>.<name>`` so two users never
collide. The creator makes it with O_CREAT|O_EXCL and mode 0600, sizes it,
and lets C write and publish the header; an attacher waits (bounded) for
that and then validates every size the header claims. Attaching to a
segment of another uid, or one that is group/world accessible, is refused
unless ``allow_foreign=True``.
"""
from __future__ import annotations

import mmap
import os
import re
import stat
import time
from typing import Any

import posix_ipc

from shmguard import _capi
from shmguard._capi import ffi, lib
from shmguard.errors import (InvalidNameError, ServiceClosedError, SegmentCorruptError, SegmentError,
                             SegmentNotFoundError, SegmentPermissionError)

__all__ = ["Segment", "object_name", "validate_name", "unlink", "list_segments", "SHM_DIR",
           "KEYED_SEP", "keyed_files"]

SHM_DIR = "/dev/shm"
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
NAME_MAX = 200
ATTACH_WAIT = 2.0
#: Joins a segment's name and a keyed limiter's in the table's object name
#: (``/shmguard.<uid>.<segment>~kl~<name>``): '~' is never in a segment name.
KEYED_SEP = "~kl~"


def validate_name(name: object, what: str = "segment name") -> str:
    """Returns ``name`` if it is a valid segment name; raises :class:`InvalidNameError`."""
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} must be a str, got {name!r}")
    if not name:
        raise InvalidNameError(f"{what} must not be empty")
    if len(name) > NAME_MAX:
        raise InvalidNameError(f"{what} {name[:20]!r}... is {len(name)} characters; the limit is {NAME_MAX}")
    if ".." in name or not _NAME_RE.match(name):
        raise InvalidNameError(
            f"{what} {name!r} may hold only ASCII letters, digits, '_', '-' and '.' "
            "(no '/', NUL or '..')")
    return name


def object_name(name: str, uid: int | None = None) -> str:
    """Returns the POSIX object name of segment ``name`` for ``uid`` (default: ours)."""
    validate_name(name)
    return f"/shmguard.{os.geteuid() if uid is None else uid}.{name}"


def unlink(name: str) -> bool:
    """Removes segment ``name`` of this user and its keyed limiter tables; reports whether it existed."""
    for path in keyed_files(name):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    try:
        posix_ipc.unlink_shared_memory(object_name(name))
        return True
    except posix_ipc.ExistentialError:
        return False


def keyed_files(name: str, uid: int | None = None) -> list[str]:
    """Returns the files of segment ``name``'s keyed limiter tables."""
    prefix = object_name(name, uid).lstrip("/") + KEYED_SEP
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted(os.path.join(SHM_DIR, e) for e in entries if e.startswith(prefix))


def list_segments(uid: int | None = None) -> list[str]:
    """Returns the names of this user's shmguard segments on the host."""
    prefix = f"shmguard.{os.geteuid() if uid is None else uid}."
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted(e[len(prefix):] for e in entries
                  if e.startswith(prefix) and KEYED_SEP not in e)  # keyed tables are not segments


class Segment:
    """A mapped segment. Process-local; fork children inherit the mapping.

    :param name: the segment name (see :func:`validate_name`).
    :param create: make it if missing (with ``capacity`` slots).
    :param manual_clock: on creation, make the segment's clock a manual one
        shared by every attached process (tests).
    :param allow_foreign: attach even if another uid owns the segment or it
        is group/world accessible.
    """

    def __init__(self, name: str, *, create: bool = True, capacity: int = 256,
                 manual_clock: bool = False, allow_foreign: bool = False) -> None:
        self.name = validate_name(name)
        if isinstance(capacity, bool) or not isinstance(capacity, int) or not (
                1 <= capacity <= lib.SG_MAX_CAPACITY):
            raise SegmentError(f"capacity must be 1..{lib.SG_MAX_CAPACITY}, got {capacity!r}")
        self.object_name = object_name(name)
        self.allow_foreign = allow_foreign
        self.created = False
        self._mm: mmap.mmap | None = None
        self._buf: Any = None
        self._base: Any = None
        try:
            self._open(create, capacity, manual_clock, allow_foreign)
        except SegmentCorruptError as exc:
            # A creator that died between O_CREAT and publishing the header
            # leaves an object nobody can use: no live process can be
            # initialising it after ATTACH_WAIT, so replace it once.
            if not (create and exc.args and "never initialised" in str(exc.args[0])):
                raise
            unlink(name)
            self._open(create, capacity, manual_clock, allow_foreign)

    def _open(self, create: bool, capacity: int, manual_clock: bool, allow_foreign: bool) -> None:
        name = self.name
        shm = None
        if create:
            try:
                shm = posix_ipc.SharedMemory(self.object_name, posix_ipc.O_CREX, mode=0o600,
                                             size=int(lib.sg_segment_size(capacity)))
                self.created = True
            except posix_ipc.ExistentialError:
                shm = None
        if shm is None:
            try:
                shm = posix_ipc.SharedMemory(self.object_name)
            except posix_ipc.ExistentialError:
                raise SegmentNotFoundError(f"segment {name!r} does not exist") from None
            except posix_ipc.PermissionsError as exc:
                raise SegmentPermissionError(f"segment {name!r}: {exc}") from None
            except OSError as exc:  # e.g. ELOOP: a symlink in its place is never followed
                raise SegmentPermissionError(f"segment {name!r} cannot be opened safely: "
                                             f"{exc.strerror or exc}") from None
        try:
            self._map(shm, capacity, manual_clock, allow_foreign)
        except BaseException:
            if self.created:
                unlink(name)
            self.close()
            raise
        finally:
            shm.close_fd()

    def _map(self, shm: Any, capacity: int, manual_clock: bool, allow_foreign: bool) -> None:
        st = os.fstat(shm.fd)
        if not allow_foreign:
            if st.st_uid != os.geteuid():
                raise SegmentPermissionError(
                    f"segment {self.name!r} belongs to uid {st.st_uid}, not {os.geteuid()} "
                    "(pass allow_foreign=True to attach anyway)")
            if st.st_mode & 0o077:
                raise SegmentPermissionError(
                    f"segment {self.name!r} has mode {stat.S_IMODE(st.st_mode):o}; shmguard "
                    "refuses group/world-accessible segments (pass allow_foreign=True)")
        size = st.st_size
        deadline = time.monotonic() + ATTACH_WAIT
        while not self.created and size < lib.sg_segment_size(1) and time.monotonic() < deadline:
            time.sleep(0.001)  # the creator has not sized it yet
            size = os.fstat(shm.fd).st_size
        if size < lib.SG_HEADER_SIZE:
            raise _capi.raise_segment(lib.SG_E_TRUNCATED if size else lib.SG_E_NOT_READY, self.name)
        # an anonymous range owned by Python (no fd kept), the segment mapped over it: a
        # close() under concurrent use can swap it for zero pages (_registry.py)
        self._mm = mmap.mmap(-1, size)
        self._buf = ffi.from_buffer(self._mm)
        self._base = ffi.cast("void *", self._buf)
        if lib.sg_segment_map(self._base, size, shm.fd) != lib.SG_OK:
            raise SegmentError(f"segment {self.name!r} could not be mapped")
        self.size = size
        if self.created:
            flags = lib.SG_HDR_MANUAL_CLOCK if manual_clock else 0
            _capi.check(lib.sg_segment_init(self.base, size, capacity, os.geteuid(), os.getpid(),
                                            time.time_ns(), flags), "init", self.name)
        self.header = ffi.new("struct sg_header_view *")
        while True:
            rc = lib.sg_segment_check(self.base, self.size, self.header)
            if rc != lib.SG_E_NOT_READY or time.monotonic() >= deadline:
                break
            time.sleep(0.001)
        if rc != lib.SG_OK:
            _capi.raise_segment(rc, self.name)

    # -- queries ------------------------------------------------------------
    @property
    def base(self) -> Any:
        """The mapping's address (cffi ``void *``); raises once closed."""
        if self._mm is None:
            raise ServiceClosedError(f"segment {self.name!r} is closed in this process")
        return self._base

    @property
    def capacity(self) -> int:
        return int(self.header.capacity)

    @property
    def manual_clock(self) -> bool:
        return bool(self.header.flags & lib.SG_HDR_MANUAL_CLOCK)

    def refresh(self) -> Any:
        """Returns a fresh, validated header view."""
        rc = lib.sg_segment_check(self.base, self.size, self.header)
        if rc != lib.SG_OK:
            _capi.raise_segment(rc, self.name)
        return self.header

    def now_ns(self) -> int:
        """Reports the segment clock (CLOCK_MONOTONIC, or the manual clock)."""
        return int(lib.sg_clock_now(self.base))

    def set_clock(self, now_ns: int) -> None:
        """Sets the manual clock every attached process reads."""
        if lib.sg_clock_set(self.base, int(now_ns)) != lib.SG_OK:
            raise SegmentError(f"segment {self.name!r} has a real clock; it cannot be set")

    # -- life cycle ---------------------------------------------------------
    @property
    def closed(self) -> bool:
        return self._mm is None

    def close(self) -> None:
        """Unmaps the segment in this process (it stays for the others)."""
        if self._buf is not None:
            ffi.release(self._buf)
            self._buf = None
        if self._mm is not None:
            self._mm.close()
            self._mm = None

    def detach(self) -> Any:
        """Closes the segment in this process but hands back its mmap, still mapped.

        For a caller that has made the range harmless (Registry.close) and
        unmaps it later, when no thread can be inside it.
        """
        mm, self._mm = self._mm, None
        if self._buf is not None:
            ffi.release(self._buf)
            self._buf = None
        return mm

    def unlink(self) -> bool:
        """Removes the segment's name from the host (mappings stay valid)."""
        return unlink(self.name)
