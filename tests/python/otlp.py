"""An OTLP/HTTP receiver for the tests, built on the official protobuf
definitions (the `opentelemetry-proto` package): it decodes every export
the gateway posts to /v1/traces and keeps the spans, and every export to
/v1/metrics and keeps the last of each. It can be made slow, answer an
error status, or go down and come back on the same port."""

import gzip
import http.server
import socket
import threading
import time

from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2


def value(v):
    """An AnyValue as a Python value."""
    kind = v.WhichOneof("value")
    if kind == "array_value":
        return [value(x) for x in v.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: value(kv.value) for kv in v.kvlist_value.values}
    return getattr(v, kind) if kind else None


def attributes(kvs):
    return {kv.key: value(kv.value) for kv in kvs}


class Span:
    def __init__(self, span, resource, scope):
        self.name = span.name
        self.kind = span.kind
        self.trace_id = span.trace_id.hex()
        self.span_id = span.span_id.hex()
        self.parent_id = span.parent_span_id.hex()
        self.trace_state = span.trace_state
        self.start = span.start_time_unix_nano
        self.end = span.end_time_unix_nano
        self.attributes = attributes(span.attributes)
        self.events = [(e.name, e.time_unix_nano) for e in span.events]
        self.status_code = span.status.code
        self.flags = span.flags
        self.resource = resource
        self.scope = scope

    def __repr__(self):
        return f"Span({self.name!r}, {self.attributes})"


class Collector:
    """The receiver: `spans` holds what was decoded, `requests` each export's headers."""

    def __init__(self, port=0):
        self.spans = []
        self.metrics = []
        self.requests = []
        self.delay = 0.0
        self.status = 200
        self.lock = threading.Lock()
        self.connections = []
        self.server = None
        self.start(port)

    def start(self, port=None):
        collector = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def setup(self):
                super().setup()
                with collector.lock:
                    collector.connections.append(self.connection)

            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if collector.delay:
                    time.sleep(collector.delay)
                status = collector.status
                if status == 200 and self.path.endswith("/v1/metrics"):
                    if self.headers.get("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                    request = metrics_service_pb2.ExportMetricsServiceRequest()
                    request.ParseFromString(body)
                    with collector.lock:
                        collector.metrics.append(request)
                elif status == 200:
                    if self.headers.get("Content-Encoding") == "gzip":
                        body = gzip.decompress(body)
                    request = trace_service_pb2.ExportTraceServiceRequest()
                    request.ParseFromString(body)
                    with collector.lock:
                        collector.requests.append(dict(self.headers))
                        for rs in request.resource_spans:
                            resource = attributes(rs.resource.attributes)
                            for ss in rs.scope_spans:
                                scope = (ss.scope.name, ss.scope.version, ss.schema_url)
                                for span in ss.spans:
                                    collector.spans.append(Span(span, resource, scope))
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(status)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", port if port is not None else self.port), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        """Goes down: the port refuses connections until `start()`."""
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            for c in self.connections:
                try:
                    c.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            self.connections = []

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def find(self, pred, timeout=10.0, count=1):
        """Waits until `count` spans match `pred`, and returns them."""
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                found = [s for s in self.spans if pred(s)]
            if len(found) >= count or time.monotonic() > deadline:
                assert len(found) >= count, f"{len(found)} of {count} spans matched; have {self.spans}"
                return found
            time.sleep(0.02)

    def trace(self, trace_id, count, timeout=10.0):
        """The spans of one trace, once `count` of them arrived."""
        return self.find(lambda s: s.trace_id == trace_id, timeout, count)
