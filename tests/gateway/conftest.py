"""Fixtures shared by the gateway tests: one `llmaas serve` stack on the real model for the package."""
from __future__ import annotations

from collections.abc import Iterator

import openai
import pytest

from tests.gateway.serve_stack import Running, start_serve_stack


@pytest.fixture(scope="package")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    stack, stop = start_serve_stack(tmp_path_factory.mktemp("serve-stack"))
    yield stack
    stop()


@pytest.fixture(scope="package")
def client(running: Running) -> openai.OpenAI:
    return openai.OpenAI(base_url=running.base_url, api_key=running.api_key, max_retries=0)
