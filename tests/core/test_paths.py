"""Both paths: the core specification again with the one-crossing extension switched off.

Every door has a C fast path (shmguard._hot) and an equivalent cffi path used
when the extension is missing or stale. SHMGUARD_NO_HOT=1 forces the cffi
path; the core tests must pass on it unchanged.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid

import pytest

CORE = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.skipif(os.environ.get("SHMGUARD_NO_HOT") == "1", reason="already the cffi path")
def test_the_core_suite_passes_on_the_cffi_path() -> None:
    env = dict(os.environ, SHMGUARD_NO_HOT="1",
               SHMGUARD_TEST_TOKEN=uuid.uuid4().hex[:6])  # its own segments, checked by itself
    files = [os.path.join(CORE, f) for f in ("test_service.py", "test_breaker_steps.py",
                                             "test_aio.py", "test_executor.py",
                                             "test_hardening_limits.py", "test_gcra_steps.py", "test_doors.py",
                                             "test_deadlines.py", "test_fallback.py", "test_keyed.py",
                                             "test_bulkhead.py", "test_bulkhead_steps.py",
                                             "test_throttle.py")]
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                        "-p", "no:xdist", *files], env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert " passed" in r.stdout.splitlines()[-1]
