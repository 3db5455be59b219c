"""Start the real ONNX server as a process on 127.0.0.1 and talk to it."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from offline.recording import PROJECT_ROOT

SERVER_PATH = PROJECT_ROOT / "images" / "onnx-server"
API_KEY = "test-key-0123456789"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, model: Path, *extra: str, env: dict[str, str] | None = None, ready: bool = True) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = Path(os.environ.get("TMPDIR", "/tmp")) / f"onnx-server-{self.port}.log"
        environment = {**os.environ, "PYTHONPATH": str(SERVER_PATH), "ONNX_SERVER_API_KEYS": API_KEY, **(env or {})}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "onnx_server", "--model", str(model), "--port", str(self.port), *extra],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=self.log.open("w"),
        )
        self._wait("/ready" if ready else "/health")

    def _wait(self, path: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited with {self.process.returncode}: {self.log.read_text()[-2000:]}")
            try:
                if httpx.get(self.base + path, timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server not up on {path}: {self.log.read_text()[-2000:]}")

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {API_KEY}"}

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        kwargs["headers"] = {**self.headers, **kwargs.get("headers", {})}
        kwargs.setdefault("timeout", 60)
        return httpx.post(self.base + path, **kwargs)

    def samples(self) -> dict[str, float]:
        """The first sample of each metric name on /metrics (one scrape, prometheus_client's parser)."""
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(httpx.get(self.base + "/metrics").text):
            for sample in family.samples:
                found.setdefault(sample.name, sample.value)
        return found

    def decode_steps(self, at_most: int) -> tuple[float, float]:
        """(decode steps of at most `at_most` sequences, all decode steps) so far: the
        onnx_server_batch_size histogram's bucket and count (`at_most` must be a bucket bound)."""
        buckets = self.decode_step_buckets()
        assert at_most in buckets, "onnx_server_batch_size has no such bucket"
        return buckets[at_most], buckets[float("inf")]

    def decode_step_buckets(self) -> dict[float, float]:
        """Decode steps of at most N sequences so far, for every bucket bound N of the
        onnx_server_batch_size histogram (inf: all of them), from one scrape."""
        buckets: dict[float, float] = {}
        for family in text_string_to_metric_families(httpx.get(self.base + "/metrics").text):
            for sample in family.samples:
                if sample.name == "onnx_server_batch_size_bucket":
                    buckets[float(sample.labels["le"])] = sample.value
        assert buckets, "onnx_server_batch_size has no buckets"
        return buckets

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout)


def raw_exchange(port: int, *chunks: bytes, timeout: float = 10, pause: float = 0.0) -> tuple[bytes, float]:
    """Send bytes an HTTP client would refuse to send (or would send promptly), `pause` seconds
    apart; return everything the server answered until it closed, and how long that took."""
    started = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the server may answer and close first
            for chunk in chunks:
                sock.sendall(chunk)
                time.sleep(pause)
        answer = b""
        with contextlib.suppress(TimeoutError, ConnectionResetError):
            while data := sock.recv(65536):
                answer += data
    return answer, time.monotonic() - started


def status_of(answer: bytes) -> int:
    """The status code of the first response in raw bytes (0: none)."""
    line = answer.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 and line[1].isdigit() else 0
