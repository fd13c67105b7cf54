"""The CLI over keyed limiters: list, inspect (text, JSON, Prometheus, --keys), watch, rm, gc."""
from __future__ import annotations

import json
import os

import shmguard as sg
from _cli_helpers import cli, shm


def _make(segname: str) -> None:
    svc = sg.ResilienceService(segname, manual_clock=True)
    svc.set_clock(10**12)
    kl = svc.keyed_limiter("users", 10, 5, capacity=1000)
    for i, n in enumerate([1, 4, 2]):
        for _ in range(n):
            kl.allow(f"u{i}", priority=sg.Priority.HIGH)
    kl.allow("u1", priority=sg.Priority.HIGH)      # fifth token
    kl.allow("u1", priority=sg.Priority.HIGH)      # rejected
    svc.close()


def test_inspect_shows_keyed_limiters_and_hot_keys(segname: str) -> None:
    _make(segname)
    snap = json.loads(cli("inspect", segname, "--json", "--keys", "2").stdout)
    (k,) = snap["keyed"]
    assert (k["name"], k["capacity"], k["entries"], k["live_keys"]) == ("users", 1000, 2000, 3)
    assert (k["accepted"], k["rejected"], k["full_rejections"]) == (8, 1, 0)
    assert [h["tokens"] for h in k["hot"]] == [0.0, 3.0]
    text = cli("inspect", segname, "--keys", "1").stdout
    assert "KEYED LIMITER" in text and "users" in text and "tokens 0.0" in text
    assert max(len(line) for line in text.splitlines()) <= 80
    prom = cli("inspect", segname, "--prometheus").stdout
    assert f'shmguard_keyed_live_keys{{segment="{segname}",keyed="users"}} 3' in prom
    assert f'shmguard_keyed_admitted_total{{segment="{segname}",keyed="users"}} 8' in prom
    frame = cli("watch", segname, "--once").stdout
    assert "~users" in frame and "3/1000 keys" in frame
    assert cli("inspect", segname, "--keys", "0", ok=False).returncode == 2


def test_list_shows_tables_under_their_segment(segname: str) -> None:
    _make(segname)
    rows = json.loads(cli("list", segname + "*", "--json").stdout)["segments"]
    assert [r["name"] for r in rows] == [segname]           # the table is not a segment
    assert rows[0]["keyed"] == [{"name": "users", "size": 1024 + 2000 * 16}]
    assert "keyed users" in cli("list", segname).stdout


def test_rm_and_gc_remove_the_tables(segname: str) -> None:
    _make(segname)
    table = shm(segname) + "~kl~users"
    assert os.path.exists(table)
    cli("rm", segname)
    assert not os.path.exists(table) and not os.path.exists(shm(segname))
    _make(segname)
    out = cli("gc", segname, "--min-age", "0").stdout
    assert f"removed      {segname}" in out
    assert not os.path.exists(table) and not os.path.exists(shm(segname))


def test_a_corrupt_or_open_table_is_reported_not_read(segname: str) -> None:
    _make(segname)
    table = shm(segname) + "~kl~users"
    with open(table, "r+b") as f:          # scribble on the magic
        f.write(b"\xff" * 8)
    snap = json.loads(cli("inspect", segname, "--json").stdout)
    assert snap["keyed"] == [{"name": "users", "error": f"keyed limiter 'users' of segment "
                                                        f"{segname!r} is not a keyed limiter "
                                                        "table (bad magic)"}]
    assert "   ! keyed limiter 'users' of segment" in cli("inspect", segname).stdout
    os.chmod(table, 0o644)                 # group/world readable: refused like a segment
    svc = sg.ResilienceService(segname, create=False)
    try:
        import pytest
        with pytest.raises(sg.SegmentPermissionError, match="mode 644"):
            svc.keyed_limiter("users", 10, 5, capacity=1000)
    finally:
        svc.close()
    cli("rm", segname)
    assert not os.path.exists(table)


def test_set_rate_of_a_keyed_limiter(segname: str) -> None:
    _make(segname)
    out = cli("set-rate", segname, "users", "2", "--keyed", "--burst", "8").stdout
    assert out.strip() == ("keyed users: rate 10/s, burst 5, capacity 1000, on_full 'reject' -> "
                           "rate 2/s, burst 8, capacity 1000, on_full 'reject'")
    (k,) = json.loads(cli("inspect", segname, "--json").stdout)["keyed"]
    assert (k["rate"], k["burst"], k["rate_changes"]) == (2.0, 8, 1)
    r = cli("set-rate", segname, "users", "off", "--keyed", ok=False)
    assert r.returncode == 2 and "always has a rate" in r.stderr   # a bad value: usage
    r = cli("set-rate", segname, "nobody", "3", "--keyed", ok=False)
    assert r.returncode == 1 and "does not exist" in r.stderr


def test_gc_removes_tables_whose_segment_is_gone(segname: str) -> None:
    _make(segname)
    os.unlink(shm(segname))                    # the segment removed by other means
    table = shm(segname) + "~kl~users"
    out = cli("gc", segname, "--min-age", "0", "--dry-run").stdout
    assert f"would remove {segname}~kl~users" in out and os.path.exists(table)
    out = cli("gc", segname, "--min-age", "0").stdout
    assert f"removed      {segname}~kl~users" in out and not os.path.exists(table)
