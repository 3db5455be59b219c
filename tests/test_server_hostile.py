"""The ONNX server under hostile input, much of it sent as raw bytes (HTTP clients refuse to send
them): header bytes that are not UTF-8, lone surrogates and NULs, duplicate credentials, idle, slow
and half-sent requests, huge prompts, shutdown under load. No client input may give a 5xx, every
5xx that does happen is counted and logged, and no prompt text reaches the log."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import re
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
from starlette.types import Receive, Scope, Send

from tests.server_support import API_KEY, SERVER_PATH, Server, raw_exchange, status_of

pytestmark = pytest.mark.slow
MODEL = "phi3-tiny-int4"
KEY = f"Authorization: Bearer {API_KEY}\r\n".encode()
COMPLETION = json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 2}).encode()


def _post(path: str, body: bytes, *headers: bytes) -> bytes:
    head = b"POST " + path.encode() + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + b"".join(headers)
    return head + b"Content-Type: application/json\r\nContent-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body


def _json_body(answer: bytes) -> dict[str, Any]:
    return json.loads(answer.partition(b"\r\n\r\n")[2])


def _requests_total(base: str) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    for line in httpx.get(base + "/metrics").text.splitlines():
        match = re.match(r'onnx_server_requests_total\{endpoint="([^"]*)",outcome="[^"]*",status="(\d+)"\} (\S+)', line)
        if match:
            found[(match[1], match[2])] = found.get((match[1], match[2]), 0.0) + float(match[3])
    return found


# --- 6. header bytes that are not UTF-8; every 5xx counted and logged -----------------------------


def test_non_utf8_header_bytes_are_served_everywhere(server: Server) -> None:
    before = _requests_total(server.base)
    requests = {
        "/health": b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-A: \xff\r\n\r\n",
        "/v1/models": b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + KEY + b"X-A: \xff\xfe\r\n\r\n",
        "/v1/completions": _post(
            "/v1/completions",
            json.dumps({"model": MODEL, "prompt": "x", "max_tokens": 2}).encode(),
            KEY,
            b"X-A: \xff\r\n",
        ),
    }
    for path, request in requests.items():
        answer, _ = raw_exchange(server.port, request)
        assert status_of(answer) == 200, (path, answer[:300])
    bad_key, _ = raw_exchange(
        server.port, b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: Bearer \xff\r\n\r\n"
    )
    assert status_of(bad_key) == 401 and _json_body(bad_key)["error"]["code"] == "invalid_api_key"
    after = _requests_total(server.base)
    for path in requests:
        assert after.get((path, "200"), 0) > before.get((path, "200"), 0), path  # counted as served
    # No 5xx during this test (the server is shared: /ready's 503 while it loaded is not ours to judge).
    assert not [k for k in after if k[1].startswith("5") and after[k] > before.get(k, 0)], (before, after)
    logged = [json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")]
    assert {e.get("path") for e in logged if e["message"] == "request" and e.get("status") == 200} >= set(requests)
    assert "Traceback" not in server.log.read_text()


def test_an_unhandled_error_is_a_counted_logged_json_500(caplog: pytest.LogCaptureFixture) -> None:
    from onnx_server.guard import Guard
    from onnx_server.logs import JsonFormatter
    from onnx_server.metrics import Metrics
    from onnx_server.settings import Settings

    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("tokenizer said: SYSTEM PROMPT TEXT")

    metrics = Metrics("m")
    guard = Guard(failing, Settings(model=Path(), allow_unauthenticated=True), metrics, asyncio.Event())

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=guard)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            return await client.get("/health")

    with caplog.at_level(logging.INFO, logger="onnx_server"):
        reply = asyncio.run(call())
    assert reply.status_code == 500 and reply.json()["error"]["type"] == "server_error"
    assert (
        metrics.registry.get_sample_value(
            "onnx_server_requests_total", {"endpoint": "/health", "status": "500", "outcome": "error"}
        )
        == 1
    )
    records = [r for r in caplog.records if r.name == "onnx_server.api"]
    assert [r.getMessage() for r in records] == ["unhandled error", "request"]
    assert getattr(records[0], "error", None) == "RuntimeError" and getattr(records[1], "status", None) == 500
    formatted = "".join(JsonFormatter().format(r) for r in records)
    assert "SYSTEM PROMPT TEXT" not in formatted


def test_exception_text_stays_out_of_the_log_unless_prompt_logging_is_on() -> None:
    from onnx_server.logs import JsonFormatter

    secret = "the whole " + "SECRET" + " prompt"  # built, so no source line in the traceback shows it
    try:
        raise TypeError(f"encode(): incompatible arguments. Invoked with: {secret!r}")
    except TypeError:
        record = logging.getLogger("x").makeRecord("x", logging.ERROR, __file__, 1, "failed", (), sys.exc_info())
    withheld = JsonFormatter().format(record)
    assert "SECRET" not in withheld and "TypeError" in withheld and "Traceback" in withheld
    assert "SECRET" in JsonFormatter(exception_text=True).format(record)


# --- 7, 8. lone surrogates and NUL characters -------------------------------------------------------


def test_a_lone_surrogate_is_a_400_and_no_prompt_text_is_logged(server: Server) -> None:
    body = (
        b'{"model": "phi3-tiny-int4", "max_tokens": 2, "messages": [{"role": "system", "content": '
        b'"SURROGATE-SYSTEM-PROMPT-7"}, {"role": "user", "content": "hi \\ud800 there"}]}'
    )
    answer, _ = raw_exchange(server.port, _post("/v1/chat/completions", body, KEY))
    error = _json_body(answer)["error"]
    assert status_of(answer) == 400 and error["param"] == "messages.1.content", answer
    assert "surrogate" in error["message"] and "U+D800" in error["message"]
    completion = b'{"model": "phi3-tiny-int4", "prompt": "SURROGATE-PROMPT-7 \\udfff", "max_tokens": 2}'
    answer, _ = raw_exchange(server.port, _post("/v1/completions", completion, KEY))
    assert status_of(answer) == 400 and _json_body(answer)["error"]["param"] == "prompt"
    assert httpx.get(server.base + "/health").status_code == 200
    log = server.log.read_text()
    assert "SURROGATE-SYSTEM-PROMPT-7" not in log and "SURROGATE-PROMPT-7" not in log


def test_a_nul_character_is_refused_not_cut_off(server: Server) -> None:
    messages = [{"role": "user", "content": "before\u0000after"}, {"role": "assistant", "content": "ok"}]
    reply = server.post("/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": 2})
    assert reply.status_code == 400, reply.text
    error = reply.json()["error"]
    assert error["param"] == "messages.0.content" and "NUL" in error["message"]
    reply = server.post("/v1/completions", json={"model": MODEL, "prompt": "a\u0000b", "max_tokens": 2})
    assert reply.status_code == 400 and reply.json()["error"]["param"] == "prompt"


def test_values_the_runtime_would_crash_on_are_served(server: Server) -> None:
    # top_k past the vocabulary segfaults onnxruntime-genai's sampler, a denormal temperature
    # aborts it, and a seed past 32 bits fails in its binding: none may reach it as given.
    for extra in ({"top_k": 1000, "temperature": 1.0}, {"temperature": 1e-45}, {"seed": 10**30}, {"seed": -(2**40)}):
        reply = server.post("/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 3, **extra})
        assert reply.status_code == 200, (extra, reply.text)
    assert httpx.get(server.base + "/health").status_code == 200


# --- 9. telemetry -----------------------------------------------------------------------------------


def _outbound(trace: Path) -> list[str]:
    """connect() calls to anything but loopback (DNS to the resolver included)."""
    calls = [line for line in trace.read_text().splitlines() if "connect(" in line and "AF_INET" in line]
    return [c for c in calls if "127.0.0.1" not in c and "::1" not in c]


def _traced(command: list[str], home: Path, trace: Path) -> subprocess.Popen[bytes]:
    """`command` under strace (its connect() calls in `trace`, its stderr beside it), with a HOME
    of its own so whatever it writes under ~/.cache is seen."""
    env = {**os.environ, "HOME": str(home), "XDG_CACHE_HOME": str(home / ".cache"), "PYTHONPATH": str(SERVER_PATH)}
    env.pop("ORT_DISABLE_TELEMETRY", None)  # the program must switch it off itself
    strace = ["strace", "-f", "-qq", "-e", "trace=connect", "-o", str(trace)]
    with trace.with_suffix(".log").open("w") as log:
        return subprocess.Popen([*strace, *command], env=env, stdout=subprocess.DEVNULL, stderr=log)


needs_strace = pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed (Debian package strace)")


@needs_strace
def test_the_server_writes_no_telemetry_and_connects_nowhere(served_model: Path, tmp_path: Path) -> None:
    from tests.server_support import free_port

    home, trace, port = tmp_path / "home", tmp_path / "trace", free_port()
    home.mkdir()
    command = [sys.executable, "-m", "onnx_server", "--model", str(served_model), "--port", str(port)]
    process = _traced([*command, "--allow-unauthenticated"], home, trace)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and process.poll() is None:
            try:
                if httpx.get(base + "/ready", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        reply = httpx.post(base + "/v1/completions", json={"model": MODEL, "prompt": "x", "max_tokens": 4}, timeout=30)
        assert reply.status_code == 200
        time.sleep(2)  # onnxruntime's uploader made its first lookups within a second of loading
    finally:
        # strace does not pass signals on: stop the server itself, strace then exits with it.
        for child in Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split():
            os.kill(int(child), signal.SIGTERM)
        process.wait(30)
    assert not (home / ".cache" / "Microsoft").exists(), sorted(str(p) for p in home.rglob("*"))
    assert _outbound(trace) == []


@needs_strace
def test_the_converter_writes_no_telemetry_and_connects_nowhere(tiny_source: Path, tmp_path: Path) -> None:
    home, trace = tmp_path / "home", tmp_path / "trace"
    home.mkdir()
    out = tmp_path / "out"
    command = [sys.executable, "-m", "convert", "--model", str(tiny_source), "--method", "builder", "--out", str(out)]
    command.append("--no-compare")
    process = _traced(command, home, trace)
    assert process.wait(300) == 0, trace.with_suffix(".log").read_text()[-2000:]
    assert not (home / ".cache" / "Microsoft").exists(), sorted(str(p) for p in home.rglob("*"))
    assert _outbound(trace) == []


# --- 10. idle, slow-header and slow-body connections; tokenisation off the event loop -------------


@pytest.fixture(scope="module")
def impatient(served_model: Path) -> Any:
    running = Server(served_model, "--header-timeout", "1", "--body-timeout", "1")
    yield running
    running.stop()


def test_an_idle_connection_is_closed(impatient: Server) -> None:
    answer, took = raw_exchange(impatient.port, timeout=10)
    assert answer == b"" and took < 4, took


def test_slow_headers_get_a_408(impatient: Server) -> None:
    trickle = [b"GET /health HTTP/1.1\r\n", *[b"X-Slow: a\r\n"] * 20]
    answer, took = raw_exchange(impatient.port, *trickle, timeout=10, pause=0.25)
    assert status_of(answer) == 408 and took < 6, (answer[:200], took)
    assert _json_body(answer)["error"]["code"] == "request_timeout"


def test_a_slow_body_gets_a_408(impatient: Server) -> None:
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + KEY + b"Content-Length: 200\r\n\r\n"
    answer, took = raw_exchange(impatient.port, head, b'{"model": ', timeout=10)
    assert status_of(answer) == 408 and took < 4, (answer[:200], took)
    assert "did not arrive within 1 seconds" in _json_body(answer)["error"]["message"]
    assert _requests_total(impatient.base).get(("/v1/completions", "408")) == 1
    # Prompt clients are unaffected: one kept-alive connection, request after request.
    with httpx.Client(base_url=impatient.base, headers=impatient.headers, timeout=30) as client:
        for _ in range(3):
            body = {"model": MODEL, "prompt": "the quick", "max_tokens": 3}
            assert client.post("/v1/completions", json=body).status_code == 200


def test_huge_prompts_stall_neither_health_nor_streams(endless_model: Path) -> None:
    server = Server(endless_model, "--max-body-bytes", "3000000")
    rng = random.Random(1)  # noqa: S311 (test data: random letters, about a token per character)
    prompt = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz ,.") for _ in range(1 << 20))
    latencies: list[float] = []
    gaps: list[float] = []
    done = threading.Event()

    def poll() -> None:
        with httpx.Client(timeout=60) as client:
            while not done.is_set():
                started = time.perf_counter()
                client.get(server.base + "/health")
                latencies.append(time.perf_counter() - started)
                time.sleep(0.005)

    def stream() -> None:
        body = {"model": MODEL, "prompt": "x", "max_tokens": 6000, "stream": True, "temperature": 0}
        with (
            httpx.Client(timeout=60) as client,
            client.stream("POST", server.base + "/v1/completions", json=body, headers=server.headers) as reply,
        ):
            last = time.perf_counter()
            for line in reply.iter_lines():
                now = time.perf_counter()
                if line.startswith("data:") and streaming.is_set():
                    gaps.append(now - last)
                last = now
                if done.is_set():
                    return

    def huge() -> None:
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 2}
        codes.append(server.post("/v1/completions", json=body, timeout=120).status_code)

    streaming = threading.Event()
    codes: list[int] = []
    workers = [threading.Thread(target=poll), threading.Thread(target=stream)]
    try:
        for worker in workers:
            worker.start()
        time.sleep(0.5)
        streaming.set()
        latencies.clear()
        senders = [threading.Thread(target=huge) for _ in range(6)]
        began = time.perf_counter()
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join(120)
        took = time.perf_counter() - began
    finally:
        done.set()
        for worker in workers:
            worker.join(60)
        server.stop()
    assert codes == [400] * 6  # tokenised, then refused: 1 MiB is past the 8192-token context
    # Before, each prompt held the event loop (and the decode thread) for its whole tokenisation:
    # /health and the stream waited 2.6 s of the 3.6 s the six took. Measured against the time the
    # six take, so a machine busy with other tests does not decide it.
    assert max(latencies) < 0.3 * took, f"/health took {max(latencies):.2f} s of {took:.2f} s"
    assert gaps and max(gaps) < 0.3 * took, f"a stream stalled {max(gaps):.2f} s of {took:.2f} s"


# --- 11. shutdown -------------------------------------------------------------------------------------


def test_streams_at_the_drain_deadline_end_with_an_error_event_and_done(endless_model: Path) -> None:
    server = Server(endless_model, "--graceful-shutdown-seconds", "2")
    lines: list[str] = []
    started = threading.Event()

    def stream() -> None:
        body = {"model": MODEL, "prompt": "drain", "max_tokens": 8000, "stream": True}
        with httpx.stream("POST", server.base + "/v1/completions", json=body, headers=server.headers, timeout=60) as r:
            for line in r.iter_lines():
                lines.append(line)
                started.set()

    reader = threading.Thread(target=stream)
    reader.start()
    assert started.wait(30)
    began = time.monotonic()
    code = server.stop(signal.SIGTERM, timeout=30)
    took = time.monotonic() - began
    reader.join(30)
    events = [line for line in lines if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]", events[-3:]
    error = json.loads(events[-2].removeprefix("data: "))["error"]
    assert error["code"] == "server_shutdown" and "shutting down" in error["message"]
    assert code == 0 and took < 6, (code, took)


def test_a_slow_body_does_not_hold_shutdown(served_model: Path) -> None:
    server = Server(served_model, "--graceful-shutdown-seconds", "20", "--body-timeout", "60")
    answers: list[bytes] = []
    head = b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n" + KEY + b"Content-Length: 500\r\n\r\n"
    sender = threading.Thread(target=lambda: answers.append(raw_exchange(server.port, head, b"{", timeout=30)[0]))
    sender.start()
    time.sleep(0.5)
    began = time.monotonic()
    code = server.stop(signal.SIGTERM, timeout=30)
    took = time.monotonic() - began
    sender.join(30)
    assert code == 0 and took < 5, (code, took)
    assert status_of(answers[0]) == 503 and _json_body(answers[0])["error"]["code"] == "server_shutdown"


# --- 12. two credentials; one rule for empty stop sequences --------------------------------------------


def test_two_authorization_headers_are_a_400(server: Server) -> None:
    for first, second in ((b"Bearer nope", API_KEY.encode()), (API_KEY.encode(), b"Bearer nope")):
        headers = b"Authorization: " + first + b"\r\nAuthorization: Bearer " + second.removeprefix(b"Bearer ") + b"\r\n"
        request = b"GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + headers + b"\r\n"
        answer, _ = raw_exchange(server.port, request)
        assert status_of(answer) == 400, answer[:300]
        assert _json_body(answer)["error"]["code"] == "duplicate_header"


def test_an_empty_stop_sequence_stops_nothing_in_either_form(server: Server) -> None:
    def text(**extra: Any) -> tuple[str, str]:
        body = {"model": MODEL, "prompt": "the quick", "max_tokens": 8, "temperature": 0, **extra}
        choice = server.post("/v1/completions", json=body).json()["choices"][0]
        return choice["text"], choice["finish_reason"]

    plain = text()
    assert plain[0]
    assert text(stop="") == plain
    assert text(stop=[""]) == plain


# --- 13. the API's documents follow the API's authentication ---------------------------------------------


def test_docs_need_a_key_unless_opened(server: Server, tiny_int4: Path) -> None:
    for path in ("/docs", "/openapi.json", "/redoc"):
        assert httpx.get(server.base + path).status_code == 401, path
        assert httpx.get(server.base + path, headers=server.headers).status_code == 200, path
    opened = Server(tiny_int4, env={"ONNX_SERVER_OPEN_DOCS": "1"})
    try:
        document = httpx.get(opened.base + "/openapi.json")
        assert document.status_code == 200 and "/v1/models/{model_id}" in document.json()["paths"]
        assert httpx.get(opened.base + "/docs").status_code == 200
        assert httpx.get(opened.base + "/v1/models").status_code == 401  # only the documents opened
    finally:
        opened.stop()
