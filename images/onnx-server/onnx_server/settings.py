"""Server settings: every flag can also be set by an environment variable ONNX_SERVER_<FLAG>."""

from __future__ import annotations

import argparse
import math
import os
from dataclasses import dataclass
from pathlib import Path

ENV_PREFIX = "ONNX_SERVER_"


@dataclass(frozen=True)
class Settings:
    model: Path
    host: str = "127.0.0.1"
    port: int = 8000
    served_model_name: str | None = None
    api_keys: tuple[str, ...] = ()
    allow_unauthenticated: bool = False
    metrics_port: int = 0  # 0: /metrics on the API port (open)
    max_batch: int = 16  # sequences decoding together (KV-cache rows)
    max_waiting: int = 64  # admitted but not yet running; beyond: 429
    batch_wait_ms: float = 10.0  # static batches (CUDA models): how long a new batch waits for more arrivals
    prefill_budget_ms: float = 0.0  # prompt work per step while others stream; 0: two steps, 20 ms at least
    max_prefill_chunk: int = 512  # prompt tokens per prefill run at most
    kv_cache_gib: float = 0.0  # KV cache for the running requests; 0: what the memory limit leaves
    request_timeout: float = 600.0
    default_max_tokens: int = 1024  # when a request names none (bounded by the context)
    max_body_bytes: int = 1 << 20
    threads: int = 0  # 0: the CPUs this process may use
    spinning: bool = True  # idle intra-op threads spin between operators (False: they sleep)
    log_prompts: bool = False
    graceful_shutdown_seconds: float = 30.0
    header_timeout: float = 10.0  # a connection's request line and headers must arrive within this
    body_timeout: float = 30.0  # and a request's whole body within this
    # An idle kept-alive connection closes after this. Longer than the idle timeout of every pool in
    # front (clients, Caddy's 2 min, the gateway's 300 s, Google's load balancer's 600 s), so the pool
    # always closes first and never sends a request into a connection the server is closing.
    keep_alive_timeout: float = 620.0
    open_docs: bool = False  # /docs and /openapi.json without a key


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(ENV_PREFIX + name.upper().replace("-", "_"), default)


def _read_keys(path: str | None) -> tuple[str, ...]:
    keys: list[str] = []
    if path:
        for raw in Path(path).read_text().splitlines():
            key = raw.strip()
            if key and not key.startswith("#"):
                keys.append(key)
    env_keys = os.environ.get(ENV_PREFIX + "API_KEYS", "")
    keys += [k.strip() for k in env_keys.split(",") if k.strip()]
    return tuple(dict.fromkeys(keys))


def parse(argv: list[str] | None = None) -> Settings:
    d = Settings(model=Path())
    parser = argparse.ArgumentParser(
        prog="python -m onnx_server",
        description="OpenAI-compatible server for an onnxruntime-genai model. "
        f"Every flag can be set by an environment variable {ENV_PREFIX}<FLAG> (e.g. {ENV_PREFIX}PORT).",
    )

    def add(flag: str, kind: type, default: object, help_text: str) -> None:
        env = _env(flag)
        value = kind(env) if env is not None else default
        parser.add_argument(f"--{flag}", type=kind, default=value, help=f"{help_text} (default {default})")

    parser.add_argument("--model", default=_env("model"), required=_env("model") is None, help="model folder")
    add("host", str, d.host, "address to listen on")
    add("port", int, d.port, "port to listen on")
    add("served-model-name", str, None, "name clients use in `model` (default: the folder name)")
    add("api-key-file", str, None, "file with one API key per line (a mounted Secret)")
    add("metrics-port", int, d.metrics_port, "separate port for /metrics; 0 serves it on the API port")
    add("max-batch", int, d.max_batch, "requests decoded together (KV-cache rows)")
    add("max-waiting", int, d.max_waiting, "queued requests before new ones get 429")
    add("batch-wait-ms", float, d.batch_wait_ms, "CUDA models: how long a new batch waits for simultaneous requests")
    add(
        "prefill-budget-ms",
        float,
        d.prefill_budget_ms,
        "prompt processing per decode step while other requests stream; "
        "0: two decode steps, at least 20 ms, times 1 + the requests waiting (at most 4)",
    )
    add("max-prefill-chunk", int, d.max_prefill_chunk, "prompt tokens per prefill run at most")
    add(
        "kv-cache-gib",
        float,
        d.kv_cache_gib,
        "KV-cache memory for the running requests (CPU models); 0: the memory limit less the model and a headroom",
    )
    add("request-timeout", float, d.request_timeout, "seconds before a request is abandoned")
    add("default-max-tokens", int, d.default_max_tokens, "max_tokens for requests that set none")
    add("max-body-bytes", int, d.max_body_bytes, "largest request body")
    add("threads", int, d.threads, "intra-op threads; 0 sizes from the CPUs available")
    add("graceful-shutdown-seconds", float, d.graceful_shutdown_seconds, "drain time on SIGTERM")
    add("header-timeout", float, d.header_timeout, "seconds for a request's line and headers to arrive")
    add("body-timeout", float, d.body_timeout, "seconds for a request's whole body to arrive")
    add(
        "keep-alive-timeout",
        float,
        d.keep_alive_timeout,
        "seconds an idle kept-alive connection stays open; keep it above the idle timeout of the proxy's pool",
    )
    parser.add_argument(
        "--allow-unauthenticated",
        action="store_true",
        default=(_env("allow-unauthenticated") or "").lower() in {"1", "true", "yes"},
        help="serve without API keys (refused otherwise)",
    )
    parser.add_argument(
        "--no-spinning",
        action="store_true",
        default=(_env("no-spinning") or "").lower() in {"1", "true", "yes"},
        help="idle intra-op threads sleep instead of spinning: for nodes whose other busy processes share the cores",
    )
    parser.add_argument(
        "--log-prompts",
        action="store_true",
        default=(_env("log-prompts") or "").lower() in {"1", "true", "yes"},
        help="include prompt text in logs",
    )
    parser.add_argument(
        "--open-docs",
        action="store_true",
        default=(_env("open-docs") or "").lower() in {"1", "true", "yes"},
        help="serve /docs and /openapi.json without an API key (they name the served model)",
    )
    args = parser.parse_args(argv)
    keys = _read_keys(args.api_key_file)
    if not keys and not args.allow_unauthenticated:
        parser.error(
            f"no API keys: use --api-key-file PATH or {ENV_PREFIX}API_KEYS, or --allow-unauthenticated explicitly"
        )
    for flag in ("port", "max_batch", "max_waiting", "default_max_tokens", "max_prefill_chunk"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    for flag in ("header_timeout", "body_timeout", "keep_alive_timeout"):
        if not getattr(args, flag) > 0:
            parser.error(f"--{flag.replace('_', '-')} must be more than 0 seconds")
    if not (args.kv_cache_gib >= 0 and math.isfinite(args.kv_cache_gib)):
        parser.error("--kv-cache-gib must be 0 (sized from the memory limit) or more")
    if not args.prefill_budget_ms >= 0:
        parser.error("--prefill-budget-ms must be 0 (two decode steps) or more")
    return Settings(
        model=Path(args.model),
        host=args.host,
        port=args.port,
        served_model_name=args.served_model_name,
        api_keys=keys,
        allow_unauthenticated=args.allow_unauthenticated,
        metrics_port=args.metrics_port,
        max_batch=args.max_batch,
        max_waiting=args.max_waiting,
        batch_wait_ms=args.batch_wait_ms,
        prefill_budget_ms=args.prefill_budget_ms,
        kv_cache_gib=args.kv_cache_gib,
        max_prefill_chunk=args.max_prefill_chunk,
        request_timeout=args.request_timeout,
        default_max_tokens=args.default_max_tokens,
        max_body_bytes=args.max_body_bytes,
        threads=args.threads,
        spinning=not args.no_spinning,
        log_prompts=args.log_prompts,
        graceful_shutdown_seconds=args.graceful_shutdown_seconds,
        header_timeout=args.header_timeout,
        body_timeout=args.body_timeout,
        keep_alive_timeout=args.keep_alive_timeout,
        open_docs=args.open_docs,
    )
