#!/usr/bin/env python3
"""An application using the OpenTelemetry Python SDK that exports traces, metrics and logs to
one OTLP endpoint, configured only by the standard environment variables
(OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_EXPORTER_OTLP_PROTOCOL = grpc | http/protobuf).

It starts --traces traces of root span "keep-me" and as many of "drop-me", logs one record
inside each (through the `logging` bridge, so the records carry the span's trace id), logs one
record outside any span, adds to a counter and records a histogram, flushes everything and
prints one JSON document saying what it produced. It exits non-zero if any flush fails.
"""

import argparse
import json
import logging
import os
import sys

from opentelemetry import metrics, trace
from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor


def exporters(protocol):
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    elif protocol == "http/protobuf":
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    else:
        raise SystemExit(f"unsupported OTEL_EXPORTER_OTLP_PROTOCOL {protocol!r}")
    return OTLPSpanExporter(), OTLPMetricExporter(), OTLPLogExporter()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--tenant", default="acme")
    parser.add_argument("--traces", type=int, default=3)
    args = parser.parse_args()

    # The SDK reports export failures through `logging`: send them to stderr, where the test
    # looks for them.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)

    protocol = os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    span_exporter, metric_exporter, log_exporter = exporters(protocol)
    resource = Resource.create({"service.name": "signals-app", "tenant.id": args.tenant})

    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(span_exporter))
    reader = PeriodicExportingMetricReader(metric_exporter, export_interval_millis=600_000)
    meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(log_exporter))

    app_log = logging.getLogger("signals-app")
    app_log.setLevel(logging.INFO)
    app_log.propagate = False
    app_log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=logger_provider))

    tracer = tracer_provider.get_tracer("signals-tracer")
    meter = meter_provider.get_meter("signals-meter")
    counter = meter.create_counter("jobs.done", unit="1")
    histogram = meter.create_histogram("job.duration", unit="ms")

    names = ("keep-me", "drop-me", "error-log")
    produced = {"protocol": protocol, "traces": {n: [] for n in names}, "logs": []}
    for i in range(args.traces):
        for name in names:
            with tracer.start_as_current_span(name) as span:
                trace_id = format(span.get_span_context().trace_id, "032x")
                produced["traces"][name].append(trace_id)
                body = f"{name} log {i}"
                # An ERROR record is what keeps an "error-log" trace (rule `error-logs`).
                (app_log.error if name == "error-log" else app_log.info)(body)
                produced["logs"].append({"body": body, "trace_id": trace_id, "span": name})
                with tracer.start_as_current_span("child"):
                    pass
    outside = "outside any span"
    app_log.warning(outside)
    produced["logs"].append({"body": outside, "trace_id": "", "span": ""})

    counter.add(3, {"queue": "a"})
    counter.add(4, {"queue": "a"})
    histogram.record(1.5, {"queue": "a"})
    histogram.record(2.5, {"queue": "a"})
    produced["metrics"] = {
        "jobs.done": {"sum": 7},
        "job.duration": {"count": 2, "sum": 4.0},
    }

    ok = True
    ok &= bool(tracer_provider.force_flush(timeout_millis=20_000))
    ok &= bool(meter_provider.force_flush(timeout_millis=20_000))
    ok &= bool(logger_provider.force_flush(timeout_millis=20_000))
    tracer_provider.shutdown()
    meter_provider.shutdown()
    logger_provider.shutdown()
    print(json.dumps(produced))
    if not ok:
        print("a force_flush failed", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
