"""The real agents, as their users install them, against the gateway.

Each agent named in package.json and requirements.txt (pinned; see
scripts/agents-update) runs non-interactively against ai-gateway in front of
mock-ollama, which answers from script.json: a plain answer to SAY-HELLO, a
call of the agent's own shell tool (or of the SDK test's function) to
RUN-TOOL, and, once the tool's result comes back, "The tool said: …" with
that result in it. Every agent runs

- with its default model setting (the name it asks for mapped by a pattern
  alias to `qwen3-coder:30b`, a model without the thinking capability), and
  with a local model name, `qwen3:8b` (one that thinks) and
  `qwen3-coder:30b` (one that does not);
- a plain answer and a tool round trip, each on a key of its own, whose
  usage must count exactly the generations the agent was answered.

Between the agent and the gateway a recorder keeps what the agent sent. The
first request of each kind an agent version sends is the fixture
tests/it/agents.rs replays without Node: with AGENTS_RECORD=1 (what
scripts/agents-update sets) a missing fixture is written; otherwise a pinned
version without its fixture fails.
"""

import asyncio
import base64
import http.client
import http.server
import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

from harness import ADMIN_KEY, MOCK, Gateway, Mock  # noqa: E402

ROOT = HERE.parents[1]
FIXTURES = ROOT / "tests/it/fixtures/agents"
BIN = HERE / "node_modules/.bin"
THINKS = "qwen3:8b"
PLAIN = "qwen3-coder:30b"
MARKER = "agent-tool-ok-42"
# What the emulator says once a tool's result came back: the result is in it.
TOOL_SAID = "The tool said:"
# Paths whose requests generate (and are counted in usage).
GENERATIONS = ("/v1/messages", "/v1/responses", "/v1/chat/completions")
# Headers a fixture leaves out: credentials, and what the transport decides.
UNKEPT = {"authorization", "x-api-key", "cookie", "host", "content-length", "connection", "transfer-encoding"}


class Recorder:
    """A forwarding proxy in front of the gateway that keeps each request and
    the status it got."""

    def __init__(self, upstream):
        self.upstream = upstream
        self.seen = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def forward(self):
                if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                    body = b""
                    while True:
                        size = int(self.rfile.readline().split(b";")[0], 16)
                        if size == 0:
                            self.rfile.readline()
                            break
                        body += self.rfile.read(size)
                        self.rfile.readline()
                else:
                    body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                host, port = recorder.upstream.split(":")
                conn = http.client.HTTPConnection(host, int(port), timeout=120)
                hop = ("host", "content-length", "connection", "transfer-encoding")
                conn.request(self.command, self.path, body=body or None,
                             headers={k: v for k, v in self.headers.items() if k.lower() not in hop})
                headers = {k: v for k, v in self.headers.items() if k.lower() not in UNKEPT}
                resp = conn.getresponse()
                data = resp.read()
                recorder.seen.append({"method": self.command, "path": self.path, "status": resp.status,
                                      "headers": headers, "body": body})
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)
                conn.close()

            do_GET = do_POST = do_HEAD = do_DELETE = do_PATCH = forward

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"

    def generations(self):
        return [r for r in self.seen if r["method"] == "POST" and r["path"].split("?")[0] in GENERATIONS]


@pytest.fixture(scope="module")
def mock():
    m = Mock([MOCK, "--listen", "127.0.0.1:0", "--models", f"{PLAIN},{THINKS}",
              "--capabilities", f"{PLAIN}=completion+tools", "--script", str(HERE / "script.json")])
    yield m
    m.stop()


@pytest.fixture(scope="module")
def gateway(mock):
    config = pathlib.Path(tempfile.mkdtemp(prefix="ai-gateway-agents-")) / "gateway.toml"
    # The recipes of the README: every name an agent asks for by default, served locally.
    config.write_text(f'[aliases]\n"claude-*" = "{PLAIN}"\n"gpt-*" = "{PLAIN}"\n"o*" = "{PLAIN}"\n')
    g = Gateway(mock.url, "--config", str(config))
    yield g
    g.stop()
    shutil.rmtree(config.parent, ignore_errors=True)


@pytest.fixture(scope="module")
def recorder(gateway):
    r = Recorder(gateway.addr)
    yield r
    r.server.shutdown()


def admin(gateway, method, path, body=None):
    req = urllib.request.Request(gateway.url + path, data=json.dumps(body).encode() if body else None, method=method,
                                 headers={"Authorization": f"Bearer {ADMIN_KEY}", "Content-Type": "application/json"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)


def usage_of(gateway, key):
    req = urllib.request.Request(gateway.url + "/v1/usage", headers={"Authorization": f"Bearer {key}"})
    with urllib.request.urlopen(req) as r:
        return json.load(r)["today"]


def settled_usage(gateway, key, requests):
    """The key's usage once it counts `requests` (a request is counted as its
    reply ends, which the agent may have read a moment before), or as it
    stands after 10 s."""
    deadline = time.monotonic() + 10
    while True:
        used = usage_of(gateway, key)
        if used["requests"] >= requests or time.monotonic() > deadline:
            return used
        time.sleep(0.05)


def npm_version(package):
    return json.loads((HERE / "node_modules" / package / "package.json").read_text())["version"]


# --- the agents: each runs one prompt, with a model name or its default, and returns its final text


def run(cmd, env, cwd):
    # PWD too: some agents take their directory from it, as a shell sets it.
    p = subprocess.run(cmd, env={**os.environ, **env, "PWD": cwd}, cwd=cwd, capture_output=True, text=True, timeout=180,
                       stdin=subprocess.DEVNULL)
    assert p.returncode == 0, f"{cmd[0]} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p.stdout


def claude_code(base, key, model, prompt, home):
    env = {"HOME": home, "ANTHROPIC_BASE_URL": base, "ANTHROPIC_AUTH_TOKEN": key}
    if model:
        env["ANTHROPIC_MODEL"] = model
    out = run([str(BIN / "claude"), "-p", prompt, "--allowedTools", "Bash", "--output-format", "json"], env, home)
    result = json.loads(out.strip().splitlines()[-1])
    assert not result.get("is_error"), result
    return result["result"]


def codex(base, key, model, prompt, home):
    codex_home = pathlib.Path(home) / ".codex"
    codex_home.mkdir(exist_ok=True)
    (codex_home / "config.toml").write_text(
        'model_provider = "ai-gateway"\n\n[model_providers.ai-gateway]\nname = "ai-gateway"\n'
        f'base_url = "{base}/v1"\nenv_key = "AI_GATEWAY_KEY"\nwire_api = "responses"\n')
    cmd = [str(BIN / "codex"), "exec", "--skip-git-repo-check"]
    if model:
        cmd += ["-m", model]
    env = {"HOME": home, "CODEX_HOME": str(codex_home), "AI_GATEWAY_KEY": key}
    out = run(cmd + [prompt], env, home)
    return out


def opencode(base, key, model, prompt, home):
    # opencode's own default is its hosted model; its setting for a provider
    # names a model of that provider, here an OpenAI name the alias serves.
    config = {"$schema": "https://opencode.ai/config.json", "model": "ai-gateway/gpt-5.5", "provider": {"ai-gateway": {
        "npm": "@ai-sdk/openai-compatible", "name": "ai-gateway",
        "options": {"baseURL": f"{base}/v1", "apiKey": "{env:AI_GATEWAY_KEY}"},
        "models": {"gpt-5.5": {"name": "gpt-5.5"}, THINKS: {"name": THINKS}, PLAIN: {"name": PLAIN}}}}}
    work = pathlib.Path(home) / "work"
    work.mkdir(exist_ok=True)
    (work / "opencode.json").write_text(json.dumps(config))
    cmd = [str(BIN / "opencode"), "run"]
    if model:
        cmd += ["-m", f"ai-gateway/{model}"]
    # One cache for every run: opencode installs its provider package on first use.
    env = {"HOME": home, "XDG_CACHE_HOME": str(HERE / ".cache"), "AI_GATEWAY_KEY": key}
    return run(cmd + [prompt], env, str(work))


def claude_agent_sdk(base, key, model, prompt, home):
    from claude_agent_sdk import ClaudeAgentOptions, ResultMessage, query

    async def go():
        errors = []
        options = ClaudeAgentOptions(allowed_tools=["Bash"], model=model, cwd=home, stderr=errors.append,
                                     env={"HOME": home, "ANTHROPIC_BASE_URL": base, "ANTHROPIC_AUTH_TOKEN": key})
        async for m in query(prompt=prompt, options=options):
            if isinstance(m, ResultMessage):
                assert not m.is_error, (m, errors)
                return m.result
        raise AssertionError(f"no result: {errors}")

    return asyncio.run(go())


def openai_agents(base, key, model, prompt, home):
    from agents import Agent, OpenAIChatCompletionsModel, Runner, function_tool, set_default_openai_client
    from agents import set_tracing_disabled
    from openai import AsyncOpenAI

    @function_tool
    def get_marker() -> str:
        """Returns the marker the user asked for."""
        return MARKER

    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=f"{base}/v1", api_key=key, max_retries=0)
    set_default_openai_client(client, use_for_tracing=False)
    # Its default: the Responses API and the SDK's default model; a local
    # name goes through Chat Completions, as its docs show for other providers.
    kwargs = {"model": OpenAIChatCompletionsModel(model, client)} if model else {}
    agent = Agent(name="tester", instructions="Answer briefly.", tools=[get_marker], **kwargs)
    return asyncio.run(Runner.run(agent, prompt)).final_output


AGENTS = {
    "claude-code": (claude_code, lambda: npm_version("@anthropic-ai/claude-code")),
    "codex": (codex, lambda: npm_version("@openai/codex")),
    "opencode": (opencode, lambda: npm_version("opencode-ai")),
    "claude-agent-sdk": (claude_agent_sdk, lambda: importlib.metadata.version("claude-agent-sdk")),
    "openai-agents": (openai_agents, lambda: importlib.metadata.version("openai-agents")),
}
SETTINGS = [("default", None), ("thinking", THINKS), ("non-thinking", PLAIN)]
PROMPTS = [("plain", "SAY-HELLO, please."), ("tool", "RUN-TOOL: run the marker command and tell me what it printed.")]


def keep_fixture(agent, version, requests):
    """The first requests this agent version sent, as the fixture tests/it/agents.rs replays."""
    path = FIXTURES / f"{agent}-{version}.json"
    if path.exists():
        return
    assert os.environ.get("AGENTS_RECORD") == "1", (
        f"{path.relative_to(ROOT)} is missing: a pin moved without its fixture (scripts/agents-update writes it)")
    firsts = {}
    for r in requests:
        if r["path"].split("?")[0] not in GENERATIONS:
            continue
        entry = {"method": r["method"], "path": r["path"], "headers": r["headers"]}
        try:
            entry["body"] = json.loads(r["body"])
        except ValueError:
            entry["body_base64"] = base64.b64encode(r["body"]).decode()
        # The first of each kind: a side request (a title, a topic) and the
        # agent's own turn, with its tools, are kept apart.
        body = entry.get("body") if isinstance(entry.get("body"), dict) else {}
        items = body.get("input") if isinstance(body.get("input"), list) else []
        tools = bool(body.get("tools")) or any(isinstance(i, dict) and i.get("type") == "additional_tools"
                                               for i in items)
        firsts.setdefault((r["method"], r["path"].split("?")[0], tools), entry)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    doc = {"agent": agent, "version": version, "requests": list(firsts.values())}
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")


@pytest.mark.parametrize("setting,model", SETTINGS, ids=[s for s, _ in SETTINGS])
@pytest.mark.parametrize("agent", list(AGENTS))
def test_agent(agent, setting, model, gateway, recorder, tmp_path):
    runner, version = AGENTS[agent]
    for kind, prompt in PROMPTS:
        key = admin(gateway, "POST", "/admin/v1/keys", {"name": f"{agent}-{setting}-{kind}"})["secret"]
        recorder.seen.clear()
        home = tmp_path / kind
        home.mkdir()
        text = runner(recorder.url, key, model, prompt, str(home))
        if kind == "plain":
            assert "plain-answer-ok" in text, text
        else:
            # The emulator says this only after the tool's result came back to it.
            assert TOOL_SAID in text and MARKER in text, text
        refused = [(r["method"], r["path"], r["status"]) for r in recorder.seen if r["status"] >= 400
                   and r["method"] != "HEAD"]
        assert not refused, refused
        answered = [r for r in recorder.generations() if r["status"] == 200]
        assert answered, recorder.seen
        if kind == "tool":
            assert len(answered) >= 2, "the tool's result went back to the model"
        used = settled_usage(gateway, key, len(answered))
        assert used["requests"] == len(answered), (used, [r["path"] for r in answered])
        assert used["prompt_tokens"] > 0 and used["completion_tokens"] > 0, used
        if setting == "default" and kind == "plain":
            keep_fixture(agent, version(), recorder.seen)
