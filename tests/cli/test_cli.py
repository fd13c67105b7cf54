"""The ``shmguard`` command, run in subprocesses against segments real workers update.

Workers are multiprocessing (forkserver) processes that attach by name and
obey commands sent over a pipe, so every count below is exact. The segment
has a manual clock: states and lease times do not move unless told.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
from typing import Any

import pytest

import shmguard as sg

T0 = 1_000_000_000_000
CTX = mp.get_context("forkserver")
CTX.set_forkserver_preload(["shmguard", "shmguard.service", "psutil", __name__])
TIMEOUT = 30


# -- worker processes ----------------------------------------------------------
def _op(svc: sg.ResilienceService, held: dict[str, Any], op: str, *a: Any) -> Any:
    if op == "calls":  # endpoint, n_ok, n_fail
        def fail() -> None:
            raise ConnectionError("down")
        out = {"ok": 0, "failed": 0, "rejected": 0}
        for fn, key in [(lambda: None, "ok")] * a[1] + [(fail, "failed")] * a[2]:
            try:
                svc.execute(a[0], fn)
                out["ok"] += 1
            except ConnectionError:
                out["failed"] += 1
            except sg.RejectedError:
                out["rejected"] += 1
        return out
    if op == "try":  # endpoint -> "ok" or the rejection's class name
        try:
            svc.execute(a[0], lambda: None)
            return "ok"
        except sg.RejectedError as exc:
            return type(exc).__name__
    if op == "allow":  # endpoint, n, priority
        lim = svc.limiter(a[0])
        return [lim.allow(1, sg.Priority(a[2])) for _ in range(a[1])]
    if op == "probe":  # take a half-open permit and hold it
        permit = svc.breaker(a[0]).allow()
        held[a[0]] = permit
        return permit is not None and permit.is_probe
    raise ValueError(op)


def _worker(segname: str, conn: Any) -> None:
    svc = sg.ResilienceService(segname, create=False)
    held: dict[str, Any] = {}
    conn.send(os.getpid())
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            break
        try:
            conn.send(_op(svc, held, *msg))
        except Exception as exc:  # report, do not die: the test decides
            conn.send(f"error: {exc!r}")
    svc.close()


def _create_and_hang(segname: str, conn: Any) -> None:
    svc = sg.ResilienceService(segname, capacity=4)
    svc.register_endpoint("x", sg.Policy())
    conn.send(os.getpid())
    signal.pause()


class Worker:
    def __init__(self, segname: str) -> None:
        self.conn, child = CTX.Pipe()
        self.proc = CTX.Process(target=_worker, args=(segname, child), daemon=True)
        self.proc.start()
        child.close()
        assert self.conn.poll(TIMEOUT), "worker did not start"
        self.pid: int = self.conn.recv()

    def __call__(self, *msg: Any) -> Any:
        self.conn.send(msg)
        assert self.conn.poll(TIMEOUT), f"worker did not answer {msg}"
        return self.conn.recv()

    def stop(self) -> None:
        if self.proc.is_alive():
            self.conn.send(("stop",))
            self.proc.join(TIMEOUT)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


from _cli_helpers import cli, one_line_error, shm  # noqa: E402


def endpoints(segname: str) -> dict[str, dict[str, Any]]:
    snap = json.loads(cli("inspect", segname, "--json").stdout)
    return {e["name"]: e for e in snap["endpoints"]}


# -- fixtures ----------------------------------------------------------------------
POLICIES = {
    "ok": sg.Policy(rate=1000, burst=100, min_requests=4),
    "bad": sg.Policy(min_requests=4, failure_threshold=0.5),
    "limited": sg.Policy(rate=1, burst=3),
    "probe": sg.Policy(min_requests=1, open_timeout=5, half_open_max_calls=2),
    "tune": sg.Policy(rate=100, burst=50),
}


@pytest.fixture
def pool(segname: str) -> Any:
    """The test's service (manual clock at T0, every endpoint registered) and 2 workers."""
    svc = sg.ResilienceService(segname, capacity=32, manual_clock=True)
    svc.set_clock(T0)
    for name, pol in POLICIES.items():
        svc.register_endpoint(name, pol)
    workers = [Worker(segname) for _ in range(2)]
    yield svc, workers
    for w in workers:
        w.stop()
    svc.close()
    svc.unlink()


def drive(svc: sg.ResilienceService, w: list[Worker]) -> None:
    """Puts every endpoint in a known state, through the workers."""
    for wk in w:
        assert wk("calls", "ok", 3, 0) == {"ok": 3, "failed": 0, "rejected": 0}
        assert wk("calls", "bad", 0, 2) == {"ok": 0, "failed": 2, "rejected": 0}
    assert w[0]("allow", "limited", 5, int(sg.Priority.HIGH)) == [True] * 3 + [False] * 2
    assert w[1]("calls", "probe", 0, 1) == {"ok": 0, "failed": 1, "rejected": 0}
    svc.advance(6)  # past the probe endpoint's open timeout
    assert w[1]("probe", "probe") is True


# -- reading ------------------------------------------------------------------------
def test_inspect_json_carries_every_endpoint_with_exact_state(pool: Any, segname: str) -> None:
    svc, w = pool
    drive(svc, w)
    eps = endpoints(segname)
    assert sorted(eps) == sorted(POLICIES)
    assert {n: (e["breaker_state"], e["mode"]) for n, e in eps.items()} == {
        "ok": ("closed", "normal"), "bad": ("open", "normal"), "limited": ("closed", "normal"),
        "probe": ("half-open", "normal"), "tune": ("closed", "normal")}
    ok, bad, lim, probe = eps["ok"], eps["bad"], eps["limited"], eps["probe"]
    assert ok["window"] == {"calls": 6, "failures": 0, "successes": 6, "slow": 0,
                            "failure_rate": 0.0}
    assert ok["limiter"]["by_priority"]["normal"] == {"admitted": 6, "rejected": 0, "waited": 0}
    assert ok["limiter"]["rate"] == 1000 and ok["limiter"]["burst"] == 100
    assert bad["window"]["calls"] == 4 and bad["window"]["failures"] == 4
    assert bad["generation"] == 1 and bad["opens"] == 1
    assert bad["open_remaining_seconds"] == pytest.approx(30 - 6, abs=0.01)
    assert lim["limiter"]["by_priority"]["high"] == {"admitted": 3, "rejected": 2, "waited": 0}
    # 6 s later the bucket has refilled; the 1 s statistics buckets still hold T0
    assert lim["limiter"]["tokens"] == 3 and lim["limiter"]["acceptance_rate"] == 0.6
    assert probe["probes_in_flight"] == 1
    [holder] = probe["half_open"]["probes"]
    assert holder["pid"] == w[1].pid and holder["lease_left_seconds"] == pytest.approx(10, abs=0.01)
    assert "python" in holder["command"]
    assert probe["state_seconds"] == pytest.approx(0, abs=0.01)
    assert eps["tune"]["limiter"]["by_priority"]["normal"]["admitted"] == 0


def test_inspect_text_fits_80_columns(pool: Any, segname: str) -> None:
    svc, w = pool
    drive(svc, w)
    svc.register_endpoint("an-endpoint-name-much-longer-than-the-column", sg.Policy())
    out = cli("inspect", segname).stdout
    assert all(len(line) <= 80 for line in out.splitlines()), out
    assert "\x1b[" not in out  # not a terminal: no colours
    lines = out.splitlines()
    rows = {line.split()[0]: line.split()[1] for line in lines[3:]
            if line and not line.startswith(" ") and len(line.split()) > 1}
    assert rows == {"bad": "open", "limited": "closed",
                    "ok": "closed", "probe": "half-open", "tune": "closed"}
    # a name wider than its column: whole, on a line of its own above its row
    at = lines.index("an-endpoint-name-much-longer-than-the-column")
    assert lines[at + 1].split()[0] == "closed"
    assert f"{w[1].pid}(10.0s)" in out  # the probe's holder and its lease


def _parse_prometheus(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset[tuple[str, str]]], float]]:
    types: dict[str, str] = {}
    samples = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            types[name] = kind
        elif line and not line.startswith("#"):
            head, value = line.rsplit(" ", 1)
            name, _, labels = head.partition("{")
            pairs = frozenset(tuple(kv.split("=", 1)) for kv in labels.rstrip("}").split(","))
            samples[name, frozenset((k, v.strip('"')) for k, v in pairs)] = float(value)
    return types, samples


def test_prometheus_exposition_has_every_endpoint_state(pool: Any, segname: str) -> None:
    svc, w = pool
    drive(svc, w)
    text = cli("inspect", segname, "--prometheus").stdout
    types, samples = _parse_prometheus(text)
    assert all(n.startswith("shmguard_") for n in types)
    for name, kind in types.items():
        assert f"# HELP {name} " in text
        assert kind == ("counter" if name.endswith("_total") else "gauge")
    want = {"ok": "closed", "bad": "open", "limited": "closed", "probe": "half-open",
            "tune": "closed"}
    for ep, state in want.items():
        for s in ("closed", "open", "half-open"):
            key = ("shmguard_breaker_state",
                   frozenset({("segment", segname), ("endpoint", ep), ("state", s)}))
            assert samples[key] == (s == state), (ep, s)
    lab = frozenset({("segment", segname), ("endpoint", "limited"), ("priority", "high")})
    assert samples["shmguard_limiter_rejected_total", lab] == 2
    assert samples["shmguard_limiter_admitted_total", lab] == 3
    assert samples["shmguard_breaker_probes_in_flight",
                   frozenset({("segment", segname), ("endpoint", "probe")})] == 1


def test_list_shows_segment_endpoints_and_attached_workers(pool: Any, segname: str) -> None:
    svc, w = pool
    [row] = json.loads(cli("list", "--json", segname).stdout)["segments"]
    assert row["name"] == segname and row["used"] == len(POLICIES) and row["capacity"] == 32
    assert row["size"] == os.path.getsize(shm(segname))
    assert {p["pid"] for p in row["attached"]} == {os.getpid(), w[0].pid, w[1].pid}
    assert row["manual_clock"] is True and "error" not in row
    text = cli("list", segname).stdout
    assert f"{len(POLICIES)}/32" in text and str(w[0].pid) in text


def test_viewing_never_writes_to_the_segment(pool: Any, segname: str) -> None:
    svc, w = pool
    drive(svc, w)  # then every process is idle and the manual clock stands still
    with open(shm(segname), "rb") as f:
        before = f.read()
    cli("inspect", segname)
    cli("inspect", segname, "--json")
    cli("inspect", segname, "--prometheus")
    cli("list", segname)
    cli("watch", segname, "--iterations", "2", "--interval", "0.05")
    with open(shm(segname), "rb") as f:
        assert f.read() == before


def test_watch_runs_iterations_without_a_tty(pool: Any, segname: str) -> None:
    svc, w = pool
    drive(svc, w)
    out = cli("watch", segname, "--iterations", "2", "--interval", "0.1").stdout
    frames = out.split(f"shmguard watch {segname}")
    assert len(frames) == 3  # text before the first frame, then two frames
    for f in frames[1:]:
        for ep in POLICIES:
            assert f"\n{ep} " in f
    assert all(len(line) <= 80 for line in out.splitlines())
    assert cli("watch", segname, "--once").stdout.count("ENDPOINT") == 1


def _pty_watch(segname: str, keys: bytes) -> tuple[int, bytes]:
    import fcntl
    import pty
    import select
    import struct
    import termios
    import time

    master, slave = pty.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    launch = ("import fcntl, os, sys, termios; fcntl.ioctl(0, termios.TIOCSCTTY, 0); "
              "os.execv(sys.executable, [sys.executable, '-m', 'shmguard'] + sys.argv[1:])")
    p = subprocess.Popen([sys.executable, "-c", launch, "watch", segname, "--interval", "0.1"],
                         stdin=slave, stdout=slave, stderr=slave, start_new_session=True)
    os.close(slave)
    seen, sent, deadline = b"", False, time.monotonic() + TIMEOUT
    try:
        while time.monotonic() < deadline:
            if select.select([master], [], [], 0.05)[0]:
                try:
                    seen += os.read(master, 65536)
                except OSError:
                    pass  # the child closed the terminal
            if not sent and seen.count(b"ENDPOINT") >= 1 and b"limited" in seen:
                os.write(master, keys)
                sent = True
            if sent and p.poll() is not None:
                break
        return p.wait(5), seen
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        os.close(master)


@pytest.mark.parametrize("keys", [b"q", b"\x03"], ids=["q", "ctrl-c"])
def test_watch_on_a_terminal_quits_cleanly(pool: Any, segname: str, keys: bytes) -> None:
    rc, seen = _pty_watch(segname, keys)
    assert rc == 0, seen[-2000:]
    assert b"Traceback" not in seen and b"ok" in seen


# -- control ---------------------------------------------------------------------------
def test_force_open_then_reset_reach_the_workers(pool: Any, segname: str) -> None:
    svc, w = pool
    assert w[0]("try", "ok") == "ok"
    out = cli("force-open", segname, "ok").stdout
    assert out == "ok: closed -> forced-open (generation 0 -> 1)\n"
    assert w[0]("try", "ok") == "CircuitOpenError"
    assert w[1]("try", "ok") == "CircuitOpenError"
    e = endpoints(segname)["ok"]
    assert (e["breaker_state"], e["mode"], e["totals"]["rejected"]) == ("open", "forced-open", 2)
    assert cli("reset", segname, "ok").stdout == "ok: forced-open -> closed (generation 1 -> 2)\n"
    assert w[1]("try", "ok") == "ok"


def test_force_closed_lets_calls_through_an_open_breaker(pool: Any, segname: str) -> None:
    svc, w = pool
    drive(svc, w)
    assert w[0]("try", "bad") == "CircuitOpenError"
    assert cli("force-closed", segname, "bad").stdout == (
        "bad: open -> forced-closed (generation 1 -> 2)\n")
    assert w[0]("calls", "bad", 0, 5) == {"ok": 0, "failed": 5, "rejected": 0}
    e = endpoints(segname)["bad"]
    assert (e["breaker_state"], e["mode"]) == ("closed", "forced-closed")
    assert cli("metrics-only", segname, "bad").stdout.startswith("bad: forced-closed -> metrics-only")


def test_set_rate_replaces_the_rate_for_every_worker(pool: Any, segname: str) -> None:
    svc, w = pool
    high = int(sg.Priority.HIGH)
    out = cli("set-rate", segname, "tune", "2", "--burst", "1").stdout
    assert out == "tune: rate 100/s burst 50 -> rate 2/s burst 1\n"
    assert w[0]("allow", "tune", 2, high) == [True, False]
    assert w[1]("allow", "tune", 1, high) == [False]
    svc.advance(0.5)  # exactly one emission interval at 2/s
    assert w[1]("allow", "tune", 2, high) == [True, False]
    lim = endpoints(segname)["tune"]["limiter"]
    assert (lim["rate"], lim["burst"], lim["admitted"], lim["rejected"]) == (2.0, 1, 2, 3)
    assert cli("set-rate", segname, "tune", "4").stdout == (
        "tune: rate 2/s burst 1 -> rate 4/s burst 1\n")
    assert cli("set-rate", segname, "bad", "10").stdout == "bad: no limit -> rate 10/s burst 10\n"
    assert cli("set-rate", segname, "tune", "off").stdout == "tune: rate 4/s burst 1 -> no limit\n"
    assert w[0]("allow", "tune", 3, high) == [True] * 3


# -- housekeeping ----------------------------------------------------------------------
def test_rm_refuses_while_attached(pool: Any, segname: str) -> None:
    svc, w = pool
    r = cli("rm", segname, ok=False)
    one_line_error(r, "attached", str(w[0].pid), "--force")
    assert os.path.exists(shm(segname))
    for wk in w:
        wk.stop()
    svc.close()
    assert cli("rm", segname).stdout == f"removed {segname}\n"
    assert not os.path.exists(shm(segname))
    one_line_error(cli("rm", segname, ok=False), "does not exist")


def test_rm_force_removes_an_attached_segment(segname: str) -> None:
    svc = sg.ResilienceService(segname, capacity=4)
    try:
        out = cli("rm", "--force", segname).stdout
        assert out == f"removed {segname} (1 process(es) keep their mapping)\n"
        assert not os.path.exists(shm(segname))
    finally:
        svc.close()


def test_gc_removes_a_segment_whose_creator_was_killed(pool: Any, segname: str) -> None:
    dead = f"{segname}-dead"
    conn, child = CTX.Pipe()
    p = CTX.Process(target=_create_and_hang, args=(dead, child), daemon=True)
    p.start()
    try:
        assert conn.poll(TIMEOUT)
        pid = conn.recv()
        assert pid == p.pid and os.path.exists(shm(dead))
        os.kill(pid, signal.SIGKILL)
        p.join(TIMEOUT)
        assert p.exitcode == -signal.SIGKILL
        pats = [dead, segname]
        young = json.loads(cli("gc", "--json", "--min-age", "3600", *pats).stdout)["segments"]
        assert [(r["name"], r["action"]) for r in young] == [(segname, "kept"), (dead, "kept")]
        out = cli("gc", "--dry-run", "--min-age", "0", *pats).stdout
        assert f"would remove {dead}" in out and f"kept         {segname}" in out
        assert os.path.exists(shm(dead))
        out = cli("gc", "--min-age", "0", *pats).stdout
        assert out.splitlines() == [
            f"kept         {segname}  (3 live process(es) attached)",
            f"removed      {dead}  (no live process attached)"]
        assert not os.path.exists(shm(dead)) and os.path.exists(shm(segname))
    finally:
        sg.unlink(dead)
        conn.close()
