"""The ONNX server under load, under bad input, while shutting down, and misconfigured."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.server_support import API_KEY, SERVER_PATH, Server

pytestmark = pytest.mark.slow
MODEL = "phi3-tiny-int4"


def _stream_text(base: str, prompt: str, max_tokens: int) -> tuple[str, dict[str, Any], str]:
    async def run() -> tuple[str, dict[str, Any], str]:
        body = {
            "model": MODEL,
            "prompt": prompt,
            "max_tokens": max_tokens,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        async with (
            httpx.AsyncClient(timeout=120) as client,
            client.stream(
                "POST", base + "/v1/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}"}
            ) as r,
        ):
            text, usage, finish = "", {}, ""
            async for line in r.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                event = json.loads(line[6:])
                if event.get("usage"):
                    usage = event["usage"]
                for choice in event["choices"]:
                    text += choice["text"]
                    finish = choice["finish_reason"] or finish
            return text, usage, finish

    return asyncio.run(run())


def test_sixteen_concurrent_streams_match_their_sequential_answers(server: Server) -> None:
    prompts = [f"request {i} about the quick brown fox" for i in range(16)]
    sequential = []
    for prompt in prompts:
        reply = server.post(
            "/v1/completions", json={"model": MODEL, "prompt": prompt, "max_tokens": 24, "temperature": 0}
        )
        sequential.append(reply.json())

    async def all_at_once() -> list[tuple[str, dict[str, Any], str]]:
        return list(await asyncio.gather(*(asyncio.to_thread(_stream_text, server.base, p, 24) for p in prompts)))

    concurrent = asyncio.run(all_at_once())
    for expected, (text, usage, finish) in zip(sequential, concurrent, strict=True):
        assert text == expected["choices"][0]["text"]
        assert finish == expected["choices"][0]["finish_reason"]
        assert usage["completion_tokens"] == expected["usage"]["completion_tokens"]
        if finish == "length":
            assert usage["completion_tokens"] == 24
    metrics = httpx.get(server.base + "/metrics").text
    batches = [
        line for line in metrics.splitlines() if line.startswith("onnx_server_batch_size_bucket") and 'le="1.0"' in line
    ]
    total = [line for line in metrics.splitlines() if line.startswith("onnx_server_batch_size_count")]
    assert batches and total and float(batches[0].split()[-1]) < float(total[0].split()[-1]), "no request was batched"


def test_queue_overflow_is_429_with_retry_after(endless_model: Path) -> None:
    small = Server(endless_model, "--max-batch", "1", "--max-waiting", "1")
    try:
        statuses: list[int] = []
        retry_after: list[str] = []

        def call() -> None:
            reply = small.post(
                "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 3000, "temperature": 0}
            )
            statuses.append(reply.status_code)
            if reply.status_code == 429:
                retry_after.append(reply.headers.get("retry-after", ""))
                assert reply.json()["error"]["type"] == "rate_limit_error"

        threads = [threading.Thread(target=call) for _ in range(5)]
        for t in threads:
            t.start()
            time.sleep(0.05)
        for t in threads:
            t.join(120)
        assert 429 in statuses and 200 in statuses
        assert retry_after and all(v.isdigit() for v in retry_after)
        assert small.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 2}).status_code == 200
    finally:
        small.stop()


def test_disconnect_frees_the_slot(endless_model: Path) -> None:
    single = Server(endless_model, "--max-batch", "1", "--max-waiting", "1")
    try:
        body = {"model": MODEL, "prompt": "long", "max_tokens": 8000, "temperature": 0, "stream": True}
        with httpx.stream("POST", single.base + "/v1/completions", json=body, headers=single.headers, timeout=60) as r:
            lines = r.iter_lines()
            for _ in range(3):
                next(lines)
        # The long stream is gone: the next request gets the only slot long before 8000 tokens.
        started = time.monotonic()
        reply = single.post("/v1/completions", json={"model": MODEL, "prompt": "next", "max_tokens": 4})
        assert reply.status_code == 200
        assert time.monotonic() - started < 5
        metrics = httpx.get(single.base + "/metrics").text
        assert 'vllm:request_success_total{finished_reason="length",model_name="phi3-tiny-int4"} 1.0' in metrics
    finally:
        single.stop()


def test_non_streaming_disconnect_is_cancelled_too(endless_model: Path) -> None:
    single = Server(endless_model, "--max-batch", "1", "--max-waiting", "1")
    try:
        with pytest.raises(httpx.ReadTimeout):
            single.post("/v1/completions", json={"model": MODEL, "prompt": "long", "max_tokens": 8000}, timeout=0.5)
        started = time.monotonic()
        assert (
            single.post("/v1/completions", json={"model": MODEL, "prompt": "next", "max_tokens": 4}).status_code == 200
        )
        assert time.monotonic() - started < 5
    finally:
        single.stop()


def test_shutdown_drains_in_flight_requests(endless_model: Path) -> None:
    draining = Server(endless_model)
    result: dict[str, Any] = {}

    def long_request() -> None:
        reply = draining.post(
            "/v1/completions", json={"model": MODEL, "prompt": "drain", "max_tokens": 1500, "temperature": 0}
        )
        result["status"] = reply.status_code
        result["body"] = reply.json()

    worker = threading.Thread(target=long_request)
    worker.start()
    deadline = time.monotonic() + 10
    while (
        'vllm:num_requests_running{model_name="phi3-tiny-int4"} 1.0' not in httpx.get(draining.base + "/metrics").text
    ):
        assert time.monotonic() < deadline
        time.sleep(0.01)
    code = draining.stop(signal.SIGTERM, timeout=60)
    worker.join(60)
    assert result["status"] == 200 and result["body"]["usage"]["completion_tokens"] > 0
    # A clean drain is a clean exit (uvicorn itself would re-raise the signal: 143).
    assert code == 0


BAD_INPUTS = [
    ("malformed json", b'{"model": ', 400),
    ("not an object", b"[1, 2]", 400),
    ("string body", b'"hello"', 400),
    (
        "wrong type",
        json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "temperature": False}),
        400,
    ),
    (
        "max_tokens string",
        json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": "5"}),
        400,
    ),
    ("missing messages", json.dumps({"model": MODEL}), 400),
    ("empty messages", json.dumps({"model": MODEL, "messages": []}), 400),
    ("unknown role", json.dumps({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]}), 400),
    ("unknown model", json.dumps({"model": "nope", "messages": [{"role": "user", "content": "x"}]}), 404),
    ("n=3", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "n": 3}), 400),
    (
        "unsupported",
        json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "logit_bias": {"1": 2}}),
        400,
    ),
    ("unknown param", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "foo": 1}), 400),
    ("prompt too long", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "fox " * 9000}]}), 400),
    (
        "max_tokens too big",
        json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 9000}),
        400,
    ),
    (
        "negative max_tokens",
        json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": -1}),
        400,
    ),
    (
        "json_schema without schema",
        json.dumps(
            {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "response_format": {"type": "json_schema"}}
        ),
        400,
    ),
    ("oversize", json.dumps({"model": MODEL, "messages": [{"role": "user", "content": "x" * (2 << 20)}]}), 413),
]


@pytest.mark.parametrize(("name", "body", "status"), BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_is_a_4xx_with_an_openai_error(server: Server, name: str, body: bytes | str, status: int) -> None:
    reply = server.post(
        "/v1/chat/completions", content=body, headers={**server.headers, "Content-Type": "application/json"}
    )
    assert reply.status_code == status, reply.text
    error = reply.json()["error"]
    assert error["message"] and error["type"] and "Traceback" not in reply.text
    assert httpx.get(server.base + "/health").status_code == 200


def test_prompt_too_long_is_caught_before_the_engine(server: Server) -> None:
    reply = server.post("/v1/completions", json={"model": MODEL, "prompt": "fox " * 9000})
    assert reply.status_code == 400 and reply.json()["error"]["code"] == "context_length_exceeded"


def test_a_model_that_fails_to_load_is_not_ready(served_model: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(served_model, broken)
    (broken / "model.onnx").write_bytes(b"not a model")
    server = Server(broken, ready=False)
    try:
        time.sleep(1)
        ready = httpx.get(server.base + "/ready")
        assert ready.status_code == 503 and ready.headers.get("retry-after")
        assert httpx.get(server.base + "/health").status_code == 200
        reply = server.post("/v1/completions", json={"model": "broken", "prompt": "x"})
        assert reply.status_code == 503
    finally:
        server.stop()


def _start(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "onnx_server", *args],
        env={"PYTHONPATH": str(SERVER_PATH), "PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_refuses_to_start_without_keys(served_model: Path) -> None:
    result = _start(["--model", str(served_model)], {})
    assert result.returncode == 2 and "no API keys" in result.stderr


def test_refuses_a_folder_that_is_not_a_model(tmp_path: Path) -> None:
    result = _start(["--model", str(tmp_path), "--allow-unauthenticated"], {})
    assert result.returncode == 2 and "genai_config.json" in result.stderr


def test_keys_from_a_file_and_flags_from_the_environment(served_model: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    keys.write_text("# rotated monthly\nfile-key\n")
    server = Server(served_model, env={"ONNX_SERVER_API_KEY_FILE": str(keys), "ONNX_SERVER_SERVED_MODEL_NAME": "phi4"})
    try:
        models = httpx.get(server.base + "/v1/models", headers={"Authorization": "Bearer file-key"})
        assert models.status_code == 200 and models.json()["data"][0]["id"] == "phi4"
        assert httpx.get(server.base + "/v1/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200
        assert httpx.get(server.base + "/v1/models", headers={"Authorization": "Bearer nope"}).status_code == 401
        assert httpx.get(server.base + "/v1/models").status_code == 401
    finally:
        server.stop()


def test_logs_are_json_without_prompt_text(served_model: Path) -> None:
    server = Server(served_model)
    try:
        server.post("/v1/completions", json={"model": MODEL, "prompt": "secret-prompt-text", "max_tokens": 2})
    finally:
        server.stop()
    lines = [line for line in server.log.read_text().splitlines() if line.strip()]
    assert lines and all(isinstance(json.loads(line), dict) for line in lines)
    assert "secret-prompt-text" not in server.log.read_text()


def test_request_timeout_is_a_504_and_the_server_keeps_serving(endless_model: Path) -> None:
    server = Server(endless_model, "--request-timeout", "0.3")
    try:
        reply = server.post("/v1/completions", json={"model": MODEL, "prompt": "slow", "max_tokens": 8000})
        assert reply.status_code == 504 and reply.json()["error"]["type"] == "timeout"
        assert (
            server.post("/v1/completions", json={"model": MODEL, "prompt": "quick", "max_tokens": 2}).status_code == 200
        )
    finally:
        server.stop()


def test_metrics_on_their_own_port(served_model: Path) -> None:
    from tests.server_support import free_port

    port = free_port()
    server = Server(served_model, "--metrics-port", str(port))
    try:
        assert httpx.get(server.base + "/metrics").status_code in (401, 404)
        assert "vllm:num_requests_waiting" in httpx.get(f"http://127.0.0.1:{port}/metrics").text
    finally:
        server.stop()


def test_json_schema_output_is_constrained_and_a_bad_schema_is_a_400(server: Server) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    good = {"type": "json_schema", "json_schema": {"name": "thing", "schema": schema}}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "x"}], "max_tokens": 6, "response_format": good}
    reply = server.post("/v1/chat/completions", json=body)
    assert reply.status_code == 200
    assert reply.json()["choices"][0]["message"]["content"].startswith("{")
    bad = {"type": "json_schema", "json_schema": {"name": "thing", "schema": {"type": 5}}}
    reply = server.post("/v1/chat/completions", json={**body, "response_format": bad})
    assert reply.status_code == 400 and "response_format" in reply.json()["error"]["message"]
    assert httpx.get(server.base + "/health").status_code == 200
