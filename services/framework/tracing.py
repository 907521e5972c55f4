"""OpenTelemetry tracing: a provider per process, exported over OTLP when configured.

Spans always exist (so trace ids reach logs and propagate to peers over the W3C
`traceparent` metadata); they leave the process only when OTEL_EXPORTER_OTLP_ENDPOINT
is set, or to stdout when INTERPAY_TRACE_CONSOLE=1. With neither, nothing would ever read
a span's attributes, events or timings, so none are recorded: the sampler says no to every
span, which then only carries its trace and span ids (still in the logs and still
propagated). With an exporter, sampling follows the SDK's OTEL_TRACES_SAMPLER (by default,
every span, or as the caller's traceparent decided).
"""

from __future__ import annotations

import os

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF


def configure(service: str) -> None:
    processor: SpanProcessor | None = None
    if os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        processor = BatchSpanProcessor(OTLPSpanExporter())
    elif os.environ.get("INTERPAY_TRACE_CONSOLE") == "1":
        processor = BatchSpanProcessor(ConsoleSpanExporter())
    provider = TracerProvider(
        resource=Resource.create({"service.name": f"interpay-{service}"}),
        sampler=None if processor is not None else ALWAYS_OFF,
    )
    if processor is not None:
        provider.add_span_processor(processor)
    trace.set_tracer_provider(provider)


def shutdown() -> None:
    provider = trace.get_tracer_provider()
    if isinstance(provider, TracerProvider):
        provider.shutdown()
