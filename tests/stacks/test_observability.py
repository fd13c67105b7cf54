"""Prometheus over HTTP, the Collector, whole endpoint names, and the CLI's statuses."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from typing import Any

import pytest

import shmguard as sg

from _cli_helpers import cli  # noqa: E402

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

URL_NAME = "https://payments.internal.example.com:8443/v2/charges"


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


def _drive(svc: sg.ResilienceService) -> None:
    svc.register_endpoint(URL_NAME, sg.Policy(min_requests=2, rate=100, burst=10))
    svc.execute(URL_NAME, abs, 1)
    for _ in range(2):
        svc.try_execute(URL_NAME, lambda: 1 / 0)


def test_serve_metrics_over_http(segname: str, svc: sg.ResilienceService) -> None:
    _drive(svc)
    p = subprocess.Popen([sys.executable, "-m", "shmguard", "serve-metrics", segname, "missing-seg",
                          "--port", "0"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout is not None
        line = p.stdout.readline()
        assert line.startswith(f"shmguard: serving {segname}, missing-seg at http://127.0.0.1:")
        url = line.split(" at ")[1].strip()
        with urllib.request.urlopen(url, timeout=10) as r:
            text = r.read().decode()
    finally:
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=30)
    assert p.returncode == 0 and "Traceback" not in err, err
    got = _samples(text)
    ep = {("segment", segname), ("endpoint", URL_NAME)}       # the whole name as a label
    assert got["shmguard_breaker_state", frozenset(ep | {("state", "open")})] == 1
    assert got["shmguard_breaker_calls_total", frozenset(ep | {("outcome", "failure")})] == 1
    assert got["shmguard_limiter_rate", frozenset(ep)] == 100
    assert got["shmguard_segment_up", frozenset({("segment", segname)})] == 1
    assert got["shmguard_segment_up", frozenset({("segment", "missing-seg")})] == 0


def test_collector_merges_segments_in_one_registry(segname: str, svc: sg.ResilienceService) -> None:
    from shmguard.metrics import Collector
    _drive(svc)
    other = segname + "-b"
    with sg.ResilienceService(other) as svc2:
        svc2.register_endpoint("cache", sg.Policy())
        svc2.execute("cache", abs, 1)
        reg = prometheus_client.CollectorRegistry()
        reg.register(Collector([segname, other]))
        text = prometheus_client.generate_latest(reg).decode()
        svc2.unlink()
    assert text.count("# TYPE shmguard_breaker_state gauge") == 1   # one family, two segments
    got = _samples(text)
    assert got["shmguard_breaker_calls_total", frozenset(
        {("segment", other), ("endpoint", "cache"), ("outcome", "success")})] == 1
    assert got["shmguard_breaker_state", frozenset(
        {("segment", segname), ("endpoint", URL_NAME), ("state", "open")})] == 1


def _render(segname: str, cmd: str, columns: int, monkeypatch: pytest.MonkeyPatch,
            wide: bool = False) -> str:
    """What ``shmguard inspect`` / ``watch --once`` print at ``columns`` (in-process: fast)."""
    from shmguard.cli import watch
    from shmguard.cli.inspector import open_segment, snapshot
    from shmguard.cli.render import Style, inspect_text
    monkeypatch.setenv("COLUMNS", str(columns))
    with open_segment(segname) as seg:
        snap = snapshot(seg, commands=False)
    if cmd == "inspect":
        return inspect_text(snap, Style(False), wide=wide)
    hist = watch.History()
    hist.update(snap, 0.0)
    return watch.frame(snap, hist, Style(False), wide=wide)


@pytest.mark.parametrize("cmd", ["inspect", "watch"])
def test_inspect_and_watch_show_whole_names(segname: str, svc: sg.ResilienceService, cmd: str,
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    _drive(svc)
    long_name = "https://" + "x" * 40 + ".example.com:443"   # 64 characters, the limit
    svc.register_endpoint(long_name, sg.Policy())
    wide = _render(segname, cmd, 140, monkeypatch)
    assert f"{URL_NAME} " in wide and f"{long_name} " in wide   # a column wide enough
    narrow = _render(segname, cmd, 80, monkeypatch).splitlines()
    assert URL_NAME in narrow and long_name in narrow          # lines of their own
    assert all(len(line) <= 80 for line in narrow)
    tiny = _render(segname, cmd, 60, monkeypatch).splitlines()
    assert any(line.startswith("https://xxx") and "~" in line and
               line.endswith(".example.com:443") and len(line) == 60 for line in tiny)
    assert f"{long_name} " in _render(segname, cmd, 60, monkeypatch, wide=True)  # never elided


def test_the_cli_honours_the_terminal_width(segname: str, svc: sg.ResilienceService) -> None:
    _drive(svc)
    r = subprocess.run([sys.executable, "-m", "shmguard", "inspect", segname, "--wide"],
                       capture_output=True, text=True, timeout=30,
                       env={**os.environ, "NO_COLOR": "1", "COLUMNS": "40"})
    assert r.returncode == 0 and f"{URL_NAME} " in r.stdout


def test_idle_open_breaker_past_its_time_says_half_open_on_next_call(
        segname: str, svc: sg.ResilienceService, monkeypatch: pytest.MonkeyPatch) -> None:
    _drive(svc)
    assert "half-open in 30.0s" in _render(segname, "inspect", 100, monkeypatch)
    svc.advance(31)
    out = cli("inspect", segname).stdout
    assert "open, half-open on next call" in out and "half-open in" not in out
    assert "* open, half-open on next call" in _render(segname, "watch", 100, monkeypatch)
    snap = json.loads(cli("inspect", segname, "--json").stdout)
    assert snap["endpoints"][0]["half_open_on_next_call"] is True


def test_watch_first_frame_shows_rates(segname: str, realsvc: sg.ResilienceService) -> None:
    realsvc.register_endpoint("busy", sg.Policy(rate=1000, burst=50))
    admitted = sum(realsvc.limiter("busy").allow() for _ in range(80))
    assert admitted == 40   # NORMAL sees 80% of the burst
    out = subprocess.run([sys.executable, "-m", "shmguard", "watch", segname, "--once"],
                         capture_output=True, text=True, timeout=30,
                         env={**os.environ, "NO_COLOR": "1", "COLUMNS": "100"}).stdout
    row = next(line for line in out.splitlines() if line.startswith("busy "))
    adm_now, rej_now = row.split()[-3], row.split()[-1]
    assert adm_now != "-" and float(adm_now) > 0 and float(rej_now) > 0


@pytest.mark.parametrize("args, status, needle", [
    (("watch", "x", "--interval", "0"), 2, "must be > 0"),
    (("serve-metrics", "--port", "70000"), 2, "port must be 0..65535"),
    (("inspect", "bad/name"), 2, "may hold only"),
    (("inspect", "no-such-segment-here"), 1, "does not exist"),
    (("frobnicate",), 2, "invalid choice"),
])
def test_bad_values_exit_2_and_failures_1_with_one_line(args: Any, status: int,
                                                        needle: str) -> None:
    r = cli(*args, ok=False)
    assert r.returncode == status, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("shmguard: ") and needle in lines[0], r.stderr


def test_bad_rate_is_a_usage_error(segname: str, svc: sg.ResilienceService) -> None:
    svc.register_endpoint("tune", sg.Policy())
    r = cli("set-rate", segname, "tune", "fast", ok=False)
    assert r.returncode == 2 and "rate must be" in r.stderr


def test_positional_arguments_have_help() -> None:
    from shmguard.cli.commands import build_parser
    parser = build_parser()
    subs = next(a for a in parser._actions if a.dest == "command").choices
    missing = [(cmd, a.dest) for cmd, p in subs.items() for a in p._actions
               if not a.option_strings and not a.help and cmd != "demo"]
    assert missing == []


def test_serve_metrics_without_prometheus_client_says_what_to_install() -> None:
    code = ("import sys; sys.modules['prometheus_client'] = None\n"
            "from shmguard.cli import main; sys.exit(main(['serve-metrics', '--port', '0']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr == ("shmguard: serve-metrics needs prometheus_client: "
                        "pip install 'shmguard[metrics]'\n")
