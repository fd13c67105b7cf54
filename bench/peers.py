#!/usr/bin/env python3
"""Peer benchmark suite for shmguard (issue 6): one run, this machine.

    pip install -r bench/requirements.txt      # peers, redis client, matplotlib
    python bench/peers.py                      # ~2-3 minutes
    python bench/peers.py --quick              # ~1 minute, noisier

Measures, in one run:

1. in-process decision cost (one thread) of peer limiters and breakers,
   against two floors (a bare Python call, a threading.Lock pair);
2. the shared backends of the peers across 1, 2 and 4 processes on one
   endpoint (aggregate decisions/s, p50/p99 per decision);
3. correctness with 4 processes: admitted total vs burst + rate x duration
   and vs each algorithm's own promise; breaker trip and half-open leaks.

Redis rows use a private ``redis-server`` started on 127.0.0.1 if the binary
is on PATH (never installed by this script) and stopped by pid at the end.
shmguard's own rows come from bench/_peers/shmguard_rows.py and are skipped
when shmguard is not importable.  Results: bench/results/peers.{md,json,png}.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import multiprocessing
import os
import platform
import re
import shutil
import signal
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:
    sys.path.insert(0, HERE)

from _peers import inproc_rows, keyed_rows, report, runner, shared_rows, shmguard_rows  # noqa: E402
from _peers.redis_server import RedisServer  # noqa: E402
from _peers.registry import REGISTRY  # noqa: E402

PEER_DISTS = ["pyrate-limiter", "limits", "aiolimiter", "token-bucket", "pybreaker",
              "circuitbreaker", "purgatory", "aiobreaker", "redis", "filelock", "shmguard"]


def machine_info() -> dict:
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"cpu_model": model or platform.processor() or "unknown",
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "implementation": platform.python_implementation(),
            "platform": f"{platform.system()} {platform.release()} {platform.machine()}"}
    try:
        info["usable_cpus"] = len(os.sched_getaffinity(0))
    except AttributeError:
        pass
    try:
        info["loadavg_start"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    return info


_TICK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _system_cpu() -> dict:
    """Busy and steal CPU-seconds of the whole machine so far (/proc/stat)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return {}
    # user nice system idle iowait irq softirq steal ...
    busy = v[0] + v[1] + v[2] + v[5] + v[6]
    return {"busy_s": busy / _TICK, "steal_s": (v[7] if len(v) > 7 else 0) / _TICK}


def _tree_cpu() -> float:
    """CPU-seconds used by this process, its reaped children and its live descendants."""
    t = os.times()
    total = t.user + t.system + t.children_user + t.children_system
    try:
        stats = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open(f"/proc/{d}/stat") as f:
                        fields = f.read().rsplit(")", 1)[1].split()
                    stats[int(d)] = (int(fields[1]), sum(int(x) for x in fields[11:15]))
                except (OSError, ValueError, IndexError):
                    pass
        kids: dict = {}
        for pid, (ppid, _) in stats.items():
            kids.setdefault(ppid, []).append(pid)
        todo, seen = list(kids.get(os.getpid(), [])), set()
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            total += stats[pid][1] / _TICK
            todo.extend(kids.get(pid, []))
    except OSError:
        pass
    return total


def versions() -> dict:
    out = {}
    for d in PEER_DISTS:
        try:
            out[d] = importlib.metadata.version(d)
        except importlib.metadata.PackageNotFoundError:
            pass
    return out


def log(msg: str) -> None:
    print(msg, flush=True)


def _sigterm(signum, frame):
    raise SystemExit(128 + signum)


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter runs (noisier), ~1 minute")
    ap.add_argument("--out", default=os.path.join(HERE, "results"), help="output directory")
    ap.add_argument("--only", default="", help="regex: run only contenders whose name matches")
    ap.add_argument("--procs", default="1,2,4", help="process counts for part 2")
    ap.add_argument("--duration", type=float, default=None, help="seconds per part-2 run (default 1.5)")
    ap.add_argument("--correct-duration", type=float, default=None,
                    help="seconds per limiter correctness run (default 3)")
    ap.add_argument("--breaker-duration", type=float, default=None,
                    help="seconds per breaker correctness run (default 5)")
    ap.add_argument("--rate", type=float, default=200.0, help="correctness: rate per second")
    ap.add_argument("--burst", type=int, default=50, help="correctness: burst")
    ap.add_argument("--correct-procs", type=int, default=4)
    ap.add_argument("--dep-ms", type=float, default=2.0,
                    help="breaker check: the failing dependency takes this long before raising")
    ap.add_argument("--no-redis", action="store_true", help="do not start redis-server")
    ap.add_argument("--skip", default="", help="comma list of parts to skip: inproc,shared,correctness,keyed")
    a = ap.parse_args(argv)
    a.procs = [int(x) for x in a.procs.split(",") if x.strip()]
    a.skip = {s.strip() for s in a.skip.split(",") if s.strip()}
    q = a.quick
    a.duration = a.duration or (0.5 if q else 1.5)
    a.correct_duration = a.correct_duration or (2.0 if q else 3.0)
    a.breaker_duration = a.breaker_duration or (3.5 if q else 5.0)
    a.repeats = 10 if q else 20
    a.batch_ms = 3.0 if q else 5.0
    return a


def main(argv=None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _sigterm)
    t_start = time.monotonic()
    only = re.compile(args.only) if args.only else None

    def wanted(name: str) -> bool:
        return only is None or bool(only.search(name))

    mi = machine_info()
    cpu0, tree0 = _system_cpu(), _tree_cpu()
    log(f"machine: {mi['cpu_model']} | os.cpu_count()={mi['cpu_count']} "
        f"(usable {mi.get('usable_cpus', '?')}) | Python {mi['python']} | {mi['platform']} | "
        f"load average {mi.get('loadavg_start', '?')}")
    busy = (mi.get("loadavg_start") or [0])[0] > 0.5 * (mi.get("usable_cpus") or mi["cpu_count"] or 1)
    if busy:
        log("warning: the machine is busy (1-minute load average above half the CPUs): "
            "figures will be inflated and noisy")
    vers = versions()
    log("peers: " + ", ".join(f"{k} {v}" for k, v in vers.items()))

    inproc_rows.register()
    shared_rows.register()
    shmguard_rows.register()

    data = {"machine": mi, "versions": vers, "messages": list(REGISTRY.messages), "notes": [],
            "params": {"repeats": args.repeats, "batch_ms": args.batch_ms, "procs": args.procs,
                       "duration_s": args.duration, "quick": args.quick},
            "inproc": [], "shared": [],
            "correctness": {"procs": args.correct_procs, "duration_s": args.correct_duration,
                            "breaker_duration_s": args.breaker_duration, "rate": args.rate,
                            "burst": args.burst, "dep_ms": args.dep_ms,
                            "limiters": [], "breakers": []}}

    # ---- part 1 ----------------------------------------------------------------
    if "inproc" not in args.skip:
        log("\n== 1. in-process decision cost ==")
        for c in REGISTRY.inproc:
            if not wanted(c.name):
                continue
            row = {"name": c.name, "group": c.group, "peer": c.peer, "note": c.note,
                   "async": c.is_async}
            try:
                row.update(runner.bench_inproc(c.make, c.is_async, repeats=args.repeats,
                                               batch_ms=args.batch_ms))
                log(f"  {c.name:<62} {report._fmt_ns(row['median_ns']):>10}  "
                    f"[{report._fmt_ns(row['p25_ns'])} – {report._fmt_ns(row['p75_ns'])}]")
            except Exception as e:  # noqa: BLE001
                row["error"] = f"{type(e).__name__}: {e}"[:200]
                log(f"  {c.name:<62} ERROR {row['error']}")
            data["inproc"].append(row)

    need_mp = not ({"shared", "correctness"} <= args.skip)
    redis = RedisServer()
    tmpdir = tempfile.mkdtemp(prefix="peers-bench-")
    counter = [0]

    def new_key() -> str:
        counter[0] += 1
        return f"{os.getpid()}-{counter[0]}"

    try:
        want_redis = (need_mp and any(
            c.needs_redis and wanted(c.name) for c in [*REGISTRY.shared, *REGISTRY.breaker_checks])
        ) or "keyed" not in args.skip
        redis_ok = False
        if want_redis and not args.no_redis:
            redis_ok = redis.start()
            if redis_ok:
                log(f"\nredis: {redis.version} started on 127.0.0.1:{redis.port} (pid {redis.proc.pid})")
                data["redis"] = {"version": redis.version}
            else:
                msg = f"Redis rows skipped: {redis.skip_reason}"
                log(f"\n*** {msg} ***")
                data["messages"].append(msg)
        elif want_redis:
            data["messages"].append("Redis rows skipped: --no-redis")
            log("\nRedis rows skipped: --no-redis")
        redis_skip = "" if redis_ok else (redis.skip_reason or "--no-redis")

        ctx = None
        if need_mp:
            method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
            ctx = multiprocessing.get_context(method)
            if method == "forkserver":
                ctx.set_forkserver_preload(["_peers.runner", "_peers.shared_rows", "_peers.shmguard_rows"])
            data["params"]["mp_start"] = method

        def base_cfg(mode: str) -> dict:
            return {"mode": mode, "rate": args.rate, "burst": args.burst, "key": new_key(),
                    "redis_url": redis.url if redis_ok else None, "tmpdir": tmpdir,
                    "mp_start": data["params"].get("mp_start", "spawn")}

        def run_one(c, mode, kind, nprocs, duration, opts=None):
            cfg = base_cfg(mode)
            shared = None
            if c.parent_setup is not None:
                shared = c.parent_setup(cfg)
            cfg["shared"] = shared
            try:
                return runner.run_workers(ctx, kind, c.child_setup, cfg, nprocs, duration, opts)
            finally:
                if c.parent_teardown is not None:
                    try:
                        c.parent_teardown(cfg, shared)
                    except Exception as e:  # noqa: BLE001
                        data["notes"].append(f"{c.name}: teardown failed: {e!r}")
                if redis_ok:
                    redis.flushall()

        # ---- part 2 ------------------------------------------------------------
        if "shared" not in args.skip:
            log(f"\n== 2. shared backends across processes ({args.duration} s per run) ==")
            for c in REGISTRY.shared:
                if not c.throughput or not wanted(c.name):
                    continue
                row = {"name": c.name, "kind": c.kind, "backend": c.backend, "peer": c.peer,
                       "note": c.note, "by_procs": {}}
                if c.needs_redis and not redis_ok:
                    row["skipped"] = f"skipped: {redis_skip}"
                    data["shared"].append(row)
                    log(f"  {c.name:<58} skipped ({redis_skip})")
                    continue
                for n in args.procs:
                    try:
                        s = runner.summarize_throughput(run_one(c, "throughput", "latency", n, args.duration))
                    except Exception as e:  # noqa: BLE001
                        s = {"error": f"{type(e).__name__}: {e}"[:300]}
                    row["by_procs"][str(n)] = s
                    if "error" in s:
                        log(f"  {c.name:<58} {n}p ERROR {s['error'][:150]}")
                    else:
                        extra = f" errors={s['errors']}" if s.get("errors") else ""
                        extra += f" denied={s['denied']}" if s.get("denied") else ""
                        log(f"  {c.name:<58} {n}p {s['ops_per_s']:>11,.0f}/s  p50 {s['p50_us']:8.2f} µs  "
                            f"p99 {s['p99_us']:8.2f} µs{extra}")
                data["shared"].append(row)

        # ---- part 3 ------------------------------------------------------------
        if "correctness" not in args.skip:
            n = args.correct_procs
            log(f"\n== 3. correctness: {n} processes, {args.correct_duration} s, "
                f"target {args.rate:g}/s burst {args.burst} ==")
            for c in REGISTRY.shared:
                if not c.correctness or c.kind != "limiter" or not wanted(c.name):
                    continue
                row = {"name": c.name, "peer": c.peer, "backend": c.backend, "note": c.note,
                       "shared_state": c.shared_state}
                if c.needs_redis and not redis_ok:
                    row["skipped"] = f"skipped: {redis_skip}"
                    log(f"  {c.name:<58} skipped ({redis_skip})")
                    data["correctness"]["limiters"].append(row)
                    continue
                try:
                    cfg_probe = base_cfg("correctness")
                    promise = c.promise(cfg_probe) if c.promise else None
                    run = run_one(c, "correctness", "admits", n, args.correct_duration)
                    row.update(runner.analyze_admits(run, promise, args.rate, args.burst))
                except Exception as e:  # noqa: BLE001
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                if "admitted" in row:
                    log(f"  {c.name:<58} admitted {row['admitted']:>6,} / bound {row['bound_rate_burst']:,.0f}"
                        f"  ({row['ratio_to_bound']:.2f})  {row.get('worst_label', '')}  -> "
                        f"{report._verdict_limiter(row).replace('*', '')}")
                else:
                    log(f"  {c.name:<58} ERROR {row.get('error', '')[:200]}")
                data["correctness"]["limiters"].append(row)

            for c in REGISTRY.breaker_checks:
                if not wanted(c.name):
                    continue
                row = {"name": c.name, "peer": c.peer, "note": c.note, "shared_state": c.shared_state}
                if c.needs_redis and not redis_ok:
                    row["skipped"] = f"skipped: {redis_skip}"
                    log(f"  {c.name:<58} skipped ({redis_skip})")
                    data["correctness"]["breakers"].append(row)
                    continue
                try:
                    run = run_one(c, "correctness", "breaker", n, args.breaker_duration,
                                  {"dep_s": args.dep_ms / 1000.0})
                    row.update(runner.analyze_breaker(run, c.threshold))
                except Exception as e:  # noqa: BLE001
                    row["error"] = f"{type(e).__name__}: {e}"[:300]
                if "dependency_calls" in row:
                    log(f"  {c.name:<58} dep calls {row['dependency_calls']}, before first open "
                        f"{row.get('calls_before_first_open')}, probes/recovery {row.get('probes_per_recovery')}"
                        f"  -> {report._verdict_breaker(row)}")
                else:
                    log(f"  {c.name:<58} ERROR {row.get('error', '')[:200]}")
                data["correctness"]["breakers"].append(row)
        # ---- part 4 ------------------------------------------------------------
        if "keyed" not in args.skip:
            log("\n== 4. per-key limits (one bucket per tenant) ==")
            data["keyed"] = keyed_rows.run(redis.url if redis_ok else None, args.quick, log,
                                           wanted)
    except KeyboardInterrupt:
        log("\ninterrupted: stopping redis-server and writing what was measured")
        data["notes"].append("run interrupted (Ctrl-C): partial results")
    finally:
        if redis.proc is not None:
            pid = redis.proc.pid
            redis.stop()
            log(f"redis-server (pid {pid}) stopped")
        shutil.rmtree(tmpdir, ignore_errors=True)

    data["notes"] += [
        "purgatory 3.0.1: its sync Redis unit of work (SyncRedisUnitOfWork) builds a redis.asyncio "
        "client, so every sync call gets a coroutine and fails; only its in-memory sync API is "
        "measured, and it has no shared-backend row.",
        "circuitbreaker 2.1.3: CircuitBreaker.call() does not check the state (only the decorator "
        "does), so every row goes through a decorated function.",
        "pyrate-limiter 4.5.1 with a bucket that brings its own cross-process lock (MultiprocessBucket, "
        "SQLiteBucket with file lock): try_acquire(blocking=False) returns False whenever another process "
        "holds the lock (a spurious denial), and with filelock 4.x it raises TypeError (combined_lock "
        "passes False positionally as FileLock.acquire's timeout). Part 2 therefore calls "
        "try_acquire(blocking=True) for every pyrate bucket (a huge rate never makes it wait for tokens); "
        "part 3 uses blocking=False, except blocking=True with a 5 ms timeout for those two buckets.",
        "limits: windows are whole seconds, with no burst notion: the correctness rows use 200 per "
        "1 s (effective burst 200). pyrate-limiter's log buckets get 50 per 250 ms (burst 50, 200/s "
        "sustained); its TokenBucket and token-bucket take rate 200/s and burst 50 exactly.",
        "pyrate-limiter SQLiteBucket without file lock keeps SQLite's default rollback journal "
        "(synchronous=FULL: an fsync per admit) and its count-then-insert is not atomic across "
        "processes; with use_file_lock=True it switches to WAL + synchronous=NORMAL and serialises "
        "on the file lock. The database file is in the system temp directory.",
        "pybreaker's CircuitRedisStorage stores opened_at in whole seconds, so a reset_timeout of "
        f"{shared_rows.BREAKER_RESET_S} s opens for between {shared_rows.BREAKER_RESET_S - 1} and "
        f"{shared_rows.BREAKER_RESET_S} s. Its half-open state lets every process through, not one probe.",
        "Every shared backend here is reached from Python: Redis rows include redis-py and a TCP "
        "loopback round trip; the Multiprocess* rows go through a multiprocessing.Manager server "
        "process (one IPC round trip per list operation).",
    ]
    try:
        mi["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        pass
    cpu1, tree1 = _system_cpu(), _tree_cpu()
    wall = time.monotonic() - t_start
    if cpu0 and cpu1 and wall > 0:
        foreign_raw = (cpu1["busy_s"] - cpu0["busy_s"]) - (tree1 - tree0)
        foreign = max(0.0, foreign_raw)
        mi["foreign_cpu_raw_s"] = round(foreign_raw, 2)
        steal = cpu1["steal_s"] - cpu0["steal_s"]
        mi["foreign_cpu_s"] = round(foreign, 1)
        mi["steal_cpu_s"] = round(steal, 1)
        mi["foreign_cpu_share"] = round(foreign / wall, 2)
        log(f"other processes used about {foreign:.1f} CPU-s during the {wall:.0f} s run "
            f"({foreign / wall:.2f} CPUs on average); hypervisor steal {steal:.1f} CPU-s")
    ncpu = mi.get("usable_cpus") or mi["cpu_count"] or 1
    if busy:
        data["notes"].append(
            f"The machine was busy when the run started (load average {mi.get('loadavg_start')} on "
            f"{ncpu} CPUs): figures are inflated and noisy.")
    if mi.get("foreign_cpu_share", 0) > 0.15:
        data["notes"].append(
            f"Other processes used {mi['foreign_cpu_s']} CPU-seconds during the run "
            f"({mi['foreign_cpu_share']} of {ncpu} CPUs on average): figures are inflated and noisy.")
    data["notes"].append(
        "Multi-process figures come from one short run each and vary run to run on a shared VM "
        "(tens of percent for the Redis rows); read them as orders of magnitude. Raw per-worker "
        "counts and per-batch timings are in peers.json.")
    if (mi.get("usable_cpus") or mi["cpu_count"] or 0) < max(args.procs + [args.correct_procs]):
        data["notes"].append(
            f"This machine has {mi.get('usable_cpus') or mi['cpu_count']} usable CPUs: runs with more "
            "processes than that (and the Redis server or Manager process beside them) measure "
            "contention, not parallel speed-up.")
    data["ratios"] = report.compute_ratios(data)
    data["elapsed_s"] = time.monotonic() - t_start
    paths = report.write_all(data, args.out)
    log("\n" + report.markdown(data))
    log("written: " + ", ".join(os.path.relpath(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except Exception:
        traceback.print_exc()
        sys.exit(1)
