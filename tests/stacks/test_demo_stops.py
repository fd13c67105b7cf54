"""The demo ends cleanly on SIGTERM, keeps sane bounds, and its checks cannot pass vacuously."""
from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys

import psutil
import pytest

import shmguard as sg
from shmguard.demo import run as demo
from shmguard.demo.checks import check_all

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "demo"))
from test_demo import _evidence  # noqa: E402


@pytest.mark.parametrize("argv, needle", [
    (["--workers", "100000"], "--workers <= 64"),
    (["--workers", "1"], "2 <= --workers"),
    (["--duration", "inf"], "--duration <= 3600"),
    (["--duration", "nan"], "--duration"),
    (["--duration", "3601"], "--duration <= 3600"),
])
def test_bounds_are_clear_errors(argv: list[str], needle: str,
                                 capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(argv) == 2
    assert needle in capsys.readouterr().err


def test_unlimited_rate_is_not_exercised_not_passed(capsys: pytest.CaptureFixture[str]) -> None:
    ev = _evidence()
    idle = dataclasses.replace(ev.stats, limiter_metrics=sg.LimiterMetrics(100, 0, 0))
    ev = dataclasses.replace(ev, stats=idle)
    a = check_all(ev)[0]
    assert (a.ok, a.exercised) == (True, False)
    assert demo._report(ev, "seg") == 0
    out = capsys.readouterr().out
    assert "[NOT EXERCISED] (a) rate limit not exercised" in out
    assert "All three checks passed." not in out and "(a) not exercised" in out
    assert "rejections by cause: breaker open 12, rate limit 0" in out
    too_many = dataclasses.replace(ev, stats=dataclasses.replace(
        idle, limiter_metrics=sg.LimiterMetrics(500, 0, 0)))
    assert not check_all(too_many)[0].ok        # not exercised, and still able to fail


def test_every_worker_needs_two_workers() -> None:
    ev = _evidence()
    one = dataclasses.replace(ev, workers=ev.workers[:1], pool_size=1)
    assert [c.label for c in check_all(one) if not c.ok] == ["b"]


@pytest.mark.parametrize("group", [True, False], ids=["process-group", "parent-only"])
def test_sigterm_ends_cleanly_without_worker_tracebacks(segname: str, group: bool) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "shmguard", "demo", "--duration", "30", "--workers", "2", "--plain",
         "--segment", segname], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the first status line: workers and server are up
            if line.startswith("[  1."):
                break
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) >= 2
        if group:
            os.killpg(proc.pid, signal.SIGTERM)   # systemd, docker stop, a supervisor
        else:
            os.kill(proc.pid, signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 128 + signal.SIGTERM, out
    assert "Traceback" not in out and "interrupted" in out, out
    assert segname not in sg.list_segments()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []
