"""Which processes have a segment mapped, and the segments on disk.

A process is attached to a segment when its memory map holds the file
``/dev/shm/shmguard.<uid>.<name>`` (same inode: a mapping of an unlinked
older segment of the same name does not count). ``/proc/<pid>/maps`` is
scanned once for every segment asked about; where /proc is not readable,
psutil's ``memory_maps()`` is the (much slower) fallback.
"""
from __future__ import annotations

import fnmatch
import os
from dataclasses import dataclass, field

from shmguard.segment import SHM_DIR, SIDE_SEP

__all__ = ["SegmentFile", "segment_files", "attached", "scan_proc", "scan_psutil"]

_DELETED = " (deleted)"


@dataclass
class SegmentFile:
    """One ``/dev/shm/shmguard.<uid>.<name>`` file and who maps it."""

    name: str
    path: str
    size: int
    inode: int
    ctime: float
    pids: list[int] = field(default_factory=list)


def segment_files(patterns: list[str] | None = None, uid: int | None = None) -> list[SegmentFile]:
    """Returns this user's segment files, optionally only names matching ``patterns`` (globs)."""
    prefix = f"shmguard.{os.geteuid() if uid is None else uid}."
    try:
        entries = sorted(os.listdir(SHM_DIR))
    except OSError:
        return []
    out = []
    for e in entries:
        if not e.startswith(prefix):
            continue
        name = e[len(prefix):]
        if SIDE_SEP in name:
            continue  # a keyed limiter's table or a chain's counters: listed under its segment
        if patterns and not any(fnmatch.fnmatchcase(name, p) for p in patterns):
            continue
        path = os.path.join(SHM_DIR, e)
        try:
            st = os.stat(path)
        except OSError:
            continue  # removed meanwhile
        out.append(SegmentFile(name, path, st.st_size, st.st_ino, st.st_ctime))
    return out


def attached(files: list[SegmentFile], *, exclude_self: bool = True) -> list[SegmentFile]:
    """Fills each file's ``pids`` with the live processes that map it; returns ``files``."""
    if not files:
        return files
    wanted = {f.path: f for f in files}
    try:
        found = scan_proc(set(wanted))
    except OSError:
        found = scan_psutil(set(wanted))
    me = os.getpid()
    for path, hits in found.items():
        f = wanted[path]
        f.pids = sorted({pid for pid, ino in hits if ino in (0, f.inode)
                         and not (exclude_self and pid == me)})
    return files


def _parse(line: str, paths: set[str]) -> tuple[str, int] | None:
    # "start-end perms offset dev inode   path"; path may contain spaces
    parts = line.split(None, 5)
    if len(parts) < 6:
        return None
    path = parts[5].rstrip("\n")
    if path.endswith(_DELETED) or path not in paths:
        return None
    try:
        return path, int(parts[4])
    except ValueError:
        return path, 0


def scan_proc(paths: set[str]) -> dict[str, set[tuple[int, int]]]:
    """Scans ``/proc/*/maps``; returns path -> {(pid, inode)}.

    :raises OSError: /proc is not there (not Linux).
    """
    found: dict[str, set[tuple[int, int]]] = {p: set() for p in paths}
    marker = (SHM_DIR + "/shmguard.").encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/maps", "rb") as f:
                data = f.read()
        except OSError:
            continue  # gone, or not ours to read
        if marker not in data:
            continue
        for raw in data.splitlines():
            if marker in raw:
                hit = _parse(raw.decode("utf-8", "replace"), paths)
                if hit:
                    found[hit[0]].add((int(entry), hit[1]))
    return found


def scan_psutil(paths: set[str]) -> dict[str, set[tuple[int, int]]]:
    """Like :func:`scan_proc` through psutil (no inode: 0)."""
    import psutil

    found: dict[str, set[tuple[int, int]]] = {p: set() for p in paths}
    for proc in psutil.process_iter():
        try:
            for m in proc.memory_maps(grouped=True):
                if m.path in found:
                    found[m.path].add((proc.pid, 0))
        except (psutil.Error, OSError):
            continue
    return found
