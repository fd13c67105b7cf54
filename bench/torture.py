"""Crash torture, long version: K workers hammer one segment while a killer SIGKILLs them.

    python bench/torture.py --seconds 600 [--workers 4] [--seed N] [--json]

The harness is tests/_torture.py (the test suite runs a 10 s version of it);
its docstring lists what is checked. Exits 1 if any violation was found.
"""
from __future__ import annotations

import importlib.util
import os
import sys

HARNESS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "_torture.py")


def _load():
    sys.path.insert(0, os.path.dirname(HARNESS))  # its helper modules (_torture_keyed)
    spec = importlib.util.spec_from_file_location("_torture", HARNESS)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["_torture"] = mod
    spec.loader.exec_module(mod)
    return mod


if __name__ == "__main__":
    argv = sys.argv[1:]
    if not any(a.startswith("--seconds") for a in argv):
        argv = ["--seconds", "60"] + argv
    sys.exit(_load().main(argv))
