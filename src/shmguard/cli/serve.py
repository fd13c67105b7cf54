"""``shmguard serve-metrics``: a Prometheus exporter of segments, in the foreground.

Serves ``/metrics`` (see :mod:`shmguard.metrics`) until Ctrl-C or SIGTERM,
then stops the server and exits 0.
"""
from __future__ import annotations

import signal
import sys
import threading
from typing import Any

from shmguard import metrics

__all__ = ["run"]


def run(names: list[str], host: str, port: int) -> int:
    """Serves until interrupted; returns the exit status."""
    server, bound = metrics.serve(names or None, host, port)
    what = ", ".join(names) if names else "every segment of this user"
    print(f"shmguard: serving {what} at http://{host}:{bound}/metrics", flush=True)
    stop = threading.Event()

    def on_term(signum: int, frame: Any) -> None:
        stop.set()
    old = signal.signal(signal.SIGTERM, on_term)
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass
    finally:
        signal.signal(signal.SIGTERM, old)
        server.shutdown()
        server.server_close()
    sys.stdout.flush()
    return 0
