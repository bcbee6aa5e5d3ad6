// How far the gateway's prompt estimate (what `count_tokens` answers, and
// what requests reserve) is from a real tokenizer's count, on test
// conversations.
//
// The real count is Llama 3's tokenizer (llama3-tokenizer-js, the vocabulary
// baked in) over the prompt Ollama would render with the Llama 3.1 chat
// template from the exact native body the gateway sent upstream (read back
// from the emulator's GET /_last): header and end-of-turn tokens around each
// message, tool definitions as JSON in the system turn, tool calls as JSON,
// tool results as `ipython` turns.
//
// Two gateways in front of one emulator: one never sees a real count (its
// answer is the uncalibrated estimate); the other is told each
// conversation's real count after it was asked to estimate it (the emulator
// reports it as prompt_eval_count), so each answer is calibrated by the
// conversations before it only. Prints a table and the mean absolute error
// of both.
//
//   node perf/count-tokens/measure.mjs        (after cargo build --release)

import { spawn } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import os from "node:os";
import path from "node:path";
import { fileURLToPath } from "node:url";
import llama3 from "llama3-tokenizer-js";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const bin = process.env.AI_GATEWAY_BIN_DIR ?? path.join(root, "target/release");
const KEY = "sk_count-tokens-0123456789abcdefghijklmnopqrstuvwxyz";

function start(exe, args, env = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(path.join(bin, exe), args, { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, ...env } });
    let log = "";
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (d) => {
      log += d;
      const m = log.match(/listening on (\S+)/);
      if (m) resolve({ child, url: `http://${m[1]}` });
    });
    child.on("error", reject);
    setTimeout(() => reject(new Error(`${exe} did not start: ${log}`)), 20000).unref();
  });
}

async function call(url, body, method = "POST") {
  const r = await fetch(url, {
    method,
    headers: { "content-type": "application/json", "x-api-key": KEY },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await r.text();
  if (!r.ok) throw new Error(`${url}: ${r.status} ${text}`);
  return JSON.parse(text);
}

// ---- the conversations -------------------------------------------------------------
const file = (p) => readFileSync(path.join(root, p), "utf8");
const claudeCode = JSON.parse(file("tests/it/fixtures/claude_code_request.json"));
delete claudeCode.stream;
const rustFile = file("src/upstream/lines.rs");
const readme = file("README.md").split("## API keys")[1].split("## Rate limits")[0];
const prose = [
  "I'm planning a trip to Lisbon in the spring. What neighbourhoods would you recommend for someone who likes walking and food?",
  "Alfama and Graça for the views and the old streets, Príncipe Real for cafés and gardens, and Cais do Sodré for the market hall and the river.",
  "How many days should I plan for, and is a day trip to Sintra worth it?",
  "Three or four days for the city; Sintra is worth a full day: go early, start with Pena Palace, then Quinta da Regaleira.",
  "What about getting around? Trams, taxis, or should I just walk everywhere?",
];
const conversations = [
  ["a one-line question", { system: "You are a helpful assistant.", messages: [{ role: "user", content: "What is the capital of France?" }] }],
  ["a travel chat, five turns", { messages: prose.map((content, i) => ({ role: i % 2 ? "assistant" : "user", content })) }],
  ["a code review (a 150-line Rust file)", { system: "You review Rust code.", messages: [{ role: "user", content: `Review this file:\n\n\`\`\`rust\n${rustFile}\n\`\`\`` }] }],
  ["Claude Code: system, 3 tools, a tool round trip", claudeCode],
  ["a long document (a README section)", { messages: [{ role: "user", content: `Summarise:\n\n${readme}` }] }],
  [
    "French, German and Japanese",
    {
      messages: [
        {
          role: "user",
          content:
            "Traduisez en allemand puis en japonais : « Le gestionnaire de clés vérifie chaque requête avant de l'envoyer au modèle, et enregistre la consommation de jetons par jour. »",
        },
        { role: "assistant", content: "Der Schlüsselverwalter prüft jede Anfrage, bevor er sie an das Modell sendet, und zeichnet den Tokenverbrauch pro Tag auf.\nキー管理者はモデルに送信する前にすべてのリクエストを確認し、1日あたりのトークン消費量を記録します。" },
        { role: "user", content: "Merci ! Et en espagnol ?" },
      ],
    },
  ],
  [
    "a JSON tool result",
    {
      messages: [
        { role: "user", content: "List the open issues." },
        { role: "assistant", content: [{ type: "tool_use", id: "t1", name: "list_issues", input: { state: "open" } }] },
        {
          role: "user",
          content: [
            {
              type: "tool_result",
              tool_use_id: "t1",
              content: JSON.stringify(
                Array.from({ length: 20 }, (_, i) => ({ number: 100 + i, title: `Issue ${i}: something is off with the ${["parser", "queue", "store", "limits"][i % 4]}`, labels: ["bug", "p2"], comments: i * 3 })),
              ),
            },
          ],
        },
      ],
      tools: [{ name: "list_issues", description: "Lists issues", input_schema: { type: "object", properties: { state: { type: "string", enum: ["open", "closed"] } } } }],
    },
  ],
  ["the Claude Code request again", claudeCode],
];

// ---- the real count: the Llama 3.1 template over the native body -------------------
function render(native) {
  const turn = (role, text) => `<|start_header_id|>${role}<|end_header_id|>\n\n${text}<|eot_id|>`;
  let prompt = "<|begin_of_text|>";
  const messages = [...native.messages];
  let system = messages[0]?.role === "system" ? messages.shift().content : "";
  if (native.tools?.length) {
    const defs = native.tools.map((t) => JSON.stringify(t, null, 4)).join("\n\n");
    system = `Environment: ipython\nCutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\n${system}\n\nGiven the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.\n\nRespond in the format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use variables.\n\n${defs}`;
  }
  if (system) prompt += turn("system", system);
  for (const m of messages) {
    if (m.role === "tool") {
      prompt += turn("ipython", m.content);
    } else if (m.tool_calls?.length) {
      const calls = m.tool_calls.map((c) => JSON.stringify({ name: c.function.name, parameters: c.function.arguments })).join("\n");
      prompt += turn("assistant", `${m.content ?? ""}${calls}`);
    } else {
      prompt += turn(m.role, m.content ?? "");
    }
  }
  prompt += "<|start_header_id|>assistant<|end_header_id|>\n\n";
  return llama3.encode(prompt, { bos: false, eos: false }).length;
}

// ---- the run ------------------------------------------------------------------------
const mock = await start("mock-ollama", ["--listen", "127.0.0.1:0", "--tokens", "1"]);
const dirs = [mkdtempSync(path.join(os.tmpdir(), "ai-gw-ct-")), mkdtempSync(path.join(os.tmpdir(), "ai-gw-ct-"))];
const gw = (dir) =>
  start("ai-gateway", ["serve", "--listen", "127.0.0.1:0", "--workers", "1", "--upstream", mock.url, "--data-dir", dir], { AI_GATEWAY_ADMIN_KEY: KEY });
const [fresh, learning] = await Promise.all(dirs.map(gw));
const rows = [];
try {
  for (const [name, convo] of conversations) {
    const req = { ...convo, model: "llama3" };
    const uncalibrated = (await call(`${fresh.url}/v1/messages/count_tokens`, req)).input_tokens;
    const calibrated = (await call(`${learning.url}/v1/messages/count_tokens`, req)).input_tokens;
    // Learn the real count: send it once to read the native body, then again reporting that count.
    await call(`${mock.url}/_config`, { prompt_eval_count: 0 });
    await call(`${learning.url}/v1/messages`, { ...req, max_tokens: 1 });
    const real = render(await call(`${mock.url}/_last`, undefined, "GET"));
    await call(`${mock.url}/_config`, { prompt_eval_count: real });
    await call(`${learning.url}/v1/messages`, { ...req, max_tokens: 1 });
    rows.push({ name, real, uncalibrated, calibrated });
  }
} finally {
  for (const p of [fresh, learning, mock]) p.child.kill("SIGKILL");
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
}
const err = (e, r) => (100 * (e - r)) / r;
console.log("| conversation | Llama 3 tokens | uncalibrated | error | calibrated by the ones before | error |");
console.log("|---|---|---|---|---|---|");
for (const r of rows) {
  console.log(
    `| ${r.name} | ${r.real} | ${r.uncalibrated} | ${err(r.uncalibrated, r.real).toFixed(1)} % | ${r.calibrated} | ${err(r.calibrated, r.real).toFixed(1)} % |`,
  );
}
const mae = (list) => list.reduce((s, x) => s + Math.abs(x), 0) / list.length;
const unc = rows.map((r) => err(r.uncalibrated, r.real));
const cal = rows.slice(1).map((r) => err(r.calibrated, r.real));
console.log(
  `\nmean absolute error: uncalibrated ${mae(unc).toFixed(1)} % (${rows.length} conversations); calibrated ${mae(cal).toFixed(1)} % (the ${cal.length} after the first)`,
);
