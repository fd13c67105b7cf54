"""``shmguard`` edge cases: bad segments and input fail in one line, demo forwarding, pieces.

Errors are checked through subprocesses (no traceback, one line on
stderr, non-zero status); the small pure pieces in process.
"""
from __future__ import annotations

import json
import os
import sys

import pytest

import shmguard as sg
from shmguard._capi import lib

from _cli_helpers import cli, one_line_error, shm


# -- bad segments and input -------------------------------------------------------------------------------
def test_missing_segment_and_bad_names(segname: str) -> None:
    for args in (["inspect", segname], ["inspect", segname, "--json"],
                 ["watch", segname, "--once"], ["force-open", segname, "x"],
                 ["set-rate", segname, "x", "5"]):
        one_line_error(cli(*args, ok=False), "does not exist")
    one_line_error(cli("inspect", "bad/name", ok=False), "may hold only")
    one_line_error(cli("inspect", "..", ok=False), "may hold only")


def test_unknown_endpoint_and_bad_rate(svc: sg.ResilienceService, segname: str) -> None:
    svc.register_endpoint("tune", sg.Policy(rate=10))
    one_line_error(cli("force-open", segname, "nope", ok=False), "'nope' not found")
    one_line_error(cli("set-rate", segname, "tune", "-1", ok=False), "rate must be > 0")
    one_line_error(cli("set-rate", segname, "tune", "fast", ok=False), "rate must be")
    r = cli("watch", segname, "--interval", "0", ok=False)
    assert r.returncode == 2 and "Traceback" not in r.stderr


def _write(path: str, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def test_corrupt_header_gives_one_line_error(segname: str) -> None:
    _write(shm(segname), b"garbage!" * 512)
    one_line_error(cli("inspect", segname, ok=False), "not a shmguard segment")
    one_line_error(cli("force-open", segname, "x", ok=False), "not a shmguard segment")
    [row] = json.loads(cli("list", "--json", segname).stdout)["segments"]
    assert "not a shmguard segment" in row["error"] and row["attached"] == []


def test_incompatible_and_truncated_segments(segname: str) -> None:
    sg.segment.Segment(segname, capacity=4).close()
    with open(shm(segname), "r+b") as f:
        f.seek(8)  # layout_version (csrc/layout.h)
        f.write((99).to_bytes(4, "little"))
    one_line_error(cli("inspect", segname, ok=False), "another layout version")
    sg.unlink(segname)
    sg.segment.Segment(segname, capacity=4).close()
    os.truncate(shm(segname), lib.SG_HEADER_SIZE + lib.SG_SLOT_SIZE)
    one_line_error(cli("inspect", segname, ok=False), "shorter than its header claims")


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the segment away")
def test_foreign_uid_and_open_mode_are_refused(segname: str) -> None:
    sg.segment.Segment(segname, capacity=4).close()
    os.chmod(shm(segname), 0o644)
    one_line_error(cli("inspect", segname, ok=False), "group/world")
    os.chmod(shm(segname), 0o600)
    os.chown(shm(segname), 65534, 65534)
    one_line_error(cli("inspect", segname, ok=False), "belongs to uid 65534")


# -- in process: demo forwarding and the small pieces ---------------------------------------
def test_demo_forwards_its_arguments(monkeypatch: pytest.MonkeyPatch) -> None:
    from types import ModuleType

    from shmguard import cli as climod
    seen: list[list[str]] = []
    fake = ModuleType("shmguard.demo")
    def fake_main(argv: list[str]) -> int:
        seen.append(argv)
        return 7
    fake.main = fake_main  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "shmguard.demo", fake)
    assert climod.main(["demo", "--workers", "3", "x", "--help"]) == 7
    assert seen == [["--workers", "3", "x", "--help"]]


def test_demo_missing_is_one_line(monkeypatch: pytest.MonkeyPatch,
                                  capsys: pytest.CaptureFixture[str]) -> None:
    from shmguard import cli as climod
    monkeypatch.setitem(sys.modules, "shmguard.demo", None)
    assert climod.main(["demo", "run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("shmguard: ")


def test_sparkline_and_history() -> None:
    from shmguard.cli.watch import History, spark
    assert spark([]) == " " * 8
    assert spark([0, 1, 2, 4, 8]) == "    ▁▂▄█"
    assert spark([5] * 10, width=4) == "████"
    h = History(length=3)
    ep = {"name": "a", "limiter": {"admitted": 10, "rejected": 1}, "totals": {"rejected": 2}}
    h.update({"endpoints": [ep]}, 100.0)
    assert h.last("a") == ([], [])
    ep2 = {"name": "a", "limiter": {"admitted": 30, "rejected": 2}, "totals": {"rejected": 5}}
    h.update({"endpoints": [ep2]}, 102.0)
    assert h.last("a") == ([10.0], [2.0])


def test_prometheus_escapes_label_values(segname: str) -> None:
    with sg.ResilienceService(segname, capacity=4) as svc:
        svc.register_endpoint('we"ird\\name', sg.Policy())
        text = cli("inspect", segname, "--prometheus").stdout
        assert 'endpoint="we\\"ird\\\\name"' in text
        svc.unlink()


def test_psutil_fallback_finds_the_same_processes(svc: sg.ResilienceService,
                                                  segname: str) -> None:
    from shmguard.cli.procs import scan_proc, scan_psutil
    path = shm(segname)
    ino = os.stat(path).st_ino
    assert (os.getpid(), ino) in scan_proc({path})[path]
    assert (os.getpid(), 0) in scan_psutil({path})[path]
