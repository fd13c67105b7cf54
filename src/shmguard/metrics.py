"""Prometheus metrics of shmguard segments, for a ``prometheus_client`` registry.

For an application that already exports metrics::

    from prometheus_client import REGISTRY
    from shmguard.metrics import Collector
    REGISTRY.register(Collector())            # every segment of this user, or Collector(["web"])

``shmguard serve-metrics`` serves the same families over HTTP (``/metrics``).
Each scrape attaches to each segment, reads it through the inspector (never
writing) and detaches, so a scraper never keeps a segment mapped; segments
made after start-up appear on the next scrape. The families are those of
``shmguard inspect --prometheus`` (``shmguard_*``, labelled with ``segment``
and the whole ``endpoint`` name), plus ``shmguard_segment_up`` (0 when a
segment is missing, corrupt, foreign or of another layout).

Needs ``prometheus_client`` (``pip install 'shmguard[metrics]'``).
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

from shmguard.errors import ShmguardError
from shmguard.segment import list_segments, validate_name

__all__ = ["Collector", "serve"]


class Collector:
    """A ``prometheus_client`` collector of shmguard segments (see the module).

    :param names: the segments to export (default: every segment of this user,
        looked up at each scrape).
    """

    def __init__(self, names: Iterable[str] | None = None) -> None:
        self.names = None if names is None else [validate_name(n) for n in names]

    def describe(self) -> list[Any]:
        return []  # families depend on the segments at scrape time

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily
        from prometheus_client.parser import text_string_to_metric_families

        from shmguard.cli.inspector import open_segment, snapshot
        from shmguard.cli.prom import exposition

        families: dict[str, Any] = {}
        up = GaugeMetricFamily("shmguard_segment_up", "1 if the segment could be read, else 0.",
                               labels=["segment"])
        for name in self.names if self.names is not None else list_segments():
            try:
                with open_segment(name) as seg:
                    text = exposition(snapshot(seg, commands=False))
            except ShmguardError:
                up.add_metric([name], 0)
                continue
            up.add_metric([name], 1)
            for fam in text_string_to_metric_families(text):
                have = families.get(fam.name)
                if have is None:
                    families[fam.name] = fam
                else:
                    have.samples.extend(fam.samples)  # the same family from another segment
        yield up
        yield from families.values()


def serve(names: list[str] | None, host: str, port: int) -> tuple[Any, int]:
    """Starts serving ``/metrics`` in a background thread; returns (server, port).

    :raises ShmguardError: prometheus_client is not installed.
    """
    try:
        from prometheus_client import CollectorRegistry, start_http_server
    except ImportError:
        raise ShmguardError("serve-metrics needs prometheus_client: "
                            "pip install 'shmguard[metrics]'") from None
    registry = CollectorRegistry(auto_describe=False)
    registry.register(Collector(names))
    try:
        server, _ = start_http_server(port, host, registry)
    except OSError as exc:
        raise ShmguardError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
    return server, int(server.server_port)
