"""cffi API-mode builder for shmguard._core (never installed).

The cdef is the CDEF-BEGIN..CDEF-END part of csrc/shmguard.h, so the
compiler and the binding read one text.
"""
from __future__ import annotations

import os
import platform
import re

from cffi import FFI

HERE = os.path.dirname(os.path.abspath(__file__))
SOURCES = ["segment.c", "table.c", "policy.c", "window.c", "breaker.c", "rate.c", "gcra.c",
           "siphash.c", "keyed.c", "keyed_gcra.c", "keyed_rate.c", "budget.c", "throttle.c",
           "predict.c", "bulkhead.c", "bulkhead_wait.c", "chain.c", "slot_detach.c",
           "slot_life.c"]


def _cdef() -> str:
    with open(os.path.join(HERE, "shmguard.h"), encoding="utf-8") as f:
        text = f.read()
    m = re.search(r"/\* CDEF-BEGIN \*/(.*)/\* CDEF-END \*/", text, re.S)
    if m is None:
        raise RuntimeError("csrc/shmguard.h lacks the CDEF-BEGIN/END markers")
    return m.group(1)


def flags() -> list[str]:
    flags = ["-std=c11", "-O2", "-Wall", "-Wextra", "-Werror", "-D_POSIX_C_SOURCE=200809L"]
    if platform.machine() in ("x86_64", "AMD64"):
        flags.append("-mcx16")  # keyed.c: one 128-bit CAS per entry (cmpxchg16b)
    extra = os.environ.get("SHMGUARD_CFLAGS")  # e.g. sanitizer builds
    if extra:
        flags += extra.split()
    return flags


SOURCES += ["fleet.c"]  # fleet/: the agent lease and a slot's fleet share

ffibuilder = FFI()
ffibuilder.cdef(_cdef())
ffibuilder.set_source(
    "shmguard._core",
    '#include "shmguard.h"',
    sources=[os.path.relpath(os.path.join(HERE, s)) for s in SOURCES],
    include_dirs=[os.path.relpath(HERE)],
    extra_compile_args=flags(),
    extra_link_args=os.environ.get("SHMGUARD_LDFLAGS", "").split(),
)

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
