"""Process liveness, judged with psutil (pid + start time, so pid reuse is not life)."""
from __future__ import annotations

import psutil

__all__ = ["pid_alive", "holder_alive"]


def pid_alive(pid: int) -> bool:
    """Reports whether ``pid`` is a live (non-zombie) process."""
    if pid <= 0:
        return False
    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False


def holder_alive(pid: int, started_before: float, slack: float = 1.0) -> bool:
    """Reports whether ``pid`` is alive AND was running at wall time ``started_before``.

    A process that started after the lease was granted cannot hold it: the
    pid was reused.
    """
    if pid <= 0:
        return False
    try:
        p = psutil.Process(pid)
        if p.status() == psutil.STATUS_ZOMBIE:
            return False
        return bool(p.create_time() <= started_before + slack)
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return False
