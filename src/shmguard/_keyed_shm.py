"""The shared-memory object of one keyed limiter: its name, creation or attachment, its mapping.

A keyed limiter's table is its own POSIX object beside its segment,
``/shmguard.<uid>.<segment>~kl~<name>`` (mode 0600), so a table of a
million keys never has to fit in the segment. The creator makes it with
O_CREAT|O_EXCL, reserves its memory with posix_fallocate (a full /dev/shm
is a clear SegmentError now, never a SIGBUS at a new key later) and lets C
write the header, publishing it last; an attacher waits (bounded) for that and
validates every size the header claims. Removing the segment
(:func:`shmguard.unlink`, ``shmguard rm``, ``shmguard gc``) removes its tables.
"""
from __future__ import annotations

import hashlib
import math
import mmap
import os
import re
import time
import weakref
from typing import Any

import posix_ipc

from shmguard import _capi, probes
from shmguard._capi import ffi, lib
from shmguard.errors import (InvalidNameError, PolicyError, SegmentCorruptError, SegmentError,
                             SegmentIncompatibleError, SegmentNotFoundError,
                             SegmentPermissionError, ShmguardError)
from shmguard._seginit import check_owner, reserve
from shmguard.segment import KEYED_SEP, Segment, object_name

__all__ = ["KeyedTable", "validate_keyed_name", "table_object_name", "keyed_config", "describe",
           "NAME_MAX"]

NAME_MAX = 64
PATH_MAX = 255  # bytes of a file name in /dev/shm
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$")


def validate_keyed_name(name: object) -> str:
    """Returns ``name`` if it can name a keyed limiter; raises :class:`InvalidNameError`."""
    if not isinstance(name, str):
        raise InvalidNameError(f"keyed limiter name must be a str, got {name!r}")
    if not name or len(name) > NAME_MAX or ".." in name or not _NAME_RE.match(name):
        raise InvalidNameError(
            f"keyed limiter name {name!r} must be 1-{NAME_MAX} ASCII letters, digits, "
            "'_', '-' or '.' (no '..')")
    return name


def table_object_name(segment: str, name: str, uid: int | None = None) -> str:
    """Returns the POSIX object name of keyed limiter ``name`` of ``segment``."""
    full = object_name(segment, uid) + KEYED_SEP + validate_keyed_name(name)
    if len(full) - 1 > PATH_MAX:
        raise InvalidNameError(f"keyed limiter {name!r} of segment {segment!r}: the object name "
                               f"is {len(full) - 1} bytes, the limit is {PATH_MAX}; use shorter names")
    return full


def keyed_config(rate: float, burst: int, capacity: int, on_full: str) -> Any:
    """Returns a ``struct sg_kl_config *`` for these numbers; raises :class:`PolicyError` naming a bad one."""
    from shmguard.policy import MAX_RATE, NS, Policy
    if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not (
            math.isfinite(rate) and 0 < rate <= MAX_RATE):
        raise PolicyError(f"rate must be a number in (0, {MAX_RATE:g}] per second, got {rate!r}")
    if isinstance(burst, bool) or not isinstance(burst, int) or not 1 <= burst <= 2**31:
        raise PolicyError(f"burst must be a whole number in 1..{2**31}, got {burst!r}")
    if burst / rate * NS > 2**62:
        raise PolicyError(f"burst {burst} at rate {rate!r}/s spans beyond the limiter's "
                          "146-year horizon of 2**62 ns")
    if isinstance(capacity, bool) or not isinstance(capacity, int) or not (
            1 <= capacity <= lib.SG_KL_MAX_CAPACITY):
        raise PolicyError(f"capacity must be 1..{lib.SG_KL_MAX_CAPACITY}, got {capacity!r}")
    if on_full not in ("reject", "allow"):
        raise PolicyError(f'on_full must be "reject" or "allow", got {on_full!r}')
    c = ffi.new("struct sg_kl_config *")
    c.emission_ns = max(1, math.ceil(NS / rate))
    c.burst, c.capacity = burst, capacity
    c.flags = lib.SG_KL_ON_FULL_ALLOW if on_full == "allow" else 0
    for i, share in enumerate(Policy().priority_shares):
        c.share_ppm[i] = max(1, round(share * 1_000_000))
    seed = os.urandom(16)  # per table: clients cannot aim keys at one window
    c.seed0, c.seed1 = int.from_bytes(seed[:8], "little"), int.from_bytes(seed[8:], "little")
    text = f"{c.emission_ns};{burst};{list(c.share_ppm)}"  # capacity, on_full: compared apart
    c.fingerprint = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(),
                                   "little") & (2**63 - 1)
    return c


def describe(v: Any) -> str:
    """Returns "rate R/s, burst B, capacity C, on_full X" of a config or a view."""
    on_full = "allow" if v.flags & lib.SG_KL_ON_FULL_ALLOW else "reject"
    return (f"rate {NS_PER_S / v.emission_ns:g}/s, burst {v.burst}, capacity {v.capacity}, "
            f"on_full {on_full!r}")


NS_PER_S = 1_000_000_000


_ERRORS = {
    lib.SG_E_NOT_READY: (SegmentCorruptError, "was never initialised (its creator died?)"),
    lib.SG_E_MAGIC: (SegmentCorruptError, "is not a keyed limiter table (bad magic)"),
    lib.SG_E_VERSION: (SegmentIncompatibleError, "has another table version"),
    lib.SG_E_SIZE: (SegmentCorruptError, "has a corrupt header (sizes disagree)"),
    lib.SG_E_TRUNCATED: (SegmentCorruptError, "is shorter than its header claims"),
}


class KeyedTable:
    """One mapped keyed table and its process-local C handle (``kh``).

    :param config: a filled ``struct sg_kl_config *`` to create the table if
        it is missing, or None to attach only.
    :raises SegmentNotFoundError: attach only, and there is no such table.
    """

    def __init__(self, segment: Segment, name: str, config: Any | None) -> None:
        self.name = name
        self.segment = segment
        self.object_name = table_object_name(segment.name, name)
        self.created = False
        self._mm: mmap.mmap | None = None
        self._buf: Any = None
        self.kh = ffi.new("struct sg_kl_handle *")
        self.view = ffi.new("struct sg_kl_view *")
        try:
            self._open(config)
        except SegmentCorruptError as exc:
            # a creator that died before publishing the header: nobody can be
            # initialising it after the attach wait, so replace it once
            if config is None or "never initialised" not in str(exc):
                raise
            self.unlink()
            self._open(config)

    @property
    def what(self) -> str:
        return f"keyed limiter {self.name!r} of segment {self.segment.name!r}"

    def _open(self, config: Any | None) -> None:
        shm = None
        if config is not None:
            try:
                shm = posix_ipc.SharedMemory(self.object_name, posix_ipc.O_CREX, mode=0o600)
                self.created = True
                self._reserve(shm.fd, int(lib.sg_kl_size(config.capacity)))
            except posix_ipc.ExistentialError:
                shm = None
        if shm is None:
            try:
                shm = posix_ipc.SharedMemory(self.object_name)
            except posix_ipc.ExistentialError:
                raise SegmentNotFoundError(f"{self.what} does not exist") from None
            except (posix_ipc.PermissionsError, OSError) as exc:
                raise SegmentPermissionError(f"{self.what} cannot be opened: {exc}") from None
        try:
            self._map(shm, config)
        except BaseException:
            if self.created:
                self.unlink()
            self.close()
            raise
        finally:
            shm.close_fd()

    def _reserve(self, fd: int, size: int) -> None:
        """Allocates the table now: a full /dev/shm fails here, never as a SIGBUS on a new key."""
        try:
            reserve(fd, size, self.what)
        except SegmentError:
            posix_ipc.unlink_shared_memory(self.object_name)
            os.close(fd)
            raise

    def _owner_check(self, st: os.stat_result) -> None:
        check_owner(self.what, self.segment.allow_foreign, st)

    def _map(self, shm: Any, config: Any | None) -> None:
        st = os.fstat(shm.fd)
        self._owner_check(st)
        deadline = time.monotonic() + 2.0
        size = st.st_size
        while not self.created and size < lib.SG_KL_HEADER_SIZE and time.monotonic() < deadline:
            time.sleep(0.001)  # the creator has not sized it yet
            size = os.fstat(shm.fd).st_size
        if size < lib.SG_KL_HEADER_SIZE:
            self._raise(lib.SG_E_TRUNCATED if size else lib.SG_E_NOT_READY)
        self._mm = mmap.mmap(shm.fd, size)
        self._buf = ffi.from_buffer(self._mm)
        self.size = size
        base = ffi.cast("void *", self._buf)
        if self.created:
            _capi.check(lib.sg_kl_init(base, size, config, os.getpid(), time.time_ns()),
                        f"create {self.what}", self.segment.name)
        while (rc := lib.sg_kl_check(base, size, self.view)) == lib.SG_E_NOT_READY:
            if time.monotonic() >= deadline:
                break
            time.sleep(0.001)
        if rc == lib.SG_OK:
            seg = self.segment
            rc = lib.sg_kl_handle_init(self.kh, base, size, seg.base, seg.size)
        if rc != lib.SG_OK:
            self._raise(rc)
        self.kh.stripe = os.getpid() % lib.SG_KL_STRIPES  # this process's counter line
        _LIVE.add(self)

    def _raise(self, rc: int) -> None:
        cls, what = _ERRORS.get(rc, (SegmentCorruptError, f"failed validation with code {rc}"))
        raise cls(f"{self.what} {what}")

    def set_rate(self, config: Any, now_ns: int) -> None:
        """Publishes ``config``'s rate and burst to every process, keeping each key's debt in tokens.

        Waits (bounded) for another writer; a writer lease whose holder died
        (pid + start time) is taken over.
        """
        lease = (os.getpid() << 32) | (int(time.time()) & 0xFFFFFFFF)
        deadline = time.monotonic() + 5.0
        while (rc := lib.sg_kl_set_rate_at(self.kh, now_ns, config.emission_ns, config.burst,
                                           config.fingerprint, lease)) == lib.SG_E_BUSY:
            cur = int(self.refresh().lease)
            if cur and not probes.holder_alive(cur >> 32, started_before=cur & 0xFFFFFFFF,
                                                seg=self.segment):
                lib.sg_kl_takeover(self.kh, cur)   # its holder is dead: it can never resume
                continue
            if time.monotonic() > deadline:
                raise ShmguardError(f"{self.what}: the rate writer lease of pid {cur >> 32} "
                                    "stayed busy")
            time.sleep(0.001)
        _capi.check(rc, f"set the rate of {self.what}", self.segment.name)

    def refresh(self) -> Any:
        """Returns a fresh, validated ``struct sg_kl_view *`` (sizes, policy, counters)."""
        if self._mm is None:
            raise SegmentNotFoundError(f"{self.what} is closed in this process")
        rc = lib.sg_kl_check(self.kh.table, self.size, self.view)
        if rc != lib.SG_OK:
            self._raise(rc)
        return self.view

    @property
    def closed(self) -> bool:
        return self._mm is None

    def close(self) -> None:
        """Unmaps the table in this process (it stays for the others)."""
        self.kh.table = ffi.NULL
        if self._mm is None:
            return
        from shmguard._slots import release_mapping
        base = ffi.cast("void *", self._buf)
        ffi.release(self._buf)
        mm, self._mm, self._buf = self._mm, None, None
        release_mapping(base, self.size, mm)  # another thread may be inside a call on it

    def unlink(self) -> bool:
        """Removes the table's name from the host (mappings stay valid)."""
        try:
            posix_ipc.unlink_shared_memory(self.object_name)
            return True
        except posix_ipc.ExistentialError:
            return False


_LIVE: weakref.WeakSet[KeyedTable] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # a fork child counts in its own stripe, not in its parent's line
    for t in list(_LIVE):
        if not t.closed:
            t.kh.stripe = os.getpid() % lib.SG_KL_STRIPES


os.register_at_fork(after_in_child=_after_fork_in_child)
