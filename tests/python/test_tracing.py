"""Traces over OTLP/HTTP: the gateway's spans, decoded by a receiver built on
the official protobuf definitions (otlp.py), for every front, streamed and
not, refused and cancelled; the W3C trace context from the client through
the gateway to the emulator (which records the `traceparent` it is sent);
and the exporter with the receiver slow, failing, down and back."""

import json
import socket
import threading
import time
import urllib.error
import urllib.request

import anthropic
import openai
import pytest

from conftest import MOCK, Gateway, Mock
from otlp import Collector

CLIENT_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CLIENT_SPAN = "00f067aa0ba902b7"
SERVER, CLIENT, INTERNAL = 2, 3, 1


@pytest.fixture(scope="module")
def collector():
    c = Collector()
    yield c
    c.stop()


@pytest.fixture(scope="module")
def mock():
    m = Mock([MOCK, "--listen", "127.0.0.1:0", "--tokens", "8"])
    yield m
    m.stop()


@pytest.fixture(scope="module")
def gateway(mock, collector):
    g = Gateway(mock.url, "--otlp-endpoint", collector.url, "--otlp-batch-delay-ms", "50", "--otlp-service-name", "gw-test")
    yield g
    g.stop()


@pytest.fixture(scope="module")
def key(gateway):
    return gateway.create_key("traced")


def traceparent(trace=None, span=CLIENT_SPAN, flags="01"):
    """A client's `traceparent`, with a fresh trace id unless one is given."""
    import secrets

    return f"00-{trace or secrets.token_hex(16)}-{span}-{flags}"


def post(gateway, path, body, key, headers=None):
    """A raw POST: (status, headers, body)."""
    req = urllib.request.Request(
        gateway.url + path,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def sent_traceparents(mock):
    with urllib.request.urlopen(mock.url + "/_traceparents") as r:
        return json.load(r)


def metric(gateway, name):
    req = urllib.request.Request(gateway.url + "/metrics", headers={"Authorization": "Bearer " + ADMIN})
    with urllib.request.urlopen(req) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(name))


from harness import ADMIN_KEY as ADMIN  # noqa: E402


def test_a_chat_span_carries_every_attribute_and_continues_the_clients_trace(gateway, key, collector, mock):
    client = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    parent = traceparent()
    trace_id = parent.split("-")[1]
    raw = client.chat.completions.with_raw_response.create(
        model="llama3",
        messages=[{"role": "user", "content": "Say hello"}],
        max_tokens=50,
        temperature=0.5,
        top_p=0.9,
        seed=7,
        extra_headers={"traceparent": parent, "tracestate": "vendor=abc", "x-session-id": "sess-42"},
    )
    reply = raw.parse()
    spans = collector.trace(trace_id, 2)
    own = next(s for s in spans if s.kind == SERVER)
    call = next(s for s in spans if s.kind == CLIENT)
    # The gateway's span is the client's span's child; the host call is the
    # gateway's (no wait for a slot here: no queue span).
    assert own.parent_id == CLIENT_SPAN and own.trace_state == "vendor=abc"
    assert call.parent_id == own.span_id and len(spans) == 2
    assert own.name == "chat llama3"
    # The response names the trace and the gateway's span.
    assert raw.headers["traceresponse"] == f"00-{trace_id}-{own.span_id}-01"
    # The host was sent the host call's span as its parent.
    sent = [t for t in sent_traceparents(mock) if trace_id in t["traceparent"]]
    assert sent == [{"path": "/api/chat", "traceparent": f"00-{trace_id}-{call.span_id}-01"}]
    a = own.attributes
    host, port = mock.addr.rsplit(":", 1)
    expected = {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "ollama",
        "gen_ai.request.model": "llama3",
        "gen_ai.response.model": "llama3",
        "gen_ai.request.max_tokens": 50,
        "gen_ai.request.temperature": 0.5,
        "gen_ai.request.top_p": 0.9,
        "gen_ai.request.seed": 7,
        "gen_ai.request.stream": False,
        "gen_ai.usage.input_tokens": reply.usage.prompt_tokens,
        "gen_ai.usage.output_tokens": reply.usage.completion_tokens,
        "gen_ai.response.finish_reasons": ["stop"],
        "gen_ai.response.id": reply.id,
        "gen_ai.conversation.id": "sess-42",
        "ai_gateway.session.id": "sess-42",
        "server.address": host,
        "server.port": int(port),
        "http.request.method": "POST",
        "http.route": "chat_completions",
        "http.response.status_code": 200,
        "ai_gateway.request.id": reply.id,
        "ai_gateway.front": "openai",
        "ai_gateway.lane": "standard",
        "ai_gateway.model_load.forced": False,
        "ai_gateway.usage.estimated": False,
        "ai_gateway.cancelled": False,
    }
    assert {k: a.get(k) for k in expected} == expected
    assert a["ai_gateway.key.id"].startswith("key_") and "error.type" not in a
    assert a["ai_gateway.queue.wait"] >= 0 and a["ai_gateway.time_to_first_token"] > 0
    assert a["ai_gateway.usage.input_tokens.estimate"] > 0
    # Never a message's content, never a secret.
    assert all("Say hello" not in str(v) and key not in str(v) for v in a.values())
    # Phases: admission then first token, inside the span; the queue before the host call.
    names = [e[0] for e in own.events]
    assert names == ["ai_gateway.admitted", "ai_gateway.first_token"]
    assert own.start <= own.events[0][1] <= own.events[1][1] <= own.end
    assert own.start <= call.start and call.end <= own.end + 1
    assert call.attributes["server.port"] == int(port) and call.name == "chat llama3"
    assert own.resource["service.name"] == "gw-test"
    assert own.scope[0] == "ai-gateway" and own.scope[2].startswith("https://opentelemetry.io/schemas/")


def test_a_request_that_waits_for_a_slot_has_its_queue_span(mock, collector):
    # One slot: the second request waits while the first is generating.
    mock.configure(tokens=20, token_delay_ms=10)
    g = Gateway(
        mock.url, "--otlp-endpoint", collector.url, "--otlp-batch-delay-ms", "50",
        "--upstream-max-concurrent", "1", "--upstream-reserve-interactive", "0",
    )
    try:
        k = g.create_key("k")
        body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
        parents = [traceparent(), traceparent()]
        held = {**body, "stream": True}  # the emulator paces its tokens in a stream
        first = threading.Thread(target=post, args=(g, "/v1/chat/completions", held, k, {"traceparent": parents[0]}))
        first.start()
        # The first holds the slot (a 200 ms generation) before the second asks.
        deadline = time.monotonic() + 10
        while metric(g, "ai_gateway_upstream_in_flight ") < 1 and time.monotonic() < deadline:
            time.sleep(0.005)
        assert post(g, "/v1/chat/completions", body, k, {"traceparent": parents[1]})[0] == 200
        first.join()
        spans = collector.trace(parents[1].split("-")[1], 3)
        own = next(s for s in spans if s.kind == SERVER)
        queue = next(s for s in spans if s.kind == INTERNAL)
        call = next(s for s in spans if s.kind == CLIENT)
        assert queue.name == "ai_gateway.queue" and queue.parent_id == own.span_id and call.parent_id == own.span_id
        waited = queue.attributes["ai_gateway.queue.wait"]
        assert waited >= 0.001 and waited == own.attributes["ai_gateway.queue.wait"]
        assert abs((queue.end - queue.start) / 1e9 - waited) < 0.001
        assert own.start <= queue.start and queue.end <= call.start + 1000 and call.end <= own.end + 1000
    finally:
        mock.configure(tokens=8, token_delay_ms=0)
        g.stop()


def test_without_a_traceparent_the_gateway_starts_the_trace(gateway, key, collector, mock):
    status, headers, _ = post(gateway, "/v1/chat/completions", {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}, key)
    assert status == 200
    _, trace_id, span_id, flags = headers["traceresponse"].split("-")
    assert flags == "01"
    own = collector.find(lambda s: s.span_id == span_id)[0]
    assert own.trace_id == trace_id and own.parent_id == ""
    call = collector.find(lambda s: s.trace_id == trace_id and s.kind == CLIENT)[0]
    assert any(t["traceparent"] == f"00-{trace_id}-{call.span_id}-01" for t in sent_traceparents(mock))


def test_an_unsampled_parent_is_passed_on_and_nothing_is_exported(gateway, key, collector, mock):
    parent = traceparent(flags="00")
    trace_id = parent.split("-")[1]
    status, headers, _ = post(
        gateway, "/v1/chat/completions", {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}, key, {"traceparent": parent}
    )
    assert status == 200 and headers["traceresponse"].endswith("-00")
    assert any(t["traceparent"].startswith(f"00-{trace_id}-") and t["traceparent"].endswith("-00") for t in sent_traceparents(mock))
    # A sampled request sent after it is exported; the unsampled one never is.
    marker = traceparent()
    post(gateway, "/v1/chat/completions", {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}, key, {"traceparent": marker})
    collector.trace(marker.split("-")[1], 2)
    assert not [s for s in collector.spans if s.trace_id == trace_id]


def test_an_invalid_traceparent_starts_a_new_trace(gateway, key, collector):
    bad = "00-" + "0" * 32 + "-" + CLIENT_SPAN + "-01"
    status, headers, _ = post(
        gateway, "/v1/chat/completions", {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}, key, {"traceparent": bad, "tracestate": "a=b"}
    )
    assert status == 200
    _, trace_id, span_id, _ = headers["traceresponse"].split("-")
    own = collector.find(lambda s: s.span_id == span_id)[0]
    assert trace_id != "0" * 32 and own.parent_id == "" and own.trace_state == ""


FRONTS = [
    # (path, body, operation, front, route)
    ("/v1/chat/completions", {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}, "chat", "openai", "chat_completions"),
    ("/v1/completions", {"model": "llama3", "prompt": "hi"}, "text_completion", "openai", "completions"),
    ("/v1/messages", {"model": "llama3", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]}, "chat", "anthropic", "messages"),
    ("/v1/responses", {"model": "llama3", "input": "hi", "store": False}, "chat", "responses", "responses"),
    ("/api/chat", {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}, "chat", "ollama", "ollama_chat"),
    ("/api/generate", {"model": "llama3", "prompt": "hi"}, "text_completion", "ollama", "ollama_generate"),
]


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
@pytest.mark.parametrize("path,body,op,front,route", FRONTS, ids=[f[4] for f in FRONTS])
def test_every_front_streamed_or_not(gateway, key, collector, path, body, op, front, route, stream):
    parent = traceparent()
    trace_id = parent.split("-")[1]
    status, _, _ = post(gateway, path, {**body, "stream": stream}, key, {"traceparent": parent})
    assert status == 200
    spans = collector.trace(trace_id, 2)
    own = next(s for s in spans if s.kind == SERVER)
    a = own.attributes
    assert own.name == f"{op} llama3" and own.parent_id == CLIENT_SPAN
    assert a["gen_ai.operation.name"] == op and a["ai_gateway.front"] == front and a["http.route"] == route
    assert a["gen_ai.request.stream"] is stream and a["http.response.status_code"] == 200
    assert a["gen_ai.usage.output_tokens"] == 8 and a["gen_ai.usage.input_tokens"] > 0
    assert a["gen_ai.response.finish_reasons"] == ["stop"] and a["ai_gateway.cancelled"] is False
    assert [e[0] for e in own.events] == ["ai_gateway.admitted", "ai_gateway.first_token"]


def test_embeddings_on_both_fronts(gateway, key, collector):
    for path, body in [("/v1/embeddings", {"model": "llama3", "input": "hi"}), ("/api/embed", {"model": "llama3", "input": "hi"})]:
        parent = traceparent()
        status, _, _ = post(gateway, path, body, key, {"traceparent": parent})
        assert status == 200
        own = next(s for s in collector.trace(parent.split("-")[1], 2) if s.kind == SERVER)
        assert own.name == "embeddings llama3" and own.attributes["gen_ai.operation.name"] == "embeddings"
        assert own.attributes["gen_ai.usage.input_tokens"] > 0


def test_the_anthropic_sdk_with_a_claude_code_session(gateway, key, collector):
    client = anthropic.Anthropic(base_url=gateway.url, api_key=key, max_retries=0)
    parent = traceparent()
    m = client.messages.create(
        model="llama3",
        max_tokens=64,
        messages=[{"role": "user", "content": "hi"}],
        extra_headers={"traceparent": parent, "X-Claude-Code-Session-Id": "d8c1d07e-c6a1-4038-8a0d-921b72a24593", "x-session-id": "loses"},
    )
    own = next(s for s in collector.trace(parent.split("-")[1], 2) if s.kind == SERVER)
    assert own.attributes["gen_ai.response.id"] == m.id
    assert own.attributes["gen_ai.conversation.id"] == "d8c1d07e-c6a1-4038-8a0d-921b72a24593"
    assert own.attributes["gen_ai.usage.output_tokens"] == m.usage.output_tokens


def test_refused_requests_have_spans_with_their_error(gateway, key, collector):
    body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
    cases = [
        ("sk_wrong-0123456789abcdefghijklmnopqrstuvwxyz01", body, 401, "401"),
        (key, {"model": "llama3"}, 400, "400"),
        (key, {**body, "model": "no-such-model"}, 404, "404"),
    ]
    for secret, b, status, error in cases:
        parent = traceparent()
        got, _, _ = post(gateway, "/v1/chat/completions", b, secret, {"traceparent": parent})
        assert got == status
        spans = collector.trace(parent.split("-")[1], 1)
        own = spans[0]
        assert own.kind == SERVER and own.parent_id == CLIENT_SPAN
        assert own.attributes["http.response.status_code"] == status and own.attributes["error.type"] == error
        assert "sk_wrong" not in str(own.attributes)


def test_a_rate_limited_request(gateway, collector):
    limited = gateway.create_key("one-a-minute", "--rpm", "1")
    body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
    assert post(gateway, "/v1/chat/completions", body, limited)[0] == 200
    parent = traceparent()
    assert post(gateway, "/v1/chat/completions", body, limited, {"traceparent": parent})[0] == 429
    own = collector.trace(parent.split("-")[1], 1)[0]
    assert own.attributes["error.type"] == "429" and own.attributes["http.response.status_code"] == 429


def test_a_cancelled_stream(gateway, key, collector, mock):
    mock.configure(tokens=200, token_delay_ms=20)
    parent = traceparent()
    trace_id = parent.split("-")[1]
    body = json.dumps({"model": "llama3", "stream": True, "messages": [{"role": "user", "content": "hi"}]}).encode()
    host, port = gateway.addr.rsplit(":", 1)
    s = socket.create_connection((host, int(port)))
    s.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + key.encode()
        + b"\r\nContent-Type: application/json\r\ntraceparent: " + parent.encode()
        + b"\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    got = b""
    while b"data:" not in got:
        got += s.recv(4096)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    s.close()
    spans = collector.trace(trace_id, 2)
    own = next(x for x in spans if x.kind == SERVER)
    assert own.attributes["ai_gateway.cancelled"] is True and own.attributes["error.type"] == "cancelled"
    assert own.attributes["gen_ai.request.stream"] is True


def test_the_exporter_retries_while_the_receiver_fails_and_comes_back(mock):
    c = Collector()
    g = Gateway(mock.url, "--otlp-endpoint", c.url, "--otlp-batch-delay-ms", "50")
    try:
        k = g.create_key("k")
        body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
        # Failing (503), then slow, then down: spans wait, are retried, and arrive.
        c.status = 503
        first = traceparent()
        assert post(g, "/v1/chat/completions", body, k, {"traceparent": first})[0] == 200
        deadline = time.monotonic() + 10
        while metric(g, "ai_gateway_otlp_export_failures_total") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(g, "ai_gateway_otlp_export_failures_total") >= 2
        c.status = 200
        c.delay = 0.5
        c.trace(first.split("-")[1], 2)
        c.delay = 0
        c.stop()
        down = traceparent()
        assert post(g, "/v1/chat/completions", body, k, {"traceparent": down})[0] == 200
        failures = metric(g, "ai_gateway_otlp_export_failures_total")
        deadline = time.monotonic() + 10
        while metric(g, "ai_gateway_otlp_export_failures_total") <= failures and time.monotonic() < deadline:
            time.sleep(0.05)
        assert metric(g, "ai_gateway_otlp_export_failures_total") > failures
        c.start()
        c.trace(down.split("-")[1], 2)
        assert metric(g, 'ai_gateway_otlp_spans_dropped_total{reason="export_failed"}') == 0
        assert metric(g, "ai_gateway_otlp_spans_exported_total") >= 4
    finally:
        g.stop()
        c.stop()


def test_a_full_queue_drops_spans_and_counts_them_and_requests_do_not_wait(mock):
    c = Collector()
    c.stop()  # Away from the start: the exporter backs off while spans pile up.
    g = Gateway(mock.url, "--otlp-endpoint", c.url, "--otlp-batch-delay-ms", "50", "--otlp-queue", "4", "--otlp-batch", "2")
    try:
        k = g.create_key("k")
        body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(20):
            assert post(g, "/v1/chat/completions", body, k)[0] == 200
        assert metric(g, 'ai_gateway_otlp_spans_dropped_total{reason="queue_full"}') > 0
    finally:
        g.stop()


def test_tracing_off_sends_no_traceparent_and_no_header(mock):
    g = Gateway(mock.url)
    try:
        k = g.create_key("k")
        urllib.request.urlopen(urllib.request.Request(mock.url + "/_reset", data=b"", method="POST")).close()
        status, headers, _ = post(
            g, "/v1/chat/completions", {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}, k, {"traceparent": traceparent()}
        )
        assert status == 200 and "traceresponse" not in headers
        assert sent_traceparents(mock) == []
        scraped = urllib.request.Request(g.url + "/metrics", headers={"Authorization": "Bearer " + ADMIN})
        with urllib.request.urlopen(scraped) as r:
            assert "ai_gateway_otlp_" not in r.read().decode(), "no export series without an endpoint"
    finally:
        g.stop()


def series(gateway):
    """The `/metrics` text as {series with labels: value}."""
    req = urllib.request.Request(gateway.url + "/metrics", headers={"Authorization": "Bearer " + ADMIN})
    with urllib.request.urlopen(req) as r:
        lines = r.read().decode().splitlines()
    return {k: float(v) for k, v in (line.rsplit(" ", 1) for line in lines if line and not line.startswith("#"))}


def test_the_genai_histograms_by_the_conventions(mock):
    """On /metrics whether tracing is on or not: token usage by type, request
    duration (with error.type on failures) and time to first token of
    streamed successes, in the conventions' buckets, by operation and model."""
    mock.configure(tokens=8, token_delay_ms=0)
    g = Gateway(mock.url)
    try:
        k = g.create_key("k")
        chat = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(2):
            assert post(g, "/v1/chat/completions", chat, k)[0] == 200
        client = openai.OpenAI(base_url=g.url + "/v1", api_key=k, max_retries=0)
        chunks = list(client.chat.completions.create(**chat, stream=True, stream_options={"include_usage": True}))
        prompt = chunks[-1].usage.prompt_tokens
        assert post(g, "/v1/embeddings", {"model": "llama3", "input": "hi"}, k)[0] == 200
        assert post(g, "/v1/chat/completions", {**chat, "model": "no-such-model"}, k)[0] == 404
        m = series(g)
        base = 'gen_ai_operation_name="chat",gen_ai_provider_name="ollama",gen_ai_request_model="llama3"'
        usage = "gen_ai_client_token_usage"
        assert m[f'{usage}_count{{{base},gen_ai_token_type="output"}}'] == 3
        assert m[f'{usage}_sum{{{base},gen_ai_token_type="output"}}'] == 24
        assert m[f'{usage}_sum{{{base},gen_ai_token_type="input"}}'] == 3 * prompt
        # 8 output tokens: above the bucket of 4, in the one of 16.
        assert m[f'{usage}_bucket{{{base},gen_ai_token_type="output",le="4"}}'] == 0
        assert m[f'{usage}_bucket{{{base},gen_ai_token_type="output",le="16"}}'] == 3
        duration = "gen_ai_server_request_duration_seconds"
        assert m[f"{duration}_count{{{base}}}"] == 3
        assert m[f'{duration}_bucket{{{base},le="81.92"}}'] == 3
        ttft = "gen_ai_server_time_to_first_token_seconds"
        assert m[f"{ttft}_count{{{base}}}"] == 1 and f'{ttft}_bucket{{{base},le="0.001"}}' in m
        embed = 'gen_ai_operation_name="embeddings",gen_ai_provider_name="ollama",gen_ai_request_model="llama3"'
        assert m[f"{duration}_count{{{embed}}}"] == 1
        assert m[f'{usage}_count{{{embed},gen_ai_token_type="input"}}'] == 1
        # A made-up model is one fixed label, with its error.
        failed = [s for s in m if s.startswith(f"{duration}_count") and 'error_type="404"' in s]
        assert len(failed) == 1 and "no-such-model" not in failed[0] and m[failed[0]] == 1
    finally:
        g.stop()


def test_a_stop_sends_the_last_spans_and_never_waits_for_a_collector_that_is_away(mock):
    c = Collector()
    # A long batch delay: only the stop sends these spans.
    g = Gateway(mock.url, "--otlp-endpoint", c.url, "--otlp-batch-delay-ms", "60000")
    try:
        k = g.create_key("k")
        parent = traceparent()
        body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
        assert post(g, "/v1/chat/completions", body, k, {"traceparent": parent})[0] == 200
        g.proc.terminate()
        assert g.proc.wait(timeout=20) == 0
        assert len(c.trace(parent.split("-")[1], 2)) == 2
    finally:
        g.stop()
        c.stop()
    # The collector away: the stop drops what it cannot send and ends.
    c = Collector()
    c.stop()
    g = Gateway(mock.url, "--otlp-endpoint", c.url, "--otlp-batch-delay-ms", "60000")
    try:
        k = g.create_key("k")
        assert post(g, "/v1/chat/completions", body, k)[0] == 200
        g.proc.terminate()
        assert g.proc.wait(timeout=20) == 0
    finally:
        g.stop()


def test_the_genai_metrics_go_over_otlp_too(mock):
    c = Collector()
    g = Gateway(mock.url, "--otlp-endpoint", c.url, "--otlp-metrics-interval-ms", "100")
    try:
        k = g.create_key("k")
        body = {"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(3):
            assert post(g, "/v1/chat/completions", body, k)[0] == 200

        def usage_points():
            with c.lock:
                last = c.metrics[-1] if c.metrics else None
            if last is None:
                return {}
            (rm,) = last.resource_metrics
            assert rm.resource.attributes[0].key == "service.name"
            (sm,) = rm.scope_metrics
            assert sm.scope.name == "ai-gateway" and sm.schema_url.startswith("https://opentelemetry.io/schemas/")
            return {m.name: m for m in sm.metrics}

        deadline = time.monotonic() + 10
        while True:
            by_name = usage_points()
            usage = by_name.get("gen_ai.client.token.usage")
            if usage and sum(p.count for p in usage.histogram.data_points) >= 6 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert usage.unit == "{token}" and usage.histogram.aggregation_temporality == 2
        points = {dict((a.key, a.value.string_value) for a in p.attributes)["gen_ai.token.type"]: p for p in usage.histogram.data_points}
        out = points["output"]
        assert out.count == 3 and out.sum == 24 and list(out.explicit_bounds)[:3] == [1, 4, 16]
        assert sum(out.bucket_counts) == 3 and out.bucket_counts[2] == 3, "8 tokens: the bucket (4, 16]"
        attrs = {a.key: a.value.string_value for a in out.attributes}
        assert attrs["gen_ai.operation.name"] == "chat" and attrs["gen_ai.request.model"] == "llama3" and attrs["gen_ai.provider.name"] == "ollama"
        duration = by_name["gen_ai.server.request.duration"]
        assert duration.unit == "s" and sum(p.count for p in duration.histogram.data_points) == 3
        assert list(duration.histogram.data_points[0].explicit_bounds)[:2] == [0.01, 0.02]
    finally:
        g.stop()
        c.stop()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_contents_only_for_a_key_opted_in(gateway, key, collector, stream):
    opted = gateway.create_key(f"contents-{stream}", "--trace-contents")
    body = {
        "model": "llama3",
        "stream": stream,
        "messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": "a secret plan"}],
    }
    seen = {}
    for name, secret in [("opted", opted), ("plain", key)]:
        parent = traceparent()
        status, _, reply = post(gateway, "/v1/chat/completions", body, secret, {"traceparent": parent})
        assert status == 200
        seen[name] = (next(s for s in collector.trace(parent.split("-")[1], 2) if s.kind == SERVER), reply)
    own, reply = seen["opted"]
    given = json.loads(own.attributes["gen_ai.input.messages"])
    assert given == [
        {"role": "system", "parts": [{"type": "text", "content": "be brief"}]},
        {"role": "user", "parts": [{"type": "text", "content": "a secret plan"}]},
    ]
    (answer,) = json.loads(own.attributes["gen_ai.output.messages"])
    text = "".join(
        json.loads(line[6:])["choices"][0]["delta"].get("content") or ""
        for line in reply.decode().splitlines()
        if line.startswith("data: {")
    ) if stream else json.loads(reply)["choices"][0]["message"]["content"]
    assert answer["role"] == "assistant" and answer["parts"] == [{"type": "text", "content": text}] and text
    plain, _ = seen["plain"]
    assert "gen_ai.input.messages" not in plain.attributes and "gen_ai.output.messages" not in plain.attributes
    assert "a secret plan" not in str(plain.attributes)
