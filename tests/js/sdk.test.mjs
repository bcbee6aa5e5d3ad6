// The official OpenAI JavaScript SDK against the gateway in front of the emulator.

import { test, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import OpenAI from "openai";
import { startPair } from "./harness.mjs";

// What the emulator's first eight tokens spell (see WORDS in mock-ollama).
const EIGHT_TOKENS = 'Hello world! <b> & "quoted"\n café';
const ask = (content = "Say hello") => [{ role: "user", content }];

let pair;
let client;

before(async () => {
  pair = await startPair(["--tokens", "8"]);
  const key = pair.gateway.createKey("js-sdk");
  client = new OpenAI({ baseURL: `${pair.gateway.url}/api/v1`, apiKey: key, maxRetries: 0 });
});
after(() => pair.stop());
beforeEach(() => pair.mock.configure({ tokens: 8, error_after: null, thinking: 0 }));

test("non-stream completion", async () => {
  const r = await client.chat.completions.create({ model: "llama3", messages: ask("one two three") });
  assert.match(r.id, /^chatcmpl-[A-Za-z0-9]{24,}$/);
  assert.equal(r.object, "chat.completion");
  assert.equal(r.model, "llama3");
  assert.equal(r.choices[0].message.content, EIGHT_TOKENS);
  assert.equal(r.choices[0].finish_reason, "stop");
  assert.deepEqual(r.usage, { prompt_tokens: 4, completion_tokens: 8, total_tokens: 12 });
});

test("stream reassembles text, finish_reason and usage", async () => {
  const stream = await client.chat.completions.create({
    model: "llama3",
    messages: ask(),
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "";
  let finish = null;
  let usage = null;
  for await (const chunk of stream) {
    if (chunk.choices.length) {
      text += chunk.choices[0].delta.content ?? "";
      finish = chunk.choices[0].finish_reason ?? finish;
    }
    if (chunk.usage) usage = chunk.usage;
  }
  assert.equal(text, EIGHT_TOKENS);
  assert.equal(finish, "stop");
  assert.deepEqual(usage, { prompt_tokens: 3, completion_tokens: 8, total_tokens: 11 });
});

test("tool call round trip", async () => {
  const tools = [
    {
      type: "function",
      function: {
        name: "get_weather",
        parameters: { type: "object", properties: { city: { type: "string" } }, required: ["city"] },
      },
    },
  ];
  const messages = ask("What is the weather in Paris?");
  const r = await client.chat.completions.create({ model: "llama3", messages, tools });
  assert.equal(r.choices[0].finish_reason, "tool_calls");
  const call = r.choices[0].message.tool_calls[0];
  assert.equal(call.function.name, "get_weather");
  assert.deepEqual(JSON.parse(call.function.arguments), { city: "Paris" });
  messages.push(r.choices[0].message);
  messages.push({ role: "tool", tool_call_id: call.id, content: "18C and sunny" });
  const r2 = await client.chat.completions.create({ model: "llama3", messages, tools });
  assert.equal(r2.choices[0].finish_reason, "stop");
  assert.equal(r2.choices[0].message.content, EIGHT_TOKENS);

  // With the SDK's streaming helper, which assembles tool calls from deltas.
  const runner = client.chat.completions.stream({ model: "llama3", messages: ask("weather?"), tools });
  const final = await runner.finalChatCompletion();
  assert.equal(final.choices[0].finish_reason, "tool_calls");
  assert.equal(final.choices[0].message.tool_calls[0].function.name, "get_weather");
});

test("reasoning", async () => {
  const r = await client.chat.completions.create({ model: "qwen3:8b", messages: ask(), reasoning_effort: "high" });
  assert.equal(r.choices[0].message.reasoning, "Let me think about");
  // Cline and Roo Code read the other name.
  assert.equal(r.choices[0].message.reasoning_content, "Let me think about");
  const stream = await client.chat.completions.create({
    model: "qwen3:8b",
    messages: ask(),
    reasoning_effort: "medium",
    stream: true,
  });
  let reasoning = "";
  let content = "";
  for await (const chunk of stream) {
    reasoning += chunk.choices[0]?.delta.reasoning ?? "";
    content += chunk.choices[0]?.delta.content ?? "";
  }
  assert.equal(reasoning, "Let me think about");
  assert.equal(content, EIGHT_TOKENS);
});

test("models list and retrieve", async () => {
  const ids = [];
  for await (const m of client.models.list()) ids.push(m.id);
  assert.deepEqual(ids, ["llama3:latest", "qwen3:8b", "nomic-embed-text:latest"]);
  const m = await client.models.retrieve("qwen3:8b");
  assert.equal(m.owned_by, "library");
});

test("unknown model is NotFoundError, stream or not", async () => {
  for (const stream of [false, true]) {
    await assert.rejects(
      client.chat.completions.create({ model: "llama9", messages: ask(), stream }),
      (e) => e instanceof OpenAI.NotFoundError && e.status === 404 && e.code === "model_not_found",
    );
  }
});

test("invalid input is BadRequestError", async () => {
  await assert.rejects(
    client.chat.completions.create({ model: "llama3", messages: [] }),
    (e) => e instanceof OpenAI.BadRequestError && e.param === "messages",
  );
  await assert.rejects(
    client.chat.completions.create({
      model: "llama3",
      messages: [{ role: "user", content: [{ type: "image_url", image_url: { url: "https://example.com/a.png" } }] }],
    }),
    (e) => e instanceof OpenAI.BadRequestError && /image URLs are not supported/.test(e.message),
  );
});

test("mid-stream upstream error is APIError", async () => {
  await pair.mock.configure({ error_after: 3 });
  const stream = await client.chat.completions.create({ model: "llama3", messages: ask(), stream: true });
  let got = "";
  await assert.rejects(
    (async () => {
      for await (const chunk of stream) got += chunk.choices[0]?.delta.content ?? "";
    })(),
    (e) => e instanceof OpenAI.APIError && /an error was encountered while running the model/.test(e.message),
  );
  assert.equal(got, "Hello world!");
});

test("a bad key is AuthenticationError", async () => {
  const bad = new OpenAI({ baseURL: `${pair.gateway.url}/v1`, apiKey: "sk_" + "z".repeat(43), maxRetries: 0 });
  await assert.rejects(
    bad.chat.completions.create({ model: "llama3", messages: ask() }),
    (e) => e instanceof OpenAI.AuthenticationError && e.status === 401 && e.code === "invalid_api_key",
  );
});

test("a model outside the key's allowlist is PermissionDeniedError", async () => {
  const key = pair.gateway.createKey("js-limited", "--models", "qwen3:8b");
  const limited = new OpenAI({ baseURL: `${pair.gateway.url}/v1`, apiKey: key, maxRetries: 0 });
  await assert.rejects(
    limited.chat.completions.create({ model: "llama3", messages: ask() }),
    (e) => e instanceof OpenAI.PermissionDeniedError && e.status === 403 && e.code === "model_not_allowed",
  );
  const ids = [];
  for await (const m of limited.models.list()) ids.push(m.id);
  assert.deepEqual(ids, ["qwen3:8b"]);
});

test("completion with a suffix (fill-in-the-middle) is a text_completion", async () => {
  const before = (await pair.mock.stats()).by_endpoint.generate;
  const r = await client.completions.create({
    model: "qwen3:8b",
    prompt: "def add(a, b):",
    suffix: "return c",
    max_tokens: 3,
  });
  assert.equal(r.object, "text_completion");
  assert.match(r.id, /^cmpl-[A-Za-z0-9]{24,}$/);
  assert.equal(r.choices[0].text, "Hello world!");
  assert.equal(r.choices[0].finish_reason, "length");
  // 1 + three prompt words + two suffix words: the suffix reached Ollama's /api/generate.
  assert.deepEqual(r.usage, { prompt_tokens: 6, completion_tokens: 3, total_tokens: 9 });
  assert.equal((await pair.mock.stats()).by_endpoint.generate, before + 1);
});

test("streamed completion reassembles its text", async () => {
  const stream = await client.completions.create({ model: "llama3", prompt: "Once", stream: true });
  let text = "";
  let finish = null;
  for await (const chunk of stream) {
    text += chunk.choices[0]?.text ?? "";
    finish = chunk.choices[0]?.finish_reason ?? finish;
  }
  assert.equal(text, EIGHT_TOKENS);
  assert.equal(finish, "stop");
});

test("embeddings as float and as base64 (decoded by the SDK) agree", async () => {
  const input = ["first chunk of code", "second"];
  const asFloat = await client.embeddings.create({ model: "nomic-embed-text", input, encoding_format: "float" });
  // Without encoding_format the SDK asks for base64 and decodes the little-endian f32 itself.
  const asB64 = await client.embeddings.create({ model: "nomic-embed-text", input });
  assert.deepEqual(asFloat.data.map((d) => d.index), [0, 1]);
  assert.equal(asFloat.data[0].embedding.length, 16);
  for (let i = 0; i < 2; i++) {
    asFloat.data[i].embedding.forEach((x, j) => assert.ok(Math.abs(x - asB64.data[i].embedding[j]) < 1e-6));
  }
  assert.deepEqual(asFloat.usage, { prompt_tokens: 5, total_tokens: 5 });
  const raw = await client.embeddings
    .create({ model: "nomic-embed-text", input: "x", encoding_format: "base64" })
    .asResponse();
  assert.equal(typeof (await raw.json()).data[0].embedding, "string");
});
