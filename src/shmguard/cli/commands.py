"""``shmguard``: inspect and control the shared-memory segments of this host.

::

    shmguard list [PATTERN...] [--json]          segments, endpoints, attached processes
    shmguard inspect NAME [--json|--prometheus] [--keys N]
                                                 one row per endpoint and keyed limiter
    shmguard watch NAME [--interval S] [--iterations N|--once]
    shmguard force-open|force-closed|metrics-only|reset NAME ENDPOINT
    shmguard set-rate NAME ENDPOINT RATE [--burst N] [--keyed]
    shmguard rm NAME [--force]
    shmguard gc [PATTERN...] [--dry-run] [--min-age S]
    shmguard serve-metrics [NAME...] [--port 9464] [--host 127.0.0.1]
    shmguard fleet NAME [--redis URL] [--prefix P] [--json]
                                                 fleet endpoints: this host's share, every host in Redis
    shmguard demo ...                            (shmguard.demo)

Viewing never writes to a segment. Errors (missing, corrupt, foreign or
incompatible segment; unknown endpoint) print one line on stderr and exit
with status 1; bad arguments and values (usage errors) print one line and
exit with 2. Colours only on a terminal. Endpoint names are shown whole: a
name wider than its column gets a line of its own, elided in the middle
only beyond the terminal's width (``--wide``: never).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from typing import Any, NoReturn

from shmguard.errors import InvalidNameError, PolicyError, ShmguardError

__all__ = ["main", "build_parser"]

_NAME = "segment name (see shmguard list)"
_ENDPOINT = "endpoint name, as inspect shows it"
USAGE = 2
_CONTROL = {"force-open": "open the breaker for every process until reset",
            "force-closed": "admit every call, record nothing, until reset",
            "metrics-only": "admit every call and keep counting, never open",
            "reset": "close the breaker and forget its window"}


def build_parser() -> argparse.ArgumentParser:
    """Returns the argument parser of the ``shmguard`` command."""
    common = _Parser(add_help=False)
    common.add_argument("--color", "--colour", choices=("auto", "always", "never"),
                        default="auto", help="colour the output (default: on a terminal)")
    p = _Parser(prog="shmguard", description="Inspect and control shmguard "
                                "shared-memory segments (circuit breakers, rate limiters).")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    wide = _Parser(add_help=False)
    wide.add_argument("--wide", action="store_true",
                      help="never elide endpoint names, whatever the terminal width")

    s = sub.add_parser("list", parents=[common], help="list this user's segments")
    s.add_argument("patterns", nargs="*", metavar="PATTERN", help="only names matching (glob)")
    s.add_argument("--json", action="store_true", help="print JSON")

    s = sub.add_parser("inspect", parents=[common, wide], help="show every endpoint of a segment")
    s.add_argument("name", metavar="NAME", help=_NAME)
    fmt = s.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print JSON")
    fmt.add_argument("--prometheus", action="store_true", help="print Prometheus text format")
    s.add_argument("--keys", type=_keys, default=0, metavar="N",
                   help="list the N hottest keys of each keyed limiter")

    s = sub.add_parser("watch", parents=[common, wide], help="the inspect view, refreshed live")
    s.add_argument("name", metavar="NAME", help=_NAME)
    s.add_argument("--interval", type=_positive, default=1.0, help="seconds between refreshes")
    stop = s.add_mutually_exclusive_group()
    stop.add_argument("--iterations", type=_count, default=None, metavar="N",
                      help="stop after N refreshes")
    stop.add_argument("--once", action="store_const", dest="iterations", const=1,
                      help="print one frame and stop")

    for cmd, what in _CONTROL.items():
        s = sub.add_parser(cmd, parents=[common], help=what)
        s.add_argument("name", metavar="NAME", help=_NAME)
        s.add_argument("endpoint", metavar="ENDPOINT", help=_ENDPOINT)

    s = sub.add_parser("set-rate", parents=[common], help="replace an endpoint's rate limit")
    s.add_argument("name", metavar="NAME", help=_NAME)
    s.add_argument("endpoint", metavar="ENDPOINT",
                   help=_ENDPOINT + " (with --keyed: a keyed limiter)")
    s.add_argument("rate", metavar="RATE", help="requests per second, or 'off'")
    s.add_argument("--burst", type=_count, default=None, help="new burst (default: keep)")
    s.add_argument("--keyed", action="store_true",
                   help="ENDPOINT names a keyed limiter (each key keeps its debt in tokens)")

    s = sub.add_parser("rm-endpoint", parents=[common], help="remove an endpoint from a segment")
    s.add_argument("name", metavar="NAME", help=_NAME)
    s.add_argument("endpoint", metavar="ENDPOINT", help=_ENDPOINT)

    s = sub.add_parser("rm", parents=[common], help="remove a segment")
    s.add_argument("name", metavar="NAME", help=_NAME)
    s.add_argument("--force", action="store_true", help="even while processes are attached")

    s = sub.add_parser("gc", parents=[common], help="remove segments no live process maps")
    s.add_argument("patterns", nargs="*", metavar="PATTERN", help="only names matching (glob)")
    s.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    s.add_argument("--min-age", type=float, default=2.0, metavar="S",
                   help="keep segments younger than S seconds (default 2)")
    s.add_argument("--json", action="store_true", help="print JSON")

    s = sub.add_parser("serve-metrics", parents=[common],
                       help="serve every segment (or NAMEs) as Prometheus metrics over HTTP")
    s.add_argument("names", nargs="*", metavar="NAME",
                   help="segments to export (default: every segment of this user)")
    s.add_argument("--port", type=_port, default=9464, help="TCP port (default 9464; 0: any)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")

    s = sub.add_parser("fleet", parents=[common],
                       help="fleet endpoints: this host's share and every host's grant in Redis")
    s.add_argument("name", metavar="NAME", help=_NAME)
    s.add_argument("--redis", default=os.environ.get("SHMGUARD_FLEET", "redis://127.0.0.1:6379/0"),
                   help="the fleet's Redis URL (default: env SHMGUARD_FLEET, else local 6379)")
    s.add_argument("--prefix", default="shmguard", help="the fleet's key prefix (default shmguard)")
    s.add_argument("--json", action="store_true", help="print JSON")

    sub.add_parser("demo", add_help=False, help="run the demo (arguments go to shmguard.demo)")
    return p


class _Parser(argparse.ArgumentParser):
    """Usage errors as one line on stderr and exit status 2, like every bad value."""

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE, f"shmguard: {message} (see '{self.prog} --help')\n")


def _port(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= v <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0..65535, got {text!r}")
    return v


def _positive(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not v > 0 or v == float("inf"):
        raise argparse.ArgumentTypeError(f"must be > 0, got {text!r}")
    return v


def _keys(text: str) -> int:
    v = _count(text)
    if v > 1000:
        raise argparse.ArgumentTypeError(f"must be <= 1000, got {text!r}")
    return v


def _count(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text!r}")
    return v


def _demo(argv: list[str]) -> int:
    try:
        demo = importlib.import_module("shmguard.demo")
    except ImportError as exc:
        what = "is not installed" if getattr(exc, "name", None) == "shmguard.demo" else str(exc)
        print(f"shmguard: the demo is not available: shmguard.demo {what}", file=sys.stderr)
        return 2
    return int(demo.main(argv) or 0)


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2))


def _run(args: argparse.Namespace) -> int:
    from shmguard.cli.render import Style, use_colour

    style = Style(use_colour(sys.stdout, args.color))
    cmd = args.command
    if cmd == "list":
        from shmguard.cli.render import list_text
        from shmguard.cli.segments import list_rows
        rows = list_rows(args.patterns or None)
        if args.json:
            _print_json({"segments": rows})
        else:
            print(list_text(rows, style))
        return 0
    if cmd == "inspect":
        return _inspect(args, style)
    if cmd == "watch":
        from shmguard.cli import watch as _cli_watch
        return _cli_watch.run(args.name, args.interval, args.iterations, style.enabled,
                              wide=args.wide)
    if cmd == "fleet":
        from shmguard.cli import fleet
        return fleet.run(args.name, args.redis, args.prefix, args.json)
    if cmd == "serve-metrics":
        from shmguard.cli import serve
        return serve.run(args.names, args.host, args.port)
    if cmd in _CONTROL or cmd in ("set-rate", "rm-endpoint"):
        from shmguard.cli import control as ctl
        from shmguard.cli.inspector import open_segment
        with open_segment(args.name) as seg:
            if cmd == "set-rate" and args.keyed:
                print(ctl.set_keyed_rate(seg, args.endpoint, ctl.parse_rate(args.rate),
                                         args.burst))
            elif cmd == "rm-endpoint":
                print(ctl.remove_endpoint(seg, args.endpoint))
            elif cmd == "set-rate":
                print(ctl.set_rate(seg, args.endpoint, ctl.parse_rate(args.rate), args.burst))
            else:
                print(ctl.force(seg, args.endpoint, cmd))
        return 0
    if cmd == "rm":
        from shmguard.cli.segments import remove
        print(remove(args.name, args.force))
        return 0
    if cmd == "gc":
        from shmguard.cli.segments import collect
        report = collect(args.patterns or None, args.min_age, args.dry_run)
        if args.json:
            _print_json({"segments": report})
        else:
            for r in report:
                print(f"{r['action']:<12} {r['name']}  ({r['reason']})")
            if not report:
                print("(no shmguard segments)")
        return 0
    raise AssertionError(cmd)


def _inspect(args: argparse.Namespace, style: Any) -> int:
    from shmguard.cli.inspector import open_segment, snapshot
    with open_segment(args.name) as seg:
        snap = snapshot(seg, keys=args.keys)
    if args.json:
        _print_json(snap)
    elif args.prometheus:
        from shmguard.cli.prom import exposition
        sys.stdout.write(exposition(snap))
    else:
        from shmguard.cli.render import inspect_text
        print(inspect_text(snap, style, wide=args.wide))
    if snap["corrupt_slots"]:
        print(f"shmguard: segment {args.name!r} has corrupt slots {snap['corrupt_slots']}",
              file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """Runs the ``shmguard`` command; returns its exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "demo":
        return _demo(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return _run(args)
    except (PolicyError, InvalidNameError) as exc:  # a bad value given on the command line
        print(f"shmguard: {exc}", file=sys.stderr)
        return USAGE
    except ShmguardError as exc:
        print(f"shmguard: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # the reader went away (`shmguard inspect x | head`): quiet exit
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
