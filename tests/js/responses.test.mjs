// The official OpenAI JavaScript SDK's Responses API (what Codex and the
// Vercel AI SDK's default OpenAI provider speak) against the gateway.

import { test, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startPair } from "./harness.mjs";

const EIGHT_TOKENS = 'Hello world! <b> & "quoted"\n café';
const WEATHER = [
  {
    type: "function",
    name: "get_weather",
    description: "Weather in a city",
    parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
];

let pair;
let client;

before(async () => {
  pair = await startPair(["--tokens", "8"]);
  client = new OpenAI({ baseURL: `${pair.gateway.url}/v1`, apiKey: pair.gateway.createKey("js-responses"), maxRetries: 0 });
});
after(() => pair.stop());
beforeEach(() => pair.mock.configure({ tokens: 8, error_after: null, thinking: 0, tool_calls: true }));

test("create", async () => {
  const r = await client.responses.create({ model: "llama3", input: "hi" });
  assert.match(r.id, /^resp_/);
  assert.equal(r.output_text, EIGHT_TOKENS);
  assert.equal(r.usage.output_tokens, 8);
});

test("stream events in order", async () => {
  const stream = await client.responses.create({ model: "llama3", input: "hi", stream: true });
  const kinds = [];
  let text = "";
  for await (const e of stream) {
    kinds.push(e.type);
    if (e.type === "response.output_text.delta") text += e.delta;
  }
  assert.deepEqual(kinds.slice(0, 4), ["response.created", "response.in_progress", "response.output_item.added", "response.content_part.added"]);
  assert.equal(kinds.at(-1), "response.completed");
  assert.equal(text, EIGHT_TOKENS);
  const final = await client.responses.stream({ model: "llama3", input: "hi" }).finalResponse();
  assert.equal(final.output_text, EIGHT_TOKENS);
});

test("function call round trip", async () => {
  const r = await client.responses.create({ model: "llama3", input: "Weather?", tools: WEATHER });
  const call = r.output[0];
  assert.equal(call.type, "function_call");
  assert.deepEqual(JSON.parse(call.arguments), { city: "Paris" });
  const r2 = await client.responses.create({
    model: "llama3",
    tools: WEATHER,
    previous_response_id: r.id,
    input: [{ type: "function_call_output", call_id: call.call_id, output: "18C" }],
  });
  assert.equal(r2.output_text, EIGHT_TOKENS);
});

test("reasoning summary", async () => {
  const r = await client.responses.create({ model: "qwen3:8b", input: "hi", reasoning: { effort: "high", summary: "auto" } });
  assert.equal(r.output[0].type, "reasoning");
  assert.equal(r.output[0].summary[0].text, "Let me think about");
});

test("structured output", async () => {
  const schema = { type: "object", properties: { city: { type: "string" } }, required: ["city"], additionalProperties: false };
  const r = await client.responses.create({
    model: "llama3",
    input: "Largest city in France?",
    text: { format: { type: "json_schema", name: "city", schema, strict: true } },
  });
  assert.deepEqual(JSON.parse(r.output_text), { city: "Paris" });
});

test("previous_response_id, retrieve and delete", async () => {
  const first = await client.responses.create({ model: "llama3", input: "My name is Ada." });
  await client.responses.create({ model: "llama3", input: "Name?", previous_response_id: first.id });
  assert.equal((await pair.mock.last()).messages.length, 3);
  assert.equal((await client.responses.retrieve(first.id)).id, first.id);
  await client.responses.delete(first.id);
  await assert.rejects(client.responses.retrieve(first.id), OpenAI.NotFoundError);
});

test("errors", async () => {
  await assert.rejects(
    client.responses.create({ model: "llama3", input: "x", tools: [{ type: "code_interpreter", container: { type: "auto" } }] }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === "tools[0].type",
  );
  const bad = new OpenAI({ baseURL: `${pair.gateway.url}/v1`, apiKey: "sk_" + "z".repeat(43), maxRetries: 0 });
  await assert.rejects(bad.responses.create({ model: "llama3", input: "x" }), OpenAI.AuthenticationError);
});
