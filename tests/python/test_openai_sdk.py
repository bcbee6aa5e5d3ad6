"""The official OpenAI Python SDK against the gateway in front of the emulator."""

import openai
import pytest

# What the emulator's first eight tokens spell (see WORDS in mock-ollama).
EIGHT_TOKENS = 'Hello world! <b> & "quoted"\n café'


def ask(content="Say hello"):
    return [{"role": "user", "content": content}]


def test_non_stream_completion(client):
    r = client.chat.completions.create(model="llama3", messages=ask("one two three"))
    assert r.id.startswith("chatcmpl-") and len(r.id) >= 9 + 24
    assert r.object == "chat.completion"
    assert r.model == "llama3"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].message.content == EIGHT_TOKENS
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.prompt_tokens == 4
    assert r.usage.completion_tokens == 8
    assert r.usage.total_tokens == 12


def test_stream_reassembles_text_with_finish_reason_and_usage(client):
    stream = client.chat.completions.create(
        model="llama3", messages=ask(), stream=True, stream_options={"include_usage": True}
    )
    text, finish, usage, ids = "", None, None, set()
    for chunk in stream:
        ids.add(chunk.id)
        if chunk.choices:
            delta = chunk.choices[0].delta
            text += delta.content or ""
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == EIGHT_TOKENS
    assert finish == "stop"
    assert usage.completion_tokens == 8 and usage.prompt_tokens == 3
    assert len(ids) == 1


def test_stream_without_usage_and_with_max_tokens(client):
    stream = client.chat.completions.create(model="llama3", messages=ask(), stream=True, max_completion_tokens=3)
    chunks = list(stream)
    assert all(c.usage is None for c in chunks)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hello world!"
    assert chunks[-1].choices[0].finish_reason == "length"


def test_tool_call_round_trip(client):
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "description": "Weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
            },
        }
    ]
    messages = ask("What is the weather in Paris?")
    r = client.chat.completions.create(model="llama3", messages=messages, tools=tools)
    assert r.choices[0].finish_reason == "tool_calls"
    call = r.choices[0].message.tool_calls[0]
    assert call.type == "function" and call.function.name == "get_weather"
    assert call.function.arguments == '{"city":"Paris"}'
    messages.append(r.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": "18C and sunny"})
    r2 = client.chat.completions.create(model="llama3", messages=messages, tools=tools)
    assert r2.choices[0].finish_reason == "stop"
    assert r2.choices[0].message.content == EIGHT_TOKENS

    # The same call streamed.
    stream = client.chat.completions.create(model="llama3", messages=ask("weather?"), tools=tools, stream=True)
    calls, finish = [], None
    for chunk in stream:
        if chunk.choices:
            calls += chunk.choices[0].delta.tool_calls or []
            finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    assert calls[0].function.name == "get_weather" and calls[0].index == 0


def test_reasoning(client):
    r = client.chat.completions.create(model="qwen3:8b", messages=ask(), reasoning_effort="high")
    msg = r.choices[0].message
    assert msg.model_extra["reasoning"] == "Let me think about"
    # Cline and Roo Code read the other name.
    assert msg.model_extra["reasoning_content"] == "Let me think about"
    assert msg.content == EIGHT_TOKENS

    stream = client.chat.completions.create(model="qwen3:8b", messages=ask(), reasoning_effort="low", stream=True)
    reasoning, reasoning_content, content = "", "", ""
    for chunk in stream:
        if chunk.choices:
            d = chunk.choices[0].delta
            reasoning += (d.model_extra or {}).get("reasoning") or ""
            reasoning_content += (d.model_extra or {}).get("reasoning_content") or ""
            content += d.content or ""
    assert reasoning == "Let me think about"
    assert reasoning_content == "Let me think about"
    assert content == EIGHT_TOKENS


def test_models_list_and_retrieve(client):
    ids = [m.id for m in client.models.list()]
    assert ids == ["llama3:latest", "qwen3:8b", "nomic-embed-text:latest"]
    m = client.models.retrieve("llama3:latest")
    assert m.id == "llama3:latest" and m.owned_by == "library" and m.object == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


@pytest.mark.parametrize("stream", [False, True])
def test_unknown_model_is_not_found_error(client, stream):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="llama9", messages=ask(), stream=stream)
    assert e.value.status_code == 404
    assert e.value.code == "model_not_found"


def test_invalid_input_is_bad_request_error(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="llama3", messages=[])
    assert e.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="llama3", messages=ask(), n=2)
    assert "n > 1" in e.value.message


def test_mid_stream_upstream_error_is_api_error(client, mock):
    mock.configure(error_after=3)
    stream = client.chat.completions.create(model="llama3", messages=ask(), stream=True)
    got = ""
    with pytest.raises(openai.APIError) as e:
        for chunk in stream:
            got += chunk.choices[0].delta.content or ""
    assert got == "Hello world!"
    assert "an error was encountered while running the model" in str(e.value.message)


def test_bad_key_is_authentication_error(gateway):
    client = openai.OpenAI(base_url=gateway.url + "/api/v1", api_key="sk_" + "z" * 43, max_retries=0)
    with pytest.raises(openai.AuthenticationError) as e:
        client.chat.completions.create(model="llama3", messages=ask())
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


def test_revoked_key_is_authentication_error(gateway):
    import subprocess
    from conftest import GATEWAY

    key = gateway.create_key("python-revoked")
    client = openai.OpenAI(base_url=gateway.url + "/api/v1", api_key=key, max_retries=0)
    assert client.chat.completions.create(model="llama3", messages=ask()).choices
    subprocess.run([GATEWAY, "keys", "--data-dir", gateway.data_dir, "revoke", "python-revoked"], check=True, capture_output=True)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model="llama3", messages=ask())


def test_model_outside_the_allowlist_is_permission_denied(gateway):
    key = gateway.create_key("python-limited", "--models", "qwen3:8b")
    client = openai.OpenAI(base_url=gateway.url + "/api/v1", api_key=key, max_retries=0)
    with pytest.raises(openai.PermissionDeniedError) as e:
        client.chat.completions.create(model="llama3", messages=ask())
    assert e.value.status_code == 403 and e.value.code == "model_not_allowed"
    assert [m.id for m in client.models.list()] == ["qwen3:8b"]
    assert client.chat.completions.create(model="qwen3:8b", messages=ask()).choices[0].message.content == EIGHT_TOKENS


def test_async_client_streams_too(gateway, user_key):
    import asyncio

    async def run():
        client = openai.AsyncOpenAI(base_url=gateway.url + "/v1", api_key=user_key, max_retries=0)
        stream = await client.chat.completions.create(model="llama3", messages=ask(), stream=True)
        text = ""
        async for chunk in stream:
            text += chunk.choices[0].delta.content or ""
        await client.close()
        return text

    assert asyncio.run(run()) == EIGHT_TOKENS


def test_default_retries_ride_out_a_brief_rate_limit(gateway):
    key = gateway.create_key("python-limited-rate", "--rpm", "60")
    no_retry = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0)
    for _ in range(60):
        no_retry.chat.completions.create(model="llama3", messages=ask())
    with pytest.raises(openai.RateLimitError) as e:
        no_retry.chat.completions.create(model="llama3", messages=ask())
    assert e.value.status_code == 429 and e.value.code == "rate_limit_exceeded"
    assert e.value.body["type"] == "requests"
    assert int(e.value.response.headers["retry-after-ms"]) <= 1000

    # The SDK's defaults (2 retries, honouring retry-after-ms) wait about a second and succeed.
    default = openai.OpenAI(base_url=gateway.url + "/v1", api_key=key)
    r = default.chat.completions.with_raw_response.create(model="llama3", messages=ask())
    assert r.http_response.status_code == 200
    assert r.retries_taken >= 1
    assert r.parse().choices[0].message.content == EIGHT_TOKENS


def test_completion_with_suffix_fill_in_the_middle(client, mock):
    before = mock.stats()["by_endpoint"]["generate"]
    r = client.completions.create(model="qwen3:8b", prompt="def add(a, b):", suffix="return c", max_tokens=3)
    assert r.object == "text_completion"
    assert r.id.startswith("cmpl-")
    assert r.model == "qwen3:8b"
    assert r.choices[0].text == "Hello world!"
    assert r.choices[0].finish_reason == "length"
    # 1 + three prompt words + two suffix words: the suffix reached Ollama's /api/generate.
    assert (r.usage.prompt_tokens, r.usage.completion_tokens, r.usage.total_tokens) == (6, 3, 9)
    assert mock.stats()["by_endpoint"]["generate"] == before + 1


def test_completion_stream_reassembles_text(client):
    stream = client.completions.create(
        model="llama3", prompt="Once", stream=True, stream_options={"include_usage": True}
    )
    text, finish, usage = "", None, None
    for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].text
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage:
            usage = chunk.usage
    assert text == EIGHT_TOKENS
    assert finish == "stop"
    assert usage.completion_tokens == 8


def test_embeddings_float_and_base64_agree(client):
    inputs = ["first chunk of code", "second"]
    as_float = client.embeddings.create(model="nomic-embed-text", input=inputs, encoding_format="float")
    # Without encoding_format the SDK asks for base64 and decodes the little-endian f32 itself.
    as_b64 = client.embeddings.create(model="nomic-embed-text", input=inputs)
    assert [d.index for d in as_float.data] == [0, 1]
    assert len(as_float.data[0].embedding) == 16
    for f, b in zip(as_float.data, as_b64.data):
        assert b.embedding == pytest.approx(f.embedding, rel=1e-6, abs=1e-7)
    assert as_float.usage.prompt_tokens == 5 and as_float.usage.total_tokens == 5
    assert as_float.model == "nomic-embed-text"
    raw = client.embeddings.with_raw_response.create(model="nomic-embed-text", input="x", encoding_format="base64")
    assert isinstance(raw.http_response.json()["data"][0]["embedding"], str)


def test_embeddings_errors_are_bad_request(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.embeddings.create(model="nomic-embed-text", input=[])
    assert e.value.status_code == 400
