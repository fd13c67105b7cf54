"""The ``shmguard`` command: the inspector and controller of this host's segments.

``main`` (the console script) parses and dispatches; ``inspector`` is the read
side (snapshots taken through C, never writing); ``render``, ``watch`` and
``prom`` turn snapshots into text, a live view and Prometheus exposition;
``segments``, ``procs`` and ``control`` list, remove and steer segments.
"""
from __future__ import annotations

from shmguard.cli.commands import build_parser, main

__all__ = ["main", "build_parser"]
