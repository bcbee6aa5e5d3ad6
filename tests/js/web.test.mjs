// The docs page and the dashboard in a real headless browser: Debian's
// chromium driven by playwright-core. Screenshots of each view go to
// target/browser-test/.

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import { mkdirSync, writeFileSync, existsSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import OpenAI from "openai";
import { chromium } from "playwright-core";
import { startPair, ADMIN_KEY } from "./harness.mjs";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
const OUT = path.join(root, "target/browser-test");
const CHROMIUM = process.env.CHROMIUM_BIN ?? "/usr/bin/chromium";
const XSS = "<img src=x onerror=alert(1)>";

let pair;
let browser;
let context;
const alerts = [];

before(async () => {
  assert.ok(existsSync(CHROMIUM), `${CHROMIUM} is missing: install Debian's chromium (apt-get install chromium)`);
  mkdirSync(OUT, { recursive: true });
  pair = await startPair(["--tokens", "4"], ["--usage-flush-ms", "100", "--upstream-health-interval", "0.2"]);
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  context = await browser.newContext({ viewport: { width: 1280, height: 900 } });
  await context.grantPermissions(["clipboard-read", "clipboard-write"], { origin: pair.gateway.url });
});

after(async () => {
  await browser?.close();
  pair?.stop();
});

async function newPage() {
  const page = await context.newPage();
  page.on("dialog", async (d) => {
    if (d.type() === "alert") alerts.push(d.message());
    await d.accept();
  });
  return page;
}

async function signIn(page) {
  await page.goto(`${pair.gateway.url}/dashboard`);
  await page.fill("#signin-key", ADMIN_KEY);
  await page.click("#signin-form button[type=submit]");
  await page.waitForSelector("#view-keys:not(.hidden)");
}

test("the docs page shows this gateway's URL and models, and its copied snippet runs", async () => {
  // The page lists what the health checker learned from the emulator.
  for (let i = 0; i < 50; i++) {
    const ready = await (await fetch(`${pair.gateway.url}/readyz`, { headers: { authorization: `Bearer ${ADMIN_KEY}` } })).json();
    if (ready.hosts[0].models) break;
    await new Promise((r) => setTimeout(r, 100));
  }
  const page = await newPage();
  const response = await page.goto(`${pair.gateway.url}/`);
  const headers = response.headers();
  assert.match(headers["content-security-policy"], /script-src 'self'/);
  assert.match(headers["content-security-policy"], /frame-ancestors 'none'/);
  assert.equal(headers["x-content-type-options"], "nosniff");
  assert.equal(headers["referrer-policy"], "no-referrer");
  assert.equal(headers["x-frame-options"], "DENY");
  assert.equal(await page.title(), "AI Gateway Docs — Build with Confidence");
  assert.equal(await page.textContent("#base-url"), `${pair.gateway.url}/api/v1`);
  const models = await page.$$eval("#model-list li", (items) => items.map((i) => i.textContent));
  assert.deepEqual(models, ["llama3:latest", "qwen3:8b", "nomic-embed-text:latest"]);
  const body = await page.textContent("body");
  assert.doesNotMatch(body, /sk_[A-Za-z0-9_-]{20,}/, "the docs page shows no key");

  // First contentful paint, recorded (not asserted: timings belong to measurements, not tests).
  const paints = [];
  for (let i = 0; i < 7; i++) {
    const p = await context.newPage();
    await p.goto(`${pair.gateway.url}/`);
    await p.waitForFunction(() => performance.getEntriesByName("first-contentful-paint").length > 0);
    paints.push(await p.evaluate(() => performance.getEntriesByName("first-contentful-paint")[0].startTime));
    await p.close();
  }
  paints.sort((a, b) => a - b);
  const line = `docs page first contentful paint over ${paints.length} loads: median ${paints[3]} ms (${paints.join(", ")})`;
  writeFileSync(path.join(OUT, "first-paint.txt"), `${line}\n`);
  console.log(line);

  // Copy the chat snippet with its button and run what the clipboard holds.
  await page.click("button[data-copy=curl-chat]");
  await page.waitForFunction(() => document.querySelector("button[data-copy=curl-chat]").textContent === "Copied");
  const snippet = await page.evaluate(() => navigator.clipboard.readText());
  assert.ok(snippet.startsWith(`curl ${pair.gateway.url}/api/v1/chat/completions`), snippet);
  const key = pair.gateway.createKey("docs-reader");
  const out = execFileSync("bash", ["-c", snippet], { env: { ...process.env, AI_GATEWAY_KEY: key }, encoding: "utf8" });
  const reply = JSON.parse(out);
  assert.equal(reply.object, "chat.completion");
  assert.equal(reply.model, "llama3:latest");
  await page.screenshot({ path: path.join(OUT, "docs.png"), fullPage: false });
  await page.close();
});

test("dashboard: sign in, create a key, use it, see its usage, revoke it", async () => {
  const page = await newPage();
  await signIn(page);
  assert.ok(!page.url().includes(ADMIN_KEY));
  assert.equal(await page.evaluate(() => sessionStorage.getItem("ai-gateway-admin-key")), ADMIN_KEY);

  // Create a key; its secret is shown once.
  await page.fill("#create-form input[name=name]", "web-user");
  await page.fill("#create-form input[name=rpm]", "600");
  await page.selectOption("#create-form select[name=priority]", "interactive");
  await page.check("#create-form input[name=web_search]");
  await page.check("#create-form input[name=trace_contents]");
  await page.click("#create-form button[type=submit]");
  await page.waitForSelector("#secret-box:not(.hidden)");
  const secret = await page.textContent("#secret-value");
  assert.match(secret, /^sk_[A-Za-z0-9_-]{43,}$/);
  await page.waitForSelector("#keys-table tr:has-text('web-user')");
  const row = await page.textContent("#keys-table tr:has-text('web-user')");
  assert.ok(row.includes("rpm 600") && row.includes("active") && row.includes("interactive"), row);
  assert.ok(row.includes("web search") && row.includes("contents traced") && !row.includes("load settings"), row);
  assert.ok(!row.includes(secret));
  await page.screenshot({ path: path.join(OUT, "keys-created.png") });
  await page.click("#secret-done");
  assert.equal(await page.textContent("#secret-value"), "");
  await page.reload();
  await page.waitForSelector("#keys-table tr:has-text('web-user')");
  assert.ok(!(await page.content()).includes(secret), "the secret is never shown again");

  // Use it through the SDK.
  const client = new OpenAI({ baseURL: `${pair.gateway.url}/v1`, apiKey: secret, maxRetries: 0 });
  const r = await client.chat.completions.create(
    { model: "llama3", messages: [{ role: "user", content: "hi there" }] },
    { headers: { "x-session-id": "web-session-1" } },
  );
  assert.equal(r.usage.completion_tokens, 4);

  // Its usage shows up once the flush interval has passed.
  await page.click("#nav a[data-view=usage]");
  let usageRow = "";
  for (let i = 0; i < 50 && !usageRow.includes("web-user"); i++) {
    await page.click("#usage-form button[type=submit]");
    await page.waitForTimeout(100);
    usageRow = (await page.$$eval("#usage-table tbody tr", (rows) => rows.map((r) => r.textContent))).join("\n");
  }
  const cells = await page.$$eval("#usage-table tbody tr", (rows) =>
    rows.map((r) => [...r.cells].map((c) => c.textContent)).find((c) => c[0] === "web-user"),
  );
  assert.deepEqual(cells, ["web-user", "1", "0", "3", "4", "7"]);
  // And by protocol: the SDK's chat is OpenAI's.
  const apis = await page.$$eval("#usage-api-table tbody tr", (rows) => rows.map((r) => [...r.cells].map((c) => c.textContent)));
  assert.ok(apis.some((c) => c[0] === "openai" && Number(c[1]) >= 1), JSON.stringify(apis));
  // And by agent session: the header the request named.
  const sessions = await page.$$eval("#usage-session-table tbody tr", (rows) => rows.map((r) => [...r.cells].map((c) => c.textContent)));
  assert.deepEqual(sessions.find((c) => c[0] === "web-session-1")?.slice(0, 5), ["web-session-1", "web-user", "1", "0", "7"]);
  assert.ok((await page.$$("#tokens-chart rect")).length >= 1, "the tokens chart has a bar");
  assert.ok((await page.textContent("#tokens-legend")).includes("llama3"));
  await page.screenshot({ path: path.join(OUT, "usage.png"), fullPage: true });

  // The CSV export holds what is shown.
  const [download] = await Promise.all([page.waitForEvent("download"), page.click("#csv")]);
  const csv = await (await download.createReadStream()).toArray();
  assert.ok(Buffer.concat(csv).toString().includes("key,web-user,1,0,3,4,7"));
  assert.ok(Buffer.concat(csv).toString().includes("protocol,openai,"));
  assert.ok(Buffer.concat(csv).toString().includes("session,web-session-1 (web-user),1,0,3,4,7"));

  // Live view: the host is healthy, the numbers refresh.
  await page.click("#nav a[data-view=live]");
  await page.waitForSelector("#hosts-table tr:has-text('healthy')");
  await page.waitForFunction(() => document.querySelector("#live-updated").textContent.startsWith("Updated"));
  // Each host's queue: its slots by lane, with the one kept for interactive requests.
  const schedule = await page.textContent("#schedule-table tbody tr");
  assert.ok(schedule.includes(pair.mock.url) && schedule.includes("of 64 (1 kept for interactive)"), schedule);
  // And what the host did: the prompt tokens it evaluated (the chat above's, at least) and served from cache.
  const work = (await page.textContent("#schedule-table tbody tr .prompt-work")).match(/^([\d,]+) \/ ([\d,]+)$/);
  assert.ok(work && Number(work[1].replaceAll(",", "")) >= 3 && work[2] === "0", String(work));
  await page.screenshot({ path: path.join(OUT, "live.png"), fullPage: true });

  // Edit its limits and models in the dialog.
  await page.click("#nav a[data-view=keys]");
  await page.click("#keys-table tr:has-text('web-user') button:has-text('Edit')");
  await page.fill("#edit-form input[name=tpm]", "5000");
  // Its models were "all": that is a choice of its own, and an emptied list is refused.
  assert.ok(await page.isChecked("#edit-form input[name=all_models]"));
  await page.uncheck("#edit-form input[name=all_models]");
  await page.click("#edit-form button[value=save]");
  await page.waitForFunction(() => document.querySelector("#edit-error").textContent.includes("would allow no model"));
  await page.fill("#edit-form input[name=models]", "llama3, qwen3:8b");
  await page.fill("#edit-form input[name=expires]", "2099-01-01");
  assert.equal(await page.inputValue("#edit-form select[name=priority]"), "interactive");
  await page.selectOption("#edit-form select[name=priority]", "batch");
  assert.ok(await page.isChecked("#edit-form input[name=web_search]"));
  await page.uncheck("#edit-form input[name=web_search]");
  await page.check("#edit-form input[name=load_options]");
  await page.click("#edit-form button[value=save]");
  await page.waitForSelector("#keys-table tr:has-text('web-user'):has-text('tpm 5,000')");
  const edited = await page.textContent("#keys-table tr:has-text('web-user')");
  assert.ok(edited.includes("llama3, qwen3:8b") && edited.includes("2099-01-01") && edited.includes("rpm 600"), edited);
  assert.ok(edited.includes("batch") && edited.includes("load settings") && !edited.includes("web search"), edited);
  await assert.rejects(
    client.chat.completions.create({ model: "nomic-embed-text", messages: [{ role: "user", content: "hi" }] }),
    (e) => e instanceof OpenAI.PermissionDeniedError,
  );

  // Rotate it: a new secret is shown once, the old one stops working at once.
  await page.click("#keys-table tr:has-text('web-user') button:has-text('Rotate')");
  await page.waitForSelector("#secret-box:not(.hidden)");
  await page.waitForFunction((old) => {
    const v = document.querySelector("#secret-value").textContent;
    return v.startsWith("sk_") && v !== old;
  }, secret);
  const rotated = await page.textContent("#secret-value");
  await page.click("#secret-done");
  await assert.rejects(
    client.chat.completions.create({ model: "llama3", messages: [{ role: "user", content: "hi" }] }),
    (e) => e instanceof OpenAI.AuthenticationError && e.status === 401,
  );
  const renewed = new OpenAI({ baseURL: `${pair.gateway.url}/v1`, apiKey: rotated, maxRetries: 0 });
  assert.equal((await renewed.chat.completions.create({ model: "llama3", messages: [{ role: "user", content: "hi" }] })).object, "chat.completion");

  // Revoke it (the confirmation is accepted) and the API refuses it at once.
  await page.click("#nav a[data-view=keys]");
  await page.click("#keys-table tr:has-text('web-user') button.danger");
  await page.waitForSelector("#keys-table tr:has-text('web-user') .pill.revoked");
  await page.screenshot({ path: path.join(OUT, "keys.png"), fullPage: true });
  await assert.rejects(
    renewed.chat.completions.create({ model: "llama3", messages: [{ role: "user", content: "hi" }] }),
    (e) => e instanceof OpenAI.AuthenticationError && e.status === 401,
  );
  await page.close();
});

test("values from the store render as text, never as markup", async () => {
  // Key names are restricted to a safe alphabet, so that one is refused…
  const refused = await fetch(`${pair.gateway.url}/admin/v1/keys`, {
    method: "POST",
    headers: { Authorization: `Bearer ${ADMIN_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ name: XSS }),
  });
  assert.equal(refused.status, 400);
  // …but model names are free text: in a key's allowlist, and as a client asked for them (in usage).
  const created = await fetch(`${pair.gateway.url}/admin/v1/keys`, {
    method: "POST",
    headers: { Authorization: `Bearer ${ADMIN_KEY}`, "Content-Type": "application/json" },
    body: JSON.stringify({ name: "xss-probe", models: [XSS, "llama3"] }),
  });
  assert.equal(created.status, 201);
  const secret = (await created.json()).secret;
  // A name no host serves is recorded as "(unknown)": the emulator serves this one for a moment.
  const served = (await pair.mock.configure({})).models;
  await pair.mock.configure({ models: [...served, XSS] });
  const chat = await fetch(`${pair.gateway.url}/v1/chat/completions`, {
    method: "POST",
    headers: { Authorization: `Bearer ${secret}`, "Content-Type": "application/json" },
    body: JSON.stringify({ model: XSS, messages: [{ role: "user", content: "x" }] }),
  });
  assert.equal(chat.status, 200);
  await pair.mock.configure({ models: served });

  const page = await newPage();
  await signIn(page);
  await page.waitForSelector("#keys-table tr:has-text('xss-probe')");
  assert.ok((await page.textContent("#keys-table tr:has-text('xss-probe')")).includes(XSS));
  await page.click("#nav a[data-view=usage]");
  let legend = "";
  for (let i = 0; i < 50 && !legend.includes(XSS); i++) {
    await page.click("#usage-form button[type=submit]");
    await page.waitForTimeout(100);
    legend = await page.textContent("#tokens-legend");
  }
  assert.ok(legend.includes(XSS), `the model name shows in the chart legend as text: ${legend}`);
  await page.selectOption("#usage-form select[name=key]", { label: "xss-probe" });
  await page.click("#usage-form button[type=submit]");
  await page.waitForTimeout(300);
  assert.equal(await page.$$eval("img", (imgs) => imgs.length), 0, "no element was injected");
  assert.deepEqual(alerts, [], "no script ran");
  await page.screenshot({ path: path.join(OUT, "xss.png"), fullPage: true });
  await page.close();
});

test("the admin endpoints behind the dashboard still need an admin key", async () => {
  const user = pair.gateway.createKey("plain-user");
  for (const p of ["/admin/v1/keys", "/admin/v1/usage", "/admin/v1/live"]) {
    assert.equal((await fetch(`${pair.gateway.url}${p}`)).status, 401, p);
    assert.equal((await fetch(`${pair.gateway.url}${p}`, { headers: { Authorization: `Bearer ${user}` } })).status, 403, p);
  }
  // The pages themselves carry no data.
  const shell = await (await fetch(`${pair.gateway.url}/dashboard`)).text();
  assert.ok(!shell.includes("web-user"));
  assert.doesNotMatch(shell, /sk_[A-Za-z0-9_-]{20,}/);
});

test("in a cluster, the live view lists every instance", async () => {
  // A redis-server of the test's own, on a free port (scripts/test installs Debian's).
  const net = await import("node:net");
  const { spawn } = await import("node:child_process");
  const port = await new Promise((resolve) => {
    const srv = net.createServer().listen(0, "127.0.0.1", () => {
      const p = srv.address().port;
      srv.close(() => resolve(p));
    });
  });
  const redis = spawn(process.env.REDIS_SERVER_BIN ?? "redis-server", ["--port", String(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"], {
    stdio: "ignore",
  });
  const { start, GATEWAY } = await import("./harness.mjs");
  const { mkdtempSync, rmSync } = await import("node:fs");
  const os = await import("node:os");
  const dirs = [];
  const nodes = [];
  try {
    for (let i = 0; i < 2; i++) {
      const dir = mkdtempSync(path.join(os.tmpdir(), "ai-gateway-js-cluster-"));
      dirs.push(dir);
      // Redis may still be starting: an instance serves from its store meanwhile and joins when it answers.
      nodes.push(
        await start(
          GATEWAY,
          ["serve", "--listen", "127.0.0.1:0", "--upstream", pair.mock.url, "--data-dir", dir, "--redis", `redis://127.0.0.1:${port}`],
          { AI_GATEWAY_ADMIN_KEY: ADMIN_KEY },
        ),
      );
    }
    const page = await newPage();
    await page.goto(`${nodes[0].url}/dashboard`);
    await page.fill("#signin-key", ADMIN_KEY);
    await page.click("#signin-form button[type=submit]");
    await page.waitForSelector("#view-keys:not(.hidden)");
    await page.click("#nav a[data-view=live]");
    await page.waitForFunction(() => document.querySelectorAll("#instances-table tbody tr").length === 2, null, { timeout: 15000 });
    const rows = await page.$$eval("#instances-table tbody tr", (rs) => rs.map((r) => r.textContent));
    for (const n of nodes) {
      assert.ok(rows.some((r) => r.includes(new URL(n.url).host)), `${n.url} in ${rows}`);
    }
    await page.screenshot({ path: path.join(OUT, "live-cluster.png"), fullPage: true });
  } finally {
    for (const n of nodes) n.stop();
    redis.kill("SIGKILL");
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  }
});
