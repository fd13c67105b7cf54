"""The shared counters of a named fallback chain: which step served, host-wide.

A chain created with ``name=`` keeps its counts in a small POSIX object
beside its segment, ``/shmguard.<uid>.<segment>~fc~<name>`` (mode 0600,
csrc/chain.c), so every process of the host counts into one place and
``shmguard inspect`` shows them. The first process creates it with its step
endpoints; a process naming the same chain with other steps is refused.
Removing the segment removes its chains.
"""
from __future__ import annotations

import mmap
import os
import time
from typing import Any

import posix_ipc

from shmguard._capi import ffi, lib
from shmguard._keyed_shm import PATH_MAX, validate_keyed_name
from shmguard._seginit import check_owner, reserve
from shmguard.errors import (InvalidNameError, PolicyError, SegmentCorruptError,
                             SegmentError, SegmentIncompatibleError, SegmentNotFoundError,
                             SegmentPermissionError)
from shmguard.segment import CHAIN_SEP, Segment, keyed_files, object_name

__all__ = ["ChainCounters", "chain_snapshot", "LAST", "FAILED"]

LAST = int(lib.SG_FC_LAST)
FAILED = int(lib.SG_FC_FAILED)
_ERRORS = {
    lib.SG_E_NOT_READY: (SegmentCorruptError, "was never initialised (its creator died?)"),
    lib.SG_E_MAGIC: (SegmentCorruptError, "is not a chain's counters (bad magic)"),
    lib.SG_E_VERSION: (SegmentIncompatibleError, "has another version"),
    lib.SG_E_CORRUPT: (SegmentCorruptError, "is corrupt (bad step count or name)"),
    lib.SG_E_TRUNCATED: (SegmentCorruptError, "is shorter than its header"),
}


def _view_dict(name: str, v: Any) -> dict[str, Any]:
    steps = [ffi.unpack(v.name[i], v.name_len[i]).decode("utf-8", "replace")
             for i in range(v.steps)]
    return {"name": name, "steps": [{"endpoint": ep, "served": int(v.count[i])}
                                    for i, ep in enumerate(steps)],
            "last": int(v.count[LAST]), "failed": int(v.count[FAILED]),
            "creator_pid": int(v.creator_pid)}


class ChainCounters:
    """The mapped counters of chain ``name`` of ``segment``, created with ``steps`` if missing."""

    def __init__(self, segment: Segment, name: str, steps: list[str] | None) -> None:
        self.name = validate_keyed_name(name)
        self.segment = segment
        self.what = f"fallback chain {name!r} of segment {segment.name!r}"
        self.object_name = object_name(segment.name) + CHAIN_SEP + name
        if len(self.object_name) - 1 > PATH_MAX:
            raise InvalidNameError(f"{self.what}: the object name is too long; use shorter names")
        if steps is not None and not 1 <= len(steps) <= lib.SG_FC_MAX_STEPS:
            raise PolicyError(f"a named chain has 1-{lib.SG_FC_MAX_STEPS} steps, got {len(steps)}")
        self.view = ffi.new("struct sg_fc_view *")
        self._mm: mmap.mmap | None = None
        try:
            self._open(steps)
        except SegmentCorruptError as exc:
            # statistics only: a creator that died before writing the object must not
            # stop the chain from being built forever; replace it once
            if steps is None or "never initialised" not in str(exc):
                raise
            posix_ipc.unlink_shared_memory(self.object_name)
            self._open(steps)
        if steps is not None and self.steps() != steps:
            raise PolicyError(f"{self.what} exists with steps {self.steps()}, not {steps}; "
                              "name the chain differently or remove the segment")

    def _open(self, steps: list[str] | None) -> None:
        created = False
        try:
            shm = posix_ipc.SharedMemory(self.object_name, posix_ipc.O_CREX if steps else 0,
                                         mode=0o600, size=lib.SG_FC_SIZE if steps else 0)
            created = bool(steps)
        except posix_ipc.ExistentialError:
            if not steps:
                raise SegmentNotFoundError(f"{self.what} does not exist") from None
            shm = posix_ipc.SharedMemory(self.object_name)
        except (posix_ipc.PermissionsError, OSError) as exc:
            raise SegmentPermissionError(f"{self.what} cannot be opened: {exc}") from None
        try:
            self._map(shm.fd, steps if created else None)
        except BaseException:
            self.close()
            raise
        finally:
            shm.close_fd()

    def _map(self, fd: int, steps: list[str] | None) -> None:
        st = os.fstat(fd)
        check_owner(self.what, self.segment.allow_foreign, st)
        deadline = time.monotonic() + 2.0
        while st.st_size < lib.SG_FC_SIZE and time.monotonic() < deadline:
            time.sleep(0.001)  # the creator has not sized it yet
            st = os.fstat(fd)
        if st.st_size < lib.SG_FC_SIZE:
            self._raise(lib.SG_E_TRUNCATED if st.st_size else lib.SG_E_NOT_READY)
        if steps is not None:
            try:  # reserve the pages now: a full /dev/shm is an error here, not a SIGBUS later
                reserve(fd, lib.SG_FC_SIZE, self.what)
            except SegmentError:
                posix_ipc.unlink_shared_memory(self.object_name)
                raise
        self._mm = mmap.mmap(fd, lib.SG_FC_SIZE)
        self._buf = ffi.from_buffer(self._mm)
        self._base = ffi.cast("void *", self._buf)
        if steps is not None:
            names = ffi.new("char[]", lib.SG_FC_MAX_STEPS * 64)
            lens = ffi.new("uint32_t[]", lib.SG_FC_MAX_STEPS)
            for i, ep in enumerate(steps):
                raw = ep.encode()
                ffi.memmove(names + i * 64, raw, len(raw))
                lens[i] = len(raw)
            lib.sg_fc_init(self._base, lib.SG_FC_SIZE, len(steps), names, lens, os.getpid(),
                           time.time_ns())
        self.refresh()

    def _raise(self, rc: int) -> None:
        cls, what = _ERRORS.get(rc, (SegmentCorruptError, f"failed validation with code {rc}"))
        raise cls(f"{self.what} {what}")

    def refresh(self) -> Any:
        """Returns a fresh, validated ``struct sg_fc_view *``; waits (bounded) for its creator."""
        if self._mm is None:
            raise SegmentNotFoundError(f"{self.what} is closed in this process")
        deadline = time.monotonic() + 2.0
        while (rc := lib.sg_fc_check(self._base, lib.SG_FC_SIZE, self.view)) == lib.SG_E_NOT_READY \
                and time.monotonic() < deadline:
            time.sleep(0.001)
        if rc != lib.SG_OK:
            self._raise(rc)
        return self.view

    def steps(self) -> list[str]:
        return [s["endpoint"] for s in _view_dict(self.name, self.view)["steps"]]

    def count(self, which: int) -> None:
        """Adds one to step ``which`` (0-based), :data:`LAST` or :data:`FAILED`."""
        if self._mm is not None:
            lib.sg_fc_count(self._base, lib.SG_FC_SIZE, which)

    def snapshot(self) -> dict[str, Any]:
        return _view_dict(self.name, self.refresh())

    def close(self) -> None:
        if self._mm is not None:
            self._base = ffi.NULL
            ffi.release(self._buf)
            self._mm.close()
            self._mm = None


def chain_snapshot(seg: Segment) -> list[dict[str, Any]]:
    """Returns one dict per named chain of ``seg`` (``{"name", "steps", "last", "failed"}``);
    a chain that fails validation is reported with its ``error``."""
    out = []
    for path in keyed_files(seg.name, sep=CHAIN_SEP):
        name = os.path.basename(path).split(CHAIN_SEP, 1)[1]
        try:
            c = ChainCounters(seg, name, None)
        except (InvalidNameError, SegmentNotFoundError):
            continue  # removed meanwhile, or not a name we made
        except (SegmentCorruptError, SegmentIncompatibleError, SegmentPermissionError) as exc:
            out.append({"name": name, "error": str(exc)})
            continue
        try:
            out.append(c.snapshot())
        finally:
            c.close()
    return out
