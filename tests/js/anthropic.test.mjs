// The official Anthropic JavaScript SDK (what Claude Code is built on) against
// the gateway's Messages API, in front of the emulator.

import { test, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import Anthropic from "@anthropic-ai/sdk";
import { startPair } from "./harness.mjs";

const EIGHT_TOKENS = 'Hello world! <b> & "quoted"\n café';
const ask = (content = "Say hello") => [{ role: "user", content }];
const WEATHER = [
  {
    name: "get_weather",
    description: "Weather in a city",
    input_schema: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
  },
];

let pair;
let client;

before(async () => {
  pair = await startPair(["--tokens", "8"]);
  // ANTHROPIC_BASE_URL is the gateway itself.
  client = new Anthropic({ baseURL: pair.gateway.url, apiKey: pair.gateway.createKey("js-anthropic"), maxRetries: 0 });
});
after(() => pair.stop());
beforeEach(() => pair.mock.configure({ tokens: 8, error_after: null, thinking: 0, tool_calls: true }));

test("create", async () => {
  const m = await client.messages.create({ model: "llama3", max_tokens: 100, messages: ask("one two three") });
  assert.match(m.id, /^msg_/);
  assert.equal(m.content[0].text, EIGHT_TOKENS);
  assert.equal(m.stop_reason, "end_turn");
  assert.deepEqual(m.usage, { input_tokens: 4, output_tokens: 8 });
});

test("stream reassembles text and usage", async () => {
  const stream = client.messages.stream({ model: "llama3", max_tokens: 100, messages: ask() });
  let text = "";
  stream.on("text", (t) => (text += t));
  const final = await stream.finalMessage();
  assert.equal(text, EIGHT_TOKENS);
  assert.equal(final.content[0].text, EIGHT_TOKENS);
  assert.equal(final.usage.output_tokens, 8);
});

test("tool use round trip", async () => {
  const messages = ask("Weather in Paris?");
  const m = await client.messages.create({ model: "llama3", max_tokens: 100, tools: WEATHER, messages });
  assert.equal(m.stop_reason, "tool_use");
  const use = m.content.find((b) => b.type === "tool_use");
  assert.deepEqual(use.input, { city: "Paris" });
  messages.push({ role: "assistant", content: m.content });
  messages.push({ role: "user", content: [{ type: "tool_result", tool_use_id: use.id, content: "18C" }] });
  const m2 = await client.messages.create({ model: "llama3", max_tokens: 100, tools: WEATHER, messages });
  assert.equal(m2.content[0].text, EIGHT_TOKENS);
  const streamed = await client.messages.stream({ model: "llama3", max_tokens: 100, tools: WEATHER, messages: ask("w?") }).finalMessage();
  assert.deepEqual(streamed.content.find((b) => b.type === "tool_use").input, { city: "Paris" });
});

test("thinking", async () => {
  const thinking = { type: "enabled", budget_tokens: 1024 };
  const final = await client.messages.stream({ model: "qwen3:8b", max_tokens: 100, thinking, messages: ask() }).finalMessage();
  assert.equal(final.content[0].type, "thinking");
  assert.equal(final.content[0].thinking, "Let me think about");
  assert.equal(final.content[1].text, EIGHT_TOKENS);
});

test("image", async () => {
  const data = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";
  await client.messages.create({
    model: "llama3",
    max_tokens: 10,
    messages: [{ role: "user", content: [{ type: "image", source: { type: "base64", media_type: "image/png", data } }, { type: "text", text: "?" }] }],
  });
  assert.deepEqual((await pair.mock.last()).messages[0].images, [data]);
});

test("count_tokens", async () => {
  const r = await client.messages.countTokens({ model: "llama3", messages: ask("one two three four") });
  assert.ok(r.input_tokens > 0);
});

test("errors are the SDK's own classes", async () => {
  await assert.rejects(
    client.messages.create({ model: "llama9", max_tokens: 5, messages: ask() }),
    (e) => e instanceof Anthropic.NotFoundError && e.error.error.type === "not_found_error",
  );
  const bad = new Anthropic({ baseURL: pair.gateway.url, apiKey: "sk_" + "z".repeat(43), maxRetries: 0 });
  await assert.rejects(bad.messages.create({ model: "llama3", max_tokens: 5, messages: ask() }), Anthropic.AuthenticationError);
  await assert.rejects(
    client.messages.create({ model: "llama3", max_tokens: 5, messages: [{ role: "tool", content: "x" }] }),
    Anthropic.BadRequestError,
  );
  // ANTHROPIC_AUTH_TOKEN: the key as a Bearer token.
  const bearer = new Anthropic({ baseURL: pair.gateway.url, authToken: pair.gateway.createKey("js-bearer"), apiKey: null, maxRetries: 0 });
  assert.ok((await bearer.messages.create({ model: "llama3", max_tokens: 5, messages: ask() })).content[0].text);
});
