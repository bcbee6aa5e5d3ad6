"""The official OpenAI Python SDK's Responses API (what Codex speaks) against
the gateway, in front of the emulator."""

import openai
import pydantic
import pytest

from conftest import last_request

EIGHT_TOKENS = 'Hello world! <b> & "quoted"\n café'

WEATHER = [
    {
        "type": "function",
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    }
]


def test_create(client):
    r = client.responses.create(model="llama3", input="one two three", instructions="Be brief.")
    assert r.id.startswith("resp_") and r.object == "response" and r.status == "completed"
    assert r.output_text == EIGHT_TOKENS
    assert r.output[0].type == "message" and r.output[0].role == "assistant"
    assert r.usage.output_tokens == 8 and r.usage.total_tokens == r.usage.input_tokens + 8
    assert r.instructions == "Be brief."


def test_stream_events_in_order(client):
    stream = client.responses.create(model="llama3", input="hi", stream=True)
    events = list(stream)
    kinds = [e.type for e in events]
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 8,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == EIGHT_TOKENS
    assert events[-1].response.output_text == EIGHT_TOKENS

    with client.responses.stream(model="llama3", input="hi") as s:
        final = s.get_final_response()
    assert final.output_text == EIGHT_TOKENS


def test_function_call_round_trip(client, mock):
    mock.configure(tool_calls=True)
    r = client.responses.create(model="llama3", input="Weather in Paris?", tools=WEATHER)
    call = r.output[0]
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.arguments == '{"city":"Paris"}'
    r2 = client.responses.create(
        model="llama3",
        tools=WEATHER,
        input=[
            {"role": "user", "content": "Weather in Paris?"},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "18C and sunny"},
        ],
    )
    assert r2.output_text == EIGHT_TOKENS
    sent = last_request(mock)
    assert sent["messages"][1]["tool_calls"][0]["function"]["arguments"] == {"city": "Paris"}
    assert sent["messages"][2]["tool_name"] == "get_weather"

    with client.responses.stream(model="llama3", input="weather?", tools=WEATHER) as s:
        deltas = [e.delta for e in s if e.type == "response.function_call_arguments.delta"]
        final = s.get_final_response()
    assert "".join(deltas) == '{"city":"Paris"}'
    assert final.output[0].type == "function_call"


def test_reasoning_summary(client):
    r = client.responses.create(model="qwen3:8b", input="hi", reasoning={"effort": "high", "summary": "auto"})
    assert r.output[0].type == "reasoning"
    assert r.output[0].summary[0].text == "Let me think about"
    assert r.output_text == EIGHT_TOKENS
    stream = client.responses.create(model="qwen3:8b", input="hi", reasoning={"effort": "low", "summary": "auto"}, stream=True)
    summary = "".join(e.delta for e in stream if e.type == "response.reasoning_summary_text.delta")
    assert summary == "Let me think about"


class City(pydantic.BaseModel):
    city: str
    population: int


def test_structured_output(client, mock):
    r = client.responses.parse(model="llama3", input="Largest city in France?", text_format=City)
    assert r.output_parsed == City(city="Paris", population=1)
    sent = last_request(mock)
    assert sent["format"]["properties"]["population"]["type"] == "integer"


def test_previous_response_id_retrieve_and_delete(client, mock):
    first = client.responses.create(model="llama3", input="My name is Ada.")
    second = client.responses.create(model="llama3", input="What is my name?", previous_response_id=first.id)
    assert second.previous_response_id == first.id
    assert [m["content"] for m in last_request(mock)["messages"]] == ["My name is Ada.", EIGHT_TOKENS, "What is my name?"]
    got = client.responses.retrieve(first.id)
    assert got.id == first.id and got.output_text == EIGHT_TOKENS
    client.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="llama3", input="x", previous_response_id=first.id)


def test_errors(gateway, client):
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="llama3", input="x", tools=[{"type": "file_search", "vector_store_ids": ["vs_1"]}])
    assert e.value.param == "tools[0].type"
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="llama9", input="x")
    bad = openai.OpenAI(base_url=gateway.url + "/v1", api_key="sk_" + "z" * 43, max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.responses.create(model="llama3", input="x")
