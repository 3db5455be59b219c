"""Schemathesis against the server's own OpenAPI document: no 5xx, every response as documented."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server_support import API_KEY, Server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(tiny_int4: Path) -> Iterator[Server]:
    # A short default answer keeps hundreds of generated requests quick.
    running = Server(tiny_int4, "--default-max-tokens", "8")
    yield running
    running.stop()


def test_schemathesis_finds_no_server_error_and_no_schema_violation(server: Server) -> None:
    schemathesis = Path(sys.executable).parent / "schemathesis"
    result = subprocess.run(
        [
            str(schemathesis),
            "run",
            server.base + "/openapi.json",
            "--checks",
            "not_a_server_error,response_schema_conformance,status_code_conformance,content_type_conformance",
            "--max-examples",
            "40",
            "--header",
            f"Authorization: Bearer {API_KEY}",
            "--request-timeout",
            "60",
            "--generation-deterministic",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-6000:]
    assert " passed" in result.stdout and "generated" in result.stdout
