// Starts the real ai-gateway and mock-ollama binaries on free ports.
// Each prints "listening on ADDR" in its first log line; we wait for it.

import { spawn, execFileSync } from "node:child_process";
import http from "node:http";
import { mkdtempSync, rmSync } from "node:fs";
import os from "node:os";
import { fileURLToPath } from "node:url";
import path from "node:path";

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");
export const GATEWAY = process.env.AI_GATEWAY_BIN ?? path.join(root, "target/debug/ai-gateway");
export const MOCK = process.env.MOCK_OLLAMA_BIN ?? path.join(root, "target/debug/mock-ollama");

export const ADMIN_KEY = "sk_js-admin-key-0123456789abcdefghijklmnopqrstuvwxyz";

export function start(bin, args, env = {}) {
  return new Promise((resolve, reject) => {
    const child = spawn(bin, args, { stdio: ["ignore", "ignore", "pipe"], env: { ...process.env, ...env } });
    let log = "";
    const timer = setTimeout(() => {
      child.kill("SIGKILL");
      reject(new Error(`${bin} did not start: ${log}`));
    }, 20000);
    child.stderr.setEncoding("utf8");
    child.stderr.on("data", (d) => {
      log += d;
      // Only a whole line counts: a pipe may hand the line over in pieces.
      const m = log.match(/listening on (\S+)\s/);
      if (m && timer) {
        clearTimeout(timer);
        resolve({ child, url: `http://${m[1]}`, stop: () => child.kill("SIGKILL") });
      }
    });
    child.on("error", reject);
  });
}

// A plain node:http request to the emulator (its knobs, its counters),
// retried a few times on a transient failure before it counts as one.
export async function postJson(url, body, attempts = 3, method = "POST") {
  for (let i = 1; ; i++) {
    try {
      const { status, text } = await new Promise((resolve, reject) => {
        const req = http.request(url, { method, headers: { "content-type": "application/json" } }, (res) => {
          let text = "";
          res.setEncoding("utf8");
          res.on("data", (d) => (text += d));
          res.on("end", () => resolve({ status: res.statusCode, text }));
        });
        req.on("error", reject);
        req.end(body === undefined ? undefined : JSON.stringify(body));
      });
      if (status !== 200) throw new Error(`${url}: ${status} ${text}`);
      return JSON.parse(text);
    } catch (e) {
      if (i >= attempts) throw e;
      await new Promise((r) => setTimeout(r, 100));
    }
  }
}

export async function startPair(mockArgs = [], gatewayArgs = []) {
  const mock = await start(MOCK, ["--listen", "127.0.0.1:0", ...mockArgs]);
  const dataDir = mkdtempSync(path.join(os.tmpdir(), "ai-gateway-js-"));
  const gateway = await start(
    GATEWAY,
    // The plain emulator runs any number of generations of a model at once.
    ["serve", "--listen", "127.0.0.1:0", "--upstream", mock.url, "--data-dir", dataDir,
      ...(gatewayArgs.includes("--upstream-num-parallel") ? [] : ["--upstream-num-parallel", "0"]), ...gatewayArgs],
    { AI_GATEWAY_ADMIN_KEY: ADMIN_KEY },
  );
  // Keys are created with the CLI, in another process, while the server runs.
  gateway.createKey = (name, ...flags) =>
    JSON.parse(
      execFileSync(GATEWAY, ["keys", "--data-dir", dataDir, "create", "--name", name, "--json", ...flags], {
        encoding: "utf8",
      }),
    ).secret;
  mock.configure = (knobs) => postJson(`${mock.url}/_config`, knobs);
  mock.stats = () => postJson(`${mock.url}/_stats`, undefined, 3, "GET");
  mock.last = () => postJson(`${mock.url}/_last`, undefined, 3, "GET");
  return {
    mock,
    gateway,
    stop: () => {
      gateway.stop();
      mock.stop();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}
