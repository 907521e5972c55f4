"""Prometheus metrics every service exports on its own /metrics port: RED per RPC
(rate and errors by status code, duration), and the resources' own gauges (connection
pools here; services add theirs, such as the ledger's reconciliation mismatches)."""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import REGISTRY, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

RPC_REQUESTS = Counter(
    "interpay_rpc_requests_total", "RPCs handled, by method and status code", ["service", "method", "code"]
)
RPC_DURATION = Histogram(
    "interpay_rpc_duration_seconds",
    "RPC handling time, by method",
    ["service", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class GaugeCallback(Collector):
    """A gauge family read at scrape time from a callback returning (labels, value) pairs."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labels: list[str],
        read: Callable[[], Iterable[tuple[list[str], float]]],
    ) -> None:
        self.name, self.documentation, self.labels, self.read = name, documentation, labels, read

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, value in self.read():
            family.add_metric(labels, value)
        yield family


def register_gauge(
    name: str, documentation: str, labels: list[str], read: Callable[[], Iterable[tuple[list[str], float]]]
) -> None:
    REGISTRY.register(GaugeCallback(name, documentation, labels, read))


def serve(host: str, port: int) -> None:
    if port > 0:
        start_http_server(port, addr=host)
