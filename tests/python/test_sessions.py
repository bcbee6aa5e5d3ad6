"""Usage by agent session: the session headers agents send (Claude Code's
`X-Claude-Code-Session-Id`, Codex's `session_id`, anyone's `x-session-id`),
through the official SDKs, rolled up per key and session, as the admin API
and `ai-gateway usage --by session` report them; bounded by a cap of
sessions per key and day."""

import json
import subprocess
import time
import urllib.error
import urllib.request

import anthropic
import openai
import pytest

from conftest import MOCK, Gateway, Mock
from harness import ADMIN_KEY, GATEWAY


@pytest.fixture(scope="module")
def mock():
    m = Mock([MOCK, "--listen", "127.0.0.1:0", "--tokens", "8"])
    yield m
    m.stop()


def admin_usage(g, query):
    req = urllib.request.Request(f"{g.url}/admin/v1/usage?{query}", headers={"Authorization": "Bearer " + ADMIN_KEY})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.load(e)


def sessions_when(g, query, done):
    """The admin API's sessions once `done(rows)` holds (usage is committed
    every 50 ms here), or the last rows seen after 10 s."""
    deadline = time.monotonic() + 10
    while True:
        status, body = admin_usage(g, query)
        assert status == 200, body
        if done(body["data"]) or time.monotonic() > deadline:
            return body["data"]
        time.sleep(0.05)


def test_a_sessions_requests_tokens_and_time_by_the_sdks_headers(mock):
    g = Gateway(mock.url, "--usage-flush-ms", "50")
    try:
        alice = g.create_key("alice")
        claude = anthropic.Anthropic(base_url=g.url, api_key=alice, max_retries=0)
        tokens = 0
        for _ in range(3):
            m = claude.messages.create(
                model="llama3",
                max_tokens=64,
                messages=[{"role": "user", "content": "hi"}],
                extra_headers={"X-Claude-Code-Session-Id": "cc-1", "x-session-id": "loses"},
            )
            tokens += m.usage.input_tokens + m.usage.output_tokens
        codex = openai.OpenAI(base_url=g.url + "/v1", api_key=alice, max_retries=0)
        r = codex.responses.create(model="llama3", input="hi", extra_headers={"session_id": "codex-1"})
        codex_tokens = r.usage.total_tokens
        chat = codex.chat.completions.create(
            model="llama3", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-session-id": "mine"}
        )
        # Without a session: in the key's usage, in no session.
        codex.chat.completions.create(model="llama3", messages=[{"role": "user", "content": "hi"}])

        rows = sessions_when(g, "by=session", lambda rows: sum(r["requests"] for r in rows) >= 5)
        by = {r["session"]: r for r in rows}
        assert set(by) == {"cc-1", "codex-1", "mine"}
        assert by["cc-1"]["requests"] == 3 and by["cc-1"]["total_tokens"] == tokens
        assert by["codex-1"]["requests"] == 1 and by["codex-1"]["total_tokens"] == codex_tokens
        assert by["mine"]["total_tokens"] == chat.usage.total_tokens
        assert all(r["key"] == "alice" and r["latency_ms_sum"] >= 0 for r in rows)
        assert [r["session"] for r in rows][0] == "cc-1", "the most tokens first"

        # The CLI reads the same store, as JSON and as a table.
        out = subprocess.run(
            [GATEWAY, "usage", "--data-dir", g.data_dir, "--by", "session", "--json"],
            check=True, capture_output=True, text=True,
        )
        assert json.loads(out.stdout)["data"] == rows
        table = subprocess.run(
            [GATEWAY, "usage", "--data-dir", g.data_dir, "--by", "session", "--key", "alice"],
            check=True, capture_output=True, text=True,
        ).stdout.splitlines()
        assert table[0].split()[:3] == ["SESSION", "KEY", "REQUESTS"]
        assert table[1].split()[:3] == ["cc-1", "alice", "3"]
        # Not kept by model: a clear refusal, on both.
        status, body = admin_usage(g, "by=session&model=llama3")
        assert status == 400 and body["error"]["param"] == "model"
        refused = subprocess.run(
            [GATEWAY, "usage", "--data-dir", g.data_dir, "--by", "session", "--model", "llama3"], capture_output=True, text=True
        )
        assert refused.returncode != 0 and "not kept by model" in refused.stderr
    finally:
        g.stop()


def test_a_key_inventing_sessions_grows_one_row_past_its_cap(mock):
    g = Gateway(mock.url, "--usage-flush-ms", "50", "--sessions-per-key-day", "3")
    try:
        spray = g.create_key("spray")
        other = g.create_key("other")
        client = openai.OpenAI(base_url=g.url + "/v1", api_key=spray, max_retries=0)
        for i in range(20):
            client.chat.completions.create(
                model="llama3", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-session-id": f"s{i}"}
            )
        openai.OpenAI(base_url=g.url + "/v1", api_key=other, max_retries=0).chat.completions.create(
            model="llama3", messages=[{"role": "user", "content": "hi"}], extra_headers={"x-session-id": "theirs"}
        )
        rows = sessions_when(g, "by=session", lambda rows: sum(r["requests"] for r in rows) >= 21)
        mine = [r for r in rows if r["key"] == "spray"]
        assert len(mine) == 4, "three sessions and the rest"
        assert sum(r["requests"] for r in mine) == 20, "no request lost"
        assert next(r for r in mine if r["session"] == "(other sessions)")["requests"] == 17
        assert [r["session"] for r in rows if r["key"] == "other"] == ["theirs"], "another key's cap is its own"
        # One key's sessions alone.
        _, body = admin_usage(g, "by=session&key=other")
        assert [r["session"] for r in body["data"]] == ["theirs"]
    finally:
        g.stop()


def test_a_responses_chain_is_one_session_from_its_first_response(mock):
    g = Gateway(mock.url, "--usage-flush-ms", "50")
    try:
        k = g.create_key("agents-sdk")
        client = openai.OpenAI(base_url=g.url + "/v1", api_key=k, max_retries=0)
        # No session header: the chain's session is its first response's id.
        first = client.responses.create(model="llama3", input="hi")
        second = client.responses.create(model="llama3", input="and?", previous_response_id=first.id)
        with client.responses.stream(model="llama3", input="more", previous_response_id=second.id) as s:
            third = s.get_final_response()
        chain_tokens = sum(r.usage.total_tokens for r in (first, second, third))
        # A chain begun under an agent's header keeps it when a turn names none.
        named = client.responses.create(model="llama3", input="hi", extra_headers={"x-session-id": "named"})
        client.responses.create(model="llama3", input="and?", previous_response_id=named.id)
        # Not stored and continuing nothing: no session.
        client.responses.create(model="llama3", input="hi", store=False)

        rows = sessions_when(g, "by=session", lambda rows: sum(r["requests"] for r in rows) >= 5)
        by = {r["session"]: r for r in rows}
        assert set(by) == {first.id, "named"}
        assert by[first.id]["requests"] == 3 and by[first.id]["total_tokens"] == chain_tokens
        assert by["named"]["requests"] == 2
    finally:
        g.stop()
