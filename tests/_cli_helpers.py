"""Helpers shared by the CLI tests: run ``python -m shmguard`` and judge its errors."""
from __future__ import annotations

import os
import subprocess
import sys

from shmguard.segment import SHM_DIR

TIMEOUT = 30


def shm(name: str) -> str:
    return os.path.join(SHM_DIR, f"shmguard.{os.geteuid()}.{name}")


def cli(*args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    """Runs ``python -m shmguard ARGS``; with ``ok`` asserts exit status 0."""
    r = subprocess.run([sys.executable, "-m", "shmguard", *args], capture_output=True, text=True,
                       timeout=TIMEOUT, stdin=subprocess.DEVNULL,
                       env={**os.environ, "NO_COLOR": "1"})
    if ok:
        assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r


def one_line_error(r: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert r.returncode != 0
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shmguard: "), r.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])
