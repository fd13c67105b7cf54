"""Shared fixtures: every test gets its own segment name and leaves nothing in /dev/shm."""
from __future__ import annotations

import os
import uuid

import pytest

import shmguard as sg
from shmguard.segment import SHM_DIR

T0 = 1_000_000_000_000  # manual clock start: 1000 s (ns)


def _token() -> str:
    """This pytest session's token (set once by the controller, inherited by xdist workers)."""
    return os.environ.setdefault("SHMGUARD_TEST_TOKEN", uuid.uuid4().hex[:6])


def pytest_configure(config: pytest.Config) -> None:
    _token()


def _ours() -> set[str]:
    prefix = f"shmguard.{os.geteuid()}.t-{_token()}-"
    try:
        return {e for e in os.listdir(SHM_DIR) if e.startswith(prefix)}
    except OSError:
        return set()


@pytest.fixture
def segname(request: pytest.FixtureRequest) -> str:
    """A fresh segment name, unlinked after the test (and checked gone)."""
    name = f"t-{_token()}-{uuid.uuid4().hex[:10]}"
    yield name
    sg.unlink(name)
    assert not os.path.exists(os.path.join(SHM_DIR, f"shmguard.{os.geteuid()}.{name}"))


@pytest.fixture
def svc(segname: str) -> sg.ResilienceService:
    """A service on a fresh segment with a manual clock at T0 (registers endpoints on first use)."""
    s = sg.ResilienceService(segname, capacity=64, manual_clock=True,
                             default_policy=sg.PolicyPresets.standard())
    s.set_clock(T0)
    yield s
    s.close()
    s.unlink()


@pytest.fixture
def realsvc(segname: str) -> sg.ResilienceService:
    """A service on a fresh segment with the real monotonic clock (registers on first use)."""
    s = sg.ResilienceService(segname, capacity=64, default_policy=sg.PolicyPresets.standard())
    yield s
    s.close()
    s.unlink()


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Fails the run if any segment of this session (``t-<token>-*``) is left in /dev/shm."""
    if hasattr(session.config, "workerinput"):
        return  # an xdist worker: the controller checks once, at the very end
    left = _ours()
    if left:
        for name in sorted(left):
            os.unlink(os.path.join(SHM_DIR, name))
        print(f"\nshmguard: tests left {len(left)} segment(s) in {SHM_DIR}: {sorted(left)}")
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
