"""One POSIX shared-memory segment: create, attach, validate, unlink.

The POSIX object is named ``/shmguard.<uid>.<name>`` so two users never
collide. The creator makes it with O_CREAT|O_EXCL and mode 0600, reserves
its memory, claims the header and lets C write and publish it; an attacher
waits (bounded) for that, takes a dead creator's claim over (in place), and
then validates every size the header claims and the host identity (boot,
namespaces, clock). Attaching to a segment of another uid, or one that is
group/world accessible, is refused unless ``allow_foreign=True``.
"""
from __future__ import annotations

import mmap
import os
import re
import time
from typing import Any

import posix_ipc

from shmguard import _capi, _hostid, probes
from shmguard._capi import ffi, lib
from shmguard._seginit import SHM_DIR, SegmentInit
from shmguard.errors import InvalidNameError, SegmentCorruptError, SegmentError, ServiceClosedError

__all__ = ["Segment", "object_name", "validate_name", "unlink", "list_segments", "SHM_DIR",
           "KEYED_SEP", "CHAIN_SEP", "SIDE_SEP", "keyed_files", "side_files"]

_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")
NAME_MAX = 200
ATTACH_WAIT = 2.0
#: Joins a segment's name and a keyed limiter's in the table's object name
#: (``/shmguard.<uid>.<segment>~kl~<name>``): '~' is never in a segment name.
KEYED_SEP = "~kl~"
#: ... and a named fallback chain's counters (``/shmguard.<uid>.<segment>~fc~<name>``)
CHAIN_SEP = "~fc~"
#: every object that belongs to a segment has '~' after the segment's name
SIDE_SEP = "~"


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
    for path in side_files(name):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    try:
        posix_ipc.unlink_shared_memory(object_name(name))
        return True
    except posix_ipc.ExistentialError:
        return False


def keyed_files(name: str, uid: int | None = None, sep: str = KEYED_SEP) -> list[str]:
    """Returns the files of segment ``name``'s keyed limiter tables (or of ``sep``'s objects)."""
    prefix = object_name(name, uid).lstrip("/") + sep
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted(os.path.join(SHM_DIR, e) for e in entries if e.startswith(prefix))


def side_files(name: str, uid: int | None = None) -> list[str]:
    """Returns every object beside segment ``name``: keyed tables and chain counters."""
    return keyed_files(name, uid, SIDE_SEP)


def list_segments(uid: int | None = None) -> list[str]:
    """Returns the names of this user's shmguard segments on the host."""
    prefix = f"shmguard.{os.geteuid() if uid is None else uid}."
    try:
        entries = os.listdir(SHM_DIR)
    except OSError:
        return []
    return sorted(e[len(prefix):] for e in entries
                  if e.startswith(prefix) and SIDE_SEP not in e)  # keyed tables, chains: no segments


class Segment(SegmentInit):
    """A mapped segment. Process-local; fork children inherit the mapping.

    :param name: the segment name (see :func:`validate_name`).
    :param create: make it if missing (with ``capacity`` slots).
    :param manual_clock: on creation, make the segment's clock a manual one
        shared by every attached process (tests).
    :param allow_foreign: attach even if another uid owns the segment or it
        is group/world accessible.
    :param shared_namespaces: attach from another pid or time namespace than
        the creator's (containers sharing /dev/shm); the header then records
        it and no process judges a lease or claim owner by its pid.
    :raises SegmentError: /dev/shm has no room for it (at creation, never a
        SIGBUS later), or it comes from another boot, namespace or clock.

    The creator reserves the memory (posix_fallocate), claims the header
    (pid + start time), writes it and publishes it. A creator that died
    before publishing is replaced IN PLACE by the first attacher to CAS its
    claim after proving it dead, so every attacher ends on one segment.
    """

    def __init__(self, name: str, *, create: bool = True, capacity: int = 256,
                 manual_clock: bool = False, allow_foreign: bool = False,
                 shared_namespaces: bool = False) -> None:
        self.name = validate_name(name)
        if isinstance(capacity, bool) or not isinstance(capacity, int) or not (
                1 <= capacity <= lib.SG_MAX_CAPACITY):
            raise SegmentError(f"capacity must be 1..{lib.SG_MAX_CAPACITY}, got {capacity!r}")
        self.object_name = object_name(name)
        self.allow_foreign = allow_foreign
        self.shared_namespaces = shared_namespaces
        self.created = False
        self._mm: mmap.mmap | None = None
        self._buf: Any = None
        self._base: Any = None
        self.size = 0
        self._claim = 0  # our init claim word, once won
        self.header = ffi.new("struct sg_header_view *")
        for _ in range(3):
            if self._open(create, capacity, manual_clock):
                return
        raise SegmentError(f"segment {name!r} was replaced while attaching, three times")

    def _open(self, create: bool, capacity: int, manual_clock: bool) -> bool:
        """Opens, maps and validates; False if the name went to another object meanwhile."""
        shm, creator = None, False
        if create:
            try:
                shm = posix_ipc.SharedMemory(self.object_name, posix_ipc.O_CREX, mode=0o600)
                creator = True
            except posix_ipc.ExistentialError:
                shm = None
        if shm is None:
            shm = self._open_existing()
        try:
            self._owner_check(os.fstat(shm.fd))
            if creator:
                self._reserve(shm.fd, int(lib.sg_segment_size(capacity)))
            if self._attach(shm.fd, create, creator, capacity, manual_clock):
                return True
            self.close()  # the name went to another object: start again with it
            self.size = 0
            return False
        except BaseException:
            if creator and not self.created and self._unclaimed_or_ours(shm.fd):
                unlink(self.name)  # unclaimed or claimed by us, never published: as if never made
            self.close()
            raise
        finally:
            shm.close_fd()

    def _attach(self, fd: int, create: bool, creator: bool, capacity: int,
                manual_clock: bool) -> bool:
        me = _hostid.current()
        if creator and self._remap(fd):
            self._initialise(0, me, manual_clock)
        if not self._wait_ready(fd, create, capacity, manual_clock, me):
            return False
        mix = _hostid.check_host(self.header.host, me, self.name, self.shared_namespaces,
                                 time.monotonic_ns())
        if mix and (int(self.header.host.mixed) & mix) != mix:
            _capi.check(lib.sg_segment_mix(self.base, mix), "mark namespaces", self.name)
            self.refresh()
        return True

    def _wait_ready(self, fd: int, create: bool, capacity: int, manual_clock: bool,
                    me: _hostid.HostId) -> bool:
        """Waits for the header; takes over a creator's claim only on proof of its death, or an
        unclaimed header after ATTACH_WAIT. False if the name went to another object."""
        deadline, last = time.monotonic() + ATTACH_WAIT, -1
        while True:
            self._remap(fd)
            claim = self._claim_word()
            if claim == -1:
                break  # published (or refused by sg_segment_check below)
            if claim != last:  # a new holder: it gets its own time
                deadline, last = time.monotonic() + ATTACH_WAIT, claim
            late = time.monotonic() >= deadline
            if create and ((claim == 0 and late) or probes.claim_holder_dead(claim, me)):
                if not self._still_named(fd):
                    return False
                if self.size < lib.sg_segment_size(1):
                    self._reserve(fd, int(lib.sg_segment_size(capacity)))
                    self._remap(fd)
                self._initialise(claim, me, manual_clock)
                continue
            if late:
                self._raise_unready(claim, me)
            time.sleep(0.001)
        self._remap(fd)  # it may have grown (a takeover's reserve) since the last look
        self.refresh()
        return True

    def _raise_unready(self, claim: int, me: _hostid.HostId) -> None:
        if self.size < lib.SG_HEADER_SIZE:
            _capi.raise_segment(lib.SG_E_TRUNCATED if self.size else lib.SG_E_NOT_READY, self.name)
        if claim:
            pid = _hostid.claim_pid(claim)
            why = ("has died: attach with create=True to initialise it in place"
                   if probes.claim_holder_dead(claim, me) else
                   f"is alive (or in another pid namespace); `shmguard rm {self.name}` once it is gone")
            raise SegmentCorruptError(f"segment {self.name!r} was never initialised: pid {pid} "
                                      f"claimed it {ATTACH_WAIT:g} s ago and {why}")
        _capi.raise_segment(lib.SG_E_NOT_READY, self.name)

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
