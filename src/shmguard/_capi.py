"""The only module that touches cffi's ``ffi`` and ``lib``.

Imports the compiled extension, refuses a stale build, and maps C return
codes to exceptions in one place (:func:`check`).
"""
from __future__ import annotations

import os
from typing import Any, NoReturn

try:
    from shmguard._core import ffi, lib
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError(
        "shmguard's C extension (shmguard._core) is not built: run "
        "`pip install -e . --no-build-isolation` (or `pip install .`) in the source tree"
    ) from exc

from shmguard import errors

#: Layout and ABI the Python layer was written against.
LAYOUT_VERSION = 5
ABI_VERSION = 5

if lib.SG_LAYOUT_VERSION != LAYOUT_VERSION or lib.SG_ABI_VERSION != ABI_VERSION:
    raise ImportError(
        f"stale shmguard extension: built for layout {lib.SG_LAYOUT_VERSION} / ABI "
        f"{lib.SG_ABI_VERSION}, Python expects {LAYOUT_VERSION} / {ABI_VERSION}; rebuild with "
        "`pip install -e . --no-build-isolation`"
    )

__all__ = ["ffi", "lib", "hot", "check", "raise_segment", "LAYOUT_VERSION", "ABI_VERSION"]


def _load_hot() -> Any:
    """shmguard._hot (csrc/hot.c, hot_handles.c): the one-crossing doors, or None.

    None when the extension is missing or stale, or when the environment sets
    SHMGUARD_NO_HOT=1 (the test suite runs both paths); every door then takes
    its equivalent path through cffi.
    """
    if os.environ.get("SHMGUARD_NO_HOT") == "1":
        return None
    try:
        import shmguard._hot as mod
    except ImportError:  # pragma: no cover - a build without it still works, slower
        return None
    return mod if getattr(mod, "ABI_VERSION", None) == ABI_VERSION else None


#: The one-crossing extension module, or None (see :func:`_load_hot`).
hot = _load_hot()

_SEGMENT_ERRORS = {
    lib.SG_E_NOT_READY: (errors.SegmentCorruptError, "was never initialised (its creator died?)"),
    lib.SG_E_MAGIC: (errors.SegmentCorruptError, "is not a shmguard segment (bad magic)"),
    lib.SG_E_VERSION: (errors.SegmentIncompatibleError, "has another layout version"),
    lib.SG_E_SIZE: (errors.SegmentCorruptError, "has a corrupt header (sizes disagree)"),
    lib.SG_E_TRUNCATED: (errors.SegmentCorruptError, "is shorter than its header claims"),
    lib.SG_E_CORRUPT: (errors.SegmentCorruptError, "holds a corrupt slot"),
}


def raise_segment(rc: int, name: str) -> NoReturn:
    cls, what = _SEGMENT_ERRORS.get(rc, (errors.SegmentError, f"failed with code {rc}"))
    raise cls(f"segment {name!r} {what}")


def check(rc: int, what: str, name: str = "") -> int:
    """Returns ``rc`` when it is a success code; raises the matching error otherwise."""
    if rc in (lib.SG_OK, lib.SG_CREATED):
        return rc
    if rc in _SEGMENT_ERRORS:
        raise_segment(rc, name)
    if rc == lib.SG_E_FULL:
        raise errors.CapacityError(f"{what}: the slot table of segment {name!r} is full")
    if rc == lib.SG_E_ARG:
        raise errors.ShmguardError(f"{what}: invalid argument")
    raise errors.ShmguardError(f"{what} failed with code {rc}")
