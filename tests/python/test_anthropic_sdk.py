"""The official Anthropic Python SDK (what Claude Code is built on) against the
gateway's Messages API, in front of the emulator."""

import anthropic
import pytest

from conftest import last_request

# What the emulator's first eight tokens spell (see WORDS in mock-ollama).
EIGHT_TOKENS = 'Hello world! <b> & "quoted"\n café'
# A 1x1 PNG.
PIXEL = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg=="


def ask(content="Say hello"):
    return [{"role": "user", "content": content}]


def test_create(anthropic_client):
    m = anthropic_client.messages.create(model="llama3", max_tokens=100, messages=ask("one two three"))
    assert m.id.startswith("msg_")
    assert m.type == "message" and m.role == "assistant" and m.model == "llama3"
    assert m.content[0].type == "text" and m.content[0].text == EIGHT_TOKENS
    assert m.stop_reason == "end_turn"
    assert m.usage.input_tokens == 4 and m.usage.output_tokens == 8
    assert m._request_id == m.id


def test_stream_reassembles_text_and_usage(anthropic_client):
    with anthropic_client.messages.stream(model="llama3", max_tokens=100, messages=ask()) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == EIGHT_TOKENS
    assert final.content[0].text == EIGHT_TOKENS
    assert final.stop_reason == "end_turn"
    assert final.usage.output_tokens == 8 and final.usage.input_tokens == 3


def test_max_tokens_is_the_stop_reason_when_it_runs_out(anthropic_client):
    m = anthropic_client.messages.create(model="llama3", max_tokens=3, messages=ask())
    assert m.content[0].text == "Hello world!"
    assert m.stop_reason == "max_tokens"


def test_tool_use_round_trip(anthropic_client, mock):
    mock.configure(tool_calls=True)
    tools = [
        {
            "name": "get_weather",
            "description": "Weather in a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }
    ]
    messages = ask("What is the weather in Paris?")
    m = anthropic_client.messages.create(model="llama3", max_tokens=100, tools=tools, messages=messages)
    assert m.stop_reason == "tool_use"
    use = next(b for b in m.content if b.type == "tool_use")
    assert use.name == "get_weather" and use.input == {"city": "Paris"} and use.id.startswith("toolu_")
    messages.append({"role": "assistant", "content": m.content})
    messages.append(
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": "18C and sunny"}]}
    )
    m2 = anthropic_client.messages.create(model="llama3", max_tokens=100, tools=tools, messages=messages)
    assert m2.stop_reason == "end_turn"
    assert m2.content[0].text == EIGHT_TOKENS
    sent = last_request(mock)
    assert sent["messages"][-1] == {
        "role": "tool",
        "content": "18C and sunny",
        "tool_name": "get_weather",
        "tool_call_id": use.id,
    }

    # The same call streamed: the SDK rebuilds the input from its JSON delta.
    with anthropic_client.messages.stream(model="llama3", max_tokens=100, tools=tools, messages=ask("weather?")) as s:
        final = s.get_final_message()
    use = next(b for b in final.content if b.type == "tool_use")
    assert use.input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"


def test_thinking(anthropic_client, mock):
    thinking = {"type": "enabled", "budget_tokens": 1024}
    m = anthropic_client.messages.create(model="qwen3:8b", max_tokens=100, thinking=thinking, messages=ask())
    assert m.content[0].type == "thinking" and m.content[0].thinking == "Let me think about"
    assert m.content[1].type == "text" and m.content[1].text == EIGHT_TOKENS
    assert last_request(mock)["think"] is True
    with anthropic_client.messages.stream(model="qwen3:8b", max_tokens=100, thinking=thinking, messages=ask()) as s:
        kinds = [e.delta.type for e in s if e.type == "content_block_delta"]
        final = s.get_final_message()
    assert kinds[:3] == ["thinking_delta"] * 3 and kinds[3:] == ["text_delta"] * 8
    assert final.content[0].thinking == "Let me think about"
    assert final.content[1].text == EIGHT_TOKENS


def test_image(anthropic_client, mock):
    content = [
        {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": PIXEL}},
        {"type": "text", "text": "What is this?"},
    ]
    m = anthropic_client.messages.create(model="llama3", max_tokens=20, messages=[{"role": "user", "content": content}])
    assert m.content[0].text
    sent = last_request(mock)
    assert sent["messages"][0]["images"] == [PIXEL]
    assert sent["messages"][0]["content"] == "What is this?"


def test_count_tokens(anthropic_client, mock):
    before = mock.stats()["by_endpoint"]["chat"]
    r = anthropic_client.messages.count_tokens(model="llama3", messages=ask("one two three four five"))
    assert r.input_tokens > 0
    assert mock.stats()["by_endpoint"]["chat"] == before


def test_errors_are_the_sdks_own_classes(gateway, anthropic_client):
    with pytest.raises(anthropic.NotFoundError) as e:
        anthropic_client.messages.create(model="llama9", max_tokens=10, messages=ask())
    assert e.value.status_code == 404 and e.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as e:
        anthropic_client.messages.create(model="llama3", max_tokens=10, messages=[{"role": "tool", "content": "x"}])
    assert e.value.body["error"]["type"] == "invalid_request_error"
    bad = anthropic.Anthropic(base_url=gateway.url, api_key="sk_" + "z" * 43, max_retries=0)
    with pytest.raises(anthropic.AuthenticationError):
        bad.messages.create(model="llama3", max_tokens=10, messages=ask())
    limited = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.create_key("py-qwen", "--models", "qwen3:8b"), max_retries=0)
    with pytest.raises(anthropic.PermissionDeniedError):
        limited.messages.create(model="llama3", max_tokens=10, messages=ask())
    slow = anthropic.Anthropic(base_url=gateway.url, api_key=gateway.create_key("py-slow", "--rpm", "1"), max_retries=0)
    slow.messages.create(model="llama3", max_tokens=10, messages=ask())
    with pytest.raises(anthropic.RateLimitError) as e:
        slow.messages.create(model="llama3", max_tokens=10, messages=ask())
    assert e.value.response.headers["retry-after"]


def test_a_mid_stream_failure_raises(anthropic_client, mock):
    mock.configure(error_after=3)
    with pytest.raises(anthropic.APIStatusError):
        with anthropic_client.messages.stream(model="llama3", max_tokens=100, messages=ask()) as s:
            for _ in s.text_stream:
                pass


def test_auth_token_is_sent_as_bearer(gateway, user_key):
    # ANTHROPIC_AUTH_TOKEN, as Claude Code sends it to a gateway.
    client = anthropic.Anthropic(base_url=gateway.url, auth_token=user_key, max_retries=0)
    assert client.messages.create(model="llama3", max_tokens=5, messages=ask()).content[0].text
