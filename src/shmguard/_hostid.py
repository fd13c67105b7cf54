"""Who and where this process is: boot, namespaces, clock offset; init claims and their holders.

A segment's times are CLOCK_MONOTONIC readings, meaningful only within one
boot and one time namespace (or namespaces with the same offsets); its pids
are meaningful only within one pid namespace. The creator records all of it
in header line 3 (:class:`HostId`); an attacher compares (segment.py).

The init claim word names the process writing a header that is not
published yet: | done 1 | pid 22 | pid-namespace tag 9 | start ticks 32 |.
It is judged dead only on proof, by :func:`shmguard.probes.claim_holder_dead`
(the one place that judges owners by pid): same pid namespace, /proc agrees
with our pids, and the pid is gone, a zombie, or a later process (start time).
"""
from __future__ import annotations

import os
import time
import uuid
from dataclasses import dataclass
from typing import Any

__all__ = ["HostId", "current", "claim_word", "claim_pid", "claim_in_ns", "start_ticks", "proc_is_ours",
           "check_host", "fill_view", "describe_boot"]

_PID_BITS, _TAG_BITS = 22, 9
CLAIM_DONE = 1 << 63


@dataclass(frozen=True)
class HostId:
    """This process's boot id (128 bits), pid and time namespace inodes, monotonic offset (ns)."""
    boot_id: tuple[int, int]
    pid_ns: int
    time_ns: int
    mono_offset_ns: int


def _ns_inode(kind: str) -> int:
    try:
        return os.stat(f"/proc/self/ns/{kind}").st_ino
    except OSError:
        return 0  # no such namespace kind (old kernel) or no /proc


def _boot_id() -> tuple[int, int]:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            b = uuid.UUID(f.read().strip()).bytes
    except (OSError, ValueError):
        return (0, 0)
    return (int.from_bytes(b[:8], "little"), int.from_bytes(b[8:], "little"))


def _mono_offset() -> int:
    """The monotonic offset of this process's time namespace (0 outside one)."""
    try:
        with open("/proc/self/timens_offsets") as f:
            for line in f:
                parts = line.split()
                if len(parts) == 3 and parts[0] in ("monotonic", "1"):
                    return int(parts[1]) * 1_000_000_000 + int(parts[2])
    except (OSError, ValueError):
        pass
    return 0


def current() -> HostId:
    """Reports this process's identity (read now: namespaces can change with unshare/setns)."""
    return HostId(_boot_id(), _ns_inode("pid"), _ns_inode("time"), _mono_offset())


def describe_boot(boot_id: tuple[int, int]) -> str:
    """Returns a boot id as /proc prints it (or "unknown")."""
    if boot_id == (0, 0):
        return "unknown"
    return str(uuid.UUID(bytes=boot_id[0].to_bytes(8, "little") + boot_id[1].to_bytes(8, "little")))


def fill_view(v: Any, me: HostId, claim: int) -> Any:
    """Fills a ``struct sg_host_view *`` with ``me``, ``claim`` and the monotonic clock now."""
    v.claim = claim
    v.boot_id[0], v.boot_id[1] = me.boot_id
    v.pid_ns, v.time_ns, v.mono_offset_ns = me.pid_ns, me.time_ns, me.mono_offset_ns
    v.created_mono_ns = time.monotonic_ns()
    return v


def start_ticks(pid: int) -> tuple[int, str] | None:
    """(start time in clock ticks since boot, state) of ``pid`` from /proc, or None if gone.

    :raises OSError: its entry cannot be read (e.g. /proc mounted with hidepid): unknown."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = data[data.rindex(b")") + 2:].split()
    return int(fields[19]), fields[0].decode()


def proc_is_ours() -> bool:
    """Reports whether /proc shows this process under our pid (False in a pid namespace
    whose /proc was not remounted: pids there cannot be looked up)."""
    try:
        return int(os.readlink("/proc/self")) == os.getpid()
    except (OSError, ValueError):
        return False


def claim_word(me: HostId) -> int:
    """Returns the init claim word of this process."""
    pid = os.getpid()
    st = start_ticks(pid)
    ticks = st[0] if st else 0
    return (((pid & ((1 << _PID_BITS) - 1)) << 41) | ((me.pid_ns & ((1 << _TAG_BITS) - 1)) << 32)
            | (ticks & 0xFFFFFFFF))


def claim_pid(word: int) -> int:
    return (word >> 41) & ((1 << _PID_BITS) - 1)


def claim_in_ns(word: int, me: HostId) -> bool:
    """Reports whether init claim ``word`` was taken in ``me``'s pid namespace (its 9-bit tag)."""
    mask = (1 << _TAG_BITS) - 1
    return (word >> 32) & mask == me.pid_ns & mask


def claim_ticks(word: int) -> int:
    """The low 32 bits of the claimant's start time (clock ticks since boot)."""
    return word & 0xFFFFFFFF


def check_host(h: Any, me: HostId, name: str, shared: bool, now_ns: int) -> int:
    """Returns the SG_MIX_* bits to record for attaching ``me`` to a segment whose header line 3
    is ``h``; raises :class:`SegmentError` when its times or pids mean nothing here."""
    from shmguard._capi import lib
    from shmguard.errors import SegmentError
    seg = f"segment {name!r}"
    theirs = (int(h.boot_id[0]), int(h.boot_id[1]))
    if (0, 0) not in (theirs, me.boot_id) and theirs != me.boot_id:
        raise SegmentError(
            f"{seg} was created in another boot (boot id {describe_boot(theirs)}; this host runs "
            f"boot {describe_boot(me.boot_id)}): its CLOCK_MONOTONIC times mean nothing now. "
            f"Remove it (`shmguard rm {name}` or shmguard.unlink({name!r})) and create it again")
    mix = 0
    if h.time_ns and me.time_ns and h.time_ns != me.time_ns:
        if h.mono_offset_ns != me.mono_offset_ns:
            raise SegmentError(
                f"{seg} was created in time namespace {h.time_ns} (monotonic offset "
                f"{h.mono_offset_ns} ns); this process is in time namespace {me.time_ns} (offset "
                f"{me.mono_offset_ns} ns): the two CLOCK_MONOTONIC clocks differ, and a segment "
                "needs one clock. Attach from a time namespace with the same offsets")
        if not shared:
            raise SegmentError(
                f"{seg} was created in time namespace {h.time_ns}; this process is in time "
                f"namespace {me.time_ns} (same offsets). Pass shared_namespaces=True to attach")
        mix |= lib.SG_MIX_TIME_NS
    if now_ns < h.created_mono_ns:
        raise SegmentError(
            f"{seg}: this process's monotonic clock ({now_ns} ns) is behind the segment's "
            f"creation ({h.created_mono_ns} ns): another boot, a restored checkpoint or another "
            f"time namespace. Remove it (`shmguard rm {name}`) and create it again")
    if h.pid_ns and me.pid_ns and h.pid_ns != me.pid_ns:
        if not shared:
            raise SegmentError(
                f"{seg} was created in pid namespace {h.pid_ns}; this process is in pid "
                f"namespace {me.pid_ns}, where the segment's pids (lease and claim owners) mean "
                "nothing. Pass shared_namespaces=True to attach anyway: leases are then judged "
                "by deadline only, in every process of the segment")
        mix |= lib.SG_MIX_PID_NS
    return mix
