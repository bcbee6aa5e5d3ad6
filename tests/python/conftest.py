"""Fixtures that start the real ai-gateway and mock-ollama binaries (see harness.py)."""

import pytest

from harness import ADMIN_KEY, GATEWAY, MOCK, Gateway, Mock, last_request  # noqa: F401 (tests import them from here)


@pytest.fixture(scope="module")
def mock():
    m = Mock([MOCK, "--listen", "127.0.0.1:0", "--tokens", "8"])
    yield m
    m.stop()


@pytest.fixture(autouse=True)
def default_knobs(request):
    """Every test starts from the emulator's default behaviour."""
    if "mock" in request.fixturenames:
        m = request.getfixturevalue("mock")
        m.configure(tokens=8, error_after=None, close_after=None, thinking=0, busy=False, tool_calls=True)
    yield


@pytest.fixture(scope="module")
def gateway(mock):
    g = Gateway(mock.url)
    yield g
    g.stop()


@pytest.fixture(scope="module")
def user_key(gateway):
    return gateway.create_key("python-sdk")


@pytest.fixture
def client(gateway, user_key):
    import openai

    return openai.OpenAI(base_url=gateway.url + "/api/v1", api_key=user_key, max_retries=0)


@pytest.fixture
def anthropic_client(gateway, user_key):
    import anthropic

    # ANTHROPIC_BASE_URL is the gateway itself; the key goes in x-api-key.
    return anthropic.Anthropic(base_url=gateway.url, api_key=user_key, max_retries=0)
