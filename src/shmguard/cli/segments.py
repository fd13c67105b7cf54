"""Housekeeping: list this user's segments, remove one, collect the dead ones.

A segment is dead when no live process maps it. Between the scan and the
unlink a process could attach; ``gc`` re-scans its candidates just before
removing them and skips segments younger than ``min_age`` (a creator maps
its segment microseconds after making it), which makes that window tiny
but not zero: run ``gc`` when the pool is quiet.
"""
from __future__ import annotations

import fnmatch
import os
import time
from typing import Any

from shmguard.cli.procs import SegmentFile, attached, segment_files
from shmguard.errors import SegmentNotFoundError, ShmguardError
from shmguard.cli.inspector import open_segment, process_command, segment_info
from shmguard.segment import KEYED_SEP, SHM_DIR, SIDE_SEP, keyed_files, side_files, unlink, validate_name

__all__ = ["list_rows", "remove", "collect"]


def _procs(f: SegmentFile) -> list[dict[str, Any]]:
    return [{"pid": pid, "command": process_command(pid)} for pid in f.pids]


def list_rows(patterns: list[str] | None = None) -> list[dict[str, Any]]:
    """Returns one dict per segment: header facts, attached processes, or ``error``."""
    rows = []
    for f in attached(segment_files(patterns)):
        row: dict[str, Any] = {"name": f.name, "path": f.path, "size": f.size}
        try:
            with open_segment(f.name) as seg:
                info = segment_info(seg)
            row.update({k: info[k] for k in ("capacity", "used", "layout_version",
                                             "creator_pid", "created_unix", "age_seconds",
                                             "manual_clock")})
        except ShmguardError as exc:
            row["error"] = str(exc)
            row["age_seconds"] = max(0.0, time.time() - f.ctime)
        row["attached"] = _procs(f)
        row["keyed"] = _keyed(f.name)
        rows.append(row)
    return rows


def _keyed(name: str) -> list[dict[str, Any]]:
    out = []
    for path in keyed_files(name):
        try:
            out.append({"name": os.path.basename(path).split(KEYED_SEP, 1)[1],
                        "size": os.stat(path).st_size})
        except OSError:
            continue  # removed meanwhile
    return out


def _remove_keyed(name: str) -> None:
    for path in side_files(name):
        _unlink_file(path)


def remove(name: str, force: bool) -> str:
    """Unlinks segment ``name``; refuses while live processes map it unless ``force``.

    :raises SegmentNotFoundError: there is no such segment.
    :raises ShmguardError: processes are attached and ``force`` is false.
    """
    validate_name(name)
    files = [f for f in segment_files([name]) if f.name == name]
    if not files:
        raise SegmentNotFoundError(f"segment {name!r} does not exist")
    f = attached(files)[0]
    if f.pids and not force:
        who = ", ".join(f"{p['pid']} ({p['command'] or '?'})" for p in _procs(f))
        raise ShmguardError(f"segment {name!r} is attached by {len(f.pids)} live process(es): "
                            f"{who}; use --force to remove it anyway")
    if not unlink(name):
        raise SegmentNotFoundError(f"segment {name!r} does not exist")
    note = f" ({len(f.pids)} process(es) keep their mapping)" if f.pids else ""
    return f"removed {name}{note}"


def _unlink_file(path: str) -> bool:
    # the file itself: works for names shmguard would not accept, too
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


def collect(patterns: list[str] | None, min_age: float, dry_run: bool) -> list[dict[str, Any]]:
    """Removes segments no live process maps (older than ``min_age`` s); reports each.

    Each report is ``{"name", "action": "removed"|"would remove"|"kept", "reason"}``.
    """
    now = time.time()
    files = attached(segment_files(patterns))
    out: list[dict[str, Any]] = []
    candidates = []
    for f in files:
        if f.pids:
            out.append({"name": f.name, "action": "kept",
                        "reason": f"{len(f.pids)} live process(es) attached", "pids": f.pids})
        elif now - f.ctime < min_age:
            out.append({"name": f.name, "action": "kept",
                        "reason": f"younger than {min_age:g}s", "pids": []})
        else:
            candidates.append(f)
    for f in attached(candidates):  # look again, right before acting
        if f.pids:
            out.append({"name": f.name, "action": "kept",
                        "reason": f"{len(f.pids)} live process(es) attached", "pids": f.pids})
        elif dry_run:
            out.append({"name": f.name, "action": "would remove",
                        "reason": "no live process attached", "pids": []})
        elif _unlink_file(f.path):
            _remove_keyed(f.name)  # its keyed limiter tables go with it
            out.append({"name": f.name, "action": "removed",
                        "reason": "no live process attached", "pids": []})
    out += _orphans(patterns, dry_run)
    return sorted(out, key=lambda r: r["name"])


def _orphans(patterns: list[str] | None, dry_run: bool) -> list[dict[str, Any]]:
    """Keyed limiter tables and chain counters whose segment is gone (removed by other means) and that no
    live process maps: removed like dead segments."""
    prefix = f"shmguard.{os.geteuid()}."
    try:
        names = sorted(e[len(prefix):] for e in os.listdir(SHM_DIR)
                       if e.startswith(prefix) and SIDE_SEP in e)
    except OSError:
        return []
    files = []
    for n in names:
        seg = n.split(SIDE_SEP, 1)[0]
        if os.path.exists(os.path.join(SHM_DIR, prefix + seg)):
            continue  # its segment exists: it goes with it
        if patterns and not any(fnmatch.fnmatchcase(seg, p) for p in patterns):
            continue
        path = os.path.join(SHM_DIR, prefix + n)
        try:
            st = os.stat(path)
        except OSError:
            continue
        files.append(SegmentFile(n, path, st.st_size, st.st_ino, st.st_ctime))
    out: list[dict[str, Any]] = []
    for f in attached(files):
        if f.pids:
            out.append({"name": f.name, "action": "kept", "pids": f.pids,
                        "reason": f"{len(f.pids)} live process(es) attached"})
        elif dry_run or _unlink_file(f.path):
            out.append({"name": f.name, "action": "would remove" if dry_run else "removed",
                        "reason": "keyed limiter table of a segment that is gone", "pids": []})
    return out
