#!/usr/bin/env python3
"""Interop driver for tailsift's integration tests.

Creates traces with the real OpenTelemetry Python SDK and exports them with BOTH OTLP
exporters: even-numbered traces over gRPC, odd-numbered ones over HTTP/protobuf. Every span
gets the resource attribute `tenant.id`; each trace has a root span (with `http.route`),
children and a grandchild; with --error one child per trace ends with status ERROR.

Prints one JSON document on stdout describing every span produced (ids in lower-case hex):
  {"traces": [{"trace_id": ..., "exporter": "grpc"|"http", "spans": [
      {"span_id", "parent_span_id", "name", "status": "UNSET"|"OK"|"ERROR", "attributes"}]}],
   "resource": {...}}
Exits 1 (with a message on stderr) if any export failed.

With --tls both exporters speak TLS (gRPC to https://HOST:PORT); the CA they trust and any
request headers (an API key) come from the SDK's standard environment variables,
OTEL_EXPORTER_OTLP_CERTIFICATE and OTEL_EXPORTER_OTLP_HEADERS, set by the caller.
"""

import argparse
import json
import sys

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcExporter
from opentelemetry.exporter.otlp.proto.http import Compression as HttpCompression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.trace import SpanKind, Status, StatusCode, set_span_in_context

import grpc


class CheckedExporter(SpanExporter):
    """Delegates to a real exporter and remembers whether every export succeeded."""

    def __init__(self, inner, name):
        self.inner = inner
        self.name = name
        self.failures = 0
        self.exported = 0

    def export(self, spans):
        result = self.inner.export(spans)
        if result == SpanExportResult.SUCCESS:
            self.exported += len(spans)
        else:
            self.failures += 1
        return result

    def shutdown(self):
        self.inner.shutdown()

    def force_flush(self, timeout_millis=30000):
        return self.inner.force_flush(timeout_millis)


def hex_id(value, width):
    return format(value, "0%dx" % width)


def build_provider(exporter, resource):
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=resource)
    provider.add_span_processor(SimpleSpanProcessor(memory))
    provider.add_span_processor(BatchSpanProcessor(exporter, schedule_delay_millis=100))
    return provider, memory


def make_trace(tracer, index, error, route):
    root = tracer.start_span("GET %s" % route, kind=SpanKind.SERVER,
                             attributes={"http.route": route, "trace.index": index})
    root_ctx = set_span_in_context(root)
    db = tracer.start_span("db.query", context=root_ctx, attributes={"db.system": "sqlite"})
    db.end()
    call = tracer.start_span("call.downstream", context=root_ctx, kind=SpanKind.CLIENT)
    inner = tracer.start_span("downstream.work", context=set_span_in_context(call))
    if error:
        inner.set_status(Status(StatusCode.ERROR, "downstream failed"))
        inner.set_attribute("error.type", "interop")
    inner.end()
    call.end()
    root.set_attribute("http.response.status_code", 500 if error else 200)
    root.end()
    return root.get_span_context().trace_id


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grpc", required=True, help="HOST:PORT of the OTLP/gRPC receiver")
    parser.add_argument("--http", required=True, help="URL of the OTLP/HTTP traces endpoint, e.g. http://127.0.0.1:4318/v1/traces")
    parser.add_argument("--tenant", default="interop", help="value of the tenant.id resource attribute")
    parser.add_argument("--traces", type=int, default=4, help="number of traces (split between the exporters)")
    parser.add_argument("--error", action="store_true", help="end one span per trace with status ERROR")
    parser.add_argument("--route", default="/interop", help="http.route of the root spans")
    parser.add_argument("--compression", choices=["none", "gzip"], default="none", help="exporter compression")
    parser.add_argument("--timeout", type=float, default=10.0, help="exporter timeout in seconds")
    parser.add_argument("--tls", action="store_true",
                        help="export over TLS (CA and headers from OTEL_EXPORTER_OTLP_* variables)")
    args = parser.parse_args()

    resource = Resource.create({
        "service.name": "interop-python",
        "tenant.id": args.tenant,
        "deployment.environment": "test",
    })
    gzip = args.compression == "gzip"
    # Over TLS the exporter reads OTEL_EXPORTER_OTLP_CERTIFICATE; headers always come from
    # OTEL_EXPORTER_OTLP_HEADERS when it is set.
    grpc_endpoint = "https://%s" % args.grpc if args.tls else args.grpc
    grpc_exporter = CheckedExporter(GrpcExporter(
        endpoint=grpc_endpoint, insecure=None if args.tls else True, timeout=args.timeout,
        compression=grpc.Compression.Gzip if gzip else grpc.Compression.NoCompression), "grpc")
    http_exporter = CheckedExporter(HttpExporter(
        endpoint=args.http, timeout=args.timeout,
        compression=HttpCompression.Gzip if gzip else HttpCompression.NoCompression), "http")

    grpc_provider, grpc_memory = build_provider(grpc_exporter, resource)
    http_provider, http_memory = build_provider(http_exporter, resource)
    grpc_tracer = grpc_provider.get_tracer("tailsift.interop.grpc", "1.0.0")
    http_tracer = http_provider.get_tracer("tailsift.interop.http", "1.0.0")

    exporter_of = {}
    for i in range(args.traces):
        via = "grpc" if i % 2 == 0 else "http"
        tracer = grpc_tracer if via == "grpc" else http_tracer
        exporter_of[make_trace(tracer, i, args.error, args.route)] = via

    ok = True
    for name, provider in (("grpc", grpc_provider), ("http", http_provider)):
        if not provider.force_flush(int(args.timeout * 1000) + 5000):
            print("%s provider: force_flush timed out" % name, file=sys.stderr)
            ok = False
        provider.shutdown()
    for exporter in (grpc_exporter, http_exporter):
        if exporter.failures:
            print("%s exporter: %d failed exports" % (exporter.name, exporter.failures), file=sys.stderr)
            ok = False

    traces = {}
    for span in list(grpc_memory.get_finished_spans()) + list(http_memory.get_finished_spans()):
        ctx = span.get_span_context()
        entry = traces.setdefault(ctx.trace_id, {
            "trace_id": hex_id(ctx.trace_id, 32),
            "exporter": exporter_of.get(ctx.trace_id, "?"),
            "scope": span.instrumentation_scope.name if span.instrumentation_scope else "",
            "spans": [],
        })
        entry["spans"].append({
            "span_id": hex_id(ctx.span_id, 16),
            "parent_span_id": hex_id(span.parent.span_id, 16) if span.parent else "",
            "name": span.name,
            "status": span.status.status_code.name,
            "attributes": {k: v for k, v in (span.attributes or {}).items()},
        })
    json.dump({
        "traces": list(traces.values()),
        "resource": {k: v for k, v in resource.attributes.items()},
        "exported": {"grpc": grpc_exporter.exported, "http": http_exporter.exported},
    }, sys.stdout)
    sys.stdout.write("\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
