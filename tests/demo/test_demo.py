"""``shmguard demo``: a short real run, the argument checks, and the checks' verdicts."""
from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
from typing import Any

import psutil
import pytest

import shmguard as sg
from shmguard.demo import run as demo
from shmguard.demo.checks import Evidence, check_all
from shmguard.demo.server import Hit, Schedule
from shmguard.demo.view import Counts
from shmguard.stats import BreakerMode, BreakerSnapshot

CLOSED, OPEN, HALF = sg.BreakerState.CLOSED, sg.BreakerState.OPEN, sg.BreakerState.HALF_OPEN


def test_short_run_passes_its_checks_and_cleans_up(segname: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "shmguard", "demo", "--duration", "5", "--workers", "2", "--plain",
         "--segment", segname], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "All four checks passed." in proc.stdout
    assert proc.stdout.count("[PASS]") == 4
    assert "bulkhead held" in proc.stdout
    assert segname not in sg.list_segments()


@pytest.mark.parametrize("argv", [["--duration", "1"], ["--workers", "0"], ["--rate", "0"],
                                  ["--bogus"]])
def test_bad_arguments_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(argv) == 2


def test_refuses_a_bad_or_existing_segment(svc: sg.ResilienceService, segname: str,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--segment", "../x"]) == 2
    assert demo.main(["--segment", segname]) == 2  # exists: the demo would remove it
    assert "already exists" in capsys.readouterr().err
    assert segname in sg.list_segments()


def test_help_exits_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert demo.main(["--help"]) == 0
    assert "--duration" in capsys.readouterr().out


def test_schedule() -> None:
    s = Schedule.for_duration(20)
    assert (s.sick_from, s.sick_until) == (5.0, 11.0)
    assert [s.phase(t) for t in (0, 2.9, 3, 4.9, 5, 10.9, 11)] == [
        "healthy", "healthy", "strained", "strained", "unhealthy", "unhealthy", "recovered"]
    assert Schedule.for_duration(5).sick_until - Schedule.for_duration(5).sick_from == 1.5


def _evidence(accepted: int = 100, opens: int = 2, leaked: int = 2, final: sg.BreakerState = CLOSED,
              stopped: tuple[int, int] = (5, 7)) -> Evidence:
    snap = BreakerSnapshot(final, BreakerMode.NORMAL, 7, 1.0, 0.0, 10, 0, 0, 0.5, 0.0, 0, (),
                           opens, 90, 10, 0, sum(stopped))
    metrics = sg.LimiterMetrics(accepted, 3, 1)
    stats = sg.EndpointStats("cache", final, 0.0, metrics, snap, 50.0, 10)
    hits = ([Hit(1.0, 1, CLOSED, 200), Hit(2.0, 1, CLOSED, 503)]
            + [Hit(2.5, 2, OPEN, 503)] * (leaked - 1) + [Hit(3.0, 1, HALF, 200),
                                                        Hit(3.5, 2, CLOSED, 200)])
    workers = [("w1", 1, Counts(40, 5, stopped[0], 0)), ("w2", 2, Counts(40, 5, stopped[1], 0))]
    return Evidence(stats, 50.0, 1, 2.0, workers, 2, hits)


def test_checks_pass_on_good_evidence() -> None:
    assert [c.ok for c in check_all(_evidence())] == [True, True, True]


@pytest.mark.parametrize("bad, failing", [
    (dict(accepted=111), "a"),           # > burst 10 + 50/s x 2 s
    (dict(opens=0), "bc"),               # never opened
    (dict(stopped=(5, 0)), "b"),         # one worker kept calling
    (dict(leaked=9), "b"),               # > 2 in flight + 2 probes
    (dict(final=OPEN), "c"),             # did not end closed
])
def test_checks_fail_and_the_demo_exits_1(bad: dict[str, Any], failing: str,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    ev = _evidence(**bad)
    assert "".join(c.label for c in check_all(ev) if not c.ok) == failing
    assert demo._report(ev, "seg") == 1
    assert "FAILED" in capsys.readouterr().out


def test_ctrl_c_stops_workers_and_removes_the_segment(segname: str) -> None:
    code = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from shmguard.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen(
        [sys.executable, "-c", code, "demo", "--duration", "30", "--workers", "2", "--plain",
         "--segment", segname], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the first status line: workers and server are up
            if line.startswith("[  1."):
                break
        workers = psutil.Process(proc.pid).children(recursive=True)
        assert len(workers) >= 2 and segname in sg.list_segments()
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
        out, _ = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, out
    assert "interrupted" in out
    assert segname not in sg.list_segments()
    _, alive = psutil.wait_procs(workers, timeout=10)
    assert alive == []


def test_views_render() -> None:
    from shmguard.demo.view import PlainView, Sample
    buf = io.StringIO()
    view = PlainView(buf)
    view.start("title")
    workers = [("w1", 11, Counts(3, 1, 2, 0))]
    view.update(Sample(0.0, "healthy", CLOSED, 0.0, 0, 0, 0, 0), workers)
    view.update(Sample(1.0, "unhealthy", OPEN, 0.5, 50, 10, 20, 49), workers)
    view.event(1.5, "breaker closed -> open")
    text = buf.getvalue()
    assert "admitted/s=   50 rejected/s=   30 hits/s=  49" in text and "w1 3/1/2/0" in text
    rich = pytest.importorskip("rich.console")
    from shmguard.demo.view import RichView
    rbuf = io.StringIO()
    rv = RichView(rich.Console(file=rbuf, force_terminal=True, width=120))
    rv.start("title")
    rv.event(1.5, "breaker closed -> open")
    rv.update(Sample(1.0, "unhealthy", HALF, 0.5, 50, 10, 20, 49), workers)
    rv.stop()
    assert "half-open" in rbuf.getvalue() and "breaker closed -> open" in rbuf.getvalue()
