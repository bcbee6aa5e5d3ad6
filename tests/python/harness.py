"""The real ai-gateway and mock-ollama binaries as processes, for the
Python tests (tests/python) and the real agents (tests/agents).

Both are started on port 0; the address each bound is read from its first
log line. Paths come from AI_GATEWAY_BIN / MOCK_OLLAMA_BIN (set by
scripts/test), defaulting to the debug build.
"""

import json
import os
import pathlib
import shutil
import subprocess
import tempfile
import threading
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
GATEWAY = os.environ.get("AI_GATEWAY_BIN", str(ROOT / "target/debug/ai-gateway"))
MOCK = os.environ.get("MOCK_OLLAMA_BIN", str(ROOT / "target/debug/mock-ollama"))

ADMIN_KEY = "sk_python-admin-0123456789abcdefghijklmnopqrstuvwxyz"


class Proc:
    def __init__(self, args, env=None):
        self.log = []
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, **(env or {})},
        )
        ready = threading.Event()
        self.addr = None

        def pump():
            for line in self.proc.stderr:
                self.log.append(line)
                if self.addr is None and "listening on " in line:
                    self.addr = line.split("listening on ", 1)[1].split()[0]
                    ready.set()
            ready.set()

        threading.Thread(target=pump, daemon=True).start()
        if not ready.wait(20) or self.addr is None:
            self.stop()
            raise RuntimeError(f"{args[0]} did not start: {''.join(self.log)}")

    @property
    def url(self):
        return f"http://{self.addr}"

    def stop(self):
        self.proc.kill()
        self.proc.wait()


class Mock(Proc):
    def configure(self, **knobs):
        req = urllib.request.Request(
            self.url + "/_config", data=json.dumps(knobs).encode(), method="POST"
        )
        with urllib.request.urlopen(req) as r:
            assert r.status == 200

    def stats(self):
        with urllib.request.urlopen(self.url + "/_stats") as r:
            return json.load(r)


class Gateway(Proc):
    def __init__(self, upstream_url, *flags):
        self.data_dir = tempfile.mkdtemp(prefix="ai-gateway-py-")
        super().__init__(
            # The plain emulator runs any number of generations of a model at once.
            [GATEWAY, "serve", "--listen", "127.0.0.1:0", "--upstream", upstream_url, "--data-dir", self.data_dir,
             "--upstream-num-parallel", "0", *flags],
            env={"AI_GATEWAY_ADMIN_KEY": ADMIN_KEY},
        )

    def create_key(self, name, *flags):
        """Creates a key with the CLI, in another process, while the server runs."""
        out = subprocess.run(
            [GATEWAY, "keys", "--data-dir", self.data_dir, "create", "--name", name, "--json", *flags],
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(out.stdout)["secret"]

    def stop(self):
        super().stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)


def last_request(mock):
    """The body of the last generation the emulator was sent (what the gateway sent upstream)."""
    with urllib.request.urlopen(mock.url + "/_last") as r:
        return json.load(r)
