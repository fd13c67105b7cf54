"""Process liveness, judged with psutil (pid + start time, so pid reuse is not life).

This is the one place where shmguard judges a lease or claim owner by its
pid. Pass the owner's segment (``seg=``): when the segment is shared across
pid namespaces (``shared_namespaces=True``, recorded in its header) or this
process cannot look its own pid up in /proc, no pid proves anything, so
every owner counts as alive and leases end by their deadline only.
"""
from __future__ import annotations

import os
from typing import Any

import psutil

from shmguard import _hostid
from shmguard._capi import lib

__all__ = ["pid_alive", "holder_alive", "judges_pids", "claim_holder_dead"]

_PROC_OK: tuple[int, bool] = (0, False)  # (pid it was judged in, /proc shows our pids)


def judges_pids(seg: Any = None) -> bool:
    """Reports whether pids in ``seg`` can prove an owner dead from this process."""
    global _PROC_OK
    if _PROC_OK[0] != os.getpid():  # judged again after a fork (or unshare --pid)
        _PROC_OK = (os.getpid(), _hostid.proc_is_ours())
    if not _PROC_OK[1]:
        return False
    return seg is None or not (lib.sg_segment_mixed(seg.base) & lib.SG_MIX_PID_NS)


def pid_alive(pid: int, *, seg: Any = None) -> bool:
    """Reports whether ``pid`` is a live (non-zombie) process (always True when ``seg``'s
    pids cannot be judged: see :func:`judges_pids`)."""
    if not judges_pids(seg):
        return True
    if pid <= 0:
        return False
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def holder_alive(pid: int, started_before: float, slack: float = 1.0, *, seg: Any = None) -> bool:
    """Reports whether ``pid`` is alive AND was running at wall time ``started_before``.

    A process that started after the lease was granted cannot hold it: the
    pid was reused. Always True when ``seg``'s pids cannot be judged.
    """
    if not judges_pids(seg):
        return True
    if pid <= 0:
        return False
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return bool(p.create_time() <= started_before + slack)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def claim_holder_dead(word: int, me: _hostid.HostId) -> bool:
    """Reports whether the holder of a segment's init claim ``word`` is PROVEN dead (never on
    age): claimed in our pid namespace, pids judged here (:func:`judges_pids`), and its pid
    gone, a zombie, or a later process (start ticks). An unreadable /proc entry proves nothing."""
    if word & _hostid.CLAIM_DONE or not word or not _hostid.claim_in_ns(word, me):
        return False
    if not judges_pids():
        return False
    try:
        st = _hostid.start_ticks(_hostid.claim_pid(word))
    except OSError:
        return False
    if st is None:
        return True
    ticks, state = st
    return state in ("Z", "X") or (ticks & 0xFFFFFFFF) != _hostid.claim_ticks(word)
