"""OpenTelemetry tracing: a provider per process, exported over OTLP when configured.

Spans always exist (so trace ids reach logs and propagate to peers over the W3C
`traceparent` metadata); they leave the process only when OTEL_EXPORTER_OTLP_ENDPOINT
is set, or to stdout when INTERPAY_TRACE_CONSOLE=1.
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter


def configure(service: str) -> None:
    provider = TracerProvider(resource=Resource.create({"service.name": f"interpay-{service}"}))
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    elif os.environ.get("INTERPAY_TRACE_CONSOLE") == "1":
        provider.add_span_processor(BatchSpanProcessor(ConsoleSpanExporter()))
    trace.set_tracer_provider(provider)


def shutdown() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
