"""The deployment pieces, as an operator uses them: the container image that
scripts/image built (run with podman, under its default seccomp profile,
which blocks io_uring) and the systemd unit (scored offline by
systemd-analyze). scripts/test builds the image first and names it in
AI_GATEWAY_IMAGE."""

import json
import os
import pathlib
import re
import resource
import subprocess
import sys
import time
import urllib.request
import uuid

import pytest

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "python"))

from harness import MOCK, Mock  # noqa: E402

ROOT = HERE.parents[1]
IMAGE = os.environ.get("AI_GATEWAY_IMAGE", "localhost/ai-gateway:test")
ADMIN = "sk_deploy-admin-0123456789abcdefghijklmnopqrstuv"


def podman(*args, check=True):
    return subprocess.run(["podman", *args], capture_output=True, text=True, check=check)


def limits():
    """--ulimit values under this machine's hard limits (podman cannot raise them)."""
    nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
    cap = lambda hard, want: want if hard == resource.RLIM_INFINITY else min(hard, want)  # noqa: E731
    return [f"--ulimit=nofile={cap(nofile, 16384)}:{cap(nofile, 16384)}", f"--ulimit=nproc={cap(nproc, 4096)}:{cap(nproc, 4096)}"]


def test_the_image_is_small_not_root_and_keeps_its_store_in_a_volume():
    info = json.loads(podman("image", "inspect", IMAGE).stdout)[0]
    size = info["Size"]
    assert size <= 12 * 1024 * 1024, f"{size} bytes"
    config = info["Config"]
    assert config["User"] not in ("", "0", "root", "0:0"), config["User"]
    assert "/data" in config.get("Volumes", {}), config
    assert config["Entrypoint"] == ["/ai-gateway"]
    # The image holds the binary, the CA roots and /data: nothing to run a shell with.
    layers = info["RootFS"]["Layers"]
    assert len(layers) <= 3, layers


@pytest.fixture(scope="module")
def mock():
    m = Mock([MOCK, "--listen", "127.0.0.1:0", "--tokens", "3"])
    yield m
    m.stop()


def test_the_image_serves_on_epoll_under_the_default_seccomp_profile(mock):
    name = f"ai-gateway-test-{uuid.uuid4().hex[:8]}"
    port = 39000 + os.getpid() % 1000
    podman("run", "-d", "--name", name, "--runtime", "runc", "--network", "host", *limits(),
           "-e", f"AI_GATEWAY_ADMIN_KEY={ADMIN}", IMAGE,
           "serve", "--listen", f"127.0.0.1:{port}", "--upstream", mock.url)
    try:
        deadline = time.monotonic() + 30
        logs = ""
        while time.monotonic() < deadline and "listening on" not in logs:
            time.sleep(0.2)
            logs = podman("logs", name, check=False).stderr + podman("logs", name, check=False).stdout
        assert "listening on" in logs, logs
        # Podman's default seccomp profile blocks io_uring: epoll, by itself.
        assert "driver epoll" in logs, logs
        body = json.dumps({"model": "llama3", "messages": [{"role": "user", "content": "hi"}]}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body,
                                     headers={"Authorization": f"Bearer {ADMIN}", "Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as r:
            reply = json.load(r)
        assert reply["object"] == "chat.completion" and reply["usage"]["completion_tokens"] == 3, reply
        # SIGTERM: requests finish, usage is committed, exit 0.
        stopped = podman("stop", "-t", "20", name)
        assert stopped.returncode == 0
        state = json.loads(podman("inspect", name).stdout)[0]["State"]
        assert state["ExitCode"] == 0, state
        logs = podman("logs", name, check=False).stderr
        assert "usage committed" in logs, logs
    finally:
        podman("rm", "-f", name, check=False)


def test_the_service_unit_scores_2_or_lower():
    out = subprocess.run(["systemd-analyze", "security", "--offline=yes", str(ROOT / "deploy/ai-gateway.service")],
                         capture_output=True, text=True)
    found = re.search(r"Overall exposure level for ai-gateway\.service: ([0-9.]+)", out.stdout + out.stderr)
    assert found, out.stdout + out.stderr
    assert float(found.group(1)) <= 2.0, out.stdout
    unit = (ROOT / "deploy/ai-gateway.service").read_text()
    # The filter keeps io_uring (the gateway's driver) and the workers' pinning.
    assert "io_uring_setup io_uring_enter io_uring_register" in unit
    assert "SystemCallFilter=sched_setaffinity" in unit
