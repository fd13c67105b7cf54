"""Markdown / JSON / PNG output for bench/peers.py."""

from __future__ import annotations

import json
import math
import os
from typing import Any, Dict, List, Optional


def _fmt_ns(x: Optional[float]) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x >= 100_000:
        return f"{x / 1000:,.0f} µs"
    if x >= 10_000:
        return f"{x / 1000:,.1f} µs"
    return f"{x:,.0f} ns"


def _fmt_us(x: Optional[float]) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if x >= 100:
        return f"{x:,.0f}"
    if x >= 10:
        return f"{x:,.1f}"
    return f"{x:,.2f}"


def _fmt_ops(x: Optional[float]) -> str:
    if x is None:
        return "n/a"
    return f"{x:,.0f}"


def _times(ratio: float, better: str, worse: str) -> str:
    """ratio > 1 means shmguard is better."""
    if ratio >= 1:
        return f"{ratio:,.1f}x {better}"
    if better == worse:
        return f"{ratio:,.2f}x {better}"
    return f"{1 / ratio:,.1f}x {worse}"


# ----------------------------------------------------------------------------
# ratios
# ----------------------------------------------------------------------------


def compute_ratios(data: Dict[str, Any]) -> List[Dict[str, Any]]:
    inproc = [r for r in data.get("inproc", []) if "median_ns" in r]
    peers = [r for r in inproc if r.get("peer") not in ("", "shmguard")]
    sg = {r["name"]: r for r in inproc if r.get("peer") == "shmguard"}
    floor = next((r for r in inproc if r["name"] == "floor: bare Python call"), None)
    out: List[Dict[str, Any]] = []

    # 1. limiter.allow() vs fastest in-process Python limiter
    lims = [r for r in peers if r["group"] == "limiter"]
    best = min(lims, key=lambda r: r["median_ns"]) if lims else None
    mine = sg.get("shmguard limiter.allow()")
    line = {"what": "shmguard limiter.allow() vs fastest in-process Python limiter",
            "value": None, "detail": "n/a"}
    if mine and best:
        line["value"] = best["median_ns"] / mine["median_ns"]
        line["detail"] = (f"{_fmt_ns(mine['median_ns'])} vs {_fmt_ns(best['median_ns'])} "
                          f"({best['name']}): {_times(line['value'], 'faster', 'slower')}")
    elif best:
        line["detail"] = f"n/a (fastest peer: {best['name']}, {_fmt_ns(best['median_ns'])})"
    out.append(line)

    # 2. execute() overhead vs fastest in-process breaker call
    brs = [r for r in peers if r["group"] == "breaker"]
    best = min(brs, key=lambda r: r["median_ns"]) if brs else None
    mine = sg.get("shmguard execute(fn)")
    base = floor["median_ns"] if floor else 0.0
    line = {"what": "shmguard execute() overhead vs fastest in-process breaker call "
                    "(both minus the bare-call floor)", "value": None, "detail": "n/a"}
    if mine and best:
        mo, po = max(mine["median_ns"] - base, 1e-9), max(best["median_ns"] - base, 1e-9)
        line["value"] = po / mo
        line["detail"] = (f"{_fmt_ns(mo)} vs {_fmt_ns(po)} ({best['name']}): "
                          f"{_times(line['value'], 'less overhead', 'more overhead')}")
    elif best:
        line["detail"] = (f"n/a (fastest peer: {best['name']}, {_fmt_ns(best['median_ns'])}, "
                          f"{_fmt_ns(best['median_ns'] - base)} over a bare call)")
    out.append(line)

    # 4. the other doors against the peer or door each is measured by (issue 11)
    def median(name: str) -> Any:
        r = sg.get(name) or next((p for p in peers if p["name"] == name), None)
        return r["median_ns"] if r else None

    await_floor = median("floor: await trivial coroutine") or next(
        (r["median_ns"] for r in inproc if r["name"] == "floor: await trivial coroutine"), None)
    pairs = (
        ("shmguard breaker.allow().success() vs circuitbreaker @circuit call",
         "shmguard breaker.allow().success()", "circuitbreaker @circuit call", 0.0),
        ("shmguard guard block vs shmguard execute(fn) (target: within 1.5x)",
         "shmguard with svc.guard(ep): fn()", "shmguard execute(fn)", 0.0),
        ("shmguard execute_async overhead vs aiolimiter acquire overhead "
         "(both minus the await floor; target: within 2x)",
         "shmguard await execute_async(fn)", "aiolimiter await acquire()", await_floor or 0.0),
    )
    for what, a, b, minus in pairs:
        ma, mb = median(a), median(b)
        line = {"what": what, "value": None, "detail": "n/a"}
        if ma and mb:
            oa, ob = max(ma - minus, 1e-9), max(mb - minus, 1e-9)
            line["value"] = ob / oa
            line["detail"] = (f"{_fmt_ns(oa)} vs {_fmt_ns(ob)}: "
                              f"{_times(line['value'], 'less', 'more')}")
        out.append(line)

    # 3. 2-process shmguard throughput vs best Redis-backed peer
    sh = data.get("shared", [])

    def two(r):
        return (r.get("by_procs") or {}).get("2", {}).get("ops_per_s")

    redis_rows = [r for r in sh if r.get("backend") == "redis" and r.get("kind") == "limiter" and two(r)]
    best = max(redis_rows, key=two) if redis_rows else None
    mine = next((r for r in sh if r.get("peer") == "shmguard" and r.get("kind") == "limiter" and two(r)), None)
    line = {"what": "shmguard 2-process limiter throughput vs best Redis-backed peer (2 processes)",
            "value": None, "detail": "n/a"}
    if mine and best:
        line["value"] = two(mine) / two(best)
        line["detail"] = (f"{_fmt_ops(two(mine))}/s vs {_fmt_ops(two(best))}/s ({best['name']}): "
                          f"{_times(line['value'], 'the throughput', 'the throughput')}")
    elif best:
        line["detail"] = f"n/a (best Redis peer: {best['name']}, {_fmt_ops(two(best))}/s)"
    out.append(line)
    return out


# ----------------------------------------------------------------------------
# markdown
# ----------------------------------------------------------------------------


def _verdict_limiter(r: Dict[str, Any]) -> str:
    if "error" in r:
        return "error"
    if not r.get("shared_state", True):
        return "not shared: each process admits its own budget" if r.get("over_rate_burst") else "ok"
    if r.get("own_promise_broken"):
        return "**OVER-ADMITS: breaks its own promise**"
    if r.get("over_rate_burst"):
        return "over burst+rate×D, within its own promise"
    return "ok"


def _verdict_breaker(r: Dict[str, Any]) -> str:
    if "error" in r:
        return "error"
    bits = []
    extra = r.get("calls_after_threshold")
    if extra:
        bits.append(f"{extra} calls started after the threshold was reached")
    mp_ = r.get("max_probes")
    if mp_ and mp_ > 1:
        bits.append(f"up to {mp_} probes per half-open")
    if r.get("dependency_calls") and not r.get("rejected_by_breaker"):
        bits = ["never opened during the run"]
    elif not r.get("recoveries"):
        bits.append("no recovery seen in the run")
    return "; ".join(bits) if bits else "ok"


def markdown(data: Dict[str, Any]) -> str:
    m = data["machine"]
    L: List[str] = []
    L.append("# Peer benchmark (shmguard issue 6)")
    L.append("")
    L.append(f"Machine: {m['cpu_model']}, {m['cpu_count']} logical CPUs (os.cpu_count()), "
             f"Python {m['python']} on {m['platform']}. Run took {data.get('elapsed_s', 0):.0f} s; "
             f"load average {m.get('loadavg_start', '?')} at start, {m.get('loadavg_end', '?')} at end; "
             f"other processes used about {m.get('foreign_cpu_s', '?')} CPU-s during the run "
             f"(hypervisor steal {m.get('steal_cpu_s', '?')} CPU-s).")
    vers = ", ".join(f"{k} {v}" for k, v in sorted(data.get("versions", {}).items()))
    L.append(f"Peers: {vers}.")
    if data.get("redis", {}).get("version"):
        L.append(f"Redis: {data['redis']['version']}, private server on 127.0.0.1 "
                 f"(`--save '' --appendonly no`), redis-py over TCP loopback.")
    for msg in data.get("messages", []):
        L.append(f"**{msg}**")
    L.append("")

    # part 1
    L.append("## 1. In-process decision cost (one thread, every decision admits)")
    L.append("")
    p = data.get("params", {})
    L.append(f"Median over {p.get('repeats', '?')} batches of ns per call (time.perf_counter_ns around "
             f"a batch of N calls, N sized to ~{p.get('batch_ms', '?')} ms); p25–p75 across batches. "
             "Loop overhead is in every row (see the bare-call floor). Async rows run inside a "
             "running event loop and include the await.")
    L.append("")
    L.append("| contender | kind | median | p25–p75 | N per batch | note |")
    L.append("|---|---|---:|---:|---:|---|")
    for r in data.get("inproc", []):
        if "median_ns" in r:
            L.append(f"| {r['name']} | {r['group']} | {_fmt_ns(r['median_ns'])} | "
                     f"{_fmt_ns(r['p25_ns'])} – {_fmt_ns(r['p75_ns'])} | {r['calls_per_batch']:,} | "
                     f"{r.get('note', '')} |")
        else:
            L.append(f"| {r['name']} | {r['group']} | — | — | — | {r.get('error', 'skipped')} |")
    L.append("")

    # part 2
    procs = p.get("procs", [1, 2, 4])
    L.append("## 2. Shared backends across processes (one endpoint, every decision admits)")
    L.append("")
    L.append(f"Aggregate decisions/s over all processes and pooled p50/p99 latency per decision (µs), "
             f"{p.get('duration_s', '?')} s per run after a barrier start; one clock read per decision "
             "(the loop overhead, ~0.1 µs, is included).")
    L.append("")
    head = "| contender | backend | " + " | ".join(f"{n} proc: ops/s | p50 / p99 µs" for n in procs) + " |"
    L.append(head)
    L.append("|---|---|" + "---:|---:|" * len(procs))
    for r in data.get("shared", []):
        cells = []
        for n in procs:
            s = (r.get("by_procs") or {}).get(str(n))
            if s is None:
                cells += ["—", r.get("skipped", "—")]
            elif "error" in s:
                cells += ["error", s["error"][:80].replace("|", "/").replace("\n", " ")]
            else:
                extra = ""
                if s.get("errors"):
                    extra = f" ({s['errors']:,} errors)"
                if s.get("denied"):
                    extra += f" ({s['denied']:,} denied)"
                cells += [_fmt_ops(s["ops_per_s"]) + extra, f"{_fmt_us(s['p50_us'])} / {_fmt_us(s['p99_us'])}"]
        L.append(f"| {r['name']} | {r['backend']} | " + " | ".join(cells) + " |")
    L.append("")

    # part 3
    c = data.get("correctness", {})
    L.append(f"## 3. Correctness ({c.get('procs', '?')} processes hammering one limiter for "
             f"{c.get('duration_s', '?')} s; target {c.get('rate', '?')}/s, burst {c.get('burst', '?')})")
    L.append("")
    L.append("`burst+rate×D` is the common target. *Own promise* is what the algorithm itself "
             "guarantees for the configuration it got; *worst seen* is measured from "
             "[before, after] timestamps of each admitted call, so it only counts admits that "
             "certainly fell in one window (a conservative check, 2 ms clock slack).")
    L.append("")
    L.append("| contender | configured as | admitted | burst+rate×D | ratio | own promise (total) | worst seen | verdict |")
    L.append("|---|---|---:|---:|---:|---|---|---|")
    for r in c.get("limiters", []):
        if "error" in r or "admitted" not in r:
            L.append(f"| {r['name']} | {r.get('note', '')} | — | — | — | — | — | "
                     f"{r.get('error', r.get('skipped', 'skipped'))[:100]} |")
            continue
        pr = r.get("promise", {})
        own = f"{pr.get('desc', 'n/a')} (≤{r.get('own_total_bound', float('nan')):,.0f})" if pr else "n/a"
        err = f" ({r['errors']} errors)" if r.get("errors") else ""
        L.append(f"| {r['name']} | {r.get('note', '')} | {r['admitted']:,}{err} | "
                 f"{r['bound_rate_burst']:,.0f} | {r['ratio_to_bound']:.2f} | {own} | "
                 f"{r.get('worst_label', 'n/a')} | {_verdict_limiter(r)} |")
    L.append("")
    L.append(f"Breakers: {c.get('procs', '?')} processes call a dependency that always fails "
             f"(after {c.get('dep_ms', '?')} ms) through one breaker for {c.get('breaker_duration_s', '?')} s. "
             "Calls that reach the dependency are grouped into bursts separated by >0.4 s: the first burst is "
             "the trip, each later one is a half-open recovery (ideal: threshold calls, then 1 probe each). "
             "*After threshold* counts calls that started after the threshold-th failure had returned "
             "from the dependency (calls already in flight then are not counted; the breaker's own "
             "bookkeeping delay after that return does count against it).")
    L.append("")
    L.append("| contender | configured as | dependency calls | before first open | after threshold | recoveries | probes per recovery | verdict |")
    L.append("|---|---|---:|---:|---:|---:|---|---|")
    for r in c.get("breakers", []):
        if "error" in r or "dependency_calls" not in r:
            L.append(f"| {r['name']} | {r.get('note', '')} | — | — | — | — | — | "
                     f"{r.get('error', r.get('skipped', 'skipped'))[:100]} |")
            continue
        extra = r.get("calls_after_threshold")
        L.append(f"| {r['name']} | {r.get('note', '')} | {r['dependency_calls']:,} | "
                 f"{r.get('calls_before_first_open', 'n/a')} | {'n/a' if extra is None else extra} | "
                 f"{r.get('recoveries', 0)} | {', '.join(map(str, r.get('probes_per_recovery', []))) or '—'} | "
                 f"{_verdict_breaker(r)} |")
    L.append("")

    L.append("## Ratios")
    L.append("")
    for line in data.get("ratios", []):
        L.append(f"- {line['what']}: {line['detail']}")
    L.append("")
    from .keyed_rows import markdown as keyed_markdown
    L += keyed_markdown(data.get("keyed"))
    notes = data.get("notes", [])
    if notes:
        L.append("## Notes")
        L.append("")
        for n in notes:
            L.append(f"- {n}")
        L.append("")
    return "\n".join(L)


# ----------------------------------------------------------------------------
# chart
# ----------------------------------------------------------------------------


def chart(data: Dict[str, Any], path: str) -> Optional[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001
        return f"chart skipped: matplotlib unavailable ({e!r})"

    colors = {"floor": "#9e9e9e", "limiter": "#1f77b4", "breaker": "#ff7f0e"}
    fig, axes = plt.subplots(2, 2, figsize=(17, 13))

    # (a) in-process
    ax = axes[0][0]
    rows = [r for r in data.get("inproc", []) if "median_ns" in r]
    if not rows:
        ax.set_axis_off()
    names = [r["name"] for r in rows]
    med = [r["median_ns"] for r in rows]
    lo = [r["median_ns"] - r["p25_ns"] for r in rows]
    hi = [r["p75_ns"] - r["median_ns"] for r in rows]
    cols = [("#2ca02c" if r.get("peer") == "shmguard" else colors.get(r["group"], "#333")) for r in rows]
    y = list(range(len(rows)))
    if rows:
        ax.barh(y, med, xerr=[lo, hi], color=cols, capsize=2)
        ax.set_yticks(y)
        ax.set_yticklabels(names, fontsize=7)
        ax.invert_yaxis()
        ax.set_xscale("log")
        ax.set_xlabel("ns per decision (median, p25–p75), log scale")
        ax.set_title("1. In-process decision cost (one thread); green = shmguard")
        for yi, v in zip(y, med):
            ax.text(v * 1.15, yi, _fmt_ns(v), va="center", fontsize=6)

    # (b) throughput and (c) p99
    sh = [r for r in data.get("shared", []) if r.get("by_procs")]
    procs = data.get("params", {}).get("procs", [1, 2, 4])
    width = 0.8 / max(1, len(procs))
    for ax, key, title, label in (
        (axes[0][1], "ops_per_s", "2. Shared backends: aggregate decisions/s", "decisions/s (log)"),
        (axes[1][0], "p99_us", "2. Shared backends: p99 latency per decision", "µs (log)"),
    ):
        x = list(range(len(sh)))
        if not sh:
            ax.set_axis_off()
            continue
        for k, n in enumerate(procs):
            vals = []
            for r in sh:
                s = r["by_procs"].get(str(n)) or {}
                vals.append(s.get(key) or 0)
            ax.bar([xi + (k - (len(procs) - 1) / 2) * width for xi in x], vals, width,
                   label=f"{n} proc" + ("s" if n > 1 else ""))
        ax.set_xticks(x)
        ax.set_xticklabels([r["name"] for r in sh], rotation=35, ha="right", fontsize=7)
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.set_title(title)
        ax.legend(fontsize=7)

    # (d) correctness
    ax = axes[1][1]
    lim = [r for r in data.get("correctness", {}).get("limiters", []) if "admitted" in r]
    if lim:
        y = list(range(len(lim)))
        ratios = [r["ratio_to_bound"] for r in lim]
        cols = ["#d62728" if r.get("own_promise_broken") or not r.get("shared_state", True)
                else ("#ff7f0e" if r.get("over_rate_burst") else "#2ca02c") for r in lim]
        ax.barh(y, ratios, color=cols)
        ax.axvline(1.0, color="k", lw=1, ls="--")
        ax.set_yticks(y)
        ax.set_yticklabels([r["name"] for r in lim], fontsize=7)
        ax.invert_yaxis()
        for yi, r in zip(y, lim):
            ax.text(r["ratio_to_bound"] + 0.02, yi, f"{r['admitted']:,}", va="center", fontsize=7)
        c = data["correctness"]
        ax.set_xlabel(f"admitted / (burst + rate × D)   [{c.get('procs')} procs, {c.get('duration_s')} s, "
                      f"{c.get('rate')}/s, burst {c.get('burst')}]")
        ax.set_title("3. Correctness: admitted vs target (red: breaks own promise or not shared;\n"
                     "orange: over target, within own promise)", fontsize=10)
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no correctness rows", ha="center")

    m = data["machine"]
    fig.suptitle(f"shmguard peers — {m['cpu_model']}, {m['cpu_count']} CPUs, Python {m['python']}",
                 fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None


def _scrub(obj: Any, subs: List[tuple]) -> Any:
    """Replace this machine's absolute paths in error texts before writing."""
    if isinstance(obj, str):
        for old, new in subs:
            obj = obj.replace(old, new)
        return obj
    if isinstance(obj, dict):
        return {k: _scrub(v, subs) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_scrub(v, subs) for v in obj]
    return obj


def scrub_paths(data: Dict[str, Any]) -> Dict[str, Any]:
    import site
    import sys
    import tempfile

    bench = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    cands = [(os.path.dirname(bench), "<repo>")]
    try:
        cands += [(p, "<site-packages>") for p in site.getsitepackages()]
    except AttributeError:
        pass
    cands += [(sys.prefix, "<python>"), (sys.base_prefix, "<python>"),
              (tempfile.gettempdir(), "<tmp>"), (os.path.expanduser("~"), "~")]
    subs = sorted({(p, n) for p, n in cands if p and len(p) > 1}, key=lambda x: -len(x[0]))
    return _scrub(data, subs)


def write_all(data: Dict[str, Any], out_dir: str) -> Dict[str, str]:
    data.update(scrub_paths(data))
    os.makedirs(out_dir, exist_ok=True)
    md = markdown(data)
    paths = {"md": os.path.join(out_dir, "peers.md"), "json": os.path.join(out_dir, "peers.json"),
             "png": os.path.join(out_dir, "peers.png")}
    with open(paths["md"], "w") as f:
        f.write(md + "\n")
    msg = chart(data, paths["png"])
    if msg:
        data.setdefault("notes", []).append(msg)
        paths.pop("png")
    with open(paths["json"], "w") as f:
        json.dump(data, f, indent=1, default=str)
    return paths
